"""Preference losses beside the supervised one: KTO from CSAT thumbs, DPO from agents' edits of drafts.

The data is the snapshot's `preference_train` rows (daemon/ingest/feedback.py): thumbs `{prompt,
completion, label}` and pairs `{prompt, chosen, rejected}`. Each answer is tokenized with the chat
template like any example (labels on the answer only) and scored as a sequence log-probability, the sum
of its token log-probs, through `losses.token_loss_sums`: packed rows or padded batches, LoRA or QLoRA
alike.

The reference policy is the champion, or the base when there is none. Its log-probs are computed once,
before the first step, with the champion's adapter loaded (`reference_log_probs`); no second model copy
stays in memory. A resumed run computes them again from the same adapter: the same numbers.

The formulas are TRL's (trl 1.16, `KTOTrainer._compute_loss` and `DPOTrainer._compute_loss` with the
default loss types "kto" and "sigmoid"): tests/test_preference.py checks them on the same inputs.
- DPO: -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), averaged over pairs.
- KTO: with z = max(0, mean(pi_KL - ref_KL)) over mismatched (prompt, another answer) sequences,
  detached, a desirable answer costs w_d * (1 - sigmoid(beta * (log ratio - z))) and an undesirable one
  w_u * (1 - sigmoid(beta * (z - log ratio))), averaged over the step's examples.
  The weights follow from the class ratio so that w_d * n_d : w_u * n_u lies between 1:1 and 4:3.

A step takes `training.batch_size` preference examples (spread over the ranks, normalised by the
whole step's count, so the summed gradients equal one process's), in a seeded order per epoch; under
`sft+kto`/`sft+dpo` its loss times `feedback.weight` is added to the supervised step's.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from daemon.training.adapters import saved_method
from daemon.training.chat_examples import TokenizedExample, tokenize_conversation
from daemon.training.distributed import World, sum_values
from daemon.training.losses import token_loss_sums
from daemon.training.packing import best_fit_rows, collate_packed, collate_padded
from daemon.training.preparation import CANDIDATE, PEFT_TYPES
from daemon.training.spec import SpecError

log = logging.getLogger(__name__)
REFERENCE_ADAPTER = "preference-reference"
MAX_DESIRABLE_RATIO = 4 / 3  # KTO paper, eq. 8: weighted desirable : undesirable within [1, 4/3]


# ---- the formulas (TRL's, on plain tensors) --------------------------------------------------------------
def kto_weights(desirable: int, undesirable: int) -> tuple[float, float]:
    """(w_d, w_u): w_u = 1 and w_d the value nearest 1 that puts w_d * n_d / (w_u * n_u) in [1, 4/3]."""
    if desirable == 0 or undesirable == 0:
        return 1.0, 1.0
    low, high = undesirable / desirable, MAX_DESIRABLE_RATIO * undesirable / desirable
    return min(max(1.0, low), high), 1.0


def kl_estimate(policy_kl_logps: torch.Tensor, reference_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z: the mean log ratio on mismatched sequences, detached, at least 0."""
    return (policy_kl_logps - reference_kl_logps).mean().detach().clamp(min=0)


def kto_losses(policy_logps: torch.Tensor, reference_logps: torch.Tensor, desirable: torch.Tensor,
               kl: torch.Tensor, beta: float, desirable_weight: float, undesirable_weight: float) -> torch.Tensor:
    """Per-example KTO losses (desirable first, then undesirable, as TRL concatenates them)."""
    ratios = policy_logps - reference_logps
    chosen = 1 - torch.sigmoid(beta * (ratios[desirable] - kl))
    rejected = 1 - torch.sigmoid(beta * (kl - ratios[~desirable]))
    return torch.cat((desirable_weight * chosen, undesirable_weight * rejected))


