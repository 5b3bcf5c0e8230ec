"""The adapter registry against a real MLflow: a sqlite store, and an `mlflow server` over HTTP; the
champion's moves through the keeper on it (the registry only moves the alias it is told to)."""

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
    AdapterRegistry,
    RegistryError,
    RegistryUnavailableError,
    VersionNotFoundError,
    set_mlflow_http_defaults,
)
from daemon.champion.keeper import ChampionKeeper, NoChampionError, PromotionRefusedError
from daemon.champion.versions import history
from daemon.store import ExampleStore

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


@pytest.fixture
def keeper(registry: AdapterRegistry, tmp_path: Path):
    store = ExampleStore(tmp_path / "examples.db")
    yield ChampionKeeper(store, registry)
    store.close()


def moves(keeper: ChampionKeeper) -> list[tuple]:
    """The audit log, oldest first, as (action, version, previous)."""
    return [(m["action"], m["version"], m["previous"]) for m in keeper.audit_log()]


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


def test_promote_moves_alias_returns_previous_and_records_the_moves(
    registry: AdapterRegistry, keeper: ChampionKeeper, tmp_path: Path
):
    first, second = register(registry, tmp_path, "c1"), register(registry, tmp_path, "c2")
    assert registry.champion_version() is None

    assert keeper.promote(first, reason="first gate pass", actor="cycle").previous is None
    assert keeper.promote(second, reason="second gate pass", actor="cycle").previous == first
    assert keeper.promote(second, reason="again", actor="cycle").moved is False  # already champion: nothing changes

    assert registry.champion_version() == second
    assert moves(keeper) == [("promote", first, None), ("promote", second, first)]
    last = keeper.audit_log()[-1]
    assert last["reason"] == "second gate pass" and last["actor"] == "cycle" and last["forced"] is False
    tags = registry.get_version_tags(second)
    assert tags["ticketune.promotion_forced"] == "false" and "ticketune.promoted_at" in tags
    assert "ticketune.champion_events" not in (registry._registered_model().tags or {})  # no longer written


def test_set_champion_only_moves_the_alias(registry: AdapterRegistry, tmp_path: Path):
    first = register(registry, tmp_path, "c1")
    registry.set_champion(first)
    assert registry.champion_version() == first
    assert not any(key.startswith("ticketune.promot") for key in registry.get_version_tags(first))


def test_history_lists_versions_newest_first_with_champion_flag_and_verdict(
    registry: AdapterRegistry, keeper: ChampionKeeper, tmp_path: Path
):
    assert registry.list_versions() == [] and keeper.history() == []
    first = register(registry, tmp_path, "c1")
    second = register(registry, tmp_path, "c2", verdict="rejected")
    third = register(registry, tmp_path, "c3")
    keeper.promote(first, reason="gate", actor="cycle")
    keeper.promote(third, reason="gate", actor="cycle")

    listed = registry.list_versions()
    assert [(row["version"], row["champion"]) for row in listed] == [(third, True), (second, False), (first, False)]
    assert set(listed[0]) == {"version", "champion", "created_at", "run_id", "tags"}
    rows = keeper.history()
    assert [(h["version"], h["verdict"], h["champion"]) for h in rows] == [
        (third, "promoted", True), (second, "rejected", False), (first, "promoted", False)
    ]
    assert rows[1]["reasons"] == ["eval loss got worse"]
    assert rows[0]["metrics"] == {"candidate_eval_loss": 1.5}
    assert rows[0]["created_at"].endswith("Z") and rows[0]["run_id"]
    assert rows[0]["tags"]["ticketune.dataset_snapshot"] == "snap-c3"
    assert rows[0]["champion_since"] == keeper.audit_log()[-1]["at"] and rows[1]["champion_since"] is None
    assert list(rows[0]) == ["version", "verdict", "champion", "champion_since", "created_at", "state",
                             "base_model_fingerprint", "objective", "promoted_at", "metrics", "reasons", "run_id",
                             "tags"]
    assert history(registry)[0]["champion_since"] is None  # without the store there is no audit log to ask
    json.dumps(rows)  # the CLI prints it as is


def test_rollback_defaults_to_the_champion_before_the_current_one_and_walks_back(
    registry: AdapterRegistry, keeper: ChampionKeeper, tmp_path: Path
):
    v1, v2, v3 = (register(registry, tmp_path, f"c{i}") for i in (1, 2, 3))
    for version in (v1, v2, v3):
        keeper.promote(version, reason="gate", actor="cycle")

    move = keeper.rollback(reason="bad answers in production", actor="operator")
    assert (move.previous, move.current) == (v3, v2)
    assert registry.champion_version() == v2
    tags = registry.get_version_tags(v3)
    assert tags["ticketune.rollback_reason"] == "bad answers in production"
    assert "ticketune.rolled_back_at" in tags
    # A second rollback goes to the champion before v2, not back to v3.
    move = keeper.rollback(reason="operator rollback", actor="operator")
    assert (move.previous, move.current) == (v2, v1)
    with pytest.raises(NoChampionError, match="first champion"):
        keeper.rollback(reason="operator rollback", actor="operator")
    assert registry.champion_version() == v1
    assert moves(keeper)[-2:] == [("rollback", v2, v3), ("rollback", v1, v2)]


