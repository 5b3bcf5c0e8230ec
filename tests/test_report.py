"""The per-candidate report: self-contained HTML, Markdown beside PNGs, every check, no personal data."""

import base64
import html
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.gate.report import ReportInputs, slice_rows, slices_figure, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EMAIL = "jane.doe@example.com"
PHONE = "+1 415 555 0134"
SLICES = [
    {"category": "billing", "examples": 40, "candidate_loss": 2.31, "reference_loss": 2.2, "delta": 0.11,
     "interval": [0.04, 0.19], "status": "fail"},
    {"category": "shipping", "examples": 35, "candidate_loss": 2.0, "reference_loss": 2.02, "delta": -0.02,
     "interval": [-0.07, 0.03], "status": "pass"},
    {"category": "returns", "examples": 22, "candidate_loss": 1.9, "reference_loss": 2.0, "delta": -0.1,
     "interval": [-0.18, -0.03], "status": "pass"},
]
CHECKS = [
    {"name": "min_eval_examples", "status": "pass", "passed": True,
     "message": "120 trusted eval examples, at least 50 required", "details": {"examples": 120, "required": 50}},
    {"name": "improvement", "status": "pass", "passed": True, "message": "candidate loss 2.0700 vs champion 2.1100",
     "details": {"mode": "superiority", "reference": "champion", "threshold": 0.0, "candidate_loss": 2.07,
                 "reference_loss": 2.11, "estimate": 0.04, "lower_bound": 0.012, "confidence": 0.95,
                 "interval": [0.008, 0.071], "examples": 120, "bound": "one-sided bootstrap lower bound"}},
    {"name": "slices", "status": "fail", "passed": False, "message": "3 categories, 1 worse than the champion",
     "details": {"tolerance": 0.05, "min_examples": 20, "uncategorised": 23, "slices": SLICES,
                 "skipped": [{"category": "legal", "examples": 3}]}},
    {"name": "forgetting", "status": "off", "passed": True, "message": "switched off (gate.check_forgetting: false)",
     "details": {}},
    {"name": "behaviour", "status": "fail", "passed": False, "message": "1 of 2 golden prompts failed", "details": {}},
    {"name": "servable", "status": "pass", "passed": True, "message": "adapter loads and answers", "details": {}},
]
RESULT = {
    "train": {"loss_curve": [[step, 3.0 - 0.01 * step] for step in range(1, 121)],
              "validation_curve": [[step, 2.6 - 0.004 * step] for step in range(20, 121, 20)],
              "steps": 120, "seconds": 84.2, "tokens_per_second": 5123.4, "best_step": 100, "stopped_by": "max_steps"},
    "eval": {
        "trusted": {"candidate": {"loss": 2.07, "examples": 120, "tokens": 9000, "per_example": []},
                    "champion": {"loss": 2.11, "examples": 120, "tokens": 9000, "per_example": []}},
        "batch_heldout": {"candidate": {"loss": 1.95, "examples": 30, "tokens": 2100},
                          "champion": {"loss": 2.2, "examples": 30, "tokens": 2100}},
    },
}
GOLDEN = [
    {"id": "refund-policy", "prompt": "How do I get a refund?",
     "candidate": f"Email {EMAIL} or call {PHONE} and we will refund you.",
     "reference": "Refunds take 5 days.", "status": "pass", "failures": []},
    {"id": "no-code", "prompt": "Say hi", "candidate": "<script>alert('x')</script> hi | there",
     "reference": None, "status": "fail", "failures": [f"answer names {EMAIL}", "contains markup"]},
]
TAGS = {
    "ticketune.snapshot_id": "snap-0042", "ticketune.eval_snapshot_id": "snap-0040",
    "ticketune.base_model": "./models/tiny", "ticketune.parent_champion": "3",
    "ticketune.config_hash": "9f2c1ab", "ticketune.code_version": "0.4.1",
    "ticketune.gate": '{"passed": false, "checks": []}', "ticketune.reasons": '["FAIL slices"]',
    "ticketune.metrics": '{"candidate_eval_loss": 2.07}',
}


def _inputs(**changes) -> ReportInputs:
    fields = {"model_name": "ticketune-support", "version": "4", "cycle_id": "c-20261102-0300",
              "decision": "rejected", "verdict": {"passed": False, "checks": CHECKS}, "tags": TAGS,
              "result": RESULT, "reference": "champion", "golden": GOLDEN}
    fields.update(changes)
    return ReportInputs(**fields)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[list[Path], str, str]:
    out = tmp_path_factory.mktemp("report")
    paths = write_report(out, _inputs())
    return paths, (out / "report.html").read_text(encoding="utf-8"), (out / "report.md").read_text(encoding="utf-8")


