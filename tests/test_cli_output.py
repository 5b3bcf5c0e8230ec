"""What the CLI prints when things go wrong: a JSON error document under --json, no traceback on a closed pipe,
and help that says the defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from daemon.app.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_a_bad_config_under_json_prints_an_error_document_naming_the_fields(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("store: {eval_fraction: 3}\nserver: {port: -1}\n")
    assert main(["validate-config", "--json", str(bad)]) == 2
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert document["error"]["code"] == "invalid_config"
    assert document["error"]["fields"] == ["store.eval_fraction", "server.port"]
    assert "store.eval_fraction:" in document["error"]["message"] and "server.port:" in err


def test_a_missing_base_model_under_json_is_an_error_document_too(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("model: {base: ./nowhere}\n")
    assert main(["validate-config", "--json", str(config)]) == 2
    document = json.loads(capsys.readouterr().out)
    assert document["error"]["code"] == "missing_file" and document["error"]["fields"] == ["model.base"]


def test_a_reader_that_closes_the_pipe_gets_no_traceback(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("store: {path: ./x.db}\n")
    read, write = os.pipe()
    os.close(read)
    stream = os.fdopen(write, "w")
    monkeypatch.setattr(sys, "stdout", stream)
    assert main(["validate-config", "--show", "--no-file-checks", str(config)]) == 0


def test_help_says_the_defaults():
    for verb, expected in (("broker", "(default 9092)"), ("produce-sample", "(default 200)")):
        shown = subprocess.run([sys.executable, "-m", "daemon.app.cli", verb, "--help"], capture_output=True,
                               text=True, cwd=REPO, check=True).stdout
        assert expected in " ".join(shown.split())


def test_quarantine_list_shows_quarantined_batches_unless_all_is_asked(tmp_path, capsys):
    from test_store import example

    from daemon.store import ExampleStore

    store = ExampleStore(tmp_path / "examples.db", eval_fraction=0.25)
    store.apply([example(str(i)) for i in range(20)])
    first = store.create_snapshot("c1", None, replay_fraction=0.0)
    store.close_batch(first.id, verdict="promoted", model_version="1")
    store.apply([example(f"bad{i}") for i in range(20)])
    bad = store.create_snapshot("c2", "1", replay_fraction=0.0)
    store.close_batch(bad.id, verdict="rejected", model_version="2")
    store.close()
    config = tmp_path / "c.yaml"
    config.write_text(f"store: {{path: {tmp_path / 'examples.db'}}}\n")
    capsys.readouterr()
    assert main(["quarantine", "list", "--json", "--config", str(config)]) == 0
    assert [b["state"] for b in json.loads(capsys.readouterr().out)] == ["quarantined"]
    assert main(["quarantine", "list", "--all", "--json", "--config", str(config)]) == 0
    assert sorted(b["state"] for b in json.loads(capsys.readouterr().out)) == ["promoted", "quarantined"]


def test_status_says_a_cycle_under_way_is_running_and_shows_a_recorded_skip(service_config, capsys):
    from daemon.config import load_settings
    from daemon.store import open_store

    store = open_store(load_settings(service_config, environ={}).store)
    store.record_skip("c-skipped", "schedule", "3 new examples since the last cycle, schedule.min_new_examples is 200")
    assert main(["status", "--config", str(service_config)]) == 0
    assert "last cycle c-skipped skipped" in capsys.readouterr().out
    store.start_cycle("c-now", "admin")
    store.close()
    assert main(["status", "--config", str(service_config)]) == 0
    assert "last cycle c-now running" in capsys.readouterr().out



def _versions_passed_and_rejected(service_config: Path) -> tuple[str, str]:
    """A champion that passed the gate and a version the gate rejected, in the MLflow store the config names."""
    from daemon.app.wiring import build_registry
    from daemon.config import load_settings

    registry = build_registry(load_settings(service_config, environ={}))
    adapter = service_config.parent / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    versions = []
    for cycle_id, verdict in (("c-1", "promoted"), ("c-2", "rejected")):
        run_id = registry.start_cycle_run(cycle_id, {}, {})
        versions.append(registry.register_candidate(
            run_id, adapter, {"ticketune.verdict": verdict, "ticketune.state": "complete"}))
        registry.end_run(run_id)
    registry.set_champion(versions[0])
    return versions[0], versions[1]


def test_a_refused_approve_or_rollback_under_json_prints_an_error_document(service_config, capsys):
    _, rejected = _versions_passed_and_rejected(service_config)
    capsys.readouterr()
    for argv in (["approve", rejected], ["rollback", "--to", rejected]):
        assert main([*argv, "--json", "--config", str(service_config)]) == 1, argv
        out, err = capsys.readouterr()
        document = json.loads(out)
        assert document["error"]["code"] == "refused", argv
        assert "--force" in document["error"]["message"] and "--force" in err, argv