def test_rollback_to_a_named_version_and_to_unknown_or_current_versions(
    registry: AdapterRegistry, keeper: ChampionKeeper, tmp_path: Path
):
    v1, v2, v3 = (register(registry, tmp_path, f"c{i}") for i in (1, 2, 3))
    keeper.promote(v2, reason="gate", actor="cycle")
    keeper.promote(v3, reason="gate", actor="cycle")

    move = keeper.rollback(to_version=v1, reason="operator pick", actor="operator")
    assert (move.previous, move.current) == (v3, v1)
    assert registry.champion_version() == v1
    with pytest.raises(VersionNotFoundError, match="no version 42"):
        keeper.rollback(to_version="42", reason="typo", actor="operator")
    with pytest.raises(VersionNotFoundError, match="not a model version number"):
        keeper.rollback(to_version="latest", reason="typo", actor="operator")
    assert keeper.rollback(to_version=v1, reason="repeat", actor="operator").moved is False  # already there
    assert registry.champion_version() == v1
    # v1 took v3's place: the next rollback goes to the champion v3 replaced
    assert keeper.rollback(reason="v1 is worse", actor="operator").current == v2


def test_rollback_without_champion_or_previous_champion_is_a_clear_error(
    registry: AdapterRegistry, keeper: ChampionKeeper, tmp_path: Path
):
    with pytest.raises(NoChampionError, match="no 'champion' version"):
        keeper.rollback(reason="r", actor="operator")
    only = register(registry, tmp_path, "c1")
    with pytest.raises(NoChampionError, match="no 'champion' version"):
        keeper.rollback(reason="r", actor="operator")
    keeper.promote(only, reason="gate", actor="cycle")
    with pytest.raises(NoChampionError, match="no earlier one"):
        keeper.rollback(reason="r", actor="operator")
    assert registry.champion_version() == only


def test_promote_refuses_rejected_version_unless_forced_and_records_the_force(
    registry: AdapterRegistry, keeper: ChampionKeeper, tmp_path: Path
):
    good = register(registry, tmp_path, "c1")
    rejected = register(registry, tmp_path, "c2", verdict="rejected")
    keeper.promote(good, reason="gate", actor="cycle")

    with pytest.raises(PromotionRefusedError, match="--force"):
        keeper.promote(rejected, reason="try", actor="operator")
    assert registry.champion_version() == good
    assert len(keeper.audit_log()) == 1  # a refusal is not a move

    move = keeper.promote(rejected, reason="known good on manual review", force=True, actor="operator")
    assert (move.previous, move.forced) == (good, True)
    assert registry.champion_version() == rejected
    tags = registry.get_version_tags(rejected)
    assert tags["ticketune.promotion_forced"] == "true"
    assert tags["ticketune.promoted_by"] == "operator"
    assert tags["ticketune.promotion_reason"] == "known good on manual review"
    assert tags["ticketune.verdict"] == "rejected"
    last = keeper.audit_log()[-1]
    assert (last["version"], last["forced"], last["actor"]) == (rejected, True, "operator")


def test_promote_unknown_version_is_version_not_found(
    registry: AdapterRegistry, keeper: ChampionKeeper, tmp_path: Path
):
    with pytest.raises(VersionNotFoundError, match="no version 7"):
        keeper.promote("7", reason="typo", actor="operator")
    register(registry, tmp_path, "c1")
    with pytest.raises(VersionNotFoundError, match="no version 7"):
        keeper.promote("7", reason="typo", actor="operator")
    with pytest.raises(VersionNotFoundError):
        registry.get_version_tags("7")


def test_download_adapter_returns_the_registered_files(registry: AdapterRegistry, tmp_path: Path):
    version = register(registry, tmp_path, "c1")
    register(registry, tmp_path, "c2")

    local = registry.download_adapter(version, tmp_path / "download")

    assert local.is_dir() and local.is_relative_to(tmp_path / "download")
    assert files_of(local) == files_of(tmp_path / "adapters" / "c1")


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
    store = ExampleStore(tmp_path / "examples.db")
    keeper = ChampionKeeper(store, registry)
    v1, v2 = register(registry, tmp_path, "h1"), register(registry, tmp_path, "h2")

    assert keeper.promote(v1, reason="gate", actor="cycle").previous is None
    assert keeper.promote(v2, reason="gate", actor="cycle").previous == v1
    assert MlflowClient(tracking_uri=mlflow_server_uri).get_model_version(
        "ticketune-http", v2
    ).source.startswith("mlflow-artifacts:")
    local = registry.download_adapter(v2, tmp_path / "download")
    assert files_of(local) == files_of(tmp_path / "adapters" / "h2")
    move = keeper.rollback(reason="http rollback", actor="operator")
    assert (move.previous, move.current) == (v2, v1)
    assert [(h["version"], h["champion"]) for h in keeper.history()] == [(v2, False), (v1, True)]
    assert registry.get_version_tags(v2)["ticketune.rollback_reason"] == "http rollback"
    store.close()


def test_registry_module_does_not_import_torch():
    code = "import sys, connectors.registry; sys.exit('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr or "connectors.registry imported torch"


def test_registry_module_is_an_adapter_without_the_champion_rules():
    code = ("import sys, connectors.registry; "
            "sys.exit(sorted(m for m in sys.modules if m.startswith('daemon.champion.') "
            "and m != 'daemon.champion.vocabulary') or 0)")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr or "connectors.registry imported the champion rules"
