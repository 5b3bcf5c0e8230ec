"""Online probation: the outcome records, the sequential test and its false-alarm rate, the monitor's decisions
against a real store and a real MLflow registry, and the rollback it makes through the keeper."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from daemon.champion import online
from daemon.champion.probation import OnlineMonitor, stored_probation
from daemon.champion.rules import PromotionRefusedError
from daemon.champion.vocabulary import ONLINE_ACTOR, TAG_ONLINE_ROLLED_BACK
from daemon.config import load_settings
from daemon.ingest.outcomes import outcome_row
from daemon.store import ExampleStore, OutcomeRow
from daemon.tickets import ticket_from_dict

MARGINS = {"csat": 0.3, "draft_acceptance": 0.05}
CATEGORIES = ("billing", "shipping", "account")


def outcomes(version: str, n: int, *, csat_p, accept_p: float, start: datetime, seed: int) -> list[online.Outcome]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        rows.append(online.Outcome(
            ticket_id=f"{version}-{seed}-{i}", model_version=version,
            resolved_at=(start + timedelta(minutes=i)).isoformat(timespec="seconds"),
            category=CATEGORIES[i % len(CATEGORIES)], csat=float(rng.choice([1, 2, 3, 4, 5], p=csat_p)),
            accepted=bool(rng.random() < accept_p)))
    return rows


GOOD = [0.05, 0.05, 0.1, 0.3, 0.5]  # mean 4.15
BAD = [0.3, 0.25, 0.2, 0.15, 0.1]  # mean 2.5
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
MOVE = T0 + timedelta(days=10)


def judge(new, previous, min_tickets=200, alpha=0.05):
    return online.judge_probation(new, previous, champion="2", predecessor="1", since=MOVE.isoformat(),
                                  min_tickets=min_tickets, alpha=alpha, margins=MARGINS)


def test_a_worse_champion_is_found_worse_and_one_as_good_is_not():
    previous = outcomes("1", 400, csat_p=GOOD, accept_p=0.6, start=T0, seed=1)
    worse = judge(outcomes("2", 200, csat_p=BAD, accept_p=0.3, start=MOVE, seed=2), previous)
    assert worse.state == online.WORSE and all(t.worse for t in worse.tests), worse.summary()
    same = judge(outcomes("2", 200, csat_p=GOOD, accept_p=0.6, start=MOVE, seed=3), previous)
    assert same.state == online.WATCHING and not any(t.worse for t in same.tests), same.summary()
    assert same.figure("csat", "champion") > 3.5 and worse.figure("csat", "champion") < 3.0


def test_nothing_is_decided_before_min_tickets_and_without_comparable_tickets():
    previous = outcomes("1", 400, csat_p=GOOD, accept_p=0.6, start=T0, seed=1)
    early = judge(outcomes("2", 199, csat_p=BAD, accept_p=0.0, start=MOVE, seed=2), previous)
    assert early.state == online.WAITING and "199 of 200" in early.message
    nothing = judge(outcomes("2", 200, csat_p=BAD, accept_p=0.0, start=MOVE, seed=2), [])
    assert nothing.state == online.NO_DATA and "no comparable tickets" in nothing.message


def test_pairs_keep_the_category_mix_and_stay_the_same_as_tickets_arrive():
    previous = outcomes("1", 90, csat_p=GOOD, accept_p=0.6, start=T0, seed=1)
    new = outcomes("2", 30, csat_p=GOOD, accept_p=0.6, start=MOVE, seed=2)
    pairs = online.pair_by_category(new, previous)
    assert len(pairs) == 30 and all(n.category == p.category for n, p in pairs)
    assert online.pair_by_category(new[:10], previous) == pairs[:10]  # nested: the test's samples only grow
    newest = max(o.resolved_at for o in previous if o.category == new[0].category)
    assert pairs[0][1].resolved_at == newest  # the predecessor's most recent ticket of that category


def test_the_repeated_test_keeps_its_false_alarm_rate_under_no_difference():
    """Checked after every ticket from the first decision on, over many runs where the two versions are the
    same (margin 0, the hardest case): the share of runs that ever alarm stays at most alpha per metric."""
    rng = np.random.default_rng(7)
    alpha, runs, n, first = 0.05, 600, 1500, 100
    threshold = np.log(1 / alpha)
    tau2_csat, tau2_binary = online.mixture_variance(0.3), online.mixture_variance(0.05)

    def ever_alarms(differences: np.ndarray, tau2: float) -> bool:
        return bool((online.msprt_log_statistic(differences, tau2)[first - 1:] >= threshold).any())

    alarms_csat = alarms_binary = 0
    for _ in range(runs):
        a = rng.choice([1, 2, 3, 4, 5], size=n, p=GOOD)
        b = rng.choice([1, 2, 3, 4, 5], size=n, p=GOOD)
        alarms_csat += ever_alarms(a - b, tau2_csat)
        x, y = rng.random(n) < 0.6, rng.random(n) < 0.6
        alarms_binary += ever_alarms(x.astype(float) - y, tau2_binary)
    # binomial sampling error over 600 runs at 5% is about 0.9 points: 2.5 standard errors above alpha
    assert alarms_csat / runs <= alpha + 0.023, alarms_csat / runs
    assert alarms_binary / runs <= alpha + 0.023, alarms_binary / runs
    # and it is not a test that never fires: a real shortfall is found in most runs
    found = sum(ever_alarms(rng.choice([1, 2, 3, 4, 5], size=400, p=GOOD)
                            - rng.choice([1, 2, 3, 4, 5], size=400, p=BAD) - 0.3, tau2_csat) for _ in range(100))
    assert found >= 90


def test_a_ticket_drafted_by_a_version_becomes_an_outcome_row_without_its_text():
    ticket = ticket_from_dict({
        "ticket_id": "t-1", "status": "solved", "csat": 2, "category": "billing",
        "resolved_at": "2026-11-02T12:00:00+01:00",
        "requester": {"id": "u-1", "email": "Ana@Example.com"},
        "messages": [{"author_role": "customer", "body": "Where is my refund?"},
                     {"author_role": "agent", "body": "Your refund was sent today."}],
        "ai_assist": {"model_name": "ticketune-support", "model_version": 3, "draft": "Your refund was sent.",
                      "outcome": "edited"},
    })
    row = outcome_row(ticket)
    assert (row.model_version, row.csat, row.outcome, row.category) == ("3", 2, "edited", "billing")
    assert row.resolved_at == "2026-11-02T11:00:00+00:00" and 0 < row.edit_ratio < 0.5
    assert set(row.identities) == {"email:ana@example.com", "id:u-1"}
    assert "refund" not in json.dumps(row.__dict__)
    no_draft = ticket_from_dict({**ticket.model_dump(mode="json"), "ai_assist": None})
    assert outcome_row(no_draft) is None


def store_rows(store: ExampleStore, version: str, n: int, *, csat: float, outcome: str, start: datetime,
               prefix: str, step: timedelta = timedelta(minutes=1)) -> None:
    store.record_outcomes([OutcomeRow(f"{prefix}-{i}", "m", version,
                                      (start + i * step).isoformat(timespec="seconds"),
                                      CATEGORIES[i % 3], csat if i % 4 else csat - 1, outcome, 0.0,
                                      (f"id:{prefix}-{i}",)) for i in range(n)])


def test_outcome_rows_are_erased_with_their_requester_and_never_recorded_again(tmp_path):
    store = ExampleStore(tmp_path / "s.db")
    store_rows(store, "1", 3, csat=5, outcome="sent_as_is", start=T0, prefix="r")
    assert len(store.outcomes("1")) == 3
    store.forget(requester_id="r-1")
    assert [r["ticket_id"] for r in store.outcomes("1")] == ["r-0", "r-2"]
    store_rows(store, "1", 3, csat=5, outcome="sent_as_is", start=T0, prefix="r")  # a redelivery
    assert [r["ticket_id"] for r in store.outcomes("1")] == ["r-0", "r-2"]
    store.close()


@pytest.fixture
def monitored(tmp_path, mlflow_sqlite_uri):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}))

    def make(auto_rollback: bool, min_tickets: int = 60):
        settings = load_settings(environ={
            "TICKETUNE_STORE__PATH": str(tmp_path / "store.db"),
            "TICKETUNE_REGISTRY__TRACKING_URI": mlflow_sqlite_uri,
            "TICKETUNE_REGISTRY__MODEL_NAME": "online-test",
            "TICKETUNE_ONLINE__AUTO_ROLLBACK": str(auto_rollback).lower(),
            "TICKETUNE_ONLINE__MIN_TICKETS": str(min_tickets),
        })
        from daemon.app.wiring import build_keeper, build_registry

        store = ExampleStore(settings.store.path)
        registry = build_registry(settings)
        keeper = build_keeper(settings, store, registry)
        for _ in range(2):
            run_id = registry.start_cycle_run("c", {}, {})
            version = registry.register_candidate(run_id, adapter, {"ticketune.verdict": "promoted",
                                                                             "ticketune.state": "complete"})
            registry.end_run(run_id)
            keeper.promote(version, reason="test", actor="test")
        return settings, store, registry, keeper, OnlineMonitor(settings, store, keeper)
    return make


def test_with_auto_rollback_a_worse_champion_is_rolled_back_by_the_online_monitor(monitored):
    settings, store, registry, keeper, monitor = monitored(auto_rollback=True)
    since = keeper.audit_log()[-1]["at"]
    moved = datetime.fromisoformat(since)
    store_rows(store, "1", 120, csat=5, outcome="sent_as_is", start=moved - timedelta(days=3), prefix="old")
    store_rows(store, "2", 59, csat=2, outcome="discarded", start=moved + timedelta(seconds=1), prefix="new")
    assert monitor.check().state == online.WAITING and registry.champion_version() == "2"
    store_rows(store, "2", 60, csat=2, outcome="discarded", start=moved + timedelta(seconds=1), prefix="new")
    decided = monitor.check()
    assert decided.state == online.WORSE, decided.summary()
    assert registry.champion_version() == "1"
    last = keeper.audit_log()[-1]
    assert (last["action"], last["version"], last["previous"], last["actor"]) == ("rollback", "1", "2", ONLINE_ACTOR)
    assert "csat" in last["reason"] and "draft_acceptance" in last["reason"]
    assert "csat" in registry.get_version_tags("2")[TAG_ONLINE_ROLLED_BACK]
    with pytest.raises(PromotionRefusedError, match="online monitor"):
        keeper.promote("2", reason="again", actor="test")
    assert keeper.promote("2", reason="again", actor="test", force=True).current == "2"
    assert stored_probation(store)["state"] == online.WORSE
    store.close()


def test_without_auto_rollback_a_worse_champion_raises_the_alert_only_and_an_equal_one_stays(monitored):
    settings, store, registry, keeper, monitor = monitored(auto_rollback=False)
    moved = datetime.fromisoformat(keeper.audit_log()[-1]["at"])
    store_rows(store, "1", 120, csat=5, outcome="sent_as_is", start=moved - timedelta(days=3), prefix="old")
    store_rows(store, "2", 60, csat=5, outcome="sent_as_is", start=moved + timedelta(seconds=1), prefix="new")
    store_rows(store, "7", 5, csat=1, outcome="discarded", start=moved + timedelta(seconds=1), prefix="other")
    same = monitor.check()
    assert same.state == online.WATCHING and same.ignored_tickets == 5 and registry.champion_version() == "2"
    store_rows(store, "2", 60, csat=1, outcome="discarded", start=moved + timedelta(seconds=1), prefix="new")
    from prometheus_client import REGISTRY
    worse = monitor.check()
    assert worse.state == online.WORSE and registry.champion_version() == "2"
    assert REGISTRY.get_sample_value("ticketune_online_champion_worse") == 1.0
    assert REGISTRY.get_sample_value("ticketune_online_csat", {"role": "champion"}) < \
        REGISTRY.get_sample_value("ticketune_online_csat", {"role": "previous"})
    store.close()


def test_tickets_without_drafts_never_count_and_status_says_no_decision_yet(monitored):
    from daemon.app.wiring import collect_status
    from daemon.ingest.loop import SourceRecord, classify
    from daemon.tickets import parse_canonical

    settings, store, registry, keeper, monitor = monitored(auto_rollback=True, min_tickets=10)
    outcomes_seen: list = []
    for i in range(30):  # resolved tickets the new champion never drafted (no ai_assist)
        ticket = {"ticket_id": f"plain-{i}", "status": "solved", "csat": 1, "category": "billing",
                  "messages": [{"author_role": "customer", "body": "Where is my parcel?"},
                               {"author_role": "agent", "body": "It arrives tomorrow."}]}
        record = SourceRecord("t", 0, i, f"plain-{i}".encode(), json.dumps(ticket).encode())
        classify(record, parse_canonical, None, None, outcomes=outcomes_seen)
    assert outcomes_seen == []
    probation = monitor.check()
    assert probation.state == online.WAITING and registry.champion_version() == "2"
    status = collect_status(settings, store, registry)["online_probation"]
    assert status["state"] == "waiting" and status["message"] == "0 of 10 tickets drafted by v2 so far", status
    store.close()


def test_the_monitor_never_undoes_its_own_rollback(monitored):
    settings, store, registry, keeper, monitor = monitored(auto_rollback=True)
    moved = datetime.fromisoformat(keeper.audit_log()[-1]["at"])
    store_rows(store, "1", 120, csat=5, outcome="sent_as_is", start=moved - timedelta(days=3), prefix="old")
    # v2's tickets all resolved in the second of its move, so that they precede the rollback
    store_rows(store, "2", 60, csat=3, outcome="discarded", start=moved, prefix="new", step=timedelta(0))
    time.sleep(1.1)
    assert monitor.check().state == online.WORSE and registry.champion_version() == "1"
    back = datetime.fromisoformat(keeper.audit_log()[-1]["at"])
    # v1, restored, now does even worse than v2 did: found worse, but it stays (no ping-pong, no retry loop)
    store_rows(store, "1", 60, csat=1, outcome="discarded", start=back + timedelta(seconds=1), prefix="later")
    again = monitor.check()
    assert again.state == online.WORSE and (again.champion, again.previous) == ("1", "2"), again.summary()
    assert registry.champion_version() == "1"
    assert [m["actor"] for m in keeper.audit_log()].count(ONLINE_ACTOR) == 1
    store.close()
