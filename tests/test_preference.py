"""Preference training: KTO and DPO losses against TRL's equations, the KTO weights from the class ratio, the
reference log-probs (champion or base, computed once), and short runs on the tiny model that move the model
towards the preferred answers."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_training import INTENTS, ITEMS, SYSTEM, make_spec, support_examples, write_jsonl

from daemon.ingest.feedback import FEEDBACK_CHOSEN, FEEDBACK_REJECTED, FEEDBACK_THUMBS
from daemon.training.lora_recipe import run_training
from daemon.training.preference import dpo_losses, kl_estimate, kto_losses, kto_weights
from daemon.training.spec import parse_spec


# ---- the formulas -------------------------------------------------------------------------------------------
def trl_kto_loss(policy_chosen, policy_rejected, policy_kl, ref_chosen, ref_rejected, ref_kl, beta, wd, wu):
    """TRL 1.16 `KTOTrainer._compute_loss` (loss_type "kto", one process), transcribed line by line."""
    kl = (policy_kl - ref_kl).mean().detach()
    kl = kl.mean().clamp(min=0)
    chosen_losses = 1 - F.sigmoid(beta * ((policy_chosen - ref_chosen) - kl))
    rejected_losses = 1 - F.sigmoid(beta * (kl - (policy_rejected - ref_rejected)))
    losses = torch.cat((wd * chosen_losses, wu * rejected_losses), 0)
    return losses.nanmean()


def trl_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta):
    """TRL 1.16 `DPOTrainer._compute_loss` (loss_type "sigmoid", f_divergence reverse_kl), transcribed."""
    delta_score = (chosen - ref_chosen) - (rejected - ref_rejected)
    per_sequence_loss = -F.logsigmoid(beta * delta_score)
    return per_sequence_loss.mean()


def test_kto_loss_and_gradients_match_trls_on_the_same_inputs():
    generator = torch.Generator().manual_seed(0)
    policy = (torch.randn(12, generator=generator) * 20 - 60).requires_grad_()
    reference = torch.randn(12, generator=generator) * 20 - 60
    policy_kl, reference_kl = torch.randn(12, generator=generator) - 70, torch.randn(12, generator=generator) - 71
    desirable = torch.tensor([True, False, True, True, False, True, True, True, False, True, False, True])
    for beta, weights in ((0.1, (1.0, 1.0)), (0.5, (1.33, 1.0)), (2.0, (1.0, 0.75))):
        ours = kto_losses(policy, reference, desirable, kl_estimate(policy_kl, reference_kl), beta, *weights).mean()
        theirs = trl_kto_loss(policy[desirable], policy[~desirable], policy_kl, reference[desirable],
                              reference[~desirable], reference_kl, beta, *weights)
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
        ours_grad, = torch.autograd.grad(ours, policy)
        theirs_grad, = torch.autograd.grad(theirs, policy)
        assert torch.allclose(ours_grad, theirs_grad, rtol=1e-5, atol=1e-8)


def test_the_kto_reference_point_is_never_below_zero():
    assert kl_estimate(torch.tensor([-5.0, -6.0]), torch.tensor([-1.0, -1.0])).item() == 0.0
    assert kl_estimate(torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.0])).item() == pytest.approx(0.5)


def test_dpo_loss_and_gradients_match_trls_on_the_same_inputs():
    generator = torch.Generator().manual_seed(1)
    chosen = (torch.randn(9, generator=generator) * 10 - 40).requires_grad_()
    rejected = (torch.randn(9, generator=generator) * 10 - 40).requires_grad_()
    ref_chosen, ref_rejected = torch.randn(9, generator=generator) * 10 - 40, torch.randn(9, generator=generator) - 40
    for beta in (0.05, 0.1, 1.0):
        ours = dpo_losses(chosen, rejected, ref_chosen, ref_rejected, beta).mean()
        theirs = trl_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
        for mine, trl in zip(torch.autograd.grad(ours, (chosen, rejected)),
                             torch.autograd.grad(theirs, (chosen, rejected)), strict=True):
            assert torch.allclose(mine, trl, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("desirable, undesirable", [(100, 100), (300, 100), (120, 100), (50, 200), (1, 9)])
def test_kto_weights_put_the_weighted_class_ratio_between_one_and_four_thirds(desirable, undesirable):
    wd, wu = kto_weights(desirable, undesirable)
    assert 1.0 - 1e-9 <= wd * desirable / (wu * undesirable) <= 4 / 3 + 1e-9
    if 1.0 <= desirable / undesirable <= 4 / 3:
        assert (wd, wu) == (1.0, 1.0)


# ---- short runs on the tiny model ---------------------------------------------------------------------------
def preference_rows(count: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Thumbs and pairs over the support intents: a desirable answer is the intent's own, an undesirable one
    (and a rejected draft) another intent's."""
    rng = random.Random(seed)
    thumbs, pairs = [], []
    names = sorted(INTENTS)
    for number in range(count):
        intent = rng.choice(names)
        other = rng.choice([n for n in names if n != intent])
        fields = {"order": str(rng.randint(1000, 9999)), "item": rng.choice(ITEMS)}
        prompt = [{"role": "system", "content": SYSTEM},
                  {"role": "user", "content": "Hello, " + rng.choice(INTENTS[intent][0]).format(**fields)}]
        right, wrong = INTENTS[intent][1].format(**fields), INTENTS[other][1].format(**fields)
        good = number % 2 == 0
        thumbs.append({"ticket_id": f"k-{number}", "prompt": prompt, "completion": right if good else wrong,
                       "label": "desirable" if good else "undesirable"})
        pairs.append({"ticket_id": f"d-{number}", "prompt": prompt, "chosen": right, "rejected": wrong})
    return thumbs, pairs


