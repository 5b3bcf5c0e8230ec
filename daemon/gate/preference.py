"""Does the candidate prefer what customers and agents preferred? The `preference` check, pure.

On held-out feedback (daemon/ingest/feedback.py: the trusted set's and the new batch's held-out
examples), each answer's score is its length-normalised log-likelihood under a model, minus its
loss in nats per token, from the worker's per-example rows of the feedback eval sets:
- pairs (an agent's edit of a draft): the share where the sent answer scores above the draft;
- thumbs (CSAT): the AUC of the score between desirable and undesirable answers.
`feedback_accuracy` is their mean weighted by examples. A paired bootstrap (pairs and each thumbs class
resampled, both models on the same resample) gives the one-sided lower bound of candidate minus
reference; it must be above `-gate.preference_margin`. Under `training.objective: sft` the check is
reported, not judged: nothing trained the model on the feedback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from daemon.config import GateConfig
from daemon.gate.answers import Finding

SHOWN_EXAMPLES = 3  # pairs quoted in the details: where the candidate moved most against and towards the agent


def _scores(rows: Sequence | None) -> dict[str, float]:
    """Length-normalised log-likelihood per ticket id from `[ticket_id, loss_sum, tokens]` rows."""
    return {str(r[0]): -float(r[1]) / float(r[2]) for r in rows or () if r[2] > 0}


@dataclass(frozen=True)
class FeedbackScores:
    """One model's rows on the three feedback eval sets."""

    thumbs: Sequence | None = None
    chosen: Sequence | None = None
    rejected: Sequence | None = None


def _auc_matrix(desirable: np.ndarray, undesirable: np.ndarray) -> np.ndarray:
    """1 where a desirable answer scores above an undesirable one, 0.5 on a tie: the AUC's terms."""
    return (desirable[:, None] > undesirable[None, :]) + 0.5 * (desirable[:, None] == undesirable[None, :])


def judgeable_examples(thumbs: list[dict], pairs: list[dict]) -> int:
    """How many held-out feedback examples the preference check could judge: every pair, and the thumbs
    only when both classes are there (an AUC needs both), as feedback_accuracy counts them."""
    labels = {row["label"] for row in thumbs}
    return len(pairs) + (len(thumbs) if len(labels) > 1 else 0)


def feedback_accuracy(candidate: FeedbackScores, reference: FeedbackScores, labels: Mapping[str, bool],
                      cfg: GateConfig) -> tuple[dict, np.ndarray | None]:
    """The figures of both models and the bootstrap replicates of candidate - reference (None: no data)."""
    sets = [_scores(rows) for rows in (candidate.chosen, candidate.rejected, reference.chosen, reference.rejected)]
    pair_ids = sorted(set.intersection(*(set(s) for s in sets)))
    cand_thumbs, ref_thumbs = _scores(candidate.thumbs), _scores(reference.thumbs)
    thumb_ids = sorted(set(cand_thumbs) & set(ref_thumbs) & set(labels))
    good = [t for t in thumb_ids if labels[t]]
    bad = [t for t in thumb_ids if not labels[t]]
    if not (good and bad):
        good, bad = [], []
    figures: dict = {"pairs": len(pair_ids), "desirable": len(good), "undesirable": len(bad)}
    n_thumbs = len(good) + len(bad)
    if not pair_ids and not n_thumbs:
        return figures, None
    rng = np.random.default_rng(cfg.bootstrap_seed)
    samples = max(cfg.bootstrap_samples, 0)

    def pair_wins(chosen: dict, rejected: dict) -> np.ndarray:
        return np.array([chosen[t] > rejected[t] for t in pair_ids], dtype=np.float64)

    models = {"candidate": (sets[0], sets[1], cand_thumbs), "reference": (sets[2], sets[3], ref_thumbs)}
    point: dict[str, float] = {}
    replicates: dict[str, np.ndarray] = {}
    pair_picks = rng.integers(0, len(pair_ids), size=(samples, len(pair_ids))) if pair_ids and samples else None
    good_counts = _resampled_counts(rng, len(good), samples) if n_thumbs and samples else None
    bad_counts = _resampled_counts(rng, len(bad), samples) if n_thumbs and samples else None
    for label, (chosen, rejected, thumbs) in models.items():
        parts, weights, boot = [], [], []
        if pair_ids:
            wins = pair_wins(chosen, rejected)
            parts.append(wins.mean())
            weights.append(len(pair_ids))
            figures[f"{label}_pair_accuracy"] = round(float(wins.mean()), 4)
            if pair_picks is not None:
                boot.append(wins[pair_picks].mean(axis=1))
        if n_thumbs:
            matrix = _auc_matrix(np.array([thumbs[t] for t in good]), np.array([thumbs[t] for t in bad]))
            parts.append(matrix.mean())
            weights.append(n_thumbs)
            figures[f"{label}_thumbs_auc"] = round(float(matrix.mean()), 4)
            if good_counts is not None:
                boot.append(np.einsum("bi,ij,bj->b", good_counts, matrix, bad_counts) / (len(good) * len(bad)))
        point[label] = float(np.average(parts, weights=weights))
        if boot:
            replicates[label] = np.average(np.stack(boot), axis=0, weights=weights)
        figures[f"{label}_accuracy"] = round(point[label], 4)
    figures["examples"] = len(pair_ids) + n_thumbs
    figures["shown"] = _shown(pair_ids, models)
    diff = replicates["candidate"] - replicates["reference"] if replicates else None
    figures["difference"] = round(point["candidate"] - point["reference"], 4)
    return figures, diff


