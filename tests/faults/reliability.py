"""Writes RELIABILITY.md from what the fault suite recorded: `make faults` runs the suite (full profile),
then this script. Usage: python tests/faults/reliability.py [--profile full] [--out RELIABILITY.md]."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# section → (title, what the test does to the service, in a sentence or two)
SECTIONS = {
    "crash_ingest": ("1. Crash during ingest (`test_crash_ingest.py`)",
                     "`kill -9` of the whole `ticketune run` process group at random points: while it works "
                     "through a backlog, and during start-up. Every life starts with a new backlog produced "
                     "while it was down. The store is then compared row by row with an uninterrupted "
                     "`ticketune ingest` of the same topic, and the dead-letter topic with the bad records."),
    "broker_outage": ("2. Broker outage (`test_broker_outage.py`)",
                      "The embedded broker is paused with SIGSTOP for longer than the consumer group's "
                      "session timeout, then resumed; records are produced before and right after. The "
                      "service must report the outage while it lasts (`ticketune_kafka_up` 0, `/readyz` "
                      "details), stay up, and recover without a restart."),
    "mlflow_outage": ("3. MLflow outage during a cycle (`test_mlflow_outage.py`)",
                      "A loopback proxy between the service and a real `mlflow server` cuts the connection at a "
                      "chosen request of a cycle."),
    "worker_death": ("4. Worker death (`test_worker_death.py`)",
                     "SIGKILL to the training child once it has written a checkpoint."),
    "sigterm": ("5a. SIGTERM mid-cycle (`test_sigterm.py`)",
                "SIGTERM to the service while a cycle trains (full profile: also while it evaluates and "
                "while it registers), then a restart."),
    "disk_full": ("5b. Disk full (`test_disk_full.py`)",
                  "The store on a small tmpfs filled up by a filler file (where mounting is allowed), and "
                  "under `store.max_size_mb` (SQLite's max_page_count) everywhere."),
    "bad_input": ("6. Bad input (`test_bad_input.py`)",
                  "Hypothesis properties: arbitrary bytes, arbitrary JSON, invalid UTF-8, deep nesting, huge "
                  "messages and every helpdesk format with fields removed or mistyped, into the six parsers "
                  "and the ingest loop (real store, real quality filter); then generated records through the "
                  "real broker and a real `ticketune ingest`."),
    "soak": ("7. Load (`test_soak.py`)",
             "After a warm-up (3,000 tickets and one whole cycle, so that what a first cycle loads once is in "
             "the baseline), tickets are produced as fast as the broker takes them into the running service, "
             "and a second cycle trains in its child process while they stream in; the service's RSS is "
             "sampled every second. The store is compared with an uninterrupted `ticketune ingest` of the "
             "same topic."),
    "security": ("8. Security (`test_security.py`)",
                 "The admin API without, with a wrong and with the right token; a run fed the labelled PII "
                 "corpus through the broker, then logs, metrics, MLflow params/tags and the report artifacts "
                 "scanned for every personal-data value; sentinel secrets in the config, then logs and "
                 "`status` scanned for them."),
}


def fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (list, dict)):
        return "`" + json.dumps(value, sort_keys=True).replace("|", "\\|") + "`"
    return str(value).replace("|", "\\|").replace("\n", " ")


def headline(figures: dict[str, dict]) -> list[tuple[str, str]]:
    """The figures the issue asks for, from wherever they were recorded."""
    def get(section: str, key: str) -> object:
        return figures.get(section, {}).get(key, "not recorded")

    lost = [figures[s][k] for s in figures for k in figures[s] if k in ("tickets_lost",)]
    broker = figures.get("bad_input", {}).get("broker", {})
    return [
        ("kills survived (kill -9 during ingest)", fmt(get("crash_ingest", "kills"))),
        ("generated bad-input cases (parsers and ingest)", fmt(get("bad_input", "cases_total"))),
        ("unhandled exceptions in them", fmt(get("bad_input", "unhandled_exceptions"))),
        ("bad-input records through the real broker",
         fmt(broker.get("records_produced", "not recorded") if isinstance(broker, dict) else broker)),
        ("tickets lost, over every test that counts them", fmt(sum(lost)) if lost else "not recorded"),
        ("soak: tickets through ingest while a cycle trained", fmt(get("soak", "soak_tickets"))),
        ("soak: service RSS after the warm-up cycle → at end (MB)",
         f"{fmt(get('soak', 'rss_mb_after_warmup_cycle'))} → {fmt(get('soak', 'rss_mb_at_end'))} "
         f"(drift {fmt(get('soak', 'rss_drift_mb'))} MB)"),
        ("soak: lag drained after the last record was produced (s)",
         fmt(get("soak", "lag_drain_seconds_after_last_produce"))),
        ("personal-data or secret values found in logs, metrics, MLflow, report", fmt(get("security", "leaks_found"))),
    ]


def test_outcomes(figures_dir: Path) -> list[tuple[str, str, float]]:
    """Each test's last outcome over the JUnit records (junit.xml, then any junit-rerun-*.xml)."""
    outcomes: dict[str, tuple[str, str, float]] = {}
    for junit in sorted(figures_dir.glob("junit*.xml"), key=lambda path: (path.name != "junit.xml", path.name)):
        for name, state, seconds in _outcomes_in(junit):
            earlier = outcomes.get(name)
            if earlier is not None and junit.name != "junit.xml":
                state = (f"{state} on a rerun (first run: {earlier[1]})" if not earlier[1].startswith("passed")
                         else f"{state} (and again on a rerun)")
            outcomes[name] = (name, state, seconds)
    return list(outcomes.values())


