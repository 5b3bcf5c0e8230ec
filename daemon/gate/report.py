"""The per-candidate report an operator opens from the MLflow UI: the decision and every gate check,
loss curves, per-slice deltas with their intervals, and the golden prompts' answers beside the
champion's. report.html is self-contained (PNGs as data URIs), report.md links the PNGs beside it.
Prompts and model answers pass the generic PII scrubber before they are written; matplotlib is
imported only while a report is drawn, so the service process stays light.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.ingest.privacy import Scrubber
from daemon.training.contract import TrainResult, TrainSummary, as_result

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Tags that hold the gate's, the metrics' and the reasons' JSON: the report shows them as sections.
JSON_TAGS = frozenset({"ticketune.gate", "ticketune.metrics", "ticketune.reasons"})
MAX_TAG_JSON_CHARS = 200  # any other tag value that is longer JSON than this is a blob, not a field
DPI = 100
EVAL_SETS = ("trusted", "batch_heldout", "general")
EVAL_LABELS = ("candidate", "champion", "base")
DECISIONS = {"promoted": "PROMOTED", "rejected": "REJECTED", "awaiting_approval": "AWAITING APPROVAL"}
STATUSES = ("pass", "fail", "off", "skipped")  # skipped: a check that is off because it had nothing to judge
_COLOURS = {"pass": "#4c72b0", "fail": "#c44e52", "overall": "#555555"}


@dataclass(frozen=True)
class ReportInputs:
    model_name: str
    version: str | None  # the model version, None when registration failed
    cycle_id: str
    decision: str  # "promoted" | "rejected" | "awaiting_approval"
    verdict: dict  # Verdict.to_dict()
    tags: dict[str, str]  # the version's metadata tags
    result: TrainResult  # the training worker's result.json (a plain dict is validated); any part may be missing
    reference: str  # "champion" or "base": what the candidate was compared with
    # [{"id", "prompt", "candidate", "reference" (the champion's or base's answer, None without one), "status",
    #   "failures": [str]}]
    golden: Sequence[dict] = ()
    # [{"id", "question", "agent", "candidate", "reference", "candidate_similarity", "reference_similarity"}]
    samples: Sequence[dict] = ()
    attempt: int = 1  # the cycle's attempt; 2 and more resumed from the checkpoint the failed one left

    def __post_init__(self) -> None:
        object.__setattr__(self, "result", as_result(self.result))


@dataclass(frozen=True)
class _Heading:
    text: str


@dataclass(frozen=True)
class _Para:
    text: str
    missing: bool = False  # says what the report lacks, and why


@dataclass(frozen=True)
class _Table:
    headers: list[str]
    rows: list[list[str]]
    status_column: int | None = None  # rows are coloured by this column's pass/fail/off


@dataclass(frozen=True)
class _Image:
    filename: str
    alt: str
    png: bytes


def write_report(out_dir: Path, inputs: ReportInputs) -> list[Path]:
    """Writes report.html (self-contained: PNGs embedded as base64 data URIs, so MLflow's artifact
    viewer shows it), report.md (links the PNGs beside it), loss_curves.png, slices.png (when there
    are slices), and returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = [_Image("loss_curves.png", "training and validation loss per step",
                     _png(loss_curves_figure(inputs.result, inputs.reference)))]
    slices = slices_figure(inputs.verdict, inputs.reference)
    if slices is not None:
        images.append(_Image("slices.png", "per-slice loss delta with bootstrap intervals", _png(slices)))
    blocks, missing = _blocks(inputs, {image.filename: image for image in images})
    written = [out_dir / "report.html", out_dir / "report.md"]
    written[0].write_text(_to_html(inputs, blocks, missing), encoding="utf-8")
    written[1].write_text(_to_markdown(inputs, blocks, missing), encoding="utf-8")
    for image in images:
        path = out_dir / image.filename
        path.write_bytes(image.png)
        written.append(path)
    return written


