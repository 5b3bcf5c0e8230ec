from daemon.gate import GateInputs, inputs_from_result, judge


def test_candidate_must_beat_the_reference_by_strictly_more_than_min_improvement():
    base = GateInputs(trusted_examples=60, candidate_loss=2.0, reference_loss=2.5, reference="champion")
    assert judge(base, min_eval_examples=50, min_improvement=0.0).passed
    assert judge(base, min_eval_examples=50, min_improvement=0.49).passed
    assert not judge(base, min_eval_examples=50, min_improvement=0.5).passed
    same = GateInputs(trusted_examples=60, candidate_loss=2.5, reference_loss=2.5, reference="champion")
    assert not judge(same, min_eval_examples=50, min_improvement=0.0).passed


def test_too_few_eval_examples_fails_and_says_so_with_numbers():
    inputs = GateInputs(trusted_examples=12, candidate_loss=1.0, reference_loss=3.0, reference="base")
    verdict = judge(inputs, min_eval_examples=50, min_improvement=0.0)
    assert not verdict.passed
    assert verdict.reasons[0].startswith("FAIL min_eval_examples") and "12" in verdict.reasons[0]
    assert any(r.startswith("ok improvement") for r in verdict.reasons)


def test_missing_losses_fail_the_improvement_check():
    verdict = judge(GateInputs(60, None, 2.0, "champion"), min_eval_examples=1, min_improvement=0.0)
    assert not verdict.passed and "no loss" in verdict.reasons[0]


def test_inputs_are_read_from_the_worker_result_against_champion_or_base():
    result = {"eval": {"trusted": {"candidate": {"loss": 1.5, "examples": 40},
                                   "champion": {"loss": 1.7}, "base": {"loss": 3.0}}}}
    with_champion = inputs_from_result(result, has_champion=True)
    assert (with_champion.reference, with_champion.reference_loss) == ("champion", 1.7)
    first = inputs_from_result(result, has_champion=False)
    assert (first.reference, first.reference_loss, first.trusted_examples) == ("base", 3.0, 40)
