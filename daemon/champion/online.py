"""Online probation: each new champion's real outcomes against the champion it replaced (pure; no I/O).

After every champion move the resolved tickets whose first answer the new champion drafted
(`ai_assist.model_version`) are compared with the previous champion's most recent tickets, on two
metrics where higher is better:

- CSAT, over the tickets that carry one;
- draft acceptance: the share of drafts sent as is, or edited by less than `feedback.min_edit_ratio`.

The new champion's tickets are taken in the order they resolved; each is paired with the previous
champion's most recent unused ticket of the same category (any category when none is left), so the two
samples have the same size and, where possible, the same category mix, and a pairing once made never
changes as tickets arrive (the samples are nested, which the sequential test needs).

The test is a mixture sequential probability ratio test (mSPRT; Johari, Pekelis and Walsh, "Always
valid inference", 2017) on the paired differences d = previous - new - margin, with a normal mixture of
standard deviation τ = 2·margin over the effect
(effects of a few margins are the ones it is most sensitive to): with n pairs, mean d̄ and variance σ² of d,

    Λn = sqrt(σ² / (σ² + n·τ²)) · exp(n²·τ²·d̄² / (2·σ²·(σ² + n·τ²)))

and the new champion is worse by more than the margin once d̄ > 0 and Λn ≥ 1/α', where α' is
`online.alpha` split evenly between the metrics (Bonferroni). Because Λn is a martingale under no
difference, checking it after every ticket keeps the false-alarm rate at most α' per metric, however
often it is looked at (tests/test_online.py simulates it). Nothing is decided before
`online.min_tickets` of the new champion's tickets have resolved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

METRICS = ("csat", "draft_acceptance")
MIN_VARIANCE = 1e-4  # a floor for σ²: a metric that does not vary (every draft accepted) is still judged

# probation states (the `state` of `Probation`)
NO_PREDECESSOR = "no_predecessor"  # a first champion: nothing to compare with
NO_CHAMPION = "no_champion"
WAITING = "waiting"  # fewer than min_tickets of the new champion's tickets so far
NO_DATA = "no_data"  # enough tickets, but a metric has no pairs (no CSAT, no drafts of the predecessor)
WATCHING = "watching"  # compared: not worse so far
WORSE = "worse"  # worse by more than a margin on some metric
DISABLED = "disabled"


@dataclass(frozen=True)
class Outcome:
    """One resolved ticket whose first answer an adapter version drafted."""

    ticket_id: str
    model_version: str
    resolved_at: str  # ISO-8601, UTC
    category: str | None
    csat: float | None
    accepted: bool  # sent as is, or edited by less than feedback.min_edit_ratio


@dataclass(frozen=True)
class MetricTest:
    metric: str
    pairs: int
    new_mean: float | None
    previous_mean: float | None
    margin: float
    alpha: float
    statistic: float  # log Λn
    threshold: float  # log(1/α')
    worse: bool

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Probation:
    state: str
    champion: str | None
    previous: str | None
    since: str | None  # when the champion took over
    new_tickets: int = 0
    previous_tickets: int = 0
    ignored_tickets: int = 0  # drafted by neither version, since the move
    min_tickets: int = 0
    tests: list[MetricTest] = field(default_factory=list)
    message: str = ""

    @property
    def worse(self) -> bool:
        return self.state == WORSE

    def figure(self, metric: str, role: str) -> float | None:
        """The metric's mean over the compared tickets of `role` (`champion` or `previous`)."""
        for test in self.tests:
            if test.metric == metric:
                return test.new_mean if role == "champion" else test.previous_mean
        return None

    def as_dict(self) -> dict:
        data = asdict(self)
        data["tests"] = [t.as_dict() for t in self.tests]
        return data

    def summary(self) -> str:
        """One line: the figures and the decision, for the audit log's reason and `ticketune status`."""
        parts = [f"{self.new_tickets} tickets of v{self.champion} vs v{self.previous}"]
        for t in self.tests:
            if t.new_mean is None:
                parts.append(f"{t.metric}: no pairs")
                continue
            parts.append(f"{t.metric} {t.new_mean:.3f} vs {t.previous_mean:.3f} over {t.pairs} pairs "
                         f"(margin {t.margin:g}; log-LR {t.statistic:.2f}, threshold {t.threshold:.2f}"
                         f"{', WORSE' if t.worse else ''})")
        return "; ".join(parts)