def slice_rows(verdict: Mapping, reference: str = "reference") -> list[dict]:
    """What slices.png plots, top to bottom: the overall improvement (as a candidate − reference
    delta) when the gate measured one, then one row per judged slice, as the gate ordered them.
    Each row: label, delta, interval ([lo, hi] or None), colour key ("overall", "pass" or "fail")."""
    checks = {check.get("name"): check for check in verdict.get("checks") or []}
    slices = (checks.get("slices") or {}).get("details", {}).get("slices") or []
    if not slices:
        return []
    rows = []
    improvement = (checks.get("improvement") or {}).get("details", {})
    if _is_number(improvement.get("estimate")):
        interval = improvement.get("interval")
        rows.append({
            "label": f"overall vs {reference}",
            "delta": -float(improvement["estimate"]),
            "interval": [-float(interval[1]), -float(interval[0])] if _is_interval(interval) else None,
            "colour": "overall",
        })
    for row in slices:
        if not _is_number(row.get("delta")):
            continue
        interval = row.get("interval")
        rows.append({
            "label": str(row.get("category")),
            "delta": float(row["delta"]),
            "interval": [float(interval[0]), float(interval[1])] if _is_interval(interval) else None,
            "colour": "fail" if row.get("status") == "fail" else "pass",
        })
    return rows


