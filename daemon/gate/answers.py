"""Does the candidate answer the question asked? Two checks beside the loss, both pure.

- relevance: on trusted examples, how much more likely each agent answer is after its own question
  than after another example's question (a pointwise-mutual-information margin, nats per token).
  A model that learned answers which ignore the question loses this margin, even when its plain loss
  improves (house style). The cycle writes the two eval files; the worker scores them like any other.
- answers: on a sample of the trusted set the candidate and the reference (champion or base) answer
  greedily in the probe; each answer's cosine similarity to the agent's real answer (sentence
  embeddings) is compared by a paired bootstrap, a one-sided non-inferiority test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from daemon.config import GateConfig

RELEVANCE_OWN = "relevance_own"  # eval set: the first question and its own answer
RELEVANCE_SWAPPED = "relevance_swapped"  # eval set: another example's question, the same answer
MESSAGE_EXAMPLES = 3  # answers quoted in a check's details


def _first_exchange(messages: Sequence[dict]) -> tuple[list[dict], str, str] | None:
    """(system messages, first customer question, the answer to it) of a chat example, or None."""
    system = [dict(m) for m in messages if m.get("role") == "system"][:1]
    turns = [m for m in messages if m.get("role") != "system"]
    for index, message in enumerate(turns[:-1]):
        answer = turns[index + 1]
        if message.get("role") == "user" and answer.get("role") == "assistant":
            if str(message.get("content", "")).strip() and str(answer.get("content", "")).strip():
                return system, str(message["content"]), str(answer["content"])
            return None
    return None


def _stable_order(examples: Sequence[dict], salt: str) -> list[dict]:
    return sorted(examples, key=lambda e: hashlib.sha256(f"{salt}:{e['ticket_id']}".encode()).hexdigest())


def relevance_sets(examples: Sequence[dict], limit: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """The two relevance eval sets over at most `limit` trusted examples (a deterministic sample): the
    first exchange as it was, and the same answer after the question of another example, preferably
    of another category (a rotation of the sample, so every question is used once). Both keep the
    example's ticket id, so the gate pairs them; the answer's tokens are the same in both."""
    exchanges = []
    for example in _stable_order(examples, f"relevance:{seed}"):
        found = _first_exchange(example.get("messages") or [])
        if found is not None:
            exchanges.append((example, *found))
        if len(exchanges) == limit:
            break
    if len(exchanges) < 2:
        return [], []
    own, swapped = [], []
    n = len(exchanges)
    for index, (example, system, question, answer) in enumerate(exchanges):
        partner = next(
            (exchanges[(index + step) % n] for step in range(1, n)
             if exchanges[(index + step) % n][0].get("category") != example.get("category")),
            exchanges[(index + 1) % n],
        )
        ticket_id = example["ticket_id"]
        own.append({"ticket_id": ticket_id, "messages": system + [
            {"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
        swapped.append({"ticket_id": ticket_id, "messages": system + [
            {"role": "user", "content": partner[2]}, {"role": "assistant", "content": answer}]})
    return own, swapped


def answer_prompts(examples: Sequence[dict], limit: int, seed: int = 0) -> list[dict]:
    """At most `limit` trusted examples as probe prompts: the system prompt and the first question, with
    the agent's real answer to it as the reference (a deterministic sample)."""
    prompts = []
    for example in _stable_order(examples, f"answers:{seed}"):
        found = _first_exchange(example.get("messages") or [])
        if found is None:
            continue
        system, question, answer = found
        prompts.append({"id": example["ticket_id"], "messages": system + [{"role": "user", "content": question}],
                        "reference": answer})
        if len(prompts) == limit:
            break
    return prompts


@dataclass(frozen=True)
class Finding:
    """What a check found: status (pass, fail, off), its message and its numbers."""

    status: str
    message: str
    details: dict


def _per_example(rows: Sequence | None) -> dict[str, tuple[float, float]]:
    """`per_example` rows ([ticket_id, loss_sum, tokens]) by ticket id, those with a supervised token."""
    return {str(r[0]): (float(r[1]), float(r[2])) for r in rows or () if r[2] > 0}


def _lower_bound(values: np.ndarray, weights: np.ndarray | None, samples: int, seed: int,
                 confidence: float) -> float:
    """One-sided lower bound of the (weighted) mean of `values` by a bootstrap over examples."""
    rng = np.random.default_rng(seed)
    n = len(values)
    picks = rng.integers(0, n, size=(samples, n))
    if weights is None:
        replicates = values[picks].mean(axis=1)
    else:
        replicates = (values[picks] * weights[picks]).sum(axis=1) / weights[picks].sum(axis=1)
    return float(np.quantile(replicates, 1.0 - confidence))


