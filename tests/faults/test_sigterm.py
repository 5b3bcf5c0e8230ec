"""Fault suite, issue 7 item 5 (first half): SIGTERM to a real `ticketune run` in the middle of a cycle.

tests/integration/test_shutdown.py checks the shutdown itself (exit within the budget, offsets
committed, the cycle failed and retryable with its checkpoint). This file takes the fault suite's
angle: SIGTERM at several points of a cycle (quick: during training; full: also during the worker's
evaluation and during the registration in MLflow), then the state left behind is checked (the store's
integrity and contents unchanged, no version left `registering` once the service has started again,
the champion alias as the store's audit log says) and the recovery: the restarted service retries
the cycle to a verdict and ingest carries on from the committed offsets, every valid ticket stored
exactly once, nothing redelivered.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from fixture_broker import produce
from harness import (
    ServiceProcess,
    committed_offsets,
    integrity_check,
    kafka_section,
    lines_matching,
    pick,
    record_figures,
    reference_ids,
    store_count,
    stored_ticket_ids,
    wait_for,
    write_config,
)

from daemon.demo.samples import generate_tickets

POINTS = pick(["training"], ["training", "evaluation", "registration"])
BUDGET_S = 30.0  # server.shutdown_budget_seconds (write_config's default)
MODEL_NAME = "faults-sigterm"
MAX_STEPS = 240  # about 10 s on the tiny model at 5,000 tokens/s: time to be caught mid-training
FIRST, LATER = 60, 20  # tickets before the cycle, tickets after the restart (under min_new_examples)
MIN_NEW = 30
VERDICTS = ("promoted", "rejected", "awaiting_approval")


def store_rows(store: Path, sql: str, args: tuple = ()) -> list[dict]:
    con = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, args)]
    finally:
        con.close()


def examples_digest(store: Path) -> list[tuple]:
    """Every example row that matters for training (not the batch mark, which a verdict sets)."""
    return [tuple(r.values()) for r in store_rows(
        store, "SELECT ticket_id, revision, example_json, split FROM examples ORDER BY ticket_id")]


def mlflow_versions(mlflow_uri: str) -> list[dict]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    return [{"version": str(v.version), "tags": dict(v.tags)}
            for v in client.search_model_versions(f"name = '{MODEL_NAME}'")]


def mlflow_champion(mlflow_uri: str) -> str | None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        version = MlflowClient(tracking_uri=mlflow_uri).get_model_version_by_alias(MODEL_NAME, "champion").version
        return str(version)
    except MlflowException:
        return None


def registering_in_mlflow_db(mlflow_db: Path) -> bool:
    """A version tagged `registering` right now (read straight from MLflow's sqlite store, cheaply)."""
    if not mlflow_db.exists():
        return False
    try:
        con = sqlite3.connect(f"file:{mlflow_db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT 1 FROM model_version_tags WHERE key = 'ticketune.state'"
                               " AND value = 'registering' LIMIT 1").fetchone() is not None
        finally:
            con.close()
    except sqlite3.OperationalError:
        return False


def progress_phase(cycles: Path) -> str | None:
    for path in cycles.glob("c-*/out/progress.json"):
        try:
            return json.loads(path.read_text()).get("phase")
        except (OSError, ValueError):
            return None
    return None


class Watcher:
    """Polls, in a thread, for the moment the cycle reaches `point`, and sends SIGTERM right then;
    a thread so that short phases (a second or two of evaluation) are caught between polls of 20 ms."""

    def __init__(self, service: ServiceProcess, point: str, cycles: Path, mlflow_db: Path) -> None:
        self.service, self.point, self.cycles, self.mlflow_db = service, point, cycles, mlflow_db
        self.signalled_at: float | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def reached(self) -> bool:
        if self.point == "training":
            return self.service.metric("ticketune_training_step") >= 3
        if self.point == "evaluation":
            return progress_phase(self.cycles) == "evaluate"
        return registering_in_mlflow_db(self.mlflow_db)

    def run(self) -> None:
        deadline = time.monotonic() + 420
        try:
            while time.monotonic() < deadline and self.service.alive():
                if self.reached():
                    self.signalled_at = time.monotonic()
                    self.service.proc.send_signal(signal.SIGTERM)
                    return
                time.sleep(0.02 if self.point != "training" else 0.1)
        finally:
            self.done.set()


@pytest.mark.parametrize("point", POINTS)
def test_sigterm_mid_cycle_corrupts_nothing_and_the_restart_recovers(
    point, tmp_path, broker, unique_topic, tiny_model_dir, mlflow_sqlite_uri
):
    topic = unique_topic("sigterm")
    group = f"sigterm-{point}"
    sections = {
        "kafka": kafka_section(broker.bootstrap_servers, topic, group),
        "model": {"base": str(tiny_model_dir)},
        # enough steps to be caught training, few enough that the retry ends soon; the checkpoint is
        # the one the worker writes on SIGTERM
        "training": {"epochs": 200, "max_steps": MAX_STEPS, "learning_rate": 0.01, "max_seq_len": 256,
                     "row_tokens": 256, "checkpoint_every_steps": 1000, "work_dir": "./cycles",
                     "replay_fraction": 0.0},
        "schedule": {"enabled": True, "interval_minutes": 0.05, "min_new_examples": MIN_NEW,
                     "misfire_grace_seconds": 30},
        "gate": {"min_eval_examples": 5, "profile": "demo", "bootstrap_samples": 200},
        "registry": {"tracking_uri": mlflow_sqlite_uri, "model_name": MODEL_NAME, "poll_seconds": 0},
    }
    config = write_config(tmp_path / "config.yaml", sections)
    mlflow_db = Path(mlflow_sqlite_uri.removeprefix("sqlite:///"))
    cycles = tmp_path / "cycles"
    first = generate_tickets(FIRST, seed=11, start_id=710000)
    later = generate_tickets(LATER, seed=12, start_id=720000)
    (tmp_path / "ref-first").mkdir()
    (tmp_path / "ref-all").mkdir()
    # the later tickets are deduplicated against the first ones: a reference of both, in that order
    expected_first = reference_ids(config, first, tmp_path / "ref-first")
    expected_later = reference_ids(config, first + later, tmp_path / "ref-all") - expected_first
    assert len(expected_first) >= MIN_NEW, "too few valid tickets for the cycle to start"
    # the cycle starts only once every first ticket is stored (a tick while the batch streams in would train on
    # part of it and finish before a watcher started afterwards could catch it); the later ones stay under it
    sections["schedule"]["min_new_examples"] = len(expected_first)
    assert len(expected_later) < len(expected_first)
    config = write_config(tmp_path / "config.yaml", sections)
    # one partition: the service reads in the order produced, as the reference ingest does (which of two
    # near-duplicates is kept depends on the order), and the committed offset is a prefix of the tickets
    broker.create_topics([topic], partitions=1)
    produce(broker.bootstrap_servers, topic, [(t["ticket_id"], t) for t in first])

    service = ServiceProcess(config)
    with service:
        service.start()
        service.wait_healthy()
        # watching from the start: the cycle may begin the moment the last first ticket is stored
        watcher = Watcher(service, point, cycles, mlflow_db)
        watcher.thread.start()
        wait_for(lambda: store_count(service.store_path) == len(expected_first), 90, "the first tickets stored",
                 on_timeout=service.log_tail)
        before = examples_digest(service.store_path)  # no cycle writes examples: the same before and after
        watcher.done.wait(480)
        assert watcher.signalled_at is not None, f"the cycle never reached {point}:\n{service.log_tail()}"
        code = service.proc.wait(timeout=BUDGET_S + 30)
        exit_s = time.monotonic() - watcher.signalled_at
        assert code == 0, f"exit code {code} after SIGTERM during {point}:\n{service.log_tail()}"
        assert exit_s < BUDGET_S, f"{exit_s:.1f} s to exit after SIGTERM (budget {BUDGET_S} s)"

        # what the interrupted service left: an intact store with the same examples, offsets for all of them
        assert integrity_check(service.store_path) == "ok"
        assert store_rows(service.store_path, "PRAGMA foreign_key_check") == []
        assert examples_digest(service.store_path) == before, "the store's examples changed under SIGTERM"
        assert set(stored_ticket_ids(service.store_path)) == expected_first
        assert committed_offsets(broker.bootstrap_servers, group, topic) == FIRST
        # a schedule tick before the batch was in is a recorded skip: the interrupted cycle is the one that ran
        interrupted = store_rows(service.store_path, "SELECT * FROM cycles WHERE verdict IS NOT 'skipped' "
                                 "ORDER BY started_at DESC, rowid DESC")
        assert len(interrupted) == 1 and interrupted[0]["ended_at"] is not None, interrupted
        cycle_id = interrupted[0]["cycle_id"]
        first_verdict = interrupted[0]["verdict"]
        if point != "registration":  # the worker was stopped: a failed cycle that a retry may fix
            assert first_verdict == "failed" and interrupted[0]["retryable"] == 1, interrupted[0]
            assert "shutting down" in interrupted[0]["reasons_json"], interrupted[0]
        else:  # the registration ends within the budget: the verdict stands
            assert first_verdict in VERDICTS, interrupted[0]

        # the next start: reconcile, the retry to a verdict, and ingest from the committed offsets
        restarted = time.monotonic()
        service.start()
        service.wait_healthy()

        def verdict() -> dict | None:
            row = store_rows(service.store_path, "SELECT * FROM cycles WHERE cycle_id = ?", (cycle_id,))[0]
            return row if row["verdict"] in VERDICTS else None

        final = wait_for(verdict, 420, f"a verdict for cycle {cycle_id} after the restart",
                         interval_s=1.0, on_timeout=service.log_tail)
        recovery_s = time.monotonic() - restarted
        produce(broker.bootstrap_servers, topic, [(t["ticket_id"], t) for t in later])
        wait_for(lambda: service.metric("ticketune_tickets_consumed_total") >= LATER, 90,
                 "the later tickets consumed", on_timeout=service.log_tail)
        wait_for(lambda: set(stored_ticket_ids(service.store_path)) >= expected_later, 30, "the later tickets stored")
        time.sleep(2.0)  # a redelivery of the first tickets would show by now
        figures_metrics = service.metrics()
        assert figures_metrics.get("ticketune_tickets_consumed_total") == LATER, \
            "records consumed again after the restart: the offsets were not committed where they should be"
        assert figures_metrics.get('ticketune_tickets_skipped_total{reason="duplicate"}', 0.0) == 0.0
        wait_for(lambda: committed_offsets(broker.bootstrap_servers, group, topic) == FIRST + LATER, 30,
                 "the later offsets committed")
        assert service.terminate() == 0, service.log_tail()

    ids = stored_ticket_ids(service.store_path)
    assert len(ids) == len(set(ids)) and set(ids) == expected_first | expected_later
    assert integrity_check(service.store_path) == "ok"

    # the retry: same cycle, same snapshot; after a failure it ran as a second attempt
    if first_verdict == "failed":
        assert final["attempts"] == 2 and final["snapshot_id"] == interrupted[0]["snapshot_id"], final
        resumed = lines_matching(service.log_path, f"cycle {cycle_id}: attempt 2 on snapshot")
        assert resumed, "the restarted service did not resume the interrupted cycle"
    assert final["model_version"] is not None
    batch = store_rows(service.store_path, "SELECT * FROM batches WHERE model_version = ?", (final["model_version"],))
    snapshot = store_rows(service.store_path, "SELECT counts_json FROM snapshots WHERE id = ?", (final["snapshot_id"],))
    counts = json.loads(snapshot[0]["counts_json"])
    assert len(batch) == 1 and batch[0]["examples"] == counts["batch_train"] + counts["batch_eval"] > 0, (batch, counts)

    # MLflow: nothing left registering, and the champion is the one the store's audit log names
    versions = mlflow_versions(mlflow_sqlite_uri)
    assert versions and all(v["tags"].get("ticketune.state") in ("complete", "abandoned") for v in versions), versions
    assert [v for v in versions if v["tags"].get("ticketune.state") == "complete"], versions
    moves = store_rows(service.store_path, "SELECT * FROM champion_moves ORDER BY id")
    assert all(m["state"] != "pending" for m in moves), moves
    done = [m for m in moves if m["state"] == "done"]
    audit_champion = done[-1]["version"] if done else None
    assert mlflow_champion(mlflow_sqlite_uri) == audit_champion, (moves, versions)
    if final["verdict"] == "promoted":
        assert audit_champion == final["model_version"]

    record_figures(f"sigterm_{point}", {
        "sigterm_point": point,
        "exit_after_sigterm_s": round(exit_s, 1),
        "shutdown_budget_s": BUDGET_S,
        "first_verdict": first_verdict,
        "retry_attempts": final["attempts"],
        "retry_verdict": final["verdict"],
        "restart_to_verdict_s": round(recovery_s, 1),
        "examples_before_after": [len(before), len(before)],
        "integrity_check": "ok",
        "redelivered_after_restart": int(figures_metrics.get("ticketune_tickets_consumed_total", 0) - LATER),
        "versions_registering_after_restart": 0,
    })