def slices_figure(verdict: Mapping, reference: str) -> Figure | None:
    """Per-category delta (candidate − reference) as horizontal bars with their bootstrap interval,
    the tolerance dashed, failing slices in red; None when the gate judged no slice."""
    rows = slice_rows(verdict, reference)
    if not rows:
        return None
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(7, min(12.0, 1.4 + 0.32 * len(rows))), dpi=DPI)
    ax = fig.add_subplot()
    positions = list(range(len(rows)))
    deltas = [row["delta"] for row in rows]
    errors = [[max(0.0, row["delta"] - row["interval"][0]) if row["interval"] else 0.0 for row in rows],
              [max(0.0, row["interval"][1] - row["delta"]) if row["interval"] else 0.0 for row in rows]]
    ax.barh(positions, deltas, xerr=errors, color=[_COLOURS[row["colour"]] for row in rows],
            height=0.6, error_kw={"ecolor": "#222222", "capsize": 3, "lw": 1})
    ax.set_yticks(positions, [row["label"] for row in rows], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.0, color="#222222", lw=0.8)
    handles = [Patch(color=_COLOURS["pass"], label="slice within tolerance"),
               Patch(color=_COLOURS["fail"], label="slice past tolerance")]
    if rows[0]["colour"] == "overall":
        handles.insert(0, Patch(color=_COLOURS["overall"], label="overall (improvement check)"))
    checks = {check.get("name"): check for check in verdict.get("checks") or []}
    tolerance = checks["slices"].get("details", {}).get("tolerance")
    if _is_number(tolerance):
        handles.append(ax.axvline(float(tolerance), color=_COLOURS["fail"], ls="--", lw=1,
                                  label=f"tolerance +{float(tolerance):.3f}"))
    confidence = (checks.get("improvement") or {}).get("details", {}).get("confidence")
    bars = f"{float(confidence):.0%} bootstrap interval" if _is_number(confidence) else "bootstrap interval"
    ax.set_title(f"loss delta, candidate − {reference} (nats/token; error bars: {bars})", fontsize=9)
    ax.set_xlabel("delta (lower is better)", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def loss_curves_figure(result: TrainResult, reference: str) -> Figure:
    """Training and validation loss per step, the best step, and the candidate's and reference's
    loss on the trusted eval set; a note in the plot where the result has no curve."""
    from matplotlib.figure import Figure

    train = result.train or TrainSummary()
    training = _points(train.loss_curve)
    validation = _points(train.validation_curve)
    fig = Figure(figsize=(7, 3.6), dpi=DPI)
    ax = fig.add_subplot()
    if training:
        ax.plot(*zip(*training, strict=True), color="#1f77b4", lw=1.2, label="training loss")
    if validation:
        ax.plot(*zip(*validation, strict=True), color="#ff7f0e", lw=1.2, marker="o", ms=3,
                label="validation loss")
    if _is_number(train.best_step):
        ax.axvline(float(train.best_step), color="#2ca02c", ls=":", lw=1.2, label=f"best step {train.best_step}")
    for label, colour in (("candidate", "#d62728"), (reference, "#7f7f7f")):
        loss = _trusted_loss(result, label)
        if loss is not None:
            ax.axhline(loss, color=colour, ls="--", lw=1, label=f"{label} on trusted set {loss:.4f}")
    if not training and not validation:
        ax.text(0.5, 0.5, "no training loss curve in the worker's result", transform=ax.transAxes,
                ha="center", va="center", fontsize=10, color="#8a5a00")
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("loss (nats/token)", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    ax.set_title("loss per step", fontsize=9)
    fig.tight_layout()
    return fig


def _png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _preference_blocks(check: Mapping | None, reference: str) -> list:
    """Feedback accuracy of both models, and the pairs whose margin (sent answer minus draft) moved most."""
    details = (check or {}).get("details") or {}
    if "candidate_accuracy" not in details:
        return []
    figures = [[name, _fmt(details.get(f"candidate_{key}")), _fmt(details.get(f"reference_{key}"))]
               for name, key in (("feedback accuracy", "accuracy"), ("pairs: sent answer over draft", "pair_accuracy"),
                                 ("thumbs: AUC good vs bad", "thumbs_auc"))]
    blocks: list = [_Heading("Preference (held-out feedback)"),
                    _Para(f"{_fmt(details.get('pairs'))} pairs, {_fmt(details.get('desirable'))} desirable and "
                          f"{_fmt(details.get('undesirable'))} undesirable answers; lower bound of candidate − "
                          f"{reference}: {_fmt(details.get('lower_bound'))}."),
                    _Table(["", "candidate", reference], figures)]
    shown = details.get("shown") or []
    if shown:
        blocks.append(_Table(["ticket", "candidate margin (nats/token)", f"{reference} margin"],
                             [[row.get("ticket_id"), _fmt(row.get("candidate_margin")),
                               _fmt(row.get("reference_margin"))] for row in shown]))
    return blocks


def _blocks(inputs: ReportInputs, images: dict[str, _Image]) -> tuple[list, list[str]]:
    """The report's content, once, for both renderers; and the list of what is missing."""
    scrubber = Scrubber({}, {}, {})  # no ticket here: the generic patterns (emails, phones, cards, ...)
    missing: list[str] = []
    blocks: list = []
    checks = [check for check in inputs.verdict.get("checks") or [] if isinstance(check, Mapping)]
    by_name = {check.get("name"): check for check in checks}

    blocks.append(_Heading("Gate checks"))
    if checks:
        blocks.append(_Table(["check", "status", "message", "numbers"], [
            [str(check.get("name")), _shown_status(check), str(check.get("message", "")),
             _scalar_details(check.get("details") or {}, scrubber)] for check in checks
        ], status_column=1))
    else:
        missing.append("the gate's verdict has no checks")
        blocks.append(_Para("The gate's verdict has no checks.", missing=True))

    blocks.extend(_improvement_blocks(by_name.get("improvement"), inputs.reference))
    blocks.extend(_slice_blocks(by_name.get("slices"), inputs.reference, images.get("slices.png")))
    blocks.extend(_preference_blocks(by_name.get("preference"), inputs.reference))
    blocks.extend(_training_blocks(inputs.result, images["loss_curves.png"], missing, inputs.attempt))
    blocks.extend(_eval_blocks(inputs.result, inputs.reference, missing))
    blocks.extend(_golden_blocks(inputs.golden, inputs.reference, scrubber))
    blocks.extend(_sample_blocks(inputs.samples, inputs.reference, scrubber))

    blocks.append(_Heading("Metadata"))
    rows = [[key, str(value)] for key, value in sorted(inputs.tags.items()) if not _is_json_blob(key, value)]
    blocks.append(_Table(["tag", "value"], rows) if rows else _Para("No tags were given."))
    return blocks, missing


def _improvement_blocks(check: Mapping | None, reference: str) -> list:
    if check is None:
        return []
    details = check.get("details") or {}
    if not _is_number(details.get("estimate")):
        return [_Heading("Improvement"), _Para(f"No improvement measured: {check.get('message', '')}")]
    interval = details.get("interval")
    rows = [
        ["candidate loss (nats/token)", _fmt(details.get("candidate_loss"))],
        [f"{reference} loss (nats/token)", _fmt(details.get("reference_loss"))],
        [f"improvement ({reference} − candidate)", _fmt(details.get("estimate"))],
        ["one-sided lower bound", _fmt(details.get("lower_bound"))],
        ["interval", _fmt(interval) if _is_interval(interval) else "—"],
        ["confidence", _fmt(details.get("confidence"))],
        ["threshold", _fmt(details.get("threshold"))],
        ["mode", _fmt(details.get("mode"))],
        ["paired examples", _fmt(details.get("examples"))],
        ["judged on", _fmt(details.get("bound"))],
    ]
    return [_Heading("Improvement"), _Table(["", "value"], rows)]


def _slice_blocks(check: Mapping | None, reference: str, image: _Image | None) -> list:
    if check is None:
        return []
    details = check.get("details") or {}
    blocks: list = [_Heading("Slices")]
    slices = details.get("slices") or []
    if not slices:
        blocks.append(_Para(f"No slice was judged: {check.get('message', '')}"))
    else:
        blocks.append(_Para(f"Delta is candidate − {reference} loss (nats/token); a slice fails past "
                            f"+{_fmt(details.get('tolerance'))}."))
        if image is not None:
            blocks.append(image)
        blocks.append(_Table(
            ["category", "examples", "candidate loss", f"{reference} loss", "delta", "interval", "status"],
            [[str(row.get("category")), _fmt(row.get("examples")), _fmt(row.get("candidate_loss")),
              _fmt(row.get("reference_loss")), _fmt(row.get("delta")), _fmt(row.get("interval")),
              str(row.get("status"))] for row in slices],
            status_column=6,
        ))
    if details.get("slices_omitted"):
        blocks.append(_Para(f"{details['slices_omitted']} more slices were left out of the gate's verdict "
                            f"(kept to the tag size limit; the best ones go first).", missing=True))
    skipped = details.get("skipped") or []
    if skipped:
        blocks.append(_Para(f"Skipped, fewer than {_fmt(details.get('min_examples'))} examples: "
                            + ", ".join(f"{row.get('category')} ({row.get('examples')})" for row in skipped)))
    if details.get("uncategorised"):
        blocks.append(_Para(f"{details['uncategorised']} trusted examples have no category."))
    return blocks


def _shown_status(check: Mapping) -> str:
    """A check that is off because it had nothing to judge says `skipped`, as its message does."""
    status = str(check.get("status"))
    return "skipped" if status == "off" and str(check.get("message", "")).startswith("skipped") else status


def _training_blocks(result: TrainResult, image: _Image, missing: list[str], attempt: int = 1) -> list:
    blocks: list = [_Heading("Training")]
    train = result.train
    if attempt > 1:
        resumed = train.resumed_from_step if train is not None else None
        blocks.append(_Para(
            f"Attempt {attempt} of this cycle: resumed from step {resumed} of the checkpoint attempt {attempt - 1} "
            "saved before it failed (same snapshot and settings)." if resumed is not None else
            f"Attempt {attempt} of this cycle: attempt {attempt - 1} failed without a checkpoint to resume, so "
            "training started again from step 0 (same snapshot and settings)."))
    if train is None:
        note = "no training summary in the worker's result (train missing)"
        missing.append(note)
        return [*blocks, _Para(note[0].upper() + note[1:] + ".", missing=True), image]
    for key, what in (("loss_curve", "training loss curve"), ("validation_curve", "validation loss curve")):
        if not _points(getattr(train, key)):
            note = f"no {what} in the worker's result (train.{key} missing or empty)"
            missing.append(note)
            blocks.append(_Para(note[0].upper() + note[1:] + ".", missing=True))
    blocks.append(image)
    rows = [[key, _fmt(getattr(train, key))] for key in
            ("steps", "seconds", "tokens_per_second", "best_step", "stopped_by")]
    blocks.append(_Table(["", "value"], rows))
    return blocks


def _eval_blocks(result: TrainResult, reference: str, missing: list[str]) -> list:
    blocks: list = [_Heading("Evaluation")]
    evaluation = result.eval
    if not evaluation:
        note = "no evaluation in the worker's result (eval missing)"
        missing.append(note)
        return [*blocks, _Para(note[0].upper() + note[1:] + ".", missing=True)]
    for label in ("candidate", reference):
        if _trusted_loss(result, label) is None:
            note = f"no {label} loss on the trusted eval set (eval.trusted.{label} missing)"
            missing.append(note)
            blocks.append(_Para(note[0].upper() + note[1:] + ".", missing=True))
    names = [name for name in EVAL_SETS if name in evaluation] + sorted(set(evaluation) - set(EVAL_SETS))
    rows = []
    for name in names:
        scored = evaluation[name]
        labels = [label for label in EVAL_LABELS if label in scored] + sorted(set(scored) - set(EVAL_LABELS))
        for label in labels:
            entry = scored[label]
            rows.append([name, label, _fmt(entry.loss), _fmt(entry.examples), _fmt(entry.tokens)])
    if rows:
        blocks.append(_Table(["set", "model", "loss (nats/token)", "examples", "tokens"], rows))
    return blocks


def _golden_blocks(golden: Sequence[Mapping], reference: str, scrubber: Scrubber) -> list:
    blocks: list = [_Heading("Golden prompts")]
    if not golden:
        return [*blocks, _Para("No golden prompts were answered in this cycle.")]

    def clean(text: object) -> str:
        return "—" if text is None else scrubber.scrub(str(text))

    rows = [[clean(item.get("id")), clean(item.get("prompt")), clean(item.get("candidate")),
             f"(no {reference} answer)" if item.get("reference") is None else clean(item.get("reference")),
             str(item.get("status")), "\n".join(clean(f) for f in item.get("failures") or [])]
            for item in golden]
    blocks.append(_Table(["id", "prompt", "candidate answer", f"{reference} answer", "status", "failures"], rows,
                         status_column=4))
    return blocks


def _sample_blocks(samples: Sequence[Mapping], reference: str, scrubber: Scrubber) -> list:
    """Sampled trusted questions: the agent's real answer, the candidate's and the reference's, with each
    one's similarity to the agent's (the answers check)."""
    if not samples:
        return []

    def clean(text: object) -> str:
        return "—" if text is None else scrubber.scrub(str(text))

    def score(value: object) -> str:
        return f"{value:.3f}" if _is_number(value) else "—"

    rows = [[clean(item.get("question")), clean(item.get("agent")), clean(item.get("candidate")),
             score(item.get("candidate_similarity")), clean(item.get("reference")),
             score(item.get("reference_similarity"))] for item in samples]
    return [_Heading("Answers to sampled trusted questions"),
            _Para(f"Greedy answers of the candidate and the {reference} beside the agent's real answer, with each "
                  "answer's cosine similarity to it (sentence embeddings); the answers check compares the means."),
            _Table(["question", "agent's answer", "candidate", "similarity", reference, "similarity"], rows)]


def _to_html(inputs: ReportInputs, blocks: list, missing: list[str]) -> str:
    esc = html.escape
    decision = DECISIONS.get(inputs.decision, inputs.decision.upper())
    css_class = inputs.decision if inputs.decision in DECISIONS else "other"
    out = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(inputs.model_name)} {esc(_version(inputs.version))}: {esc(decision)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{esc(inputs.model_name)} {esc(_version(inputs.version))}</h1>",
        f'<div class="decision {css_class}">{esc(decision)}</div>',
        f"<p>cycle {esc(inputs.cycle_id)}, compared with the {esc(inputs.reference)}</p>",
    ]
    if missing:
        out.append('<div class="missing"><strong>Missing from this report:</strong><ul>')
        out.extend(f"<li>{esc(note)}</li>" for note in missing)
        out.append("</ul></div>")
    for block in blocks:
        if isinstance(block, _Heading):
            out.append(f"<h2>{esc(block.text)}</h2>")
        elif isinstance(block, _Para):
            out.append(f'<p class="missing">{esc(block.text)}</p>' if block.missing else f"<p>{esc(block.text)}</p>")
        elif isinstance(block, _Image):
            data = base64.b64encode(block.png).decode("ascii")
            out.append(f'<p><img alt="{esc(block.alt)}" src="data:image/png;base64,{data}"></p>')
        else:
            out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in block.headers) + "</tr>")
            for row in block.rows:
                status = row[block.status_column] if block.status_column is not None else ""
                row_class = f' class="status-{status}"' if status in STATUSES else ""
                out.append(f"<tr{row_class}>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>")
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _to_markdown(inputs: ReportInputs, blocks: list, missing: list[str]) -> str:
    decision = DECISIONS.get(inputs.decision, inputs.decision.upper())
    out = [f"# {_md(inputs.model_name)} {_md(_version(inputs.version))}: **{_md(decision)}**", "",
           f"cycle {_md(inputs.cycle_id)}, compared with the {_md(inputs.reference)}", ""]
    if missing:
        out += ["**Missing from this report:**", "", *(f"- {_md(note)}" for note in missing), ""]
    for block in blocks:
        if isinstance(block, _Heading):
            out += [f"## {_md(block.text)}", ""]
        elif isinstance(block, _Para):
            out += [f"_{_md(block.text)}_" if block.missing else _md(block.text), ""]
        elif isinstance(block, _Image):
            out += [f"![{_md(block.alt)}]({block.filename})", ""]
        else:
            out.append("| " + " | ".join(_md(h) for h in block.headers) + " |")
            out.append("|" + "---|" * len(block.headers))
            out.extend("| " + " | ".join(_md(cell) for cell in row) + " |" for row in block.rows)
            out.append("")
    return "\n".join(out)