def dpo_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
               reference_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair DPO (sigmoid) losses."""
    return -F.logsigmoid(beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)))


# ---- the data ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreferenceData:
    """Tokenized sequences and how they pair up. KTO: `answers` (prompt + its answer), `mismatched` (prompt
    + the next example's answer, for z) and `desirable`. DPO: `answers` are the chosen, `rejected` the drafts."""

    kind: str
    answers: list[TokenizedExample]
    mismatched: list[TokenizedExample]
    rejected: list[TokenizedExample]
    desirable: list[bool]

    def __len__(self) -> int:
        return len(self.answers)


def load_preference_data(path: Path, kind: str, tokenizer: PreTrainedTokenizerBase, max_seq_len: int,
                         supervised_placeholders: Collection[str] | None) -> PreferenceData:
    """The rows of `kind` (kto: thumbs, dpo: pairs) tokenized; rows whose answer is truncated away are left out."""
    def tokenized(row: dict, answer: str) -> TokenizedExample | None:
        messages = list(row["prompt"]) + [{"role": "assistant", "content": answer}]
        ids, labels = tokenize_conversation(tokenizer, messages, supervised_placeholders)
        example = TokenizedExample(str(row["ticket_id"]), ids[:max_seq_len], labels[:max_seq_len])
        return example if example.supervised_tokens else None

    rows = [row for row in read_jsonl_rows(path) if ("label" in row) == (kind == "kto")]
    answers, mismatched, rejected, desirable = [], [], [], []
    for index, row in enumerate(rows):
        if kind == "kto":
            other = rows[index - 1]["completion"]  # TRL's rotation: (x_i, y_{i-1})
            found = (tokenized(row, row["completion"]), tokenized(row, other))
        else:
            found = (tokenized(row, row["chosen"]), tokenized(row, row["rejected"]))
        if None in found:
            continue
        answers.append(found[0])
        (mismatched if kind == "kto" else rejected).append(found[1])
        desirable.append(row.get("label") == "desirable")
    return PreferenceData(kind, answers, mismatched, rejected, desirable)


def read_jsonl_rows(path: Path) -> list[dict]:
    """The rows of a preference file, each with its `prompt` list (a bad line is a `SpecError`)."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), list):
            raise SpecError(f"preference_file {path} line {number} is not a preference row with a 'prompt' list; "
                            "rewrite it from the snapshot")
        rows.append(row)
    return rows


# ---- scoring ---------------------------------------------------------------------------------------------
def sequence_logps(model: torch.nn.Module, examples: list[TokenizedExample], *, packing: bool, row_tokens: int,
                   batch_size: int, chunk_tokens: int, pad_token_id: int, device: torch.device) -> torch.Tensor:
    """Each example's summed answer-token log-probability [n], in order; gradients flow when enabled."""
    if not examples:
        return torch.zeros(0, device=device)
    lengths = [len(e.input_ids) for e in examples]
    groups = (best_fit_rows(lengths, row_tokens) if packing
              else [list(range(i, min(i + batch_size, len(examples)))) for i in range(0, len(examples), batch_size)])
    found: dict[int, torch.Tensor] = {}
    for indices in groups:
        chosen = [examples[i] for i in indices]
        batch = collate_packed(chosen) if packing else collate_padded(chosen, pad_token_id)
        sums, _ = token_loss_sums(model, batch.to(device), cross_entropy="chunked", chunk_tokens=chunk_tokens,
                                  per_example=True)
        for slot, index in enumerate(indices):
            found[index] = -sums[slot]
    return torch.stack([found[i] for i in range(len(examples))])


@dataclass
class PreferenceObjective:
    """The preference part of a training step (`step_loss`), with the reference log-probs it compares to."""

    data: PreferenceData
    beta: float
    weight: float
    batch_size: int
    seed: int
    packing: bool
    row_tokens: int
    chunk_tokens: int
    pad_token_id: int
    with_sft: bool
    reference: dict[str, torch.Tensor] | None = None  # "answers", "mismatched"/"rejected": [n] log-probs

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.data) / self.batch_size))

    @property
    def weights(self) -> tuple[float, float]:
        return kto_weights(sum(self.data.desirable), len(self.data) - sum(self.data.desirable))

    def _score(self, model: torch.nn.Module, examples: list[TokenizedExample], device: torch.device) -> torch.Tensor:
        return sequence_logps(model, examples, packing=self.packing, row_tokens=self.row_tokens,
                              batch_size=self.batch_size, chunk_tokens=self.chunk_tokens,
                              pad_token_id=self.pad_token_id, device=device)

    def compute_reference(self, model: PeftModel, reference_adapter: Path | None, init_adapter: Path | None,
                          device: torch.device) -> None:
        """The reference log-probs of every sequence, once: the champion's adapter (the model as it is when
        it was warm-started from that adapter, else loaded beside the candidate and removed), or the base."""
        other = "mismatched" if self.data.kind == "kto" else "rejected"
        sequences = {"answers": self.data.answers, other: getattr(self.data, other)}
        trainable = {name: p.requires_grad for name, p in model.named_parameters()}
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                if reference_adapter is None:
                    with model.disable_adapter():
                        self.reference = {k: self._score(model, v, device).float() for k, v in sequences.items()}
                elif init_adapter is not None and Path(init_adapter).resolve() == Path(reference_adapter).resolve():
                    self.reference = {k: self._score(model, v, device).float() for k, v in sequences.items()}
                else:
                    if PEFT_TYPES[saved_method(reference_adapter)] != model.active_peft_config.peft_type.value:
                        raise SpecError("a preference objective needs the champion's adapter of the same method as "
                                        "the candidate's (it is loaded beside it); set adapter.method to the "
                                        "champion's or train with training.objective: sft")
                    model.load_adapter(str(reference_adapter), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
                    model.set_adapter(REFERENCE_ADAPTER)
                    try:
                        self.reference = {k: self._score(model, v, device).float() for k, v in sequences.items()}
                    finally:
                        model.set_adapter(CANDIDATE)
                        model.delete_adapter(REFERENCE_ADAPTER)
        finally:
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(trainable.get(name, False))
            model.train(was_training)
        log.info("preference reference log-probs ready: %s %d examples (reference: %s)", self.data.kind,
                 len(self.data), "base" if reference_adapter is None else "champion")

    def step_indices(self, step: int) -> list[int]:
        """The examples of step `step` (from 1): a seeded order per epoch, `batch_size` at a time."""
        epoch, within = divmod(step - 1, self.steps_per_epoch)
        order = list(range(len(self.data)))
        random.Random(f"ticketune-preference:{self.seed}:{epoch}").shuffle(order)
        return order[within * self.batch_size:(within + 1) * self.batch_size]

    def step_loss(self, model: torch.nn.Module, step: int, world: World, device: torch.device) -> torch.Tensor:
        """This rank's share of the step's preference loss times `weight`, normalised by the whole step's
        example count (so the ranks' summed gradients are the step's); backward is the caller's."""
        assert self.reference is not None, "compute_reference runs before the first step"
        indices = self.step_indices(step)
        mine = indices[world.rank :: world.size]
        take = torch.tensor(mine, dtype=torch.long, device=device)
        answers = self._score(model, [self.data.answers[i] for i in mine], device)
        reference = self.reference["answers"].to(device).index_select(0, take)
        if self.data.kind == "kto":
            with torch.no_grad():
                mismatched = self._score(model, [self.data.mismatched[i] for i in mine], device)
            shift = (mismatched.float() - self.reference["mismatched"].to(device).index_select(0, take)).sum()
            total, count = sum_values(world, [float(shift), float(len(mine))], device)
            kl = torch.tensor(max(0.0, total / max(count, 1.0)), device=device)
            desirable = torch.tensor([self.data.desirable[i] for i in mine], dtype=torch.bool, device=device)
            losses = kto_losses(answers.float(), reference, desirable, kl, self.beta, *self.weights)
        else:
            rejected = self._score(model, [self.data.rejected[i] for i in mine], device)
            losses = dpo_losses(answers.float(), rejected.float(), reference,
                                self.reference["rejected"].to(device).index_select(0, take), self.beta)
        return self.weight * losses.sum() / max(len(indices), 1)