def test_writes_html_markdown_and_both_plots_and_returns_their_paths(report):
    paths, _, _ = report
    assert [p.name for p in paths] == ["report.html", "report.md", "loss_curves.png", "slices.png"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)


def test_html_is_self_contained(report):
    _, page, _ = report
    references = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page, flags=re.IGNORECASE)
    assert references, "the plots are embedded as images"
    assert all(ref.startswith("data:image/png;base64,") for ref in references)
    assert "url(" not in page and "<link" not in page.lower() and "@import" not in page


def test_html_shows_the_decision_and_every_check_with_its_status(report):
    _, page, _ = report
    assert '<div class="decision rejected">REJECTED</div>' in page
    for check in CHECKS:
        assert f"<td>{check['name']}</td><td>{check['status']}</td><td>{html.escape(check['message'])}</td>" in page
    assert "0.0080, 0.0710" in page  # the improvement interval from the details


def test_html_embeds_the_plots_as_valid_nontrivial_pngs(report):
    import matplotlib.image

    paths, page, _ = report
    embedded = [base64.b64decode(data) for data in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)]
    assert len(embedded) == 2
    assert sorted(embedded) == sorted([paths[2].read_bytes(), paths[3].read_bytes()])
    for png in embedded:
        assert png.startswith(PNG_SIGNATURE) and len(png) > 1024
        pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert pixels.shape[0] >= 200 and pixels.shape[1] >= 500
        assert pixels.std() > 0.01  # something was drawn, not a blank canvas


def test_no_email_or_phone_from_an_answer_reaches_either_file(report):
    _, page, markdown = report
    for text in (page, markdown, html.unescape(page), html.unescape(markdown)):
        assert EMAIL not in text and PHONE not in text and "555 0134" not in text
    assert "&lt;EMAIL&gt;" in page and "&lt;PHONE&gt;" in page
    assert "\\<EMAIL\\>" in markdown and "\\<PHONE\\>" in markdown  # backslash-escaped: shown as typed
    assert "answer names &lt;EMAIL&gt;" in page  # failures are scrubbed too


def test_markup_in_an_answer_is_escaped_in_html_and_markdown(report):
    _, page, markdown = report
    assert "<script" not in page.lower() and not re.search(r"(?<!\\)<", markdown)  # every < escaped
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "\\<script\\>alert('x')\\</script\\>" in markdown


def test_markdown_has_no_html_entities_or_line_break_tags(tmp_path):
    checks = [*CHECKS, {"name": "improvement_note", "status": "pass", "passed": True,
                        "message": "loss > champion & base\nsecond line", "details": {}}]
    write_report(tmp_path, _inputs(verdict={"passed": False, "checks": checks}))
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "&gt;" not in markdown and "&lt;" not in markdown and "&amp;" not in markdown and "<br>" not in markdown
    assert "loss \\> champion \\& base second line" in markdown


def test_a_check_skipped_for_want_of_data_says_skipped_and_one_switched_off_says_off(tmp_path):
    checks = [*CHECKS[:5], {"name": "servable", "status": "off", "passed": True,
                            "message": "skipped: the worker ran no probe (spec probe.enabled: false)", "details": {}}]
    write_report(tmp_path, _inputs(verdict={"passed": False, "checks": checks}))
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| servable | skipped | skipped: the worker ran no probe" in markdown
    assert "| forgetting | off | switched off" in markdown
    assert '<tr class="status-skipped"><td>servable</td>' in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_a_resumed_attempt_says_from_which_step_it_resumed(tmp_path):
    result = {**RESULT, "train": {**RESULT["train"], "resumed_from_step": 64}}
    write_report(tmp_path, _inputs(result=result, attempt=2))
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Attempt 2 of this cycle: resumed from step 64 of the checkpoint attempt 1 saved" in markdown
    write_report(tmp_path / "first", _inputs())
    assert "Attempt" not in (tmp_path / "first" / "report.md").read_text(encoding="utf-8")


def test_markdown_links_the_plots_beside_it_and_keeps_table_rows_whole(report):
    _, _, markdown = report
    assert "](loss_curves.png)" in markdown and "](slices.png)" in markdown and "data:" not in markdown
    golden_row = next(line for line in markdown.splitlines() if line.startswith("| no-code |"))
    assert len(re.findall(r"(?<!\\)\|", golden_row)) == 7  # six cells: the answer's "|" is escaped
    assert "(no champion answer)" in golden_row


