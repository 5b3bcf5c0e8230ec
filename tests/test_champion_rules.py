"""The rules of a version's life as pure functions (daemon/champion/rules.py): no MLflow, no store."""

from __future__ import annotations

import pytest

from daemon.champion.rules import (
    ApprovalError,
    NoChampionError,
    PromotionRefusedError,
    approval_is_repeat,
    champion_since,
    champion_stack,
    is_forced,
    previous_champion,
    refusal,
    rollback_target,
)


def move(action: str, version: str | None, previous: str | None, state: str = "done", at: str = "t") -> dict:
    return {"action": action, "version": version, "previous": previous, "state": state, "at": at}


def test_promotions_push_and_rollbacks_pop_like_an_undo_stack() -> None:
    log = [move("promote", "1", None), move("promote", "2", "1"), move("approve", "3", "2")]
    assert champion_stack(log) == ["1", "2", "3"]
    assert previous_champion(log, "3") == "2"
    log.append(move("rollback", "2", "3"))
    assert champion_stack(log) == ["1", "2"] and previous_champion(log, "2") == "1"
    log.append(move("rollback", "1", "2"))
    with pytest.raises(NoChampionError, match="first champion"):
        previous_champion(log, "1")


def test_a_version_promoted_twice_rolls_back_to_what_it_replaced_the_second_time() -> None:
    log = [move("promote", "1", None), move("promote", "2", "1"), move("promote", "1", "2", at="t2"),
           move("promote", "3", "1")]
    assert previous_champion(log, "3") == "1"
    log.append(move("rollback", "1", "3"))
    assert previous_champion(log, "1") == "2"
    assert champion_since(log, "1") == "t"  # the newest move to it
    assert champion_since(log[:3], "1") == "t2"


def test_outside_moves_count_as_promotions_or_as_rollbacks_to_an_earlier_champion() -> None:
    log = [move("observed", "1", None), move("outside_move", "2", "1")]
    assert previous_champion(log, "2") == "1"  # the operator's promotion in the MLflow UI
    log += [move("promote", "3", "2"), move("outside_move", "2", "3")]
    assert champion_stack(log) == ["1", "2"]  # the operator's rollback in the MLflow UI
    log.append(move("outside_move", None, "2"))  # the alias removed: nothing to stack
    assert champion_stack(log) == ["1", "2"]


def test_moves_nobody_recorded_are_taken_from_previous_and_from_the_alias_now() -> None:
    log = [move("promote", "1", None), move("promote", "2", "1")]
    assert champion_stack(log, current="5") == ["1", "2", "5"]  # moved in the UI, not yet watched
    assert previous_champion(log, "5") == "2"
    log.append(move("promote", "6", "5"))  # a promotion from 5, whose arrival nobody recorded
    assert champion_stack(log) == ["1", "2", "5", "6"]


def test_pending_and_abandoned_moves_do_not_count_and_rollback_to_a_new_version_takes_the_top() -> None:
    log = [move("promote", "1", None), move("promote", "2", "1"), move("promote", "9", "2", state="abandoned"),
           move("promote", "8", "2", state="pending")]
    assert champion_stack(log) == ["1", "2"]
    log.append(move("rollback", "4", "2"))  # `rollback --to 4`, never champion
    assert champion_stack(log) == ["1", "4"]
    assert champion_stack([]) == [] and champion_stack([], current="3") == ["3"]


def test_rollback_target_checks_only_a_named_version_and_never_the_current_one() -> None:
    tags = {"1": {"ticketune.verdict": "rejected"}, "2": {"ticketune.verdict": "promoted"},
            "3": {"ticketune.verdict": "promoted", "ticketune.state": "abandoned"}}
    log = [move("promote", "1", None, ), move("promote", "2", "1")]
    assert rollback_target("2", None, moves=log, tags_of=tags.__getitem__) == "1"  # champion before: not checked
    with pytest.raises(PromotionRefusedError, match="roll back to it with --force"):
        rollback_target("2", "1", moves=log, tags_of=tags.__getitem__)
    assert rollback_target("2", "1", moves=log, tags_of=tags.__getitem__, force=True) == "1"
    with pytest.raises(PromotionRefusedError, match="abandoned"):
        rollback_target("2", "3", moves=log, tags_of=tags.__getitem__, force=True)
    with pytest.raises(NoChampionError, match="no 'champion' version"):
        rollback_target(None, None, moves=log, tags_of=tags.__getitem__)


def test_refusals_forced_moves_and_approval_repeats() -> None:
    assert refusal("1", {}, force=False) is None  # registered before the state tag: complete
    assert "--force" in refusal("1", {"ticketune.verdict": "rejected"}, force=False)
    assert refusal("1", {"ticketune.verdict": "rejected"}, force=True) is None
    assert "registering" in refusal("1", {"ticketune.state": "registering"}, force=True)
    rejected, passed = {"ticketune.verdict": "rejected"}, {"ticketune.verdict": "promoted"}
    assert is_forced("promote", passed, force=True) and not is_forced("promote", rejected)
    assert is_forced("rollback", rejected) and not is_forced("rollback", passed)
    assert is_forced("outside_move", rejected) and not is_forced("outside_move", passed)
    assert not is_forced("outside_move", {"ticketune.verdict": "awaiting_approval"})
    assert not is_forced("outside_move", None)  # the alias removed
    assert approval_is_repeat("1", {"ticketune.verdict": "awaiting_approval"}) is False
    assert approval_is_repeat("1", {"ticketune.verdict": "promoted", "ticketune.approved_by": "a"}) is True
    with pytest.raises(ApprovalError, match="promote --force"):
        approval_is_repeat("1", rejected)
    with pytest.raises(ApprovalError, match="not awaiting approval"):
        approval_is_repeat("1", passed)