def relevance_finding(
    candidate_own: Sequence | None, candidate_swapped: Sequence | None,
    reference_own: Sequence | None, reference_swapped: Sequence | None,
    reference: str, cfg: GateConfig,
) -> Finding:
    """The candidate keeps at least (1 - relevance_tolerance) of the reference's question-dependence
    margin: the one-sided lower bound (paired bootstrap over examples, token-weighted) of
    candidate margin - (1 - tolerance) x reference margin must be above 0."""
    details: dict = {"reference": reference, "tolerance": cfg.relevance_tolerance}
    if not cfg.check_relevance:
        return Finding("off", "switched off (gate.check_relevance: false)", details)
    sets = [_per_example(rows) for rows in (candidate_own, candidate_swapped, reference_own, reference_swapped)]
    ids = sorted(set.intersection(*(set(s) for s in sets)))
    if len(ids) < 2:
        return Finding("off", "skipped: the worker scored no relevance pairs (fewer than 2 trusted examples "
                       "with a question and its answer)", details)
    c_own, c_swap, r_own, r_swap = (np.array([s[i][0] for i in ids]) for s in sets)
    tokens = np.array([sets[0][i][1] for i in ids])
    candidate_margin = (c_swap - c_own) / tokens  # per example, nats per answer token
    reference_margin = (r_swap - r_own) / tokens
    keep = 1.0 - cfg.relevance_tolerance
    cand = float((c_swap - c_own).sum() / tokens.sum())
    ref = float((r_swap - r_own).sum() / tokens.sum())
    if cfg.bootstrap_samples:
        bound = _lower_bound(candidate_margin - keep * reference_margin, tokens, cfg.bootstrap_samples,
                             cfg.bootstrap_seed, cfg.confidence)
        how = f"one-sided {cfg.confidence:.0%} lower bound {bound:+.4f}"
    else:
        bound = cand - keep * ref
        how = f"point estimate {bound:+.4f}"
    worst = np.argsort(candidate_margin - reference_margin)[:MESSAGE_EXAMPLES]
    details.update(candidate_margin=round(cand, 6), reference_margin=round(ref, 6), lower_bound=round(bound, 6),
                   examples=len(ids), tokens=int(tokens.sum()),
                   least_relevant=[{"ticket_id": ids[i], "candidate_margin": round(float(candidate_margin[i]), 4),
                                    "reference_margin": round(float(reference_margin[i]), 4)} for i in worst])
    message = (f"an answer is {cand:.3f} nats/token more likely after its own question than after another "
               f"(the {reference}: {ref:.3f}); candidate margin - {keep:.2f} x {reference}'s: {how} "
               f"over {len(ids)} examples, must be > 0")
    return Finding("pass" if bound > 0 else "fail", message, details)


def answers_finding(candidate: Sequence, reference_answers: Sequence, reference: str, cfg: GateConfig,
                    probe_error: str | None = None) -> Finding:
    """Non-inferiority of answer similarity: the one-sided lower bound (paired bootstrap) of mean
    candidate similarity - reference similarity must be above -answer_margin."""
    details: dict = {"reference": reference, "margin": cfg.answer_margin}
    if not cfg.check_answers:
        return Finding("off", "switched off (gate.check_answers: false)", details)
    if probe_error:
        return Finding("fail", f"the probe did not score answers: {probe_error}", details)
    ref_by_id = {a.id: a for a in reference_answers if a.similarity is not None}
    pairs = [(a, ref_by_id[a.id]) for a in candidate if a.similarity is not None and a.id in ref_by_id]
    if not pairs:
        return Finding("off", "skipped: the probe scored no sampled answers (no trusted example with a question "
                       "and its answer)", details)
    cand = np.array([a.similarity for a, _ in pairs], dtype=np.float64)
    ref = np.array([r.similarity for _, r in pairs], dtype=np.float64)
    diff = cand - ref
    if cfg.bootstrap_samples and len(pairs) > 1:
        bound = _lower_bound(diff, None, cfg.bootstrap_samples, cfg.bootstrap_seed, cfg.confidence)
        how = f"one-sided {cfg.confidence:.0%} lower bound {bound:+.4f}"
    else:
        bound = float(diff.mean())
        how = f"point estimate {bound:+.4f}"
    order = np.argsort(diff)
    details.update(candidate_similarity=round(float(cand.mean()), 6), reference_similarity=round(float(ref.mean()), 6),
                   lower_bound=round(bound, 6), examples=len(pairs),
                   examples_shown=[{"id": pairs[i][0].id, "candidate": round(float(cand[i]), 4),
                                    "reference": round(float(ref[i]), 4)}
                                   for i in list(order[:MESSAGE_EXAMPLES]) + list(order[-1:])])
    message = (f"greedy answers' similarity to the agents' real answers {cand.mean():.3f} vs the {reference}'s "
               f"{ref.mean():.3f} (cosine) on {len(pairs)} sampled trusted examples; difference {how}, "
               f"must be > {-cfg.answer_margin:+.4f}")
    return Finding("pass" if bound > -cfg.answer_margin else "fail", message, details)
