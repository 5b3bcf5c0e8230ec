"""`ticketune demo` as a user runs it: the whole loop, three cycles and a rollback (slow suite)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_promotes_rejects_the_poisoned_batch_promotes_and_rolls_back(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "daemon.app.cli", "demo", "--work-dir", str(tmp_path), "--json"],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    assert [c["verdict"] for c in report["cycles"]] == ["promoted", "rejected", "promoted"]
    first, poisoned, third = report["cycles"]
    assert poisoned["metrics"]["candidate_eval_loss"] > poisoned["metrics"]["champion_eval_loss"]
    assert report["rollback"] == {"from": third["version"], "to": first["version"]}
    assert report["champion_version"] == first["version"]
    assert report["quarantined_examples"] > 0
    assert report["ingest"]["dead_lettered"] == 2
    store_dump = (tmp_path / "data" / "examples.db").read_bytes()
    assert b"@example.com" not in store_dump and b"@example.org" not in store_dump