def _outcomes_in(junit: Path) -> list[tuple[str, str, float]]:
    outcomes = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        state = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                state = "FAILED"
            elif child.tag == "skipped":
                state = "skipped"
        outcomes.append((f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}", state,
                         float(case.get("time", 0))))
    return outcomes


def render(profile: str, figures_dir: Path) -> str:
    documents = {}
    for path in sorted(figures_dir.glob("*.json")):
        document = json.loads(path.read_text())
        documents[document["section"]] = document
    figures = {name: doc["figures"] for name, doc in documents.items()}
    outcomes = test_outcomes(figures_dir)
    failed = [name for name, state, _ in outcomes if not state.startswith("passed")]
    lines = [
        "# Reliability: faults, bad input and load",
        "",
        f"Produced by `make faults` (profile `{profile}`) on "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}: {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.system()} {platform.machine()}. Every test starts real "
        "processes (the service, the embedded Tansu broker, an MLflow server or store, the training worker) "
        "and checks the state they leave behind. `make test-slow` runs the same tests in the quick profile.",
        "",
        f"**Result: {len(outcomes) - len(failed)} of {len(outcomes)} tests passed"
        + (f"; not passed: {', '.join(failed)}**" if failed else "**") if outcomes else "**Result: no test record**",
        "",
        "## The figures asked for",
        "",
        "| figure | value |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in headline(figures)],
        "",
    ]
    def parts_of(section: str) -> list[str]:  # a test may record several parts: sigterm_training, ...
        return sorted(name for name in documents if name == section or name.startswith(section + "_"))

    known = {part for section in SECTIONS for part in parts_of(section)}
    for section in [*SECTIONS, *sorted(documents.keys() - known)]:
        title, what = SECTIONS.get(section, (section, ""))
        lines += [f"## {title}", ""]
        if what:
            lines += [what, ""]
        parts = parts_of(section) if section in SECTIONS else [section]
        if not parts:
            lines += ["_No figures recorded: the test did not get that far (see the result above)._", ""]
        for part in parts:
            label = f"`{part}`, recorded" if len(parts) > 1 else "Recorded"
            lines += [f"{label} {documents[part]['recorded_at']}.", "", "| figure | value |", "|---|---|"]
            lines += [f"| {key.replace('_', ' ')} | {fmt(value)} |" for key, value in sorted(figures[part].items())]
            lines.append("")
    if outcomes:
        lines += ["## Tests", "", "| test | result | seconds |", "|---|---|---|"]
        lines += [f"| `{name}` | {state} | {seconds:.0f} |" for name, state, seconds in outcomes]
        lines += ["", f"Total: {sum(s for _, _, s in outcomes) / 60:.1f} minutes.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="full", choices=["quick", "full"])
    parser.add_argument("--out", type=Path, default=REPO / "RELIABILITY.md")
    args = parser.parse_args()
    figures_dir = Path(os.environ.get("TICKETUNE_FAULTS_FIGURES", REPO / ".faults" / args.profile))
    if not figures_dir.is_dir():
        print(f"no figures in {figures_dir}: run the fault suite first", file=sys.stderr)
        return 1
    args.out.write_text(render(args.profile, figures_dir))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