def feedback_sets(root: Path, thumbs: list[dict], pairs: list[dict]) -> dict[str, Path]:
    def chat(row: dict, answer: str) -> dict:
        return {"ticket_id": row["ticket_id"], "messages": row["prompt"] + [{"role": "assistant", "content": answer}]}

    return {
        FEEDBACK_THUMBS: write_jsonl(root / "thumbs.jsonl", [chat(r, r["completion"]) for r in thumbs]),
        FEEDBACK_CHOSEN: write_jsonl(root / "chosen.jsonl", [chat(r, r["chosen"]) for r in pairs]),
        FEEDBACK_REJECTED: write_jsonl(root / "rejected.jsonl", [chat(r, r["rejected"]) for r in pairs]),
    }


def scores(result: dict, name: str, label: str) -> dict[str, float]:
    return {row[0]: -row[1] / row[2] for row in result["eval"][name][label]["per_example"]}


def preference_margins(result: dict, label: str, labels: dict[str, bool]) -> tuple[float, float]:
    """(mean score of desirable - undesirable thumbs, mean chosen - rejected score) under one model."""
    thumbs = scores(result, FEEDBACK_THUMBS, label)
    good = [v for k, v in thumbs.items() if labels[k]]
    bad = [v for k, v in thumbs.items() if not labels[k]]
    chosen, rejected = scores(result, FEEDBACK_CHOSEN, label), scores(result, FEEDBACK_REJECTED, label)
    return sum(good) / len(good) - sum(bad) / len(bad), sum(chosen[k] - rejected[k] for k in chosen) / len(chosen)


@pytest.fixture(scope="module")
def preference_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("preference-data")
    thumbs, pairs = preference_rows(32, seed=21)
    held_thumbs, held_pairs = preference_rows(16, seed=22)
    return {
        "train": write_jsonl(root / "train.jsonl", support_examples(16, seed=23, prefix="t")),
        "preference": write_jsonl(root / "preference.jsonl", thumbs + pairs),
        "eval": feedback_sets(root, held_thumbs, held_pairs),
        "labels": {row["ticket_id"]: row["label"] == "desirable" for row in held_thumbs},
    }


