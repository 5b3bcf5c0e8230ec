"""Fault suite, issue 7 item 5 (second half): the store's disk fills up under a real `ticketune run`.

The store lives on a small filesystem made for the test: a tmpfs where this machine lets the test
mount one (root, or CAP_SYS_ADMIN), whose free space a filler file takes; elsewhere (a CI container
without mount rights) the store's own cap, `store.max_size_mb` (SQLite's max_page_count on every
connection). The full profile runs both. Either way the service ingests a topic into a store that
fills up, and the test checks:

- clear errors: a log line naming the full store and its path, `ticketune_ingest_errors_total{kind="store"}`
  rising, `/readyz` details saying that store writes fail and why; the service stays up;
- no offset committed past what was stored, the database intact (`PRAGMA integrity_check`);
- a cycle started while the disk is full fails with the store's reason, registers nothing;
- space returns (the filler is deleted: no restart; or a bigger cap: a restart) and every valid ticket
  is stored exactly once (ids compared with a reference ingest of the same records into a fresh store).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from fixture_broker import produce
from harness import (
    ServiceProcess,
    committed_offsets,
    http_get,
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

TICKETS = pick(400, 800)
TMPFS_MB = 16
HEADROOM_KB = 1200  # what the filler leaves free on the tmpfs: room for part of the topic only
# how long the store stays full: past the consumer's max_poll_interval_ms (10 s in kafka_section), so
# the stuck consumer loses its partitions and the batch it had stored is redelivered after the rebalance
FULL_FOR_S = pick(15, 45)
CAP_MB = 0.5  # store.max_size_mb in the max_page_count variant: room for part of the topic only
MODEL_NAME = "faults-disk-full"
TOKEN = "disk-full-admin-token"


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=30)


@functools.cache
def tmpfs_allowed() -> bool:
    """Whether this process may mount a tmpfs (root or CAP_SYS_ADMIN); tried once, then undone."""
    probe_dir = Path(tempfile.mkdtemp(prefix="ticketune-mount-probe-"))
    try:
        if _run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe_dir)).returncode != 0:
            return False
    except (OSError, subprocess.TimeoutExpired):
        return False
    _run("umount", str(probe_dir))
    probe_dir.rmdir()
    return True


# "disk": a full filesystem (a tmpfs) where the test may mount one, else the store's own cap;
# "cap": the cap (store.max_size_mb), which the full profile runs too so that both paths stay tested
VARIANTS = pick(["disk"], ["disk", "cap"])


def readiness(port: int) -> tuple[int, dict]:
    status, body = http_get(port, "/readyz")
    return status, (json.loads(body) if body else {})


def post(port: int, path: str, body: dict) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     method="POST", headers={"Authorization": f"Bearer {TOKEN}",
                                                             "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def fill(disk: Path, headroom_kb: int) -> Path:
    """A filler file that takes all the tmpfs's free space but `headroom_kb` (written, not sparse)."""
    stat = os.statvfs(disk)
    size = stat.f_bavail * stat.f_frsize - headroom_kb * 1024
    assert size > 0, f"the tmpfs has less than {headroom_kb} KiB free before the test starts"
    filler = disk / "filler.bin"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb") as out:
        while size > 0:
            out.write(chunk[:min(size, len(chunk))])
            size -= len(chunk)
    return filler


