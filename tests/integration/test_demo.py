"""`ticketune demo` as a user runs it: the whole loop on the real model, three cycles and a rollback (slow suite)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_on_the_real_model_promotes_rejects_the_wrong_answers_by_relevance_promotes_and_rolls_back(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "daemon.app.cli", "demo", "--work-dir", str(tmp_path), "--json"],
                          capture_output=True, text=True, cwd=REPO, timeout=2700)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    assert report["model"] == "smollm2"
    assert [c["verdict"] for c in report["cycles"]] == ["promoted", "rejected", "promoted"], report["cycles"]
    first, poisoned, third = report["cycles"]
    assert any(reason.startswith("FAIL relevance") for reason in poisoned["reasons"]), poisoned["reasons"]
    assert all(not reason.startswith("FAIL") for reason in first["reasons"] + third["reasons"])
    assert report["rollback"] == {"from": third["version"], "to": first["version"]}
    assert report["champion_version"] == first["version"]
    assert report["quarantined_examples"] > 0
    assert report["ingest"]["dead_lettered"] == 2
    store_dump = (tmp_path / "data" / "examples.db").read_bytes()
    assert b"@example.com" not in store_dump and b"@example.org" not in store_dump
    assert f"[demo] finished in {report['seconds']} s" in proc.stderr
