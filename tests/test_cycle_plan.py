"""The cycle plan (daemon/cycle/plan.py): a pure function from the registry's and the store's facts."""

from dataclasses import replace

from daemon.cycle.plan import CycleFacts, Resumption, plan_cycle

FACTS = CycleFacts(champion="3", champion_base="fp-a", base_fingerprint="fp-a", erased=False, resumption=None,
                   new_cycle_id="c-new", pending=500, force=False, min_new_examples=200, warm_start_champion=True)


def test_an_ordinary_cycle_warm_starts_from_the_champion_and_compares_it():
    plan = plan_cycle(FACTS)
    assert (plan.kind, plan.cycle_id, plan.warm_start, plan.compare_champion) == ("incremental", "c-new", True, True)
    assert plan.take_snapshot and not plan.replay_all and plan.fresh_reason is None


def test_too_few_new_examples_skip_unless_forced_or_erased():
    few = replace(FACTS, pending=10)
    assert plan_cycle(few).kind == "skip"
    assert plan_cycle(few).skip_reason == "10 new examples since the last cycle, schedule.min_new_examples is 200"
    assert plan_cycle(replace(few, force=True)).kind == "incremental"
    assert plan_cycle(replace(few, erased=True)).kind == "erased"


def test_a_champion_of_another_base_starts_a_new_lineage_without_it():
    plan = plan_cycle(replace(FACTS, champion_base="fp-old"))
    assert (plan.kind, plan.fresh_reason, plan.warm_start, plan.compare_champion) == ("new_base", "new_base", False,
                                                                                      False)
    assert plan.replay_all


def test_a_champion_trained_on_erased_data_is_compared_but_not_warm_started():
    plan = plan_cycle(replace(FACTS, erased=True))
    assert (plan.kind, plan.warm_start, plan.compare_champion, plan.replay_all) == ("erased", False, True, True)


def test_a_resumption_keeps_its_cycle_id_and_snapshot():
    snapshot = object()
    plan = plan_cycle(replace(FACTS, resumption=Resumption("c-old", snapshot), pending=0))  # type: ignore[arg-type]
    assert (plan.kind, plan.cycle_id, plan.snapshot, plan.take_snapshot) == ("resume", "c-old", snapshot, False)
    assert plan.skip_reason is None


def test_no_champion_trains_fresh_and_compares_nothing():
    plan = plan_cycle(replace(FACTS, champion=None, champion_base=None))
    assert (plan.kind, plan.warm_start, plan.compare_champion) == ("incremental", False, False)
