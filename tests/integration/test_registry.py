"""The adapter registry against a real MLflow: a sqlite store, and an `mlflow server` over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixture_mlflow import free_port
from mlflow import MlflowClient

from connectors.registry import (
    MAX_EVENTS_CHARS,
    AdapterRegistry,
    NoChampionError,
    PromotionRefusedError,
    RegistryError,
    RegistryUnavailableError,
    VersionNotFoundError,
    set_mlflow_http_defaults,
)

MODEL = "ticketune-test"
REPO_ROOT = Path(__file__).resolve().parents[2]


def make_adapter(root: Path, name: str) -> Path:
    """A stand-in adapter directory: the registry never looks inside the files."""
    adapter = root / name
    (adapter / "nested").mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 16, "name": name}))
    (adapter / "adapter_model.safetensors").write_bytes(name.encode() * 64)
    (adapter / "nested" / "chat_template.jinja").write_text("{{ messages }}")
    return adapter


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def register(registry: AdapterRegistry, tmp_path: Path, cycle_id: str, verdict: str = "promoted") -> str:
    run_id = registry.start_cycle_run(cycle_id, {"adapter.r": 16, "snapshot.id": f"snap-{cycle_id}"}, {})
    registry.log_metrics(run_id, {"candidate_eval_loss": 1.5})
    tags = {
        "ticketune.verdict": verdict,
        "reasons": ["eval loss improved"] if verdict == "promoted" else ["eval loss got worse"],
        "metrics": {"candidate_eval_loss": 1.5},
        "ticketune.dataset_snapshot": f"snap-{cycle_id}",
    }
    version = registry.register_candidate(run_id, make_adapter(tmp_path / "adapters", cycle_id), tags)
    registry.end_run(run_id, "FINISHED")
    return version


@pytest.fixture
def registry(mlflow_sqlite_uri: str) -> AdapterRegistry:
    return AdapterRegistry(tracking_uri=mlflow_sqlite_uri, model_name=MODEL)


def test_register_candidate_uploads_adapter_beside_sqlite_store_and_tags_version(
    registry: AdapterRegistry, tmp_path: Path
):
    version = register(registry, tmp_path, "cycle-a", verdict="rejected")

    assert version == "1"
    tags = registry.get_version_tags(version)
    assert tags["ticketune.verdict"] == "rejected"
    assert json.loads(tags["ticketune.reasons"]) == ["eval loss got worse"]
    assert json.loads(tags["ticketune.metrics"]) == {"candidate_eval_loss": 1.5}
    assert tags["ticketune.dataset_snapshot"] == "snap-cycle-a"
    client = MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri)
    model_version = client.get_model_version(MODEL, version)
    run = client.get_run(model_version.run_id)
    assert model_version.status == "READY"
    assert model_version.source == f"{run.info.artifact_uri}/adapter"
    assert run.info.run_name == "cycle-a"
    assert run.data.tags["ticketune.cycle_id"] == "cycle-a"
    assert run.data.params == {"adapter.r": "16", "snapshot.id": "snap-cycle-a"}
    assert run.info.status == "FINISHED"
    stored = list((tmp_path / "mlflow" / "mlartifacts").rglob("adapter_config.json"))
    assert len(stored) == 1 and stored[0].parent.name == "adapter"
    again = AdapterRegistry(tracking_uri=registry.tracking_uri, model_name=MODEL).start_cycle_run("b", {}, {})
    assert client.get_run(again).info.experiment_id == run.info.experiment_id


def test_promote_moves_alias_returns_previous_and_records_events(registry: AdapterRegistry, tmp_path: Path):
    first, second = register(registry, tmp_path, "c1"), register(registry, tmp_path, "c2")
    assert registry.champion_version() is None

    assert registry.promote(first, reason="first gate pass") is None
    assert registry.promote(second, reason="second gate pass", actor="cycle") == first
    assert registry.promote(second, reason="again") == second  # already champion: nothing changes

    assert registry.champion_version() == second
    events = registry.champion_events()
    assert [(e["action"], e["version"], e["previous"]) for e in events] == [
        ("promote", first, None), ("promote", second, first)
    ]
    assert events[1]["reason"] == "second gate pass" and events[1]["actor"] == "cycle"
    assert events[1]["forced"] is False and events[1]["at"].endswith("Z")
    tags = registry.get_version_tags(second)
    assert tags["ticketune.promotion_forced"] == "false" and "ticketune.promoted_at" in tags


def test_history_lists_versions_newest_first_with_champion_flag_and_verdict(
    registry: AdapterRegistry, tmp_path: Path
):
    assert registry.history() == []
    first = register(registry, tmp_path, "c1")
    second = register(registry, tmp_path, "c2", verdict="rejected")
    third = register(registry, tmp_path, "c3")
    registry.promote(first, reason="gate")
    registry.promote(third, reason="gate")

    history = registry.history()

    assert [(h["version"], h["verdict"], h["champion"]) for h in history] == [
        (third, "promoted", True), (second, "rejected", False), (first, "promoted", False)
    ]
    assert history[1]["reasons"] == ["eval loss got worse"]
    assert history[0]["metrics"] == {"candidate_eval_loss": 1.5}
    assert history[0]["created_at"].endswith("Z") and history[0]["run_id"]
    assert history[0]["tags"]["ticketune.dataset_snapshot"] == "snap-c3"
    json.dumps(history)  # the CLI prints it as is


def test_rollback_defaults_to_the_champion_before_the_current_one_and_walks_back(
    registry: AdapterRegistry, tmp_path: Path
):
    v1, v2, v3 = (register(registry, tmp_path, f"c{i}") for i in (1, 2, 3))
    for version in (v1, v2, v3):
        registry.promote(version, reason="gate")

    assert registry.rollback(reason="bad answers in production") == (v3, v2)
    assert registry.champion_version() == v2
    tags = registry.get_version_tags(v3)
    assert tags["ticketune.rollback_reason"] == "bad answers in production"
    assert "ticketune.rolled_back_at" in tags
    # A second rollback goes to the champion before v2, not back to v3.
    assert registry.rollback() == (v2, v1)
    with pytest.raises(NoChampionError, match="first champion"):
        registry.rollback()
    assert registry.champion_version() == v1
    assert [(e["action"], e["version"], e["previous"]) for e in registry.champion_events()][-2:] == [
        ("rollback", v2, v3), ("rollback", v1, v2)
    ]


def test_rollback_to_a_named_version_and_to_unknown_or_current_versions(
    registry: AdapterRegistry, tmp_path: Path
):
    v1, v2, v3 = (register(registry, tmp_path, f"c{i}") for i in (1, 2, 3))
    registry.promote(v2, reason="gate")
    registry.promote(v3, reason="gate")

    assert registry.rollback(to_version=v1, reason="operator pick") == (v3, v1)
    assert registry.champion_version() == v1
    with pytest.raises(VersionNotFoundError, match="no version 42"):
        registry.rollback(to_version="42")
    with pytest.raises(VersionNotFoundError, match="not a model version number"):
        registry.rollback(to_version="latest")
    with pytest.raises(RegistryError, match="already the champion"):
        registry.rollback(to_version=v1)
    assert registry.champion_version() == v1


def test_rollback_without_champion_or_previous_champion_is_a_clear_error(
    registry: AdapterRegistry, tmp_path: Path
):
    with pytest.raises(NoChampionError, match="no 'champion' version"):
        registry.rollback()
    only = register(registry, tmp_path, "c1")
    with pytest.raises(NoChampionError, match="no 'champion' version"):
        registry.rollback()
    registry.promote(only, reason="gate")
    with pytest.raises(NoChampionError, match="no earlier one"):
        registry.rollback()
    assert registry.champion_version() == only


def test_promote_refuses_rejected_version_unless_forced_and_records_the_force(
    registry: AdapterRegistry, tmp_path: Path
):
    good = register(registry, tmp_path, "c1")
    rejected = register(registry, tmp_path, "c2", verdict="rejected")
    registry.promote(good, reason="gate")

    with pytest.raises(PromotionRefusedError, match="--force"):
        registry.promote(rejected, reason="try")
    assert registry.champion_version() == good

    previous = registry.promote(rejected, reason="known good on manual review", force=True, actor="operator")
    assert previous == good
    assert registry.champion_version() == rejected
    tags = registry.get_version_tags(rejected)
    assert tags["ticketune.promotion_forced"] == "true"
    assert tags["ticketune.promoted_by"] == "operator"
    assert tags["ticketune.promotion_reason"] == "known good on manual review"
    assert tags["ticketune.verdict"] == "rejected"
    last = registry.champion_events()[-1]
    assert (last["version"], last["forced"], last["actor"]) == (rejected, True, "operator")


def test_promote_unknown_version_is_version_not_found(registry: AdapterRegistry, tmp_path: Path):
    with pytest.raises(VersionNotFoundError, match="no version 7"):
        registry.promote("7", reason="typo")
    register(registry, tmp_path, "c1")
    with pytest.raises(VersionNotFoundError, match="no version 7"):
        registry.promote("7", reason="typo")
    with pytest.raises(VersionNotFoundError):
        registry.get_version_tags("7")


def test_download_adapter_returns_the_registered_files(registry: AdapterRegistry, tmp_path: Path):
    version = register(registry, tmp_path, "c1")
    register(registry, tmp_path, "c2")

    local = registry.download_adapter(version, tmp_path / "download")

    assert local.is_dir() and local.is_relative_to(tmp_path / "download")
    assert files_of(local) == files_of(tmp_path / "adapters" / "c1")


def test_champion_event_log_keeps_the_newest_events_within_the_tag_limit(
    registry: AdapterRegistry, tmp_path: Path
):
    a, b = register(registry, tmp_path, "c1"), register(registry, tmp_path, "c2")
    long_reason = "r" * 500
    for i in range(16):
        registry.promote(a if i % 2 == 0 else b, reason=f"{i} {long_reason}")

    events = registry.champion_events()

    assert 1 < len(events) < 16
    assert len(json.dumps(events, separators=(",", ":"))) <= MAX_EVENTS_CHARS
    assert events[-1]["reason"].startswith("15 ") and len(events[-1]["reason"]) == 200
    assert registry.rollback() == (b, a)


def test_registry_errors_are_registry_errors_not_mlflow_tracebacks(registry: AdapterRegistry):
    with pytest.raises(RegistryError, match="missing or empty"):
        registry.register_candidate("0" * 32, Path("/nonexistent/adapter"), {})
    run_id = registry.start_cycle_run("c1", {}, {})
    with pytest.raises(RegistryError, match="failed while"):
        registry.log_metrics(run_id, {"bad/../key": 1.0})
    MlflowClient(tracking_uri=registry.tracking_uri).delete_experiment(
        MlflowClient(tracking_uri=registry.tracking_uri).get_run(run_id).info.experiment_id
    )
    with pytest.raises(RegistryError, match="is deleted"):
        AdapterRegistry(tracking_uri=registry.tracking_uri, model_name=MODEL).start_cycle_run("c2", {}, {})


def test_ping_succeeds_on_sqlite_store_and_http_server(registry: AdapterRegistry, mlflow_server_uri: str):
    registry.ping()
    AdapterRegistry(tracking_uri=mlflow_server_uri, model_name=MODEL).ping()


def test_unreachable_server_fails_fast_with_registry_unavailable(monkeypatch: pytest.MonkeyPatch):
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # the caller's value wins
    set_mlflow_http_defaults()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "15"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    registry = AdapterRegistry(tracking_uri=f"http://127.0.0.1:{free_port()}", model_name=MODEL)

    started = time.monotonic()
    with pytest.raises(RegistryUnavailableError, match="unreachable"):
        registry.ping()
    with pytest.raises(RegistryUnavailableError, match="unreachable"):
        registry.champion_version()
    with pytest.raises(RegistryUnavailableError, match="unreachable"):
        registry.start_cycle_run("c1", {}, {})
    assert time.monotonic() - started < 20


def test_http_server_register_promote_download_rollback(mlflow_server_uri: str, tmp_path: Path):
    registry = AdapterRegistry(tracking_uri=mlflow_server_uri, model_name="ticketune-http")
    v1, v2 = register(registry, tmp_path, "h1"), register(registry, tmp_path, "h2")

    assert registry.promote(v1, reason="gate") is None
    assert registry.promote(v2, reason="gate") == v1
    assert MlflowClient(tracking_uri=mlflow_server_uri).get_model_version(
        "ticketune-http", v2
    ).source.startswith("mlflow-artifacts:")
    local = registry.download_adapter(v2, tmp_path / "download")
    assert files_of(local) == files_of(tmp_path / "adapters" / "h2")
    assert registry.rollback(reason="http rollback") == (v2, v1)
    assert [(h["version"], h["champion"]) for h in registry.history()] == [(v2, False), (v1, True)]
    assert registry.get_version_tags(v2)["ticketune.rollback_reason"] == "http rollback"


def test_registry_module_does_not_import_torch():
    code = "import sys, connectors.registry; sys.exit('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr or "connectors.registry imported torch"