def run(tiny_model_dir: Path, data: dict[str, Any], out: Path, objective: str, scored: bool = True,
        **overrides: Any) -> dict:
    spec = make_spec(tiny_model_dir, out, data["train"], data["eval"] if scored else {},
                     preference_file=str(data["preference"]), preference_beta=0.5, evaluate_base=scored, **overrides)
    spec["adapter"]["dropout"] = 0.0
    spec["training"].update({"objective": objective, "max_steps": 8 if scored else 2, "learning_rate": 0.01,
                             "row_tokens": 1024, "early_stop_patience": 0})
    return run_training(parse_spec(spec))


@pytest.mark.parametrize("objective", ["kto", "sft+dpo"])
def test_a_short_preference_run_moves_the_model_towards_the_preferred_answers(tiny_model_dir, preference_data,
                                                                            tmp_path, objective):
    result = run(tiny_model_dir, preference_data, tmp_path / "out", objective)
    train = result["train"]
    assert train["objective"] == objective and train["preference_examples"] == 32
    assert len(train["preference_curve"]) == train["steps"] == 8
    assert (train["loss_curve"] == []) == (objective == "kto")  # pure kto has no supervised part
    labels = preference_data["labels"]
    thumbs_gain, pairs_gain = (candidate - base for candidate, base in zip(
        preference_margins(result, "candidate", labels), preference_margins(result, "base", labels), strict=True))
    moved = thumbs_gain if objective == "kto" else pairs_gain
    assert moved > 0.05, (thumbs_gain, pairs_gain)  # nats per token, on held-out questions


def test_the_reference_is_the_champion_and_a_run_without_one_compares_with_the_base(tiny_model_dir, preference_data,
                                                                                   tmp_path):
    from daemon.training import preference as module

    seen: list[str] = []
    original = module.PreferenceObjective.compute_reference

    def spy(self, model, reference_adapter, init_adapter, device):
        original(self, model, reference_adapter, init_adapter, device)
        seen.append("base" if reference_adapter is None else "champion")
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n and module.REFERENCE_ADAPTER not in n for n in trainable)
        assert module.REFERENCE_ADAPTER not in model.peft_config  # no second copy stays
        seen.append(json.dumps(self.reference["answers"][:3].tolist()))

    module.PreferenceObjective.compute_reference = spy
    try:
        first = run(tiny_model_dir, preference_data, tmp_path / "first", "sft+kto", scored=False)
        champion = {"champion": str(first["adapter_dir"])}
        run(tiny_model_dir, preference_data, tmp_path / "fresh", "sft+kto", scored=False, compare_adapters=champion)
        run(tiny_model_dir, preference_data, tmp_path / "warm", "sft+kto", scored=False, compare_adapters=champion,
            init_adapter=champion["champion"])
    finally:
        module.PreferenceObjective.compute_reference = original
    assert seen[0::2] == ["base", "champion", "champion"]
    base, loaded, warm = (json.loads(x) for x in seen[1::2])
    assert loaded == pytest.approx(warm, abs=1e-4)  # loaded beside the candidate = warm-started from it
    assert loaded != pytest.approx(base, abs=1e-3)


def test_the_transcriptions_are_the_lines_of_the_installed_trl():
    """TRL inlines both losses in its trainers' `_compute_loss` (no function to call on tensors): the
    transcriptions above must still be what the installed TRL computes (TRL is a test-only dependency)."""
    import inspect

    import trl  # make test installs it (the `test` extra)

    kto = " ".join(inspect.getsource(trl.KTOTrainer._compute_loss).split())
    for line in ("kl = (KL_logps - ref_KL_logps).mean().detach()", ".mean().clamp(min=0)",
                 "chosen_losses = 1 - F.sigmoid(self.beta * (chosen_logratios - kl))",
                 "rejected_losses = 1 - F.sigmoid(self.beta * (kl - rejected_logratios))",
                 "(self.desirable_weight * chosen_losses, self.undesirable_weight * rejected_losses)"):
        assert line in kto, line
    dpo = " ".join(inspect.getsource(trl.DPOTrainer._compute_loss).split())
    for line in ("chosen_logratios = chosen_logps - ref_chosen_logps", "delta_score = chosen_scores - rejected_scores",
                 "per_sequence_loss = -F.logsigmoid(self.beta * delta_score)"):
        assert line in dpo, line