def msprt_log_statistic(differences: np.ndarray, tau2: float) -> np.ndarray:
    """log Λn for every prefix n = 1..N of `differences` (the module docstring), with the plug-in variance
    of each prefix (floored at MIN_VARIANCE); n = 1 has no variance and gets -inf."""
    d = np.asarray(differences, dtype=np.float64)
    n = np.arange(1, len(d) + 1, dtype=np.float64)
    cumsum, cumsq = np.cumsum(d), np.cumsum(d * d)
    mean = cumsum / n
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = np.where(n > 1, (cumsq - n * mean * mean) / np.maximum(n - 1, 1), np.nan)
    variance = np.maximum(np.nan_to_num(variance, nan=MIN_VARIANCE), MIN_VARIANCE)
    tau2 = max(tau2, 1e-12)
    log_stat = 0.5 * np.log(variance / (variance + n * tau2)) + \
        (n * n * tau2 * mean * mean) / (2 * variance * (variance + n * tau2))
    log_stat = np.where(mean > 0, log_stat, -np.inf)  # one-sided: only a shortfall of the new champion counts
    log_stat[n < 2] = -np.inf
    return log_stat


def mixture_variance(margin: float) -> float:
    """τ² of the mSPRT's normal mixture: (2·margin)², at least 0.05²."""
    return max(2.0 * margin, 0.05) ** 2


def metric_test(metric: str, new: Sequence[float], previous: Sequence[float], margin: float,
                alpha: float) -> MetricTest:
    """The mSPRT on the paired values (equal lengths; pair i is new[i] with previous[i])."""
    pairs = min(len(new), len(previous))
    threshold = math.log(1.0 / alpha)
    if pairs == 0:
        return MetricTest(metric, 0, None, None, margin, alpha, float("-inf"), threshold, False)
    new_a = np.asarray(new[:pairs], dtype=np.float64)
    prev_a = np.asarray(previous[:pairs], dtype=np.float64)
    differences = prev_a - new_a - margin
    statistic = float(msprt_log_statistic(differences, tau2=mixture_variance(margin))[-1])
    return MetricTest(metric, pairs, float(new_a.mean()), float(prev_a.mean()), margin, alpha, statistic,
                      threshold, statistic >= threshold)


def pair_by_category(new: Sequence[Outcome], previous: Sequence[Outcome]) -> list[tuple[Outcome, Outcome]]:
    """Each new outcome (in resolution order) with the most recent unused previous outcome of its category,
    else the most recent unused one; stops when the previous ones run out."""
    pool = sorted(previous, key=lambda o: (o.resolved_at, o.ticket_id), reverse=True)
    used = [False] * len(pool)
    by_category: dict[str | None, list[int]] = {}
    for index, outcome in enumerate(pool):
        by_category.setdefault(outcome.category, []).append(index)
    cursor: dict[str | None, int] = {}
    any_cursor = 0
    pairs = []
    for outcome in sorted(new, key=lambda o: (o.resolved_at, o.ticket_id)):
        chosen = None
        same = by_category.get(outcome.category, [])
        position = cursor.get(outcome.category, 0)
        while position < len(same) and used[same[position]]:
            position += 1
        cursor[outcome.category] = position
        if position < len(same):
            chosen = same[position]
        else:
            while any_cursor < len(pool) and used[any_cursor]:
                any_cursor += 1
            if any_cursor < len(pool):
                chosen = any_cursor
        if chosen is None:
            break
        used[chosen] = True
        pairs.append((outcome, pool[chosen]))
    return pairs


def judge_probation(new: Sequence[Outcome], previous: Sequence[Outcome], *, champion: str, predecessor: str,
                    since: str, min_tickets: int, alpha: float, margins: dict[str, float],
                    ignored: int = 0) -> Probation:
    """The probation's state from the new champion's outcomes since `since` and the previous champion's
    outcomes before it."""
    common = {"champion": champion, "previous": predecessor, "since": since, "new_tickets": len(new),
              "previous_tickets": len(previous), "ignored_tickets": ignored, "min_tickets": min_tickets}
    if len(new) < min_tickets:
        return Probation(WAITING, message=f"{len(new)} of {min_tickets} tickets drafted by v{champion} so far",
                         **common)
    pairs = pair_by_category(new, previous)
    per_metric = alpha / len(METRICS)
    csat_pairs = [(n.csat, p.csat) for n, p in pairs if n.csat is not None and p.csat is not None]
    tests = [
        metric_test("csat", [n for n, _ in csat_pairs], [p for _, p in csat_pairs], margins["csat"], per_metric),
        metric_test("draft_acceptance", [float(n.accepted) for n, _ in pairs], [float(p.accepted) for _, p in pairs],
                    margins["draft_acceptance"], per_metric),
    ]
    if any(t.worse for t in tests):
        state = WORSE
    elif all(t.pairs == 0 for t in tests):
        state = NO_DATA
    else:
        state = WATCHING
    probation = Probation(state, tests=tests, **common)
    message = probation.summary()
    if state == NO_DATA:
        message = f"no decision: v{predecessor} has no comparable tickets; " + message
    return Probation(state, tests=tests, message=message, **common)
