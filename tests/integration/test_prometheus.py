"""A real Prometheus server (Debian's `prometheus` package) scrapes a running `ticketune run` with the
shipped alert rules: the key series arrive, and a planted condition (a producer sending garbage) fires
the dead-letter alert. The rules are deploy/prometheus/ticketune-rules.yaml with their windows and
`for:` durations shortened to seconds, nothing else changed (slow suite)."""

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from fixture_broker import produce
from http_helpers import http_call

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy/prometheus/ticketune-rules.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_rules(path: Path) -> Path:
    """The shipped rules with every range and offset at 20 s and every `for:` at 0 s."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\[\d+[smhd]\]", "[20s]", rule["expr"])
            rule["expr"] = re.sub(r"offset \d+[smhd]", "offset 20s", rule["expr"])
            if "for" in rule:
                rule["for"] = "0s"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def query(port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        answer = json.load(resp)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def alerts(port: int) -> dict[str, str]:
    """alertname → state (pending or firing) of the server's active alerts."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=5) as resp:
        active = json.load(resp)["data"]["alerts"]
    return {a["labels"]["alertname"]: a["state"] for a in active}


def wait_for(condition, timeout: float, what: str, logs: list[Path]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.5)
    tails = "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in logs if log.exists())
    raise AssertionError(f"{what} within {timeout} s\n{tails}")


@pytest.mark.slow
def test_prometheus_scrapes_the_service_and_fires_the_dead_letter_alert(
    tmp_path, broker, unique_topic, mlflow_sqlite_uri
):
    if shutil.which("prometheus") is None:
        pytest.fail("the prometheus server is missing: apt-get install --no-install-recommends prometheus")
    from daemon.demo.samples import generate_tickets

    topic = unique_topic("prom")
    service_port, prometheus_port = free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": broker.bootstrap_servers, "topic": topic, "dlq_topic": topic + ".dlq",
                  "group_id": "prom", "session_timeout_ms": 2000, "heartbeat_interval_ms": 500,
                  "max_poll_interval_ms": 10000, "poll_timeout_ms": 200},
        "store": {"path": "./store/examples.db"},
        "schedule": {"enabled": False},  # no cycle: no model, no training, a quick test
        "registry": {"tracking_uri": mlflow_sqlite_uri, "poll_seconds": 0},
        "server": {"host": "127.0.0.1", "port": service_port},
    }))
    tickets = generate_tickets(20, seed=5, start_id=81000)
    produce(broker.bootstrap_servers, topic, [(t["ticket_id"], t) for t in tickets])
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(short_rules(tmp_path / "rules.yaml"))],
        "scrape_configs": [{"job_name": "ticketune", "static_configs": [{"targets": [f"127.0.0.1:{service_port}"]}]}],
    }))
    service_log, prometheus_log = tmp_path / "service.log", tmp_path / "prometheus.log"
    logs = [service_log, prometheus_log]

    service = subprocess.Popen([sys.executable, "-m", "daemon.app.cli", "run", "--config", str(config)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=open(service_log, "wb"))
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=open(prometheus_log, "wb"))
    try:
        wait_for(lambda: http_call(prometheus_port, "/-/ready")[0] == 200, 60, "Prometheus is not ready", logs)

        def value(promql: str) -> float | None:
            result = query(prometheus_port, promql)
            return float(result[0]["value"][1]) if result else None

        wait_for(lambda: value('up{job="ticketune"}') == 1, 90, "the service's target is not up", logs)
        wait_for(lambda: (value("ticketune_tickets_consumed_total") or 0) >= 20, 90,
                 "the consumed tickets did not arrive in Prometheus", logs)
        assert value("ticketune_kafka_up") == 1
        assert value("ticketune_consumer_lag_records") == 0
        assert value("ticketune_examples_stored_total") > 0
        assert value("ticketune_last_successful_cycle_timestamp_seconds") == 0  # no cycle ran
        assert value('process_start_time_seconds{job="ticketune"}') > 0  # TicketuneNoSuccessfulCycle needs it
        # no cycle ran: every verdict's series exists from the start at 0, so the rules see 0, not nothing
        # (increase() needs two scrapes of a series, and the rule an evaluation after them: waited for)
        def recorded() -> dict[str, float]:
            return {r["metric"].get("verdict"): float(r["value"][1])
                    for r in query(prometheus_port, "ticketune:cycles_by_verdict:increase6h")}

        wait_for(lambda: {"promoted", "rejected", "failed"} <= set(recorded()), 30,
                 "the verdicts' recorded increase", logs)
        assert set(recorded().values()) == {0.0}, recorded()

        def settled() -> bool:  # with `for: 0s` these two may fire before the first scrape, then resolve
            return not {"TicketuneDown", "TicketuneKafkaUnreachable"} & set(alerts(prometheus_port))

        wait_for(settled, 30, "TicketuneDown or TicketuneKafkaUnreachable stays active", logs)
        healthy = alerts(prometheus_port)
        assert "TicketuneDeadLetterRateHigh" not in healthy, healthy

        def garbage_until_the_alert_fires() -> bool:  # a producer that sends undecodable bytes, steadily
            produce(broker.bootstrap_servers, topic, [("junk", b"\xff\xfe")])
            return alerts(prometheus_port).get("TicketuneDeadLetterRateHigh") == "firing"

        wait_for(garbage_until_the_alert_fires, 90, "TicketuneDeadLetterRateHigh did not fire", logs)
        assert value('ticketune_dead_lettered_total{reason="invalid_utf8"}') >= 1
        assert "TicketuneDown" not in alerts(prometheus_port)
    finally:
        for process in (prometheus, service):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    assert service.returncode == 0, service_log.read_text()[-3000:]