def test_the_slice_plot_has_one_bar_per_slice_plus_the_overall_row(report):
    _, _, markdown = report
    verdict = {"passed": False, "checks": CHECKS}
    fig = slices_figure(verdict, "champion")
    ax = fig.axes[0]
    labels = [label.get_text() for label in ax.get_yticklabels()]
    assert labels == ["overall vs champion", "billing", "shipping", "returns"]
    assert len(ax.patches) == 4
    assert [round(bar.get_width(), 6) for bar in ax.patches] == [-0.04, 0.11, -0.02, -0.1]
    colours = [bar.get_facecolor() for bar in ax.patches]
    assert colours[1] != colours[2] == colours[3]  # the failing slice stands out
    assert slice_rows(verdict)[0]["interval"] == [-0.071, -0.008]  # improvement turned into a delta
    for row in SLICES:
        assert f"| {row['category']} | {row['examples']} |" in markdown


def test_a_result_without_train_or_eval_still_renders_and_says_what_is_missing(tmp_path):
    verdict = {"passed": False, "checks": [
        {"name": "improvement", "status": "fail", "passed": False, "message": "no loss to compare with the base",
         "details": {"mode": "superiority", "reference": "base", "threshold": 0.0}},
        {"name": "slices", "status": "off", "passed": True,
         "message": "skipped: no per-example losses in the worker's result", "details": {"tolerance": 0.05}},
    ]}
    paths = write_report(tmp_path, _inputs(version=None, result={}, verdict=verdict, golden=[], reference="base"))
    assert [p.name for p in paths] == ["report.html", "report.md", "loss_curves.png"]
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    for text in (page, markdown):
        assert "Missing from this report" in text
        assert "no training summary in the worker&#x27;s result (train missing)" in page
        assert "(eval missing)" in text and "(not registered)" in text
        assert "No golden prompts were answered" in text
    assert "<td>slices</td><td>skipped</td>" in page  # as its message says
    assert (tmp_path / "loss_curves.png").read_bytes().startswith(PNG_SIGNATURE)


def test_partial_train_and_eval_name_each_missing_piece(tmp_path):
    # a malformed row ("bad row") no longer gets this far: contract.TrainResult rejects it when the result is read
    result = {"train": {"steps": 5, "loss_curve": [[1, float("nan")], [2, 2.5]]},
              "eval": {"trusted": {"candidate": {"loss": 2.4, "examples": 60}}}}
    write_report(tmp_path, _inputs(result=result, decision="awaiting_approval"))
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "AWAITING APPROVAL" in page
    assert "train.validation_curve missing or empty" in page
    assert "train.loss_curve" not in page  # one finite point is a curve
    assert "eval.trusted.champion missing" in page


def test_tags_are_a_table_without_the_json_blobs(report):
    _, page, markdown = report
    assert "<td>ticketune.snapshot_id</td><td>snap-0042</td>" in page
    assert "| ticketune.parent_champion | 3 |" in markdown
    for key in ("ticketune.gate", "ticketune.reasons", "ticketune.metrics"):
        assert key not in page and key not in markdown


def test_importing_the_module_loads_neither_matplotlib_nor_torch():
    code = ("import sys, daemon.gate.report; "
            "print(sorted(m for m in ('matplotlib', 'torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


def test_the_preference_check_shows_both_models_figures_and_the_pairs_that_moved_most(tmp_path):
    preference = {"name": "preference", "status": "fail", "passed": False, "message": "feedback accuracy 0.600",
                  "details": {"pairs": 30, "desirable": 10, "undesirable": 10, "candidate_accuracy": 0.6,
                              "reference_accuracy": 1.0, "candidate_pair_accuracy": 0.3333,
                              "reference_pair_accuracy": 1.0, "candidate_thumbs_auc": 1.0,
                              "reference_thumbs_auc": 1.0, "lower_bound": -0.52,
                              "shown": [{"ticket_id": "p7", "candidate_margin": -0.5, "reference_margin": 0.5}]}}
    write_report(tmp_path, _inputs(verdict={"passed": False, "checks": [*CHECKS, preference]}))
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Preference (held-out feedback)" in markdown
    assert "| pairs: sent answer over draft | 0.3333 | 1.0000 |" in markdown
    assert "| p7 | -0.5000 | 0.5000 |" in markdown
    write_report(tmp_path / "none", _inputs())
    assert "Preference" not in (tmp_path / "none" / "report.md").read_text(encoding="utf-8")
