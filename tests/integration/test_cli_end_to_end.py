"""The command line a script would drive, end to end: a real broker, a real `mlflow server` over
HTTP, the real training worker. Every verb runs as its own process, as an operator would run it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def ticketune(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "daemon.app.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def ticketune_json(config: Path, *args: str) -> object:
    proc = ticketune(config, *args, "--json")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"{args}: stdout is not one JSON document: {proc.stdout[-500:]!r}\n"
                             f"{proc.stderr[-2000:]}") from None


@pytest.mark.slow  # about 90 s: every verb as its own process; tests/integration/test_proof.py covers the loop fast
def test_produce_ingest_cycle_history_status_promote_and_rollback(
    tmp_path, broker, unique_topic, tiny_model_dir, mlflow_server_uri
):
    topic = unique_topic("cli")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": broker.bootstrap_servers, "topic": topic, "dlq_topic": topic + ".dlq",
                  "group_id": "cli-e2e", "session_timeout_ms": 2000, "heartbeat_interval_ms": 500,
                  "max_poll_interval_ms": 10000},
        "store": {"path": "./store/examples.db"},
        "model": {"base": str(tiny_model_dir)},
        "training": {"epochs": 6, "learning_rate": 0.01, "max_seq_len": 384, "row_tokens": 1024,
                     "work_dir": "./cycles"},
        "schedule": {"min_new_examples": 30},
        "gate": {"min_eval_examples": 5, "profile": "demo"},
        "registry": {"tracking_uri": mlflow_server_uri, "model_name": f"cli-e2e-{topic}"},
    }))

    produced = ticketune_json(config, "produce-sample", "--count", "70", "--seed", "5")
    assert produced == {"produced": 70, "topic": topic}

    ingest = ticketune_json(config, "ingest", "--idle-timeout", "8")
    assert ingest["consumed"] == 70 and ingest["dead_lettered"] == 0
    assert ingest["stored"] + sum(ingest["skipped"].values()) == 70
    assert set(ingest["skipped"]) <= {"not_resolved", "no_public_agent_answer", "empty_body"}

    again = ticketune_json(config, "ingest", "--idle-timeout", "5")
    assert again["consumed"] == 0  # offsets were committed

    first = ticketune_json(config, "cycle")
    assert first["verdict"] == "promoted", first["reasons"]
    assert first["version"] == "1"
    assert first["metrics"]["candidate_eval_loss"] < first["metrics"]["base_eval_loss"]

    skipped = ticketune_json(config, "cycle")
    assert skipped["verdict"] == "skipped"

    ticketune(config, "produce-sample", "--count", "70", "--seed", "6", "--start-id", "50000")
    ingest2 = ticketune_json(config, "ingest", "--idle-timeout", "8")
    assert ingest2["consumed"] == 70
    second = ticketune_json(config, "cycle")
    assert second["verdict"] in ("promoted", "rejected")
    assert second["metrics"]["champion_eval_loss"] > 0

    history = ticketune_json(config, "history")
    assert [h["version"] for h in history] == ["2", "1"]
    assert {h["version"]: h["verdict"] for h in history} == {"1": "promoted", "2": second["verdict"]}
    status = ticketune_json(config, "status")
    assert status["examples"] == ingest["stored"] + ingest2["stored"]
    assert status["champion_version"] == ("2" if second["verdict"] == "promoted" else "1")
    assert status["last_cycle"]["verdict"] == second["verdict"]
    assert status["pending_examples"] == 0

    if second["verdict"] == "promoted":
        rolled = ticketune_json(config, "rollback")
        assert rolled == {"action": "rollback", "from": "2", "to": "1", "moved": True, "forced": False,
                          "serving": {}}  # no serving targets configured
    else:
        refused = ticketune(config, "promote", "2", check=False)
        assert refused.returncode == 1 and "rejected" in refused.stderr
        forced = ticketune_json(config, "promote", "2", "--force")
        assert forced == {"action": "promote", "from": "1", "to": "2", "moved": True, "forced": True, "serving": {}}
        rolled = ticketune_json(config, "rollback")
        assert rolled == {"action": "rollback", "from": "2", "to": "1", "moved": True, "forced": False,
                          "serving": {}}  # no serving targets configured
    history = ticketune_json(config, "history")
    assert [h["version"] for h in history if h["champion"]] == ["1"]

    bare = ticketune_json(config, "export", "1", "--adapter", str(tmp_path / "v1-adapter"))
    assert bare["kind"] == "adapter" and (tmp_path / "v1-adapter" / "adapter_config.json").is_file()
    merged = ticketune_json(config, "export", "1", "--merged", str(tmp_path / "v1-merged"))
    assert merged["kind"] == "merged model" and (tmp_path / "v1-merged" / "model.safetensors").is_file()
    assert not (tmp_path / "v1-merged" / "adapter_config.json").exists()

    no_earlier = ticketune(config, "rollback", check=False)
    assert no_earlier.returncode == 1 and "no earlier" in no_earlier.stderr.lower()

    # right to erasure, then a replay of the whole topic: the erased customer does not come back
    from daemon.demo.samples import generate_tickets
    from daemon.ingest.pairs import Example, ticket_to_example
    from daemon.tickets import ticket_from_dict

    stored = [t for t in generate_tickets(70, seed=5)
              if isinstance(ticket_to_example(ticket_from_dict(t)), Example)]
    email = stored[0]["requester"]["email"]
    theirs = sum(1 for t in stored if t["requester"]["email"] == email)
    forgot = ticketune_json(config, "forget", "--requester-email", email.upper())
    assert forgot["tickets_removed"] == theirs and forgot["erasures_pending"] == 0
    assert email not in (tmp_path / "store" / "examples.db").read_bytes().decode("latin-1")
    after = ticketune_json(config, "status")
    assert after["examples"] == status["examples"] - theirs

    replay = ticketune_json(config, "reprocess", "--idle-timeout", "8")
    assert replay["consumed"] == 140 and replay["stored"] == 0
    assert replay["skipped"]["erased"] == theirs
