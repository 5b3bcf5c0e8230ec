"""The promotion gate: the paired bootstrap on the improvement, per-slice non-regression, and a
verdict that names every check with its numbers, within MLflow's tag limit."""

import json
from dataclasses import replace

import numpy as np
import pytest

from daemon.config import GateConfig
from daemon.gate.checks import (
    MAX_TAG_CHARS,
    GateInputs,
    PairedLosses,
    bootstrap_improvements,
    inputs_from_result,
    judge,
    paired_losses,
)
from daemon.gate.golden import GoldenSet


def synthetic(n: int, effect: float, seed: int, noise: float = 0.05, spread: float = 1.0) -> PairedLosses:
    """Examples whose difficulty varies by `spread` nats per token while the candidate is better by
    `effect` nats per token on average, give or take `noise`: the population improvement is `effect`."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, 120, n).astype(float)
    difficulty = 2.0 + spread * rng.standard_normal(n)
    reference = difficulty * tokens
    candidate = (difficulty - effect + noise * rng.standard_normal(n)) * tokens
    return PairedLosses(tuple(f"t{i:05d}" for i in range(n)), candidate, tokens, reference, tokens.copy())


def inputs_of(paired: PairedLosses, categories: dict | None = None, reference: str = "champion") -> GateInputs:
    candidate_loss, reference_loss = paired.losses()
    return GateInputs(len(paired), candidate_loss, reference_loss, reference, paired, categories or {})


def check(verdict, name: str):
    return next(c for c in verdict.checks if c.name == name)


def test_the_interval_covers_a_known_improvement_about_as_often_as_it_says():
    cfg = GateConfig(bootstrap_samples=500, min_eval_examples=1)
    covered = 0
    for seed in range(40):
        details = check(judge(inputs_of(synthetic(300, 0.2, seed)), cfg), "improvement").details
        low, high = details["interval"]
        covered += low < 0.2 < high
        assert details["lower_bound"] > 0.0  # a real effect of 0.2 nats clears superiority every time
    assert covered >= 34  # 95% nominal: 38 of 40 expected, binomial slack below


def test_no_effect_fails_superiority_and_passes_non_inferiority_within_a_margin():
    paired = synthetic(400, 0.0, seed=3)
    superiority = judge(inputs_of(paired), GateConfig(min_eval_examples=1))
    assert not superiority.passed
    assert superiority.reasons[0].startswith("FAIL improvement") and "lower bound -" in superiority.reasons[0]
    non_inferior = judge(inputs_of(paired), GateConfig(min_eval_examples=1, mode="non_inferiority",
                                                       non_inferiority_margin=0.05))
    assert non_inferior.passed
    details = check(non_inferior, "improvement").details
    assert details["threshold"] == -0.05 and -0.05 < details["lower_bound"] < 0.0 < details["interval"][1]
    worse = synthetic(400, -0.2, seed=3)
    assert not judge(inputs_of(worse), GateConfig(min_eval_examples=1, mode="non_inferiority",
                                                  non_inferiority_margin=0.05)).passed


def test_pairing_keeps_the_interval_narrow_where_independent_resamples_would_straddle_zero():
    paired = synthetic(200, 0.05, seed=5, noise=0.05, spread=1.0)
    verdict = judge(inputs_of(paired), GateConfig(min_eval_examples=1))
    details = check(verdict, "improvement").details
    assert verdict.passed and details["lower_bound"] > 0.03

    rng = np.random.default_rng(0)  # unpaired: each model's examples resampled on their own
    n = len(paired)
    a, b = rng.integers(0, n, (2000, n)), rng.integers(0, n, (2000, n))
    unpaired = (paired.reference_sums[a].sum(1) / paired.reference_tokens[a].sum(1)
                - paired.candidate_sums[b].sum(1) / paired.candidate_tokens[b].sum(1))
    assert np.quantile(unpaired, 0.05) < 0.0
    low, high = details["interval"]
    assert (high - low) * 10 < np.quantile(unpaired, 0.975) - np.quantile(unpaired, 0.025)


def test_losses_are_token_weighted_not_averaged_per_example():
    paired = paired_losses([["a", 100.0, 100], ["b", 3.0, 1]], [["a", 200.0, 100], ["b", 1.0, 1]])
    details = check(judge(inputs_of(paired), GateConfig(min_eval_examples=1)), "improvement").details
    # per-example means would say -0.5 (one example 1 nat better, one 2 nats worse)
    assert details["estimate"] == pytest.approx((201 - 103) / 101, abs=1e-6)
    assert details["candidate_loss"] == pytest.approx(103 / 101, abs=1e-6)
    replicates = bootstrap_improvements(paired, 200, seed=0)
    assert set(np.round(replicates, 6)) <= {1.0, -2.0, round((201 - 103) / 101, 6)}


def test_a_regressed_slice_fails_with_its_name_and_numbers_while_the_overall_improves():
    paired = synthetic(300, 0.3, seed=7)
    categories = {tid: ("refunds" if i < 40 else "billing" if i < 200 else "shipping")
                  for i, tid in enumerate(paired.ticket_ids)}
    refunds = np.arange(40)
    candidate = paired.candidate_sums.copy()
    candidate[refunds] = paired.reference_sums[refunds] + 0.2 * paired.candidate_tokens[refunds]
    regressed = PairedLosses(paired.ticket_ids, candidate, paired.candidate_tokens, paired.reference_sums,
                             paired.reference_tokens)
    verdict = judge(inputs_of(regressed, categories), GateConfig(min_eval_examples=1))
    assert not verdict.passed
    assert check(verdict, "improvement").passed
    reason = verdict.reasons[0]
    assert reason.startswith("FAIL slices: 3 categories") and "1 worse than the champion by more than 0.0500" in reason
    assert "refunds +0.2000" in reason and "40 examples" in reason
    worst = check(verdict, "slices").details["slices"][0]
    assert (worst["category"], worst["examples"], worst["status"]) == ("refunds", 40, "fail")
    assert worst["delta"] == pytest.approx(0.2, abs=1e-6) and worst["interval"][0] <= 0.2 <= worst["interval"][1]
    assert judge(inputs_of(regressed, categories), GateConfig(min_eval_examples=1, slice_tolerance_nats=0.25)).passed


def test_small_slices_are_reported_skipped_and_no_slice_at_all_is_off():
    paired = synthetic(60, 0.3, seed=2)
    categories = {tid: ("billing" if i < 45 else "returns" if i < 55 else None)
                  for i, tid in enumerate(paired.ticket_ids)}
    verdict = judge(inputs_of(paired, categories), GateConfig(min_eval_examples=1))
    slices = check(verdict, "slices")
    assert slices.status == "pass" and "1 with fewer than 20 examples skipped (returns 10)" in slices.message
    assert slices.details["skipped"] == [{"category": "returns", "examples": 10}]
    assert slices.details["uncategorised"] == 5

    tiny = judge(inputs_of(paired, {tid: "returns" for tid in paired.ticket_ids[:10]}), GateConfig(min_eval_examples=1))
    assert tiny.passed and any(r.startswith("off slices: skipped: no category has 20 examples") for r in tiny.reasons)
    off = judge(inputs_of(paired, categories), GateConfig(min_eval_examples=1, check_slices=False))
    assert "off slices: switched off (gate.check_slices: false)" in off.reasons


def test_the_same_seed_gives_the_same_verdict_and_another_seed_other_bounds():
    paired = synthetic(150, 0.1, seed=11)
    categories = {tid: f"c{i % 3}" for i, tid in enumerate(paired.ticket_ids)}
    first = judge(inputs_of(paired, categories), GateConfig(min_eval_examples=1, bootstrap_seed=4))
    again = judge(inputs_of(paired, categories), GateConfig(min_eval_examples=1, bootstrap_seed=4))
    other = judge(inputs_of(paired, categories), GateConfig(min_eval_examples=1, bootstrap_seed=5))
    assert first.to_dict() == again.to_dict() and first.reasons == again.reasons
    assert check(first, "improvement").details["lower_bound"] != check(other, "improvement").details["lower_bound"]


def test_the_gate_tag_stays_under_mlflows_limit_with_200_slices_keeping_the_worst():
    paired = synthetic(200 * 25, 0.2, seed=13)
    categories = {tid: f"intent-{i % 200:03d}" for i, tid in enumerate(paired.ticket_ids)}
    candidate = paired.candidate_sums.copy()
    worst = np.arange(0, len(paired), 200)  # every example of intent-000
    candidate[worst] = paired.reference_sums[worst] + 0.5 * paired.candidate_tokens[worst]
    regressed = PairedLosses(paired.ticket_ids, candidate, paired.candidate_tokens, paired.reference_sums,
                             paired.reference_tokens)
    verdict = judge(inputs_of(regressed, categories), GateConfig(min_eval_examples=1))
    tag = json.dumps(verdict.to_dict())
    assert len(tag) <= MAX_TAG_CHARS
    slices = json.loads(tag)["checks"][2]["details"]
    assert slices["slices"][0]["category"] == "intent-000" and slices["slices"][0]["status"] == "fail"
    assert len(slices["slices"]) + slices["slices_omitted"] == 200
    assert len(json.dumps(verdict.reasons)) < MAX_TAG_CHARS
    assert len(check(verdict, "slices").details["slices"]) == 200  # the verdict itself keeps them all


def test_the_bootstrap_is_one_replicate_per_resample_and_repeatable_by_seed():
    paired = synthetic(2000, 0.1, seed=17)
    replicates = bootstrap_improvements(paired, 2000, seed=0)
    assert replicates.shape == (2000,)
    assert (bootstrap_improvements(paired, 2000, seed=0) == replicates).all()
    assert not (bootstrap_improvements(paired, 2000, seed=1) == replicates).all()


def test_too_few_eval_examples_fails_and_says_so_with_numbers():
    inputs = GateInputs(trusted_examples=12, candidate_loss=1.0, reference_loss=3.0, reference="base")
    verdict = judge(inputs, GateConfig(min_eval_examples=50))
    assert not verdict.passed
    assert verdict.reasons[0].startswith("FAIL min_eval_examples") and "12" in verdict.reasons[0]
    assert any(r.startswith("ok improvement") for r in verdict.reasons)


def test_without_per_example_losses_the_point_estimate_is_judged_and_says_so():
    better = GateInputs(trusted_examples=60, candidate_loss=2.0, reference_loss=2.5, reference="champion")
    verdict = judge(better, GateConfig(min_eval_examples=50, min_improvement=0.49))
    assert verdict.passed and "judged on the point estimate, no interval" in check(verdict, "improvement").message
    assert not judge(better, GateConfig(min_eval_examples=50, min_improvement=0.5)).passed
    assert "off slices: skipped: no per-example losses in the worker's result" in verdict.reasons
    paired = synthetic(100, 0.1, seed=1)
    off = check(judge(inputs_of(paired), GateConfig(min_eval_examples=1, bootstrap_samples=0)), "improvement")
    assert off.passed and "bootstrap off (gate.bootstrap_samples: 0)" in off.message


def test_missing_losses_fail_the_improvement_check():
    verdict = judge(GateInputs(60, None, 2.0, "champion"), GateConfig(min_eval_examples=1))
    assert not verdict.passed and "no loss" in verdict.reasons[0]


def test_inputs_are_read_from_the_worker_result_against_champion_or_base():
    rows = {"candidate": [["1", 10.0, 10], ["2", 4.0, 2], ["3", 1.0, 0]],
            "champion": [["1", 12.0, 10], ["2", 5.0, 2], ["3", 0.0, 0]],
            "base": [["1", 30.0, 10], ["2", 9.0, 2]]}
    result = {"eval": {"trusted": {name: {"loss": loss, "examples": 3, "per_example": rows[name]}
                                   for name, loss in (("candidate", 14 / 12), ("champion", 17 / 12), ("base", 3.25))}}}
    with_champion = inputs_from_result(result, has_champion=True, categories={"1": "billing"})
    assert (with_champion.reference, with_champion.reference_loss) == ("champion", 17 / 12)
    assert with_champion.paired.ticket_ids == ("1", "2")  # "3" has no supervised token
    assert with_champion.paired.losses() == pytest.approx((14 / 12, 17 / 12))
    assert with_champion.categories == {"1": "billing"}
    first = inputs_from_result(result, has_champion=False)
    assert (first.reference, first.reference_loss, first.trusted_examples) == ("base", 3.25, 3)
    assert first.paired.losses()[1] == pytest.approx(39 / 12)
    verdict = judge(first, GateConfig(min_eval_examples=1))
    assert json.loads(json.dumps(verdict.to_dict()))["checks"][1]["details"]["examples"] == 2


# forgetting guard, behaviour (golden prompts) and servability ------------------------------------
GOLDEN = GoldenSet.model_validate({"prompts": [
    {"id": "refund", "prompt": "I was charged twice for order 1182.", "must_contain": ["refund"],
     "must_not_contain": ["stupid question"], "regex": [r"(?i)\brefund(ed)?\b"], "must_not_match": [r"\$\d{4,}"]},
    {"id": "login", "prompt": "I cannot log in."},
]})
GOOD = {"refund": "Hi <CUSTOMER_FIRST_NAME>, I have refunded order 1182 in full. Best, <AGENT_NAME>",
        "login": "Hi <CUSTOMER_FIRST_NAME>, I have sent a new reset link to your account email."}


def probe_of(answers: dict[str, str], status: str = "ok", error: str | None = None) -> dict:
    return {"status": status, "error": error, "load_seconds": 0.2, "seconds": 1.0,
            "answers": {"candidate": [{"id": i, "text": t, "new_tokens": len(t.split())} for i, t in answers.items()],
                        "champion": [{"id": i, "text": "older answer", "new_tokens": 2} for i in answers]}}


def behaviour_inputs(answers: dict[str, str] | None = None, general=None, probe: dict | None = None,
                     golden: GoldenSet | None = GOLDEN) -> GateInputs:
    if probe is None:
        probe = probe_of(GOOD if answers is None else answers)
    return GateInputs(60, 1.0, 2.0, "base", general=general, probe=probe, golden=golden)


def test_forgetting_passes_within_the_allowed_increase_and_fails_past_it_with_both_losses():
    cfg = GateConfig(min_eval_examples=1, max_general_loss_increase=0.10)
    ok = check(judge(behaviour_inputs(general=(4.3, 4.0)), cfg), "forgetting")
    assert ok.status == "pass" and "candidate 4.3000 vs base 4.0000" in ok.message and "+7.5%" in ok.message
    failed = judge(behaviour_inputs(general=(4.5, 4.0)), cfg)
    forgetting = check(failed, "forgetting")
    assert not failed.passed and forgetting.status == "fail"
    assert "+12.5%" in forgetting.message and "+10.0% allowed (bound 4.4000)" in forgetting.message
    assert forgetting.details["increase"] == pytest.approx(0.125) and forgetting.details["bound"] == pytest.approx(4.4)
    assert judge(behaviour_inputs(general=(4.5, 4.0)), GateConfig(min_eval_examples=1,
                                                                   max_general_loss_increase=0.2)).passed


def test_forgetting_is_off_when_switched_off_or_without_a_general_eval():
    off = check(judge(behaviour_inputs(general=(9.0, 4.0)), GateConfig(min_eval_examples=1,
                                                                       max_general_loss_increase=None)), "forgetting")
    assert off.status == "off" and "max_general_loss_increase: null" in off.message
    missing = check(judge(behaviour_inputs(general=None), GateConfig(min_eval_examples=1)), "forgetting")
    assert missing.status == "off" and "no general-text loss" in missing.message


def test_good_answers_pass_behaviour_and_servable():
    verdict = judge(behaviour_inputs(), GateConfig(min_eval_examples=1))
    behaviour = check(verdict, "behaviour")
    assert behaviour.status == "pass" and behaviour.message.startswith("2 golden prompts answered, all meet")
    assert [row["status"] for row in behaviour.details["prompts"]] == ["pass", "pass"]
    servable = check(verdict, "servable")
    assert servable.status == "pass" and "generated 24 tokens for 2 prompts" in servable.message
    assert verdict.passed


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("   \n ", "empty"),
        ("We refund it. " + "refund refund refund " * 20, "repetition 0.9"),
        ("Your refund is done, write to ana.ruiz@example.com with questions.", "personal data: email"),
        ("Your refund is done, call me on (415) 555-0134 with questions.", "personal data: phone"),
        ("Refund sent to card 4111 1111 1111 1111 today.", "personal data: card number"),
        ("Refund sent, <CUSTOMER_FIRST_NAME>; the receipt went to <EMAIL>.", "unfillable placeholder <EMAIL>"),
        ("Refund sent, <AGENY_FIRST_NAME>.", "unknown placeholder <AGENY_FIRST_NAME>"),
        ("Order 1182 is sorted, <CUSTOMER_FIRST_NAME>.", "must_contain 'refund'"),
        ("That is a stupid question, your refund is done.", "must_not_contain 'stupid question'"),
        ("The refunds are done.", "regex 0"),
        ("Your refund of $12000 is done.", "must_not_match 0"),
    ],
    ids=["empty", "repetition", "email", "phone", "card", "placeholder", "misspelt-placeholder", "must_contain",
         "must_not_contain",
         "regex", "must_not_match"],
)
def test_each_failed_expectation_fails_behaviour_naming_the_prompt_but_not_the_answer(answer: str, expected: str):
    verdict = judge(behaviour_inputs({**GOOD, "refund": answer}), GateConfig(min_eval_examples=1))
    behaviour = check(verdict, "behaviour")
    assert not verdict.passed and behaviour.status == "fail"
    assert behaviour.message.startswith("1 of 2 golden prompts fail: refund (") and expected in behaviour.message
    row = behaviour.details["prompts"][0]
    assert row["id"] == "refund" and row["status"] == "fail" and any(expected in f for f in row["failed"])
    assert behaviour.details["prompts"][1] == {**behaviour.details["prompts"][1], "id": "login", "status": "pass"}
    tag = json.dumps(verdict.to_dict())
    for secret in ("ana.ruiz@example.com", "555-0134", "4111 1111 1111 1111"):
        assert secret not in tag and secret not in " ".join(verdict.reasons)
    if answer.strip():
        assert answer.strip()[:40] not in behaviour.message


def test_the_scrubbed_answer_in_the_details_keeps_the_placeholder_not_the_data():
    behaviour = check(judge(behaviour_inputs({**GOOD, "login": "Mail ana.ruiz@example.com please."}),
                            GateConfig(min_eval_examples=1)), "behaviour")
    row = next(r for r in behaviour.details["prompts"] if r["id"] == "login")
    assert row["answer"] == "Mail <EMAIL> please." and row["failed"] == ["personal data: email"]


def test_a_prompt_the_probe_did_not_answer_fails():
    behaviour = check(judge(behaviour_inputs({"refund": GOOD["refund"]}), GateConfig(min_eval_examples=1)),
                      "behaviour")
    assert behaviour.status == "fail" and "login (not answered by the probe)" in behaviour.message


def test_demo_profile_reports_the_relaxed_expectations_without_failing_on_them():
    rough = {"refund": "Hi <AGENY_FIRST_NAME>, " + "the order " * 12 + "is.",
             "login": GOOD["login"]}
    standard = check(judge(behaviour_inputs(rough), GateConfig(min_eval_examples=1)), "behaviour")
    assert standard.status == "fail" and "must_contain 'refund'" in standard.message
    assert "repetition 0.8" in standard.message
    demo = check(judge(behaviour_inputs(rough), GateConfig(min_eval_examples=1, profile="demo")), "behaviour")
    assert demo.status == "pass"
    relaxed = "profile demo: empty, repetition, unknown placeholder, must_contain, regex reported, not judged"
    assert relaxed in demo.message
    row = demo.details["prompts"][0] if demo.details["prompts"][0]["id"] == "refund" else demo.details["prompts"][1]
    assert row["failed"] == [] and any(a.startswith("must_contain") for a in row["advisory"])
    assert "unknown placeholder <AGENY_FIRST_NAME>" in row["advisory"]
    assert "unknown placeholder <AGENY_FIRST_NAME>" in standard.message  # the standard profile fails on it
    card = {**rough, "refund": "Your refund went to <CARD_NUMBER>."}
    demo_card = check(judge(behaviour_inputs(card), GateConfig(min_eval_examples=1, profile="demo")), "behaviour")
    assert demo_card.status == "fail" and "unfillable placeholder <CARD_NUMBER>" in demo_card.message
    rude = {**rough, "refund": "That is a stupid question, mail ana.ruiz@example.com."}
    demo_rude = check(judge(behaviour_inputs(rude), GateConfig(min_eval_examples=1, profile="demo")), "behaviour")
    assert demo_rude.status == "fail" and "must_not_contain 'stupid question'" in demo_rude.message
    assert "personal data: email" in demo_rude.message and "profile demo" in demo_rude.message


def test_behaviour_and_servable_are_off_when_switched_off_or_without_a_probe_or_golden_set():
    cfg = GateConfig(min_eval_examples=1)
    off = judge(behaviour_inputs(), GateConfig(min_eval_examples=1, check_behaviour=False, check_servable=False))
    assert "off behaviour: switched off (gate.check_behaviour: false)" in off.reasons
    assert "off servable: switched off (gate.check_servable: false)" in off.reasons
    no_golden = check(judge(behaviour_inputs(golden=None), cfg), "behaviour")
    assert no_golden.status == "off" and "no golden prompts" in no_golden.message
    for probe in ({"status": "off"}, None):
        verdict = judge(GateInputs(60, 1.0, 2.0, "base", probe=probe, golden=GOLDEN), cfg)
        assert check(verdict, "behaviour").status == "off" and check(verdict, "servable").status == "off"
        assert "ran no probe" in check(verdict, "servable").message


def test_a_failed_probe_fails_servable_and_behaviour_with_its_error():
    probe = {"status": "failed", "error": "RuntimeError: size mismatch for lora_A", "answers": {}}
    verdict = judge(behaviour_inputs(probe=probe), GateConfig(min_eval_examples=1))
    assert not verdict.passed
    servable = check(verdict, "servable")
    assert servable.status == "fail" and "size mismatch for lora_A" in servable.message
    assert check(verdict, "behaviour").status == "fail" and "the probe failed" in check(verdict, "behaviour").message
    silent = probe_of({"refund": "", "login": ""})
    assert check(judge(behaviour_inputs(probe=silent), GateConfig(min_eval_examples=1)), "servable").message \
        == "the adapter loaded but generated no token for any of 2 prompts"


def test_general_losses_and_the_probe_are_read_from_the_worker_result():
    result = {"eval": {"trusted": {"candidate": {"loss": 1.0, "examples": 3}, "base": {"loss": 2.0, "examples": 3}},
                       "general": {"candidate": {"loss": 4.4, "examples": 8}, "champion": {"loss": 4.1},
                                   "base": {"loss": 4.0, "examples": 8}}},
              "probe": probe_of(GOOD)}
    inputs = inputs_from_result(result, has_champion=True, golden=GOLDEN)
    assert inputs.general == (4.4, 4.0) and inputs.probe.status == "ok" and inputs.golden is GOLDEN
    verdict = judge(inputs, GateConfig(min_eval_examples=1, max_general_loss_increase=0.05))
    assert check(verdict, "forgetting").status == "fail" and check(verdict, "behaviour").status == "pass"
    bare = inputs_from_result({"eval": {"trusted": {}}}, has_champion=False)
    assert bare.general is None and bare.probe is None and bare.golden is None


def test_the_gate_tag_stays_under_the_limit_with_many_failing_prompts_keeping_the_failures():
    golden = GoldenSet.model_validate({"prompts": [{"id": f"p{i:03d}", "prompt": "Where is my order?",
                                                    "must_contain": ["delivered"]} for i in range(60)]})
    answers = {f"p{i:03d}": ("Delivered." if i % 2 else "word " * 200) for i in range(60)}
    verdict = judge(behaviour_inputs(answers, golden=golden), GateConfig(min_eval_examples=1))
    tag = json.loads(json.dumps(verdict.to_dict()))
    assert len(json.dumps(tag)) <= MAX_TAG_CHARS
    details = next(c for c in tag["checks"] if c["name"] == "behaviour")["details"]
    assert details["prompts"][0]["status"] == "fail" and len(details["prompts"]) + details["prompts_omitted"] == 60
    assert "30 of 60 golden prompts fail" in check(verdict, "behaviour").message and "25 more" in \
        check(verdict, "behaviour").message


# --- preference: held-out feedback judged by pair accuracy and thumbs AUC -------------------------------------
def _feedback_rows(margins: list[float], base: float = 2.0) -> tuple[list, list]:
    """Chosen and rejected rows whose per-token scores differ by each margin (3 tokens each)."""
    chosen = [[f"p{i}", 3 * (base - m / 2), 3] for i, m in enumerate(margins)]
    rejected = [[f"p{i}", 3 * (base + m / 2), 3] for i, m in enumerate(margins)]
    return chosen, rejected


def _preference_inputs(candidate_margins: list[float], reference_margins: list[float], objective: str,
                       thumbs_shift: float = 0.0):
    from daemon.gate.checks import GateInputs
    from daemon.gate.preference import FeedbackScores

    thumbs_labels = {f"t{i}": i % 2 == 0 for i in range(20)}
    ref_thumbs = [[f"t{i}", 2.0 - 0.1 * (i % 2 == 0), 1] for i in range(20)]
    cand_thumbs = [[f"t{i}", 2.0 - (0.1 + thumbs_shift) * (i % 2 == 0), 1] for i in range(20)]
    candidate = FeedbackScores(cand_thumbs, *_feedback_rows(candidate_margins))
    reference = FeedbackScores(ref_thumbs, *_feedback_rows(reference_margins))
    return GateInputs(trusted_examples=100, candidate_loss=1.0, reference_loss=1.1, reference="champion",
                      feedback=(candidate, reference), feedback_labels=thumbs_labels, objective=objective)


def test_preference_rejects_a_candidate_that_prefers_the_drafts_the_agents_rewrote():
    from daemon.gate.checks import check_preference

    cfg = GateConfig(bootstrap_samples=500)
    good = [0.5] * 30
    worse = [0.5] * 10 + [-0.5] * 20  # prefers the rejected draft on two thirds of the pairs
    failed = check_preference(_preference_inputs(worse, good, "sft+dpo"), cfg)
    assert failed.status == "fail" and failed.details["candidate_pair_accuracy"] == pytest.approx(1 / 3, abs=1e-4)
    assert failed.details["reference_pair_accuracy"] == 1.0 and failed.details["lower_bound"] < -0.05
    assert check_preference(_preference_inputs(good, good, "sft+dpo"), cfg).status == "pass"
    advisory = check_preference(_preference_inputs(worse, good, "sft"), cfg)
    assert advisory.status == "pass" and advisory.details["advisory"]
    assert check_preference(_preference_inputs(worse, good, "sft+dpo"), cfg.model_copy(
        update={"check_preference": False})).status == "off"


def test_preference_thumbs_auc_separates_good_from_bad_answers_and_too_little_feedback_is_skipped():
    from daemon.gate.checks import check_preference
    from daemon.gate.preference import FeedbackScores

    cfg = GateConfig(bootstrap_samples=200)
    inputs = _preference_inputs([0.5] * 4, [0.5] * 4, "sft+kto", thumbs_shift=0.2)
    result = check_preference(inputs, cfg)
    assert result.details["candidate_thumbs_auc"] == 1.0 and result.details["reference_thumbs_auc"] == 1.0
    assert result.details["examples"] == 24 and result.status == "pass"
    few = replace(inputs, feedback=(FeedbackScores(None, *_feedback_rows([1.0] * 3)),
                                    FeedbackScores(None, *_feedback_rows([1.0] * 3))))
    assert check_preference(few, cfg).status == "off"
