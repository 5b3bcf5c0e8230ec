"""`ticketune run` as a process: ingest from a real broker, a scheduled cycle, metrics, health, the
admin API, and a graceful exit on SIGTERM."""

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml
from fixture_broker import produce
from http_helpers import http_call

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(body: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_run_ingests_trains_on_schedule_reports_metrics_and_stops_gracefully(
    tmp_path, broker, unique_topic, tiny_model_dir, mlflow_sqlite_uri
):
    from daemon.demo.samples import generate_tickets

    topic = unique_topic("svc")
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": broker.bootstrap_servers, "topic": topic, "dlq_topic": topic + ".dlq",
                  "group_id": "svc", "session_timeout_ms": 2000, "heartbeat_interval_ms": 500,
                  "max_poll_interval_ms": 10000, "poll_timeout_ms": 200},
        "store": {"path": "./store/examples.db"},
        "model": {"base": str(tiny_model_dir)},
        "training": {"epochs": 2, "learning_rate": 0.01, "max_seq_len": 256, "row_tokens": 1024,
                     "work_dir": "./cycles"},
        "schedule": {"interval_minutes": 0.1, "min_new_examples": 40, "misfire_grace_seconds": 30},
        "gate": {"min_eval_examples": 5, "profile": "demo"},
        "registry": {"tracking_uri": mlflow_sqlite_uri},
        "server": {"host": "127.0.0.1", "port": port, "admin_token": "t0ken"},
    }))
    tickets = generate_tickets(70, seed=11, start_id=70000)
    produce(broker.bootstrap_servers, topic, [(t["ticket_id"], t) for t in tickets] + [("junk", b"\xff\xfe")])

    proc = subprocess.Popen([sys.executable, "-m", "daemon.app.cli", "run", "--config", str(config)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "service.log", "wb"))
    try:
        deadline = time.monotonic() + 300
        body = ""
        while time.monotonic() < deadline:
            status, body = http_call(port, "/metrics")
            if metric(body, 'ticketune_cycles_total{verdict="promoted"}') >= 1:
                break
            assert proc.poll() is None, (tmp_path / "service.log").read_text()[-3000:]
            time.sleep(1)
        else:
            raise AssertionError("no promoted cycle within 300 s:\n" + (tmp_path / "service.log").read_text()[-3000:])

        assert metric(body, "ticketune_tickets_consumed_total") == 71
        assert metric(body, 'ticketune_dead_lettered_total{reason="invalid_utf8"}') == 1
        assert metric(body, "ticketune_champion_version") == 1
        assert metric(body, "ticketune_last_successful_cycle_timestamp_seconds") > time.time() - 600
        assert metric(body, "ticketune_consumer_lag_records") == 0
        assert http_call(port, "/healthz")[0] == 200
        assert http_call(port, "/readyz")[0] == 200
        assert http_call(port, "/v1/status")[0] == 401
        status, text = http_call(port, "/v1/status", token="t0ken")
        assert status == 200
        admin = json.loads(text)
        assert admin["champion_version"] == "1" and admin["pending_examples"] == 0
        assert "t0ken" not in text

        deadline = time.monotonic() + 60  # the next scheduled run finds too few new examples
        while metric(http_call(port, "/metrics")[1], 'ticketune_cycles_total{verdict="skipped"}') < 1:
            assert time.monotonic() < deadline, "the schedule did not run again"
            time.sleep(1)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (tmp_path / "service.log").read_text()
    assert "Traceback" not in log
    for ticket in tickets:
        requester = ticket["requester"]
        assert requester["email"] not in log and requester["name"] not in log