def _md(text: str) -> str:
    """Markdown renderers pass raw HTML through, so <, > and & are backslash-escaped (shown as typed,
    and readable in the file); a pipe would split a table cell and a line break end the row."""
    for char in "\\<>&|":
        text = text.replace(char, "\\" + char)
    return " ".join(text.split("\n")).replace("\r", "")


def _version(version: str | None) -> str:
    return f"version {version}" if version is not None else "(not registered)"


def _scalar_details(details: Mapping, scrubber: Scrubber) -> str:
    """The check's numbers in one line: scalars and short number lists; row lists are their own sections."""
    parts = []
    for key, value in details.items():
        if isinstance(value, (bool, int, float)) or _is_interval(value):
            parts.append(f"{key}={_fmt(value)}")
        elif isinstance(value, str) and len(value) <= 80:
            parts.append(f"{key}={scrubber.scrub(value)}")
        elif isinstance(value, list) and value:
            parts.append(f"{key}: {len(value)}")
    return ", ".join(parts)


def _fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e6 else f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_interval(value: object) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value)


def _points(curve: object) -> list[tuple[float, float]]:
    """[step, loss] pairs with finite numbers; anything else (a diverged NaN, a malformed row) is left out."""
    if not isinstance(curve, (list, tuple)):
        return []
    return [(float(p[0]), float(p[1])) for p in curve if _is_interval(p)]


def _trusted_loss(result: TrainResult, label: str) -> float | None:
    loss = result.loss("trusted", label)
    return float(loss) if _is_number(loss) else None


def _is_json_blob(key: str, value: object) -> bool:
    if key in JSON_TAGS:
        return True
    text = str(value).strip()
    if len(text) <= MAX_TAG_JSON_CHARS or text[:1] not in "[{":
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


_CSS = (
    "body{font-family:system-ui,-apple-system,sans-serif;margin:24px;max-width:1280px;color:#222}"
    "table{border-collapse:collapse;margin:8px 0 16px}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;white-space:pre-wrap}"
    "th{background:#f4f4f4}"
    ".decision{font-size:2.6em;font-weight:bold;margin:8px 0}"
    ".promoted{color:#1a7f37}.rejected{color:#c0392b}.awaiting_approval{color:#b7791f}.other{color:#555}"
    ".status-pass td{background:#eef7f0}.status-fail td{background:#fdecea}.status-off td{background:#f2f2f2}"
    ".status-skipped td{background:#f2f2f2}"
    ".missing{color:#8a5a00}"
    "img{max-width:100%}"
)
