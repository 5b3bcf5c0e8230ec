"""The fault suite's tools: the profile (quick in `make test-slow`, full in `make faults`), the figures
each test records for RELIABILITY.md, a real `ticketune run` process, and readers of what it left.

Every test here starts real processes (the service, the embedded broker, an MLflow server) and
injects a real fault (SIGKILL, SIGSTOP, a cut connection, a full database), then checks the state
that the processes left behind, never their own word for it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
PROFILE = os.environ.get("TICKETUNE_FAULTS_PROFILE", "quick")
if PROFILE not in ("quick", "full"):
    raise SystemExit(f"TICKETUNE_FAULTS_PROFILE must be quick or full, not {PROFILE!r}")
FIGURES_DIR = Path(os.environ.get("TICKETUNE_FAULTS_FIGURES", REPO / ".faults" / PROFILE))


# The gate's loss checks only: no generation probe, no general-text pass (keeps a cycle near 30 s on a CPU).
LOSS_ONLY_GATE = {"min_eval_examples": 5, "profile": "demo", "check_behaviour": False, "check_servable": False,
                  "max_general_loss_increase": None, "bootstrap_samples": 200}


def pick(quick: Any, full: Any) -> Any:
    """The quick profile's value, or the full profile's under `make faults`."""
    return full if PROFILE == "full" else quick


def record_figures(section: str, figures: dict[str, Any]) -> None:
    """Writes one test's figures (a JSON file per section) for `tests/faults/reliability.py`."""
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    document = {"section": section, "profile": PROFILE,
                "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "figures": figures}
    (FIGURES_DIR / f"{section}.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2,
             on_timeout: Callable[[], str] | None = None) -> Any:
    """Polls `predicate` until it returns something truthy; fails naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = on_timeout() if on_timeout else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{extra}")
        time.sleep(interval_s)


def kafka_section(bootstrap_servers: str, topic: str, group_id: str, **more: Any) -> dict:
    """Short consumer-group timeouts, so that a restarted service rejoins within seconds."""
    return {"bootstrap_servers": bootstrap_servers, "topic": topic, "dlq_topic": topic + ".dlq",
            "group_id": group_id, "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000,
            "max_poll_interval_ms": 10000, "poll_timeout_ms": 200} | more


def write_config(path: Path, sections: dict[str, dict]) -> Path:
    """A service config: the sections given, over defaults that keep the schedule off and logs in JSON."""
    defaults: dict[str, dict] = {
        "store": {"path": "./store/examples.db"},
        "schedule": {"enabled": False},
        "server": {"host": "127.0.0.1", "port": free_port(), "shutdown_budget_seconds": 30},
        "log": {"format": "json"},
    }
    merged = {name: defaults.get(name, {}) | sections.get(name, {}) for name in defaults.keys() | sections.keys()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(merged, sort_keys=True))
    return path


def parse_metrics(body: str) -> dict[str, float]:
    """`name{labels}` → value, from the Prometheus text format."""
    values: dict[str, float] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                values[name] = float(value)
            except ValueError:
                continue
    return values


def http_get(port: int, path: str, token: str | None = None, timeout_s: float = 5.0) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return 0, ""


class ServiceProcess:
    """A real `ticketune run --config FILE` child; its stderr (JSON logs) goes to `log_path`, appended
    across restarts, so a test can scan everything the service ever wrote."""

    def __init__(self, config: Path, log_path: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.config = config
        settings = yaml.safe_load(config.read_text())
        self.port = int(settings["server"]["port"])
        self.token = settings["server"].get("admin_token")
        store = Path(settings["store"]["path"])
        self.store_path = store if store.is_absolute() else (config.parent / store).resolve()
        self.log_path = log_path or config.parent / "service.log"
        self.env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true") | (env or {})
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> ServiceProcess:
        assert self.proc is None or self.proc.poll() is not None, "the service is already running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon.app.cli", "run", "--config", str(self.config)],
                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        def healthy() -> bool:
            assert self.alive(), f"the service exited ({self.proc.returncode}):\n{self.log_tail()}"
            return http_get(self.port, "/healthz", timeout_s=1.0)[0] == 200

        wait_for(healthy, timeout_s, "the service's /healthz", on_timeout=self.log_tail)

    def metrics(self) -> dict[str, float]:
        status, body = http_get(self.port, "/metrics")
        return parse_metrics(body) if status == 200 else {}

    def metric(self, name: str, default: float = 0.0) -> float:
        return self.metrics().get(name, default)

    def kill9(self) -> None:
        """SIGKILL to the service and everything it started (its own session)."""
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait for the exit; the exit code."""
        assert self.proc is not None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill9()
            tail = self.log_tail()
            raise AssertionError(f"the service did not exit within {timeout_s} s of SIGTERM:\n{tail}") from None

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.pid).memory_info().rss / 2**20

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.alive():
            try:
                self.terminate(timeout_s=30)
            except AssertionError:
                pass


def stored_ticket_ids(store_path: Path) -> list[str]:
    """Every ticket id in the store's examples table (read-only; the service may be writing)."""
    con = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=30)
    try:
        return [row[0] for row in con.execute("SELECT ticket_id FROM examples")]
    finally:
        con.close()