def _resampled_counts(rng: np.random.Generator, n: int, samples: int) -> np.ndarray:
    """[samples, n]: how often each item is drawn in each resample of n with replacement."""
    picks = rng.integers(0, n, size=(samples, n))
    counts = np.zeros((samples, n))
    np.add.at(counts, (np.repeat(np.arange(samples), n), picks.ravel()), 1.0)
    return counts


def _shown(pair_ids: list[str], models: dict) -> list[dict]:
    """The pairs where the candidate's margin (sent answer minus draft, per token) moved most, both ways."""
    if not pair_ids:
        return []
    cand = np.array([models["candidate"][0][t] - models["candidate"][1][t] for t in pair_ids])
    ref = np.array([models["reference"][0][t] - models["reference"][1][t] for t in pair_ids])
    order = np.argsort(cand - ref)
    picked = list(dict.fromkeys([*order[:SHOWN_EXAMPLES - 1], *order[-1:]]))
    return [{"ticket_id": pair_ids[i], "candidate_margin": round(float(cand[i]), 4),
             "reference_margin": round(float(ref[i]), 4)} for i in picked]


def preference_finding(candidate: FeedbackScores, reference: FeedbackScores, labels: Mapping[str, bool],
                       reference_name: str, objective: str, cfg: GateConfig) -> Finding:
    """The candidate's feedback accuracy may fall at most `preference_margin` below the reference's (the
    one-sided `confidence` lower bound of the difference, paired bootstrap)."""
    details: dict = {"reference": reference_name, "objective": objective, "margin": cfg.preference_margin}
    if not cfg.check_preference:
        return Finding("off", "switched off (gate.check_preference: false)", details)
    figures, diff = feedback_accuracy(candidate, reference, labels, cfg)
    details.update(figures)
    if "candidate_accuracy" not in figures or figures["examples"] < cfg.min_feedback_examples:
        return Finding("off", f"skipped: {figures.get('examples', 0)} held-out feedback examples (pairs, and thumbs "
                       f"of both classes), gate.min_feedback_examples is {cfg.min_feedback_examples}", details)
    if diff is not None and len(diff):
        bound = float(np.quantile(diff, 1.0 - cfg.confidence))
        how = f"one-sided {cfg.confidence:.0%} lower bound {bound:+.4f}"
    else:
        bound = figures["difference"]
        how = f"point estimate {bound:+.4f}"
    details["lower_bound"] = round(bound, 6)
    parts = []
    if figures["pairs"]:
        parts.append(f"sent answer over draft in {figures['candidate_pair_accuracy']:.1%} of {figures['pairs']} "
                     f"pairs ({reference_name} {figures['reference_pair_accuracy']:.1%})")
    if figures["desirable"]:
        parts.append(f"thumbs AUC {figures['candidate_thumbs_auc']:.3f} on {figures['desirable']} good and "
                     f"{figures['undesirable']} bad answers ({reference_name} {figures['reference_thumbs_auc']:.3f})")
    message = (f"feedback accuracy {figures['candidate_accuracy']:.3f} vs the {reference_name}'s "
               f"{figures['reference_accuracy']:.3f}: {'; '.join(parts)}; difference {how}, must be > "
               f"{-cfg.preference_margin:+.4f}")
    status = "pass" if bound > -cfg.preference_margin else "fail"
    if status == "fail" and objective == "sft":
        return Finding("pass", f"advisory under training.objective sft (nothing trained on the feedback): {message}",
                       {**details, "advisory": True})
    return Finding(status, message, details)
