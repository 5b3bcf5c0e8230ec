"""Champion moves on a real MLflow store: manual approval, the audit log, outside moves in the
MLflow UI (watched and honoured), the startup reconciliation of what a crash left, and `history`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prometheus_client import REGISTRY
from test_registry import make_adapter
from test_serving import Receiver

from connectors.registry import AdapterRegistry
from connectors.serving import ServingNotifier
from daemon.app.tables import history_table
from daemon.champion.keeper import ApprovalError, ChampionKeeper, NoChampionError, PromotionRefusedError
from daemon.config import ServingConfig
from daemon.store import ExampleStore

MODEL = "ticketune-champion-test"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def parts(tmp_path: Path, mlflow_sqlite_uri: str):
    receiver = Receiver()
    registry = AdapterRegistry(mlflow_sqlite_uri, MODEL)
    store = ExampleStore(tmp_path / "examples.db")
    serving = ServingNotifier(
        ServingConfig.model_validate({"targets": [{"kind": "webhook", "url": receiver.url, "secret": "s3cret"}],
                                      "backoff_seconds": 0.0}),
        registry, MODEL, tmp_path / "serving_pending.json",
    )
    keeper = ChampionKeeper(store, registry, serving)
    yield registry, store, keeper, receiver, tmp_path
    receiver.close()
    store.close()


def register(registry: AdapterRegistry, tmp_path: Path, cycle_id: str, verdict: str, *,
             state: str = "complete", parent: str = "", base: str = "base-a") -> str:
    run_id = registry.start_cycle_run(cycle_id, {}, {})
    tags = {"ticketune.verdict": verdict, "ticketune.state": state, "ticketune.cycle_id": cycle_id,
            "ticketune.parent_champion": parent, "ticketune.base_model_fingerprint": base,
            "ticketune.base_model": f"/models/{base}",
            "ticketune.metrics": json.dumps({"candidate_eval_loss": 2.0, "base_eval_loss": 3.0})}
    version = registry.register_candidate(run_id, make_adapter(tmp_path / "adapters", cycle_id), tags)
    registry.end_run(run_id, "FINISHED")
    return version


def test_manual_approval_leaves_the_candidate_waiting_until_approve(parts) -> None:
    registry, store, keeper, receiver, tmp_path = parts
    waiting = register(registry, tmp_path, "c-1", "awaiting_approval")
    keeper.refresh_gauges()
    assert registry.champion_version() is None
    assert metric("ticketune_candidates_awaiting_approval") == 1

    move = keeper.approve(waiting, reason="checked the report", actor="cli:ana")
    assert (move.previous, move.current, move.action) == (None, waiting, "approve")
    assert registry.champion_version() == waiting
    tags = registry.get_version_tags(waiting)
    assert tags["ticketune.verdict"] == "promoted"
    assert (tags["ticketune.approved_by"], tags["ticketune.approval_reason"]) == ("cli:ana", "checked the report")
    assert metric("ticketune_candidates_awaiting_approval") == 0
    assert [b["event"] for b in receiver.bodies] == ["promoted"]

    assert keeper.approve(waiting, reason="again", actor="cli:ana").moved is False  # a repeat changes nothing
    loser = register(registry, tmp_path, "c-3", "promoted")
    with pytest.raises(ApprovalError, match="not awaiting approval"):
        keeper.approve(loser, reason="not waiting", actor="cli:ana")
    rejected = register(registry, tmp_path, "c-2", "rejected")
    with pytest.raises(ApprovalError, match="promote --force"):
        keeper.approve(rejected, reason="no", actor="cli:ana")

    audit = store.champion_moves()
    assert [(row["action"], row["version"], row["actor"], row["state"]) for row in audit] == [
        ("approve", waiting, "cli:ana", "done")
    ]


def test_every_move_is_audited_with_who_when_why_and_forced_is_recorded(parts) -> None:
    registry, store, keeper, receiver, tmp_path = parts
    v1 = register(registry, tmp_path, "c-1", "promoted")
    v2 = register(registry, tmp_path, "c-2", "rejected")
    v3 = register(registry, tmp_path, "c-3", "promoted", parent=v1)
    keeper.promote(v1, reason="first", actor="cycle")
    with pytest.raises(PromotionRefusedError, match="--force"):
        keeper.promote(v2, reason="try", actor="cli:bo")
    keeper.promote(v2, reason="incident 42: v1 misroutes refunds", actor="cli:bo", force=True)
    keeper.promote(v3, reason="cycle c-3 passed the gate", actor="cycle")
    assert keeper.promote(v3, reason="again", actor="cli:bo").moved is False  # idempotent

    move = keeper.rollback(reason="customers complain", actor="admin")  # to the previous champion, forced once
    assert (move.previous, move.current, move.forced) == (v3, v2, True)
    keeper.rollback(to_version=v1, reason="back to the last good one", actor="admin")
    assert keeper.rollback(to_version=v1, reason="repeated after a timeout", actor="admin").moved is False
    with pytest.raises(PromotionRefusedError, match="roll back to it with --force"):
        keeper.rollback(to_version=v2, reason="x", actor="cli:bo")  # named: a rejected version needs --force

    audit = list(reversed(store.champion_moves()))
    assert [(r["action"], r["previous"], r["version"], r["forced"]) for r in audit] == [
        ("promote", None, v1, False), ("promote", v1, v2, True), ("promote", v2, v3, False),
        ("rollback", v3, v2, True), ("rollback", v2, v1, False),
    ]
    assert audit[1]["reason"] == "incident 42: v1 misroutes refunds" and audit[1]["actor"] == "cli:bo"
    assert all(r["at"] and r["state"] == "done" for r in audit)
    tags = registry.get_version_tags(v2)
    assert (tags["ticketune.promotion_forced"], tags["ticketune.promoted_by"]) == ("true", "cli:bo")
    assert registry.get_version_tags(v3)["ticketune.rollback_reason"] == "customers complain"
    assert [b["event"] for b in receiver.bodies] == ["promoted", "promoted", "promoted", "rolled_back", "rolled_back"]


def test_an_alias_moved_in_the_mlflow_ui_is_handled_like_a_rollback_and_a_failed_version_raises_the_alert(
    parts, mlflow_sqlite_uri: str
) -> None:
    registry, store, keeper, receiver, tmp_path = parts
    v1 = register(registry, tmp_path, "c-1", "promoted")
    v2 = register(registry, tmp_path, "c-2", "rejected")
    v3 = register(registry, tmp_path, "c-3", "promoted", parent=v1)
    keeper.promote(v1, reason="first", actor="cycle")
    keeper.promote(v3, reason="second", actor="cycle")
    assert keeper.watch_once() is None  # nothing moved
    outside_before = metric("ticketune_outside_alias_moves_total", gate="passed")

    ui = MlflowClient(tracking_uri=mlflow_sqlite_uri, registry_uri=mlflow_sqlite_uri)
    ui.set_registered_model_alias(MODEL, "champion", v1)  # an operator's rollback in the MLflow UI
    move = keeper.watch_once()
    assert (move.action, move.previous, move.current, move.forced) == ("outside_move", v3, v1, False)
    assert metric("ticketune_outside_alias_moves_total", gate="passed") == outside_before + 1
    assert metric("ticketune_champion_failed_gate") == 0
    assert receiver.bodies[-1]["event"] == "rolled_back" and receiver.bodies[-1]["version"] == v1
    assert keeper.watch_once() is None  # recorded once

    ui.set_registered_model_alias(MODEL, "champion", v2)  # a version the gate rejected
    move = keeper.watch_once()
    assert move.forced is True
    assert metric("ticketune_champion_failed_gate") == 1
    tags = registry.get_version_tags(v2)
    assert (tags["ticketune.promotion_forced"], tags["ticketune.promoted_by"]) == ("true", "outside ticketune")
    last = store.champion_moves()[0]
    assert (last["action"], last["previous"], last["version"], last["forced"]) == ("outside_move", v1, v2, True)
    assert "rejected" in last["reason"]
    assert "ticketune.champion_events" not in (ui.get_registered_model(MODEL).tags or {})  # the store keeps the log

    # the next rollback walks back from the operator's choice, as from ticketune's own moves
    move = keeper.rollback(reason="v2 was a mistake", actor="cli:bo")
    assert (move.previous, move.current, move.forced) == (v2, v1, False)
    with pytest.raises(NoChampionError, match="first champion"):  # v1 replaced nobody: the undo stack is empty
        keeper.rollback(reason="again", actor="cli:bo")
    keeper.promote(v3, reason="fixed", actor="cli:bo")
    assert metric("ticketune_champion_failed_gate") == 0


def test_a_move_in_flight_in_another_process_is_not_mistaken_for_an_outside_move(parts, mlflow_sqlite_uri) -> None:
    registry, store, keeper, receiver, tmp_path = parts
    v1 = register(registry, tmp_path, "c-1", "promoted")
    v2 = register(registry, tmp_path, "c-2", "promoted")
    keeper.promote(v1, reason="first", actor="cycle")
    # another process (the CLI) wrote its audit row and moved the alias, and has not settled the row yet
    store.begin_move("promote", v2, v1, actor="cli:bo", reason="by hand")
    MlflowClient(tracking_uri=mlflow_sqlite_uri, registry_uri=mlflow_sqlite_uri).set_registered_model_alias(
        MODEL, "champion", v2)
    assert keeper.watch_once() is None
    assert [r["action"] for r in store.champion_moves()] == ["promote", "promote"]


def test_first_watch_of_a_store_takes_the_champion_as_it_finds_it(parts, mlflow_sqlite_uri) -> None:
    registry, store, keeper, receiver, tmp_path = parts
    v1 = register(registry, tmp_path, "c-1", "promoted")
    MlflowClient(tracking_uri=mlflow_sqlite_uri, registry_uri=mlflow_sqlite_uri).set_registered_model_alias(
        MODEL, "champion", v1)
    assert keeper.watch_once() is None
    assert [(r["action"], r["version"]) for r in store.champion_moves()] == [("observed", v1)]
    assert receiver.bodies == []


def test_reconcile_settles_half_registered_versions_and_an_interrupted_promotion(parts) -> None:
    registry, store, keeper, receiver, tmp_path = parts
    v1 = register(registry, tmp_path, "c-1", "promoted")
    keeper.promote(v1, reason="first", actor="cycle")
    # crash 1: registered, the store never recorded the decision → abandoned, never promotable
    store.start_cycle("c-2", "schedule")
    half = register(registry, tmp_path, "c-2", "promoted", state="registering", parent=v1)
    # crash 2: the store closed the batch, the version was never tagged complete nor promoted
    store.start_cycle("c-3", "schedule")
    snapshot = store.create_snapshot("c-3", v1, replay_fraction=0.0)
    decided = register(registry, tmp_path, "c-3", "promoted", state="registering", parent=v1)
    store.close_batch(snapshot.id, verdict="promoted", model_version=decided)
    # crash 3: an audit row left pending by a move that never happened
    store.begin_move("rollback", "99", v1, actor="cli:bo", reason="crashed")

    with pytest.raises(PromotionRefusedError, match="registering"):
        keeper.promote(half, reason="x", actor="cli:bo", force=True)
    notes = keeper.reconcile()

    assert any("abandoned" in note for note in notes), notes
    tags = registry.get_version_tags(half)
    assert (tags["ticketune.state"], tags["ticketune.verdict"]) == ("abandoned", "abandoned")
    with pytest.raises(PromotionRefusedError, match="abandoned"):
        keeper.promote(half, reason="x", actor="cli:bo", force=True)
    assert registry.get_version_tags(decided)["ticketune.state"] == "complete"
    assert registry.champion_version() == decided  # the interrupted promotion was completed
    cycles = {c["cycle_id"]: c for c in store.cycles()}
    assert (cycles["c-3"]["verdict"], cycles["c-3"]["model_version"]) == ("promoted", decided)
    assert cycles["c-2"]["ended_at"] is None  # left for fail_unfinished_cycles: its batch is still pending
    assert not store.pending_moves()
    assert store.champion_moves()[1]["state"] == "abandoned"
    assert keeper.reconcile() == []  # a second run finds nothing to do


def test_history_table_shows_the_champion_since_when_and_the_break_of_a_new_base(parts) -> None:
    registry, store, keeper, receiver, tmp_path = parts
    v1 = register(registry, tmp_path, "c-1", "promoted", base="base-a")
    v2 = register(registry, tmp_path, "c-2", "rejected", base="base-a")
    v3 = register(registry, tmp_path, "c-3", "promoted", base="base-b")
    keeper.promote(v1, reason="first", actor="cycle")
    keeper.promote(v3, reason="new base", actor="cycle")
    rows = keeper.history()
    table = history_table(rows)
    lines = table.splitlines()
    champion_line = next(line for line in lines if line.startswith(f"v{v3} "))
    assert "<- champion since 20" in champion_line
    assert "1.0000" in champion_line  # the gain over the reference, from the version's metrics
    brk = lines.index(champion_line) + 1
    assert "new base model" in lines[brk] and "base-b" in lines[brk]
    assert lines[brk + 1].startswith(f"v{v2} ") and "rejected" in lines[brk + 1]
    assert not any("new base model" in line for line in lines[brk + 1:])


def test_rollback_after_an_outside_move_goes_to_the_champion_it_replaced(parts, mlflow_sqlite_uri) -> None:
    """The rollback target comes from the store's audit log, where outside moves are recorded too
    (it used to come from an MLflow tag that knew only ticketune's own promotions, and refused with
    "the event log has no promotion of the current champion")."""
    registry, store, keeper, receiver, tmp_path = parts
    v1, v2, v3 = (register(registry, tmp_path, f"c-{i}", "promoted") for i in (1, 2, 3))
    ui = MlflowClient(tracking_uri=mlflow_sqlite_uri, registry_uri=mlflow_sqlite_uri)
    ui.set_registered_model_alias(MODEL, "champion", v1)  # the champion before ticketune ever moved it
    assert keeper.watch_once() is None  # taken as found (`observed`)
    keeper.promote(v2, reason="cycle c-2 passed the gate", actor="cycle")
    ui.set_registered_model_alias(MODEL, "champion", v3)  # an operator's promotion in the MLflow UI
    assert keeper.watch_once().action == "outside_move"

    move = keeper.rollback(reason="v3 misroutes refunds", actor="cli:bo")
    assert (move.previous, move.current) == (v3, v2)
    move = keeper.rollback(reason="v2 too", actor="cli:bo")  # walks back like an undo stack
    assert (move.previous, move.current) == (v2, v1)
    with pytest.raises(NoChampionError, match="no earlier one"):
        keeper.rollback(reason="and again", actor="cli:bo")
    assert registry.champion_version() == v1
    assert [(r["action"], r["previous"], r["version"]) for r in reversed(store.champion_moves())] == [
        ("observed", None, v1), ("promote", v1, v2), ("outside_move", v2, v3), ("rollback", v3, v2),
        ("rollback", v2, v1),
    ]
    rows = {row["version"]: row for row in keeper.history()}
    assert rows[v1]["champion"] and rows[v1]["champion_since"] == store.champion_moves()[0]["at"]


def test_rollback_from_another_process_counts_an_outside_move_no_watcher_has_seen_yet(
    parts, mlflow_sqlite_uri
) -> None:
    registry, store, keeper, receiver, tmp_path = parts
    v1, v2, v3, v4 = (register(registry, tmp_path, f"c-{i}", "promoted") for i in (1, 2, 3, 4))
    keeper.promote(v1, reason="first", actor="cycle")
    keeper.promote(v2, reason="second", actor="cycle")
    MlflowClient(tracking_uri=mlflow_sqlite_uri, registry_uri=mlflow_sqlite_uri).set_registered_model_alias(
        MODEL, "champion", v3)  # moved in the UI; this process (the CLI) watches nothing
    move = keeper.rollback(reason="undo the UI move", actor="cli:bo")
    assert (move.previous, move.current) == (v3, v2)
    # `rollback --to` a version that was never champion takes the place of the one it replaced
    keeper.rollback(to_version=v4, reason="try v4", actor="cli:bo")
    assert keeper.rollback(to_version=v4, reason="repeated", actor="cli:bo").moved is False
    assert keeper.rollback(reason="v4 is worse", actor="cli:bo").current == v1


def test_a_move_made_by_another_process_reaches_the_running_service_gauges_at_its_next_loop(
    service_config, monkeypatch
) -> None:
    """`ticketune promote --force` and `rollback --to` write their own audit rows, so the alias watch
    sees no outside move: the service's loop notices the new rows in the shared store instead."""
    from daemon.app.service import Service
    from daemon.app.wiring import build_registry
    from daemon.config import load_settings
    from daemon.store import open_store

    settings = load_settings(service_config, environ={})
    service = Service(settings)
    tmp_path = service_config.parent
    passed = register(service.registry, tmp_path, "c-1", "promoted")
    rejected = register(service.registry, tmp_path, "c-2", "rejected")
    service.registry.set_version_tags(passed, {"ticketune.metrics": json.dumps({"candidate_eval_loss": 1.5})})
    service.keeper.promote(passed, reason="first", actor="cycle")
    service.startup(with_scheduler=False, with_ingest=False)
    cli_store = open_store(settings.store)
    cli = ChampionKeeper(cli_store, build_registry(settings))  # the CLI's keeper, as in another process:
    monkeypatch.setattr(cli, "refresh_gauges", lambda: None)  # its gauges are not the service's
    registry_reads = []
    monkeypatch.setattr(service.registry, "list_versions", lambda real=service.registry.list_versions:
                        registry_reads.append(1) or real())
    try:
        assert (metric("ticketune_champion_version"), metric("ticketune_champion_failed_gate")) == (float(passed), 0)
        assert metric("ticketune_champion_eval_loss_nats") == 1.5

        cli.promote(rejected, reason="incident 42", actor="cli:bo", force=True)
        service._refresh_gauges()  # what each pass of the main loop runs
        assert (metric("ticketune_champion_version"), metric("ticketune_champion_failed_gate")) == (float(rejected), 1)
        assert metric("ticketune_champion_eval_loss_nats") == 2.0  # the new champion's own figure
        service._refresh_gauges()
        service._refresh_gauges()
        assert len(registry_reads) == 1  # once per move, not a registry call every pass

        cli.rollback(to_version=passed, reason="back", actor="cli:bo")
        service._refresh_gauges()
        assert (metric("ticketune_champion_version"), metric("ticketune_champion_failed_gate")) == (float(passed), 0)
        assert metric("ticketune_champion_eval_loss_nats") == 1.5
    finally:
        cli_store.close()
        service.shutdown()


def test_the_champion_eval_loss_follows_each_move_and_is_cleared_for_a_champion_without_one(parts) -> None:
    registry, store, keeper, receiver, tmp_path = parts
    v1 = register(registry, tmp_path, "c-1", "promoted")
    v2 = register(registry, tmp_path, "c-2", "promoted")
    registry.set_version_tags(v1, {"ticketune.metrics": json.dumps({"candidate_eval_loss": 1.25})})
    registry.set_version_tags(v2, {"ticketune.metrics": "{}"})
    keeper.promote(v1, reason="first", actor="cycle")
    assert metric("ticketune_champion_eval_loss_nats") == 1.25
    keeper.promote(v2, reason="second", actor="cli:bo")
    assert math.isnan(REGISTRY.get_sample_value("ticketune_champion_eval_loss_nats"))
    keeper.rollback(reason="back", actor="admin")
    assert metric("ticketune_champion_eval_loss_nats") == 1.25
