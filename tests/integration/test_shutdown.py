"""SIGTERM to a real `ticketune run` while its worker trains: out within the budget, offsets committed
for what was stored, the cycle failed and retryable with its checkpoint, no half-registered version."""

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml
from fixture_broker import produce
from http_helpers import http_call

REPO = Path(__file__).resolve().parents[2]
BUDGET_S = 45.0
MODEL_NAME = "shutdown-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(body: str, name: str) -> float:
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_sigterm_mid_training_exits_in_budget_with_offsets_committed_and_the_cycle_resumable(
    tmp_path, broker, unique_topic, tiny_model_dir, mlflow_sqlite_uri
):
    from kafka import KafkaAdminClient
    from mlflow.tracking import MlflowClient

    from daemon.demo.samples import generate_tickets

    topic = unique_topic("shutdown")
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": broker.bootstrap_servers, "topic": topic, "dlq_topic": topic + ".dlq",
                  "group_id": "shutdown", "session_timeout_ms": 2000, "heartbeat_interval_ms": 500,
                  "max_poll_interval_ms": 10000, "poll_timeout_ms": 200},
        "store": {"path": "./store/examples.db"},
        "model": {"base": str(tiny_model_dir)},
        "training": {"epochs": 500, "learning_rate": 0.01, "max_seq_len": 256, "row_tokens": 256,
                     "checkpoint_every_steps": 100000, "work_dir": "./cycles"},
        "schedule": {"interval_minutes": 0.05, "min_new_examples": 30, "misfire_grace_seconds": 30},
        "gate": {"min_eval_examples": 5, "profile": "demo"},
        "registry": {"tracking_uri": mlflow_sqlite_uri, "model_name": MODEL_NAME, "poll_seconds": 0},
        "server": {"host": "127.0.0.1", "port": port, "shutdown_budget_seconds": BUDGET_S},
        "log": {"format": "json"},
    }))
    tickets = generate_tickets(60, seed=5, start_id=90000)
    produce(broker.bootstrap_servers, topic, [(t["ticket_id"], t) for t in tickets])

    log_path = tmp_path / "service.log"
    proc = subprocess.Popen([sys.executable, "-m", "daemon.app.cli", "run", "--config", str(config)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"))
    try:
        deadline = time.monotonic() + 240
        while True:
            _, body = http_call(port, "/metrics")
            if metric(body, "ticketune_training_step") > 0:
                break
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no training step within 240 s:\n" + log_path.read_text()[-3000:]
            time.sleep(0.5)
        assert metric(body, "ticketune_cycle_running") == 1
        consumed = metric(body, "ticketune_tickets_consumed_total")
        assert consumed == len(tickets)

        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=BUDGET_S + 15)
        took = time.monotonic() - signalled
        print(f"\nticketune run exited {code} {took:.1f} s after SIGTERM (budget {BUDGET_S:.0f} s)")
        assert code == 0, log_path.read_text()[-3000:]
        assert took < BUDGET_S
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    log_lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert "Traceback" not in log_path.read_text()
    assert any("shutting down gracefully" in row["msg"] for row in log_lines)

    # the offsets committed for the group are everything that was consumed and stored
    db = sqlite3.connect(tmp_path / "store" / "examples.db")
    db.row_factory = sqlite3.Row
    stored = db.execute("SELECT COUNT(*) FROM examples").fetchone()[0]
    assert stored > 0
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        committed = admin.list_group_offsets("shutdown")["shutdown"]
    finally:
        admin.close()
    assert sum(meta.offset for tp, meta in committed.items() if tp.topic == topic) == consumed

    # the cycle is failed and retryable, and the worker's checkpoint is kept for the retry
    cycle = dict(db.execute("SELECT * FROM cycles ORDER BY started_at DESC LIMIT 1").fetchone())
    db.close()
    assert cycle["verdict"] == "failed" and cycle["retryable"] == 1, cycle
    assert "shutting down" in cycle["reasons_json"] and "checkpoint" in cycle["reasons_json"]
    checkpoints = tmp_path / "cycles" / cycle["cycle_id"] / "checkpoints"
    assert checkpoints.is_dir() and any(checkpoints.rglob("*")), "the worker's checkpoint is gone"
    assert any(row.get("cycle_id") == cycle["cycle_id"] for row in log_lines)  # the cycle's lines say which

    # no version is half-registered, and the cycle's MLflow run is not left running
    client = MlflowClient(tracking_uri=mlflow_sqlite_uri)
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
    assert all(v.tags.get("ticketune.state") == "complete" for v in versions), [v.tags for v in versions]
    experiment = client.get_experiment_by_name("ticketune")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    assert runs and all(run.info.status != "RUNNING" for run in runs), [run.info.status for run in runs]


def test_a_second_signal_forces_exit_and_a_slow_shutdown_is_cut_at_the_budget(tmp_path, monkeypatch):
    import daemon.app.service
    from daemon.app.service import Service
    from daemon.config import load_settings

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"store": {"path": "./examples.db"},
                                      "registry": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
                                      "server": {"shutdown_budget_seconds": 0.3}}))
    exits: list[int] = []
    monkeypatch.setattr(daemon.app.service.os, "_exit", exits.append)
    service = Service(load_settings(config, environ={}))
    try:
        service._handle_exit(signal.SIGTERM, None)
        assert service.stop.is_set() and exits == []
        time.sleep(1.0)  # nothing finished the shutdown: the budget's watchdog exits
        assert exits == [1]
        service._handle_exit(signal.SIGTERM, None)  # the second signal
        assert exits == [1, 1]
    finally:
        if service._watchdog is not None:
            service._watchdog.cancel()
        service.store.close()

