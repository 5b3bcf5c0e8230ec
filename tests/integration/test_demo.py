"""`ticketune demo` as a user runs it: the whole loop on the real model, three cycles and a rollback (slow suite).

It is also CI's real-model cycle chain: the resident memory of the demo's whole process tree (the service,
the embedded broker, the worker, the probe) is sampled throughout, and each promoted adapter's answers to
the golden prompts must read as English."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tree_memory import PEAK_RSS_LIMIT, TreeMemory, reads_as_english

from daemon.training.contract import OUT_DIR, RESULT_FILE, read_result

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_on_the_real_model_promotes_rejects_the_wrong_answers_by_relevance_promotes_and_rolls_back(tmp_path):
    stdout, stderr = tmp_path / "demo.json", tmp_path / "demo.log"
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "daemon.app.cli", "demo", "--work-dir", str(tmp_path / "demo"),
                                 "--json"], stdout=out, stderr=err, cwd=REPO)
        with TreeMemory(proc.pid) as memory:
            try:
                code = proc.wait(timeout=2700)
            finally:
                proc.kill()
    log = stderr.read_text()
    assert code == 0, log[-4000:]
    report = json.loads(stdout.read_text())
    assert report["model"] == "smollm2"
    assert [c["verdict"] for c in report["cycles"]] == ["promoted", "rejected", "promoted"], report["cycles"]
    first, poisoned, third = report["cycles"]
    assert any(reason.startswith("FAIL relevance") for reason in poisoned["reasons"]), poisoned["reasons"]
    assert all(not reason.startswith("FAIL") for reason in first["reasons"] + third["reasons"])
    assert report["rollback"] == {"from": third["version"], "to": first["version"]}
    assert report["champion_version"] == first["version"]
    assert report["quarantined_examples"] > 0
    assert report["ingest"]["dead_lettered"] == 2
    store_dump = (tmp_path / "demo" / "data" / "examples.db").read_bytes()
    assert b"@example.com" not in store_dump and b"@example.org" not in store_dump
    assert f"[demo] finished in {report['seconds']} s" in log

    # each promoted adapter answered the golden prompts in English, beside its reference's answers
    for cycle in (first, third):
        result = read_result(Path(cycle["report"]).parents[1] / OUT_DIR / RESULT_FILE)
        assert result is not None and result.probe is not None and result.probe.status == "ok", cycle
        answers = result.probe.answers_of("candidate")
        reference = result.probe.answers_of("base" if cycle is first else "champion")
        assert answers and len(reference) == len(answers), cycle
        assert all(reads_as_english(answer.text) for answer in answers), [a.text for a in answers]

    assert memory.peak_processes, "no memory sample of the demo's process tree"
    assert memory.peak < PEAK_RSS_LIMIT, memory.describe()