def store_count(store_path: Path) -> int:
    if not store_path.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM examples").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0  # not created yet


def integrity_check(store_path: Path) -> str:
    con = sqlite3.connect(store_path, timeout=30)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def read_topic(bootstrap_servers: str, topic: str, timeout_s: float = 30.0) -> list[dict]:
    """Every record of `topic`, from the start of each partition to its end (no consumer group):
    `{"partition", "offset", "key", "value", "headers": {name: str}}`."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None,
                             consumer_timeout_ms=1000)
    try:
        partitions = wait_for(lambda: consumer.partitions_for_topic(topic), 20, f"partitions of {topic}")
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        records: list[dict] = []
        deadline = time.monotonic() + timeout_s
        idle_polls = 0
        while time.monotonic() < deadline and idle_polls < 3:
            batch = consumer.poll(timeout_ms=1000, max_records=5000)
            if not batch:
                idle_polls += 1
                continue
            idle_polls = 0
            for messages in batch.values():
                for message in messages:
                    records.append({
                        "partition": message.partition, "offset": message.offset, "key": message.key,
                        "value": message.value,
                        "headers": {name: (value or b"").decode("utf-8", "replace")
                                    for name, value in message.headers or ()},
                    })
        return records
    finally:
        consumer.close()


def dead_letter_sources(records: list[dict]) -> list[tuple[int, int]]:
    """The (partition, offset) of the source record that each dead letter names in its headers."""
    return [(int(r["headers"]["ticketune.source.partition"]), int(r["headers"]["ticketune.source.offset"]))
            for r in records]


def lines_matching(path: Path, pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return [line for line in path.read_text(errors="replace").splitlines() if regex.search(line)]


class HealthWatch:
    """Polls /healthz every 0.25 s from a thread; counts anything but 200 and checks the pid stays."""

    def __init__(self, service: ServiceProcess) -> None:
        self.service, self.pid = service, service.pid
        self.polls = self.failures = 0
        self.died = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.polls += 1
            if not self.service.alive():
                self.died = True
                return
            if http_get(self.service.port, "/healthz", timeout_s=3.0)[0] != 200:
                self.failures += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def cycle_rows(store_path: Path) -> list[dict]:
    """The cycles that ran, oldest first (read-only; the service writes it): a recorded skip (a schedule tick
    with too few new examples) is left out."""
    if not store_path.exists():
        return []
    con = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=10)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM cycles WHERE verdict IS NOT 'skipped' "
                                             "ORDER BY started_at, rowid")]
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def trigger_cycle(port: int, token: str, busy_wait_s: float = 60.0) -> None:
    """POST /v1/cycles; a 409 while the previous cycle's thread finishes its bookkeeping is waited out."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + busy_wait_s
    while True:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/cycles", method="POST", data=b"{}",
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 202, response.read()
                return
        except urllib.error.HTTPError as err:
            body = err.read()
            if err.code != 409 or time.monotonic() > deadline:
                raise AssertionError(f"POST /v1/cycles answered {err.code}: {body!r}") from None
        time.sleep(0.5)


class ListSource:
    """The ingest loop's TicketSource over records held in memory (the reference ingest)."""

    max_value_bytes = None

    def __init__(self, records: list) -> None:
        self.records = records

    def assigned(self) -> bool:
        return True

    def poll(self, timeout_s: float, max_records: int | None = None) -> list:
        records, self.records = self.records, []
        return records

    def dead_letter(self, record, reason: str, detail: str) -> None:
        pass

    def commit(self) -> None:
        pass

    def lag(self) -> dict[int, int]:
        return {}

    def close(self) -> None:
        pass


def reference_ids(config: Path, tickets: list[dict], directory: Path) -> set[str]:
    """The ticket ids the service's own ingest loop, filters and store keep from `tickets` (in this
    order), ingested in process into a fresh store with the same settings: what a run under faults must
    end with."""
    from connectors.formats import parser_for
    from daemon.config import load_settings
    from daemon.ingest.filters import QualityFilter, tokenizer_json_for
    from daemon.ingest.loop import SourceRecord, run_ingest
    from daemon.ingest.privacy import policy_from_config
    from daemon.store import ExampleStore

    settings = load_settings(config, environ={})
    directory.mkdir(parents=True, exist_ok=True)
    store = ExampleStore(directory / "reference.db", settings.store.eval_fraction)
    try:
        quality = QualityFilter(settings.quality, tokenizer_json_for(settings.model.base))
        records = [SourceRecord("t", 0, i, t["ticket_id"].encode(), json.dumps(t).encode())
                   for i, t in enumerate(tickets)]
        run_ingest(ListSource(records), parser_for(settings.kafka.format), store,
                   system_prompt=settings.model.system_prompt, idle_timeout_s=0.3, poll_timeout_s=0.05,
                   quality=quality, scrub=settings.privacy.scrub,
                   privacy=policy_from_config(settings.privacy))
        return {row[0] for row in store._db.execute("SELECT ticket_id FROM examples")}
    finally:
        store.close()


def committed_offsets(bootstrap: str, group: str, topic: str) -> int:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0)