@pytest.fixture
def disk(tmp_path: Path, variant: str):
    """(the directory for the store, the mechanism): a TMPFS_MB tmpfs (unmounted after the test) or a
    plain directory for the cap."""
    directory = tmp_path / "disk"
    directory.mkdir()
    if variant == "disk" and tmpfs_allowed():
        done = _run("mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(directory))
        assert done.returncode == 0, f"mounting a tmpfs failed although the probe succeeded: {done.stderr}"
        try:
            yield directory, "tmpfs"
        finally:
            if _run("umount", str(directory)).returncode != 0:
                _run("umount", "-l", str(directory))
    else:
        yield directory, "max_page_count"


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_full_store_is_reported_loses_nothing_and_recovers_when_space_returns(
    variant, disk, tmp_path, broker, unique_topic, mlflow_sqlite_uri
):
    disk, mechanism = disk
    topic = unique_topic("diskfull")
    group = f"diskfull-{mechanism}"
    store_path = disk / "examples.db"
    sections = {
        "kafka": kafka_section(broker.bootstrap_servers, topic, group, max_poll_records=40),
        "store": {"path": str(store_path)} | ({"max_size_mb": CAP_MB} if mechanism == "max_page_count" else {}),
        # no base model is built: a cycle that got past the full store would fail for the missing model,
        # not for the store, and the test would say so
        "model": {"base": str(tmp_path / "no-model")},
        "training": {"work_dir": str(tmp_path / "cycles")},
        "gate": {"min_eval_examples": 1, "profile": "demo"},
        "registry": {"tracking_uri": mlflow_sqlite_uri, "model_name": MODEL_NAME, "poll_seconds": 0},
    }
    config = write_config(tmp_path / "config.yaml", sections)
    settings = yaml.safe_load(config.read_text())
    settings["server"]["admin_token"] = TOKEN
    config.write_text(yaml.safe_dump(settings))
    tickets = generate_tickets(TICKETS, seed=21, start_id=810000)
    # one partition: the service reads in the order produced, as the reference ingest does (which of two
    # near-duplicates is kept depends on the order), and the committed offset is a prefix of the tickets
    broker.create_topics([topic], partitions=1)
    expected = reference_ids(config, tickets, tmp_path / "reference")
    position = {t["ticket_id"]: i for i, t in enumerate(tickets)}

    service = ServiceProcess(config)
    with service:
        service.start()
        service.wait_healthy()
        filler = fill(disk, HEADROOM_KB) if mechanism == "tmpfs" else None
        produce(broker.bootstrap_servers, topic, [(t["ticket_id"], t) for t in tickets])

        # the store fills up: errors that say so, the service up, ingest stuck on the batch that does not fit
        wait_for(lambda: service.metric('ticketune_ingest_errors_total{kind="store"}') >= 3, 120,
                 "store errors in the metrics", on_timeout=service.log_tail)
        full_since = time.monotonic()
        assert service.alive()
        full_lines = lines_matching(service.log_path, r"ingest store failed .*StoreFull: the example store .* is full")
        assert full_lines and str(store_path) in full_lines[-1], service.log_tail()
        status, ready = readiness(service.port)
        assert status == 200 and ready["store"] == "ok", ready  # reads still work: the metrics stay scraped
        assert ready["store_writes"].startswith("failing: StoreFull") and str(store_path) in ready["store_writes"], \
            ready
        stored_when_full = store_count(store_path)
        assert 0 < len(expected) and stored_when_full < len(expected), "the store never filled up"
        errors_when_full = service.metric('ticketune_ingest_errors_total{kind="store"}')

        # no offset past what was stored: every valid ticket before the committed offset is in the store
        committed = committed_offsets(broker.bootstrap_servers, group, topic)
        stored = set(stored_ticket_ids(store_path))
        assert committed < TICKETS
        assert {t["ticket_id"] for t in tickets[:committed]} & expected <= stored, \
            "offsets were committed for tickets that are not in the store"
        assert all(position[t] < committed + 40 for t in stored), "stored beyond the batch being retried"
        assert integrity_check(store_path) == "ok"

        # a cycle asked for now fails on the full store, cleanly: no version, the service still up
        cycles_failed = service.metric('ticketune_cycles_total{verdict="failed"}')
        code, body = post(service.port, "/v1/cycles", {"force": True})
        assert code == 202, body
        wait_for(lambda: service.metric('ticketune_cycles_total{verdict="failed"}') > cycles_failed, 120,
                 "the cycle to fail on the full store", on_timeout=service.log_tail)
        cycle_lines = lines_matching(service.log_path, r"cycle c-\S+ (could not start|failed): .*is full")
        assert cycle_lines and str(store_path) in cycle_lines[-1], service.log_tail()
        assert service.alive() and integrity_check(store_path) == "ok"
        from mlflow.tracking import MlflowClient

        assert MlflowClient(tracking_uri=mlflow_sqlite_uri).search_model_versions(f"name = '{MODEL_NAME}'") == []

        # space returns: the filler goes (the same process carries on), or the cap is raised (a restart)
        time.sleep(max(0.0, FULL_FOR_S - (time.monotonic() - full_since)))
        assert service.alive() and store_count(store_path) == stored_when_full
        assert committed_offsets(broker.bootstrap_servers, group, topic) == committed
        space_back = time.monotonic()
        if filler is not None:
            filler.unlink()
        else:
            assert service.terminate() == 0, service.log_tail()
            settings["store"]["max_size_mb"] = 64
            config.write_text(yaml.safe_dump(settings))
            service.start()
            service.wait_healthy()
        wait_for(lambda: store_count(store_path) == len(expected), 150, "every valid ticket stored",
                 interval_s=0.5, on_timeout=service.log_tail)
        recovery_s = time.monotonic() - space_back
        wait_for(lambda: committed_offsets(broker.bootstrap_servers, group, topic) == TICKETS, 60,
                 "every offset committed")
        wait_for(lambda: readiness(service.port)[1].get("store_writes") == "ok", 30, "store writes ok again")
        errors_after = service.metric('ticketune_ingest_errors_total{kind="store"}')
        redelivered = service.metric("ticketune_tickets_consumed_total") - (
            TICKETS if mechanism == "tmpfs" else TICKETS - committed)
        assert service.terminate() == 0, service.log_tail()

    ids = stored_ticket_ids(store_path)
    assert len(ids) == len(set(ids)) and set(ids) == expected
    assert integrity_check(store_path) == "ok"
    assert service.starts == (1 if mechanism == "tmpfs" else 2)
    assert "Traceback" not in service.log_path.read_text(errors="replace"), service.log_tail()
    record_figures(f"disk_full_{variant}", {
        "mechanism": mechanism,
        "space": f"tmpfs {TMPFS_MB} MiB, {HEADROOM_KB} KiB left free" if mechanism == "tmpfs"
        else f"store.max_size_mb {CAP_MB}",
        "tickets": TICKETS,
        "valid_tickets": len(expected),
        "stored_when_full": stored_when_full,
        "committed_when_full": committed,
        "store_errors_when_full": errors_when_full,
        "store_errors_after_recovery": errors_after,
        "full_for_s": FULL_FOR_S,
        "redelivered_records": redelivered,
        "restarted_for_recovery": mechanism != "tmpfs",
        "space_back_to_all_stored_s": round(recovery_s, 1),
        "stored_at_end": len(ids),
        "integrity_check": "ok",
    })
