"""Issue 7, item 4: the training child of a real `ticketune run` is SIGKILLed mid-run.

The worker (a child of the service whose command line runs `daemon.training`) is killed as soon as it
has written a checkpoint. Then: the cycle is recorded `failed` and retryable with the kill in its
reason, its checkpoints are kept, the service keeps its pid and answers /healthz 200 throughout,
ingest goes on (tickets produced after the kill are stored), and the next cycle is a retry of the
same cycle (same id, attempt + 1) whose worker resumes from the checkpoint (its result says from
which step, its log says so) and reaches a verdict; the new tickets wait for the cycle after.
The full profile kills the retry too, so the third attempt resumes from the second one's checkpoint.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import time
from pathlib import Path

import psutil
from fixture_broker import produce
from harness import (
    LOSS_ONLY_GATE,
    HealthWatch,
    ServiceProcess,
    cycle_rows,
    kafka_section,
    pick,
    record_figures,
    store_count,
    trigger_cycle,
    wait_for,
    write_config,
)

TOKEN = "worker-death-token"
CYCLE_TIMEOUT_S = 240


def pending_examples(store_path: Path) -> int:
    con = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute("SELECT count(*) FROM examples WHERE batch_id IS NULL").fetchone()[0]
    finally:
        con.close()


def workers(service_pid: int) -> list[psutil.Process]:
    """The training children of the service (`python -m daemon.training train ...`)."""
    found = []
    for child in psutil.Process(service_pid).children(recursive=True):
        try:
            if "daemon.training" in child.cmdline():
                found.append(child)
        except psutil.Error:
            continue
    return found


def checkpoint_steps(cycle_dir: Path) -> list[int]:
    """The complete checkpoints (`step-<N>`; a partial one is `.partial-step-<N>`) of one cycle."""
    directory = cycle_dir / "checkpoints"
    if not directory.is_dir():
        return []
    steps = []
    for item in directory.iterdir():
        match = re.fullmatch(r"step-(\d+)", item.name)
        if match and (item / "state.json").exists():
            steps.append(int(match.group(1)))
    return sorted(steps)


def test_a_killed_worker_fails_the_cycle_and_the_retry_resumes_from_its_checkpoint(
    tmp_path, broker, unique_topic, tiny_model_dir, mlflow_server_uri
):
    from mlflow import MlflowClient

    from daemon.demo.samples import generate_tickets

    kills = pick(1, 2)
    model = f"worker-death-{unique_topic('m')}"
    topic = unique_topic("worker-death")
    config = write_config(tmp_path / "config.yaml", {
        "kafka": kafka_section(broker.bootstrap_servers, topic, "worker-death"),
        "model": {"base": str(tiny_model_dir)},
        "training": {"max_steps": 12, "learning_rate": 0.01, "max_seq_len": 256, "row_tokens": 512,
                     "eval_every_steps": 6, "checkpoint_every_steps": 2, "work_dir": "./cycles"},
        "schedule": {"enabled": False, "min_new_examples": 10},
        "gate": LOSS_ONLY_GATE,
        "registry": {"tracking_uri": mlflow_server_uri, "model_name": model, "poll_seconds": 5},
        "server": {"admin_token": TOKEN},
    })
    tickets = generate_tickets(60, seed=7, start_id=50000)
    produce(broker.bootstrap_servers, topic, [(t["ticket_id"], t) for t in tickets])
    figures: dict = {"kills": []}

    with ServiceProcess(config) as service:
        service.start()
        service.wait_healthy(90)
        pid = service.pid
        wait_for(lambda: store_count(service.store_path) >= 50, 60, "the first tickets stored",
                 on_timeout=service.log_tail)
        work_dir = tmp_path / "cycles"
        watch = HealthWatch(service)
        try:
            trigger_cycle(service.port, TOKEN)
            cycle_id = None
            for kill in range(kills):
                # the worker of this attempt, once it has written a checkpoint
                worker = wait_for(lambda: (workers(pid) or [None])[0], CYCLE_TIMEOUT_S, "the training worker",
                                  interval_s=0.1, on_timeout=service.log_tail)
                rows = cycle_rows(service.store_path)
                cycle_id = cycle_id or rows[-1]["cycle_id"]
                assert rows[-1]["cycle_id"] == cycle_id and rows[-1]["ended_at"] is None, rows[-1]
                attempt = rows[-1]["attempts"]
                cycle_dir = work_dir / cycle_id
                already = max(checkpoint_steps(cycle_dir), default=0)  # a retry starts with the earlier ones
                steps = wait_for(lambda d=cycle_dir, a=already: [s for s in checkpoint_steps(d) if s > a] or None,
                                 CYCLE_TIMEOUT_S, f"a new checkpoint of attempt {attempt}", interval_s=0.05,
                                 on_timeout=service.log_tail)
                assert worker.is_running(), "the worker ended before it could be killed"
                worker.send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
                checkpoint_at_kill = max(steps)
                try:
                    progress = json.loads((cycle_dir / "out" / "progress.json").read_text())
                except (OSError, ValueError):
                    progress = {}

                def failed(attempt: int = attempt) -> dict | None:
                    row = cycle_rows(service.store_path)[-1]
                    return row if row["ended_at"] and row["attempts"] == attempt else None

                row = wait_for(failed, 120, f"attempt {attempt} recorded as ended", on_timeout=service.log_tail)
                seconds_to_record = time.monotonic() - killed_at
                reasons = json.loads(row["reasons_json"] or "[]")
                assert row["verdict"] == "failed" and row["retryable"] == 1, row
                assert any("exit code -9" in reason for reason in reasons), reasons
                assert not workers(pid), "a training worker is still running after the failed cycle"
                kept = checkpoint_steps(cycle_dir)
                assert checkpoint_at_kill in kept, (checkpoint_at_kill, kept)
                assert service.alive() and service.pid == pid

                # ingest carries on while the cycle is failed
                before = store_count(service.store_path)
                more = generate_tickets(10, seed=100 + kill, start_id=60000 + 100 * kill)
                produce(broker.bootstrap_servers, topic, [(t["ticket_id"], t) for t in more])
                wait_for(lambda b=before: store_count(service.store_path) >= b + 8, 60,
                         "tickets produced after the kill stored", on_timeout=service.log_tail)
                figures["kills"].append({
                    "attempt": attempt, "progress_step_at_kill": progress.get("step"),
                    "checkpoint_step_at_kill": checkpoint_at_kill, "checkpoints_kept": kept,
                    "seconds_from_kill_to_failed_cycle": round(seconds_to_record, 1),
                    "failed_reason": reasons[-1][:160],
                    "tickets_stored_after_kill": store_count(service.store_path) - before,
                })
                trigger_cycle(service.port, TOKEN)  # the retry: the next attempt of the same cycle

            final_attempt = kills + 1

            def done() -> dict | None:
                row = cycle_rows(service.store_path)[-1]
                return row if row["ended_at"] and row["attempts"] == final_attempt else None

            final = wait_for(done, CYCLE_TIMEOUT_S, "the retry's verdict", on_timeout=service.log_tail)
        finally:
            watch.stop()
        assert not watch.died and watch.failures == 0, (watch.failures, watch.polls, service.log_tail())

        reasons = json.loads(final["reasons_json"] or "[]")
        assert final["cycle_id"] == cycle_id, (final, cycle_rows(service.store_path))
        assert final["verdict"] in ("promoted", "rejected"), reasons
        assert reasons[0] == f"resumes cycle {cycle_id} attempt {final_attempt}", reasons
        cycle_dir = work_dir / cycle_id
        result = json.loads((cycle_dir / "out" / "result.json").read_text())
        resumed_from = result["train"]["resumed_from_step"]
        # the newest checkpoint the killed attempt left (the progress file is throttled: it may lag behind)
        last_kill = figures["kills"][-1]
        assert resumed_from == max(last_kill["checkpoints_kept"]), (resumed_from, last_kill)
        assert resumed_from >= last_kill["checkpoint_step_at_kill"], (resumed_from, last_kill)
        assert result["train"]["steps"] == result["train"]["planned_steps"] or result["train"]["stopped_by"] != "steps"
        worker_log = (cycle_dir / "worker.log").read_text(errors="replace")
        assert re.search(rf"resumed from checkpoint step-0*{resumed_from} at step {resumed_from}\b", worker_log)
        assert not (cycle_dir / "checkpoints").exists(), "the checkpoints outlived the cycle's verdict"
        # the tickets that arrived after the kill were not trained on: they wait for the next cycle
        assert pending_examples(service.store_path) >= 8 * kills
        assert len(cycle_rows(service.store_path)) == 1

        client = MlflowClient(tracking_uri=mlflow_server_uri, registry_uri=mlflow_server_uri)
        versions = client.search_model_versions(f"name = '{model}'")
        assert [str(v.version) for v in versions] == [str(final["model_version"])], [v.version for v in versions]
        tags = versions[0].tags
        assert tags["ticketune.state"] == "complete" and tags["ticketune.attempt"] == str(final_attempt), tags
        assert tags["ticketune.cycle_id"] == cycle_id
        runs = client.search_runs([client.get_experiment_by_name("ticketune").experiment_id],
                                  filter_string=f"tags.`ticketune.cycle_id` = '{cycle_id}'")
        assert len(runs) == final_attempt and all(r.info.status != "RUNNING" for r in runs), \
            [(r.info.run_id, r.info.status) for r in runs]
        figures.update({
            "cycle_verdicts": [(r["cycle_id"], r["verdict"], r["attempts"]) for r in cycle_rows(service.store_path)],
            "retry_verdict": final["verdict"], "retry_attempt": final_attempt, "resumed_from_step": resumed_from,
            "planned_steps": result["train"]["planned_steps"], "steps_trained_by_retry":
                result["train"]["steps"] - resumed_from,
            "healthz_polls": watch.polls, "healthz_non_200": watch.failures, "service_pid_unchanged": True,
            "pending_after_retry": pending_examples(service.store_path),
        })
    record_figures("worker_death", figures)
