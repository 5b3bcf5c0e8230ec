"""The promotion gate: pure functions from the worker's eval results to a verdict, one check each.

Loss is the token-weighted mean cross-entropy over assistant tokens, in nats, on the trusted eval
set. The candidate is compared with the champion, or with the base model when there is none: its
improvement is judged by a paired bootstrap over examples, and no category (slice) may regress
past a tolerance. Beside the loss: the forgetting guard (loss on general text against the base),
the golden prompts' answers (behaviour) and whether the adapter loads and generates in a fresh
process (servable). Every check reports its numbers, whether it passed, failed or was off.
"""

from __future__ import annotations

import copy
import json
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from daemon.config import GateConfig
from daemon.gate.answers import RELEVANCE_OWN, RELEVANCE_SWAPPED, answers_finding, relevance_finding
from daemon.gate.golden import GoldenPrompt, GoldenSet
from daemon.gate.preference import FeedbackScores, preference_finding
from daemon.ingest.feedback import FEEDBACK_CHOSEN, FEEDBACK_REJECTED, FEEDBACK_THUMBS
from daemon.ingest.privacy import FILLABLE_PLACEHOLDERS, PLACEHOLDERS, privacy_policy, scrub_patterns
from daemon.training.contract import EvalScore, ProbeResult, TrainResult, as_result

PASS, FAIL, OFF = "pass", "fail", "off"
MAX_TAG_CHARS = 5000  # MLflow stores a tag value in VARCHAR(5000) on SQL backends
MESSAGE_SLICES = 5  # regressed slices named in a reason; the details hold them all
MESSAGE_PROMPTS = 5  # failing golden prompts named in a reason; the details hold them all
ANSWER_CHARS = 160  # of each (scrubbed) answer kept in the details
# What the privacy detectors find that an answer must never carry: personal data, not a placeholder.
PERSONAL_DATA = {"<EMAIL>": "email", "<PHONE>": "phone", "<CARD_NUMBER>": "card number", "<IBAN>": "IBAN",
                 "<SSN>": "SSN"}
PLACEHOLDER_PATTERN = re.compile(r"<[A-Z][A-Z0-9_]*>")
# The tiny demo model (gate.profile: demo) loops in greedy decoding (often on newlines alone), misspells
# placeholders (<AGENY_FIRST_NAME>) and rarely says its intent's word, whatever it learned: these
# expectations are only reported there. Personal data, known unfillable placeholders and the prompts'
# must_not_contain / must_not_match still decide.
DEMO_RELAXED = ("empty", "repetition", "unknown placeholder", "must_contain", "regex")
_BLOCK_CELLS = 1 << 22  # resampled indices drawn at once: bounds the memory whatever the set size


@dataclass(frozen=True)
class PairedLosses:
    """Per-example loss sums (nats) and supervised tokens of the candidate and the reference, one
    entry per example both were scored on, in ticket id order."""

    ticket_ids: tuple[str, ...]
    candidate_sums: np.ndarray
    candidate_tokens: np.ndarray
    reference_sums: np.ndarray
    reference_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.ticket_ids)

    def losses(self) -> tuple[float, float]:
        """Token-weighted candidate and reference losses."""
        return (float(self.candidate_sums.sum() / self.candidate_tokens.sum()),
                float(self.reference_sums.sum() / self.reference_tokens.sum()))

    def subset(self, indices: np.ndarray) -> PairedLosses:
        return PairedLosses(
            tuple(self.ticket_ids[i] for i in indices), self.candidate_sums[indices],
            self.candidate_tokens[indices], self.reference_sums[indices], self.reference_tokens[indices],
        )


@dataclass(frozen=True)
class GateInputs:
    trusted_examples: int
    candidate_loss: float | None
    reference_loss: float | None
    reference: str  # "champion" or "base"
    paired: PairedLosses | None = None  # None when the result has no per-example losses
    categories: Mapping[str, str | None] = field(default_factory=dict)  # ticket id → category
    general: tuple[float, float] | None = None  # (candidate, base) loss on general text, nats per token
    probe: ProbeResult | None = None  # the worker's probe result: status, error, answers per adapter
    golden: GoldenSet | None = None  # the golden prompts the probe answered
    # per-example rows of the relevance eval sets: candidate own, candidate swapped, reference own, swapped
    relevance: tuple[Sequence | None, Sequence | None, Sequence | None, Sequence | None] | None = None
    keep: tuple[str, ...] = ()  # privacy.keep: the company's own contact details, which answers may carry
    # the feedback eval sets' rows of the candidate and the reference, and each thumbs answer's label (desirable)
    feedback: tuple[FeedbackScores, FeedbackScores] | None = None
    feedback_labels: Mapping[str, bool] = field(default_factory=dict)
    objective: str = "sft"  # training.objective: under sft the preference check is advisory

    def __post_init__(self) -> None:
        if isinstance(self.probe, Mapping):  # a plain result dict (tests, older callers)
            object.__setattr__(self, "probe", ProbeResult.model_validate(dict(self.probe)))


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # PASS, FAIL or OFF; a check that is off never blocks a promotion
    message: str
    details: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status != FAIL


@dataclass(frozen=True)
class Verdict:
    passed: bool
    checks: list[CheckResult]

    @property
    def reasons(self) -> list[str]:
        """Failed checks first, then the passed ones, then those that were off: each with its numbers."""
        label = {FAIL: "FAIL", PASS: "ok", OFF: "off"}
        return [f"{label[status]} {c.name}: {c.message}"
                for status in (FAIL, PASS, OFF) for c in self.checks if c.status == status]

    def to_dict(self, max_chars: int = MAX_TAG_CHARS) -> dict:
        """JSON-able, and under `max_chars` once dumped: long row lists (slices) keep their first,
        worst rows and count the ones left out."""
        checks = [{"name": c.name, "status": c.status, "passed": c.passed, "message": c.message,
                   "details": copy.deepcopy(c.details)} for c in self.checks]
        out = {"passed": self.passed, "checks": checks}
        while len(json.dumps(out)) > max_chars:
            lists = [(check["details"], key) for check in checks for key, rows in check["details"].items()
                     if isinstance(rows, list) and rows and isinstance(rows[-1], dict)]
            if not lists:
                break
            details, key = max(lists, key=lambda found: len(json.dumps(found[0][found[1]])))
            details[key].pop()
            details[f"{key}_omitted"] = details.get(f"{key}_omitted", 0) + 1
        return out


def paired_losses(candidate_rows: Sequence | None, reference_rows: Sequence | None) -> PairedLosses | None:
    """Joins two `per_example` lists (`[ticket_id, loss_sum, tokens]`) on the ticket id; examples
    without a supervised token carry no loss and are left out."""
    if not candidate_rows or not reference_rows:
        return None
    reference = {str(row[0]): row for row in reference_rows}
    rows = [(str(c[0]), float(c[1]), float(c[2]), float(r[1]), float(r[2]))
            for c in candidate_rows if (r := reference.get(str(c[0]))) is not None and c[2] > 0 and r[2] > 0]
    if not rows:
        return None
    rows.sort(key=lambda row: row[0])
    columns = list(zip(*rows, strict=True))
    return PairedLosses(tuple(columns[0]), *(np.asarray(column, dtype=np.float64) for column in columns[1:]))


def bootstrap_improvements(paired: PairedLosses, samples: int, seed: int | Sequence[int]) -> np.ndarray:
    """`samples` replicates of reference loss − candidate loss, each computed on one resample of the
    examples (with replacement) shared by both models, as a ratio of token-weighted sums: the
    pairing cancels how hard each example is, which varies far more than the models differ."""
    n = len(paired)
    rng = np.random.default_rng(seed)
    out = np.empty(samples, dtype=np.float64)
    rows = max(1, _BLOCK_CELLS // n)
    for start in range(0, samples, rows):
        picks = rng.integers(0, n, size=(min(rows, samples - start), n))
        out[start : start + len(picks)] = (
            paired.reference_sums[picks].sum(axis=1) / paired.reference_tokens[picks].sum(axis=1)
            - paired.candidate_sums[picks].sum(axis=1) / paired.candidate_tokens[picks].sum(axis=1)
        )
    return out


def _round(value: float) -> float:
    return round(float(value), 6)


def check_eval_size(inputs: GateInputs, cfg: GateConfig) -> CheckResult:
    n = inputs.trusted_examples
    return CheckResult(
        "min_eval_examples",
        PASS if n >= cfg.min_eval_examples else FAIL,
        f"{n} trusted eval examples, at least {cfg.min_eval_examples} required",
        {"examples": n, "required": cfg.min_eval_examples},
    )


def check_improvement(inputs: GateInputs, cfg: GateConfig) -> CheckResult:
    """Superiority: the bound on the improvement must exceed `min_improvement`; non-inferiority:
    it must exceed −`non_inferiority_margin` (the candidate is no worse than the margin)."""
    ref = inputs.reference
    if cfg.mode == "non_inferiority":
        threshold = -cfg.non_inferiority_margin
        rule = f"must be > {threshold:+.4f} (non-inferiority: no worse than {cfg.non_inferiority_margin:.4f})"
    else:
        threshold = cfg.min_improvement
        rule = f"must be > {threshold:+.4f}"
    details: dict = {"mode": cfg.mode, "reference": ref, "threshold": threshold}
    paired = inputs.paired
    if paired is not None:
        candidate_loss, reference_loss = paired.losses()
    elif inputs.candidate_loss is not None and inputs.reference_loss is not None:
        candidate_loss, reference_loss = inputs.candidate_loss, inputs.reference_loss
    else:
        return CheckResult("improvement", FAIL, f"no loss to compare with the {ref}", details)
    estimate = reference_loss - candidate_loss
    details.update(candidate_loss=_round(candidate_loss), reference_loss=_round(reference_loss),
                   estimate=_round(estimate))
    numbers = f"candidate loss {candidate_loss:.4f} vs {ref} {reference_loss:.4f} nats: improvement {estimate:+.4f}"
    if paired is None or cfg.bootstrap_samples == 0:
        why = ("no per-example losses in the worker's result" if paired is None
               else "bootstrap off (gate.bootstrap_samples: 0)")
        details.update(bound="point estimate", why=why)
        return CheckResult("improvement", PASS if estimate > threshold else FAIL,
                           f"{numbers} {rule}; {why}: judged on the point estimate, no interval", details)
    replicates = bootstrap_improvements(paired, cfg.bootstrap_samples, cfg.bootstrap_seed)
    tail = 1.0 - cfg.confidence
    lower = float(np.quantile(replicates, tail))
    interval = np.quantile(replicates, [tail / 2, 1.0 - tail / 2])
    details.update(
        bound="one-sided bootstrap lower bound", lower_bound=_round(lower), confidence=cfg.confidence,
        interval=[_round(x) for x in interval], examples=len(paired), tokens=int(paired.candidate_tokens.sum()),
        bootstrap_samples=cfg.bootstrap_samples, seed=cfg.bootstrap_seed,
    )
    return CheckResult(
        "improvement",
        PASS if lower > threshold else FAIL,
        f"{numbers}; one-sided {cfg.confidence:.0%} lower bound {lower:+.4f} {rule}; {cfg.confidence:.0%} interval "
        f"[{interval[0]:+.4f}, {interval[1]:+.4f}] by a paired bootstrap over {len(paired)} examples "
        f"({cfg.bootstrap_samples} resamples)",
        details,
    )


def check_slices(inputs: GateInputs, cfg: GateConfig) -> CheckResult:
    """Each category with at least `min_slice_examples` examples: the candidate's loss may exceed
    the reference's by at most `slice_tolerance_nats` (point estimate; the interval is reported)."""
    details: dict = {"tolerance": cfg.slice_tolerance_nats, "min_examples": cfg.min_slice_examples}
    if not cfg.check_slices:
        return CheckResult("slices", OFF, "switched off (gate.check_slices: false)", details)
    paired = inputs.paired
    if paired is None:
        return CheckResult("slices", OFF, "skipped: no per-example losses in the worker's result", details)
    members: dict[str, list[int]] = {}
    for index, ticket_id in enumerate(paired.ticket_ids):
        category = inputs.categories.get(ticket_id)
        if category:
            members.setdefault(category, []).append(index)
    details["uncategorised"] = len(paired) - sum(len(m) for m in members.values())
    small = sorted((c for c, m in members.items() if len(m) < cfg.min_slice_examples),
                   key=lambda c: (-len(members[c]), c))
    details["skipped"] = [{"category": c, "examples": len(members[c])} for c in small]
    judged = sorted(c for c, m in members.items() if len(m) >= cfg.min_slice_examples)
    skipped_note = (f"{len(small)} with fewer than {cfg.min_slice_examples} examples skipped "
                    f"({', '.join(f'{c} {len(members[c])}' for c in small[:MESSAGE_SLICES])}"
                    f"{', ...' if len(small) > MESSAGE_SLICES else ''})" if small else "")
    if not judged:
        why = skipped_note or "no trusted example has a category"
        return CheckResult("slices", OFF, f"skipped: no category has {cfg.min_slice_examples} examples; {why}",
                           details)
    rows = []
    for category in judged:
        part = paired.subset(np.asarray(members[category]))
        candidate_loss, reference_loss = part.losses()
        delta = candidate_loss - reference_loss
        row = {"category": category, "examples": len(part), "candidate_loss": _round(candidate_loss),
               "reference_loss": _round(reference_loss), "delta": _round(delta),
               "status": FAIL if delta > cfg.slice_tolerance_nats else PASS}
        if cfg.bootstrap_samples:
            seed = [cfg.bootstrap_seed, zlib.crc32(category.encode("utf-8"))]
            deltas = -bootstrap_improvements(part, cfg.bootstrap_samples, seed)
            tail = (1.0 - cfg.confidence) / 2
            row["interval"] = [_round(x) for x in np.quantile(deltas, [tail, 1.0 - tail])]
        rows.append(row)
    rows.sort(key=lambda row: -row["delta"])  # worst first: what a truncated tag keeps
    details["slices"] = rows
    regressed = [row for row in rows if row["status"] == FAIL]
    summary = (f"{len(rows)} {'category' if len(rows) == 1 else 'categories'} with at least "
               f"{cfg.min_slice_examples} examples, "
               f"{len(regressed)} worse than the {inputs.reference} by more than {cfg.slice_tolerance_nats:.4f} nats")
    shown = regressed or rows[:1]
    named = "; ".join(
        f"{row['category']} {row['delta']:+.4f} (candidate {row['candidate_loss']:.4f} vs "
        f"{row['reference_loss']:.4f}, {row['examples']} examples)" for row in shown[:MESSAGE_SLICES]
    )
    more = f"; {len(shown) - MESSAGE_SLICES} more" if len(shown) > MESSAGE_SLICES else ""
    message = f"{summary}: {named}{more}" if regressed else f"{summary}; worst {named}"
    if skipped_note:
        message += f"; {skipped_note}"
    return CheckResult("slices", FAIL if regressed else PASS, message, details)


def check_general_text(inputs: GateInputs, cfg: GateConfig) -> CheckResult:
    """Forgetting guard: the candidate's loss on general (non-support) text may exceed the base's by at
    most the fraction `max_general_loss_increase`."""
    limit = cfg.max_general_loss_increase
    details: dict = {"max_increase": limit}
    if limit is None:
        return CheckResult("forgetting", OFF, "switched off (gate.max_general_loss_increase: null)", details)
    if inputs.general is None:
        return CheckResult("forgetting", OFF, "skipped: the worker's result has no general-text loss of the "
                           "candidate and the base (no general_text_file in the spec)", details)
    candidate, base = inputs.general
    bound = base * (1.0 + limit)
    increase = candidate / base - 1.0 if base > 0 else 0.0
    details.update(candidate_loss=_round(candidate), base_loss=_round(base), increase=_round(increase),
                   bound=_round(bound))
    return CheckResult(
        "forgetting",
        PASS if candidate <= bound else FAIL,
        f"general-text loss candidate {candidate:.4f} vs base {base:.4f} nats: {increase:+.1%}, at most "
        f"{limit:+.1%} allowed (bound {bound:.4f})",
        details,
    )


def repetition_ratio(text: str) -> float:
    """How much an answer repeats itself: 1 − unique/total over its word 3-grams (words split on
    whitespace, case-folded); 0.0 for an answer of fewer than three words or with no 3-gram twice,
    toward 1.0 for an answer that loops on one phrase."""
    words = text.casefold().split()
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def answer_failures(prompt: GoldenPrompt, text: str, max_repetition: float, keep: Sequence[str] = ()) -> list[str]:
    """The expectations an answer fails: each one's name with its numbers, never the answer's words. The
    company's own contact details (`keep`, from privacy.keep) are not personal data."""
    failed: list[str] = []
    stripped = text.strip()
    ratio = repetition_ratio(stripped)
    _, found = scrub_patterns(stripped, privacy_policy(keep=tuple(keep)))
    if not stripped:
        failed.append("empty")
    if ratio > max_repetition:
        failed.append(f"repetition {ratio:.2f} > {max_repetition:.2f}")
    kinds = sorted(PERSONAL_DATA[p] for p in found if p in PERSONAL_DATA)
    if kinds:
        failed.append("personal data: " + ", ".join(kinds))
    found_placeholders = set(PLACEHOLDER_PATTERN.findall(stripped)) - FILLABLE_PLACEHOLDERS
    unfillable = sorted(found_placeholders & PLACEHOLDERS.keys())
    if unfillable:
        failed.append("unfillable placeholder " + " ".join(unfillable))
    unknown = sorted(found_placeholders - PLACEHOLDERS.keys())  # not in the vocabulary: a misspelt one
    if unknown:
        failed.append("unknown placeholder " + " ".join(unknown))
    lowered = stripped.casefold()
    failed.extend(f"must_contain {word!r}" for word in prompt.must_contain if word.casefold() not in lowered)
    failed.extend(f"must_not_contain {word!r}" for word in prompt.must_not_contain if word.casefold() in lowered)
    failed.extend(f"regex {i} {pattern!r}" for i, pattern in enumerate(prompt.regex)
                  if re.search(pattern, stripped) is None)
    failed.extend(f"must_not_match {i} {pattern!r}" for i, pattern in enumerate(prompt.must_not_match)
                  if re.search(pattern, stripped) is not None)
    return failed


def check_behaviour(inputs: GateInputs, cfg: GateConfig) -> CheckResult:
    """Each golden prompt's greedy answer by the candidate: not empty, not degenerate (word 3-gram
    repetition ratio at most `max_repetition_ratio`), no personal data (email, phone, card number,
    IBAN, SSN), no placeholder the serving layer cannot fill, and the prompt's own expectations
    (must_contain, must_not_contain, regex, must_not_match). Details carry scrubbed answers only."""
    demo = cfg.profile == "demo"
    relaxed_names = DEMO_RELAXED if demo else ()
    details: dict = {"max_repetition_ratio": cfg.max_repetition_ratio, "profile": cfg.profile,
                     "relaxed": list(relaxed_names)}
    relaxed = (f"; profile demo: {', '.join(DEMO_RELAXED)} reported, not judged (a tiny model's answers are "
               "too rough for them)" if demo else "")
    if not cfg.check_behaviour:
        return CheckResult("behaviour", OFF, "switched off (gate.check_behaviour: false)", details)
    if inputs.golden is None:
        return CheckResult("behaviour", OFF, "skipped: no golden prompts were given to the gate", details)
    probe = inputs.probe
    if probe is None or probe.status == "off":
        return CheckResult("behaviour", OFF, "skipped: the worker ran no probe (spec probe.enabled: false)", details)
    if probe.status != "ok":
        return CheckResult("behaviour", FAIL, f"the probe failed, so no answer can be judged: {probe.error}",
                           details)
    answers = {a.id: a for a in probe.answers_of("candidate")}
    rows = []
    for prompt in inputs.golden.prompts:
        answer = answers.get(prompt.id)
        if answer is None:
            rows.append({"id": prompt.id, "status": FAIL, "failed": ["not answered by the probe"]})
            continue
        text = (answer.text or "").strip()
        found = answer_failures(prompt, text, cfg.max_repetition_ratio, inputs.keep)
        failed = [name for name in found if not name.startswith(relaxed_names)]
        row = {"id": prompt.id, "status": FAIL if failed else PASS, "failed": failed}
        if len(failed) < len(found):
            row["advisory"] = [name for name in found if name.startswith(relaxed_names)]
        row.update(new_tokens=answer.new_tokens, repetition=_round(repetition_ratio(text)),
                   answer=scrub_patterns(text)[0][:ANSWER_CHARS])
        rows.append(row)
    rows.sort(key=lambda row: row["status"] != FAIL)  # failing prompts first: what a truncated tag keeps
    details["prompts"] = rows
    failing = [row for row in rows if row["status"] == FAIL]
    repetition = "" if demo else f", repetition <= {cfg.max_repetition_ratio:.2f}"
    checked = f"not empty, no personal data, no unfillable placeholder{repetition}, the prompts' own expectations"
    if not failing:
        return CheckResult("behaviour", PASS, f"{len(rows)} golden prompts answered, all meet: {checked}{relaxed}",
                           details)
    named = "; ".join(f"{row['id']} ({', '.join(row['failed'])})" for row in failing[:MESSAGE_PROMPTS])
    more = f"; {len(failing) - MESSAGE_PROMPTS} more" if len(failing) > MESSAGE_PROMPTS else ""
    return CheckResult("behaviour", FAIL, f"{len(failing)} of {len(rows)} golden prompts fail: {named}{more}{relaxed}",
                       details)


def check_servable(inputs: GateInputs, cfg: GateConfig) -> CheckResult:
    """The adapter loaded onto the full-precision base in a fresh process (as a server loads it) and
    generated at least one token for some golden prompt."""
    if not cfg.check_servable:
        return CheckResult("servable", OFF, "switched off (gate.check_servable: false)")
    probe = inputs.probe
    if probe is None or probe.status == "off":
        return CheckResult("servable", OFF, "skipped: the worker ran no probe (spec probe.enabled: false)")
    answers = probe.answers_of("candidate")
    tokens = sum(a.new_tokens or 0 for a in answers)
    details = {"probe_status": probe.status, "load_seconds": probe.load_seconds,
               "seconds": probe.seconds, "wall_seconds": probe.wall_seconds,
               "prompts": len(answers), "new_tokens": tokens}
    if probe.status != "ok":
        return CheckResult("servable", FAIL, f"the adapter did not load and generate in a fresh process: "
                           f"{probe.error}", details)
    if not any((a.new_tokens or 0) > 0 for a in answers):
        return CheckResult("servable", FAIL, f"the adapter loaded but generated no token for any of "
                           f"{len(answers)} prompts", details)
    return CheckResult("servable", PASS, f"loaded onto the base in a fresh process in {probe.load_seconds} s "
                       f"and generated {tokens} tokens for {len(answers)} prompts", details)


def _decided(name: str, status: str, message: str, details: dict, cfg: GateConfig) -> CheckResult:
    """A check the tiny demo model cannot meet is advisory under `gate.profile: demo`: reported, not judged."""
    if status == FAIL and cfg.profile == "demo":
        return CheckResult(name, PASS, f"advisory under gate.profile demo: {message}", {**details, "advisory": True})
    return CheckResult(name, status, message, details)


def check_relevance(inputs: GateInputs, cfg: GateConfig) -> CheckResult:
    """The answers still depend on the questions (see daemon/gate/answers.py); advisory under the demo
    profile, whose tiny model barely conditions on the question (margins of hundredths of a nat)."""
    finding = relevance_finding(*(inputs.relevance or (None,) * 4), inputs.reference, cfg)
    return _decided("relevance", finding.status, finding.message, finding.details, cfg)


def check_answers(inputs: GateInputs, cfg: GateConfig) -> CheckResult:
    """Greedy answers on sampled trusted questions are no further from the agents' answers than the
    reference's (see daemon/gate/answers.py); advisory under the demo profile, whose tiny model babbles."""
    probe = inputs.probe or ProbeResult()
    if cfg.check_answers and probe.status == "off":
        return CheckResult("answers", OFF, "skipped: the worker ran no probe (spec probe.enabled: false)")
    error = probe.error if probe.status != "ok" else probe.similarity_error
    finding = answers_finding(probe.samples_of("candidate"), probe.samples_of(inputs.reference), inputs.reference,
                              cfg, probe_error=error)
    return _decided("answers", finding.status, finding.message, finding.details, cfg)


def check_preference(inputs: GateInputs, cfg: GateConfig) -> CheckResult:
    """Held-out feedback: the candidate prefers what people preferred, no less than the reference (preference.py)."""
    candidate, reference = inputs.feedback or (FeedbackScores(), FeedbackScores())
    finding = preference_finding(candidate, reference, inputs.feedback_labels, inputs.reference, inputs.objective,
                                 cfg)
    return CheckResult("preference", finding.status, finding.message, finding.details)


def judge(inputs: GateInputs, cfg: GateConfig) -> Verdict:
    checks = [check_eval_size(inputs, cfg), check_improvement(inputs, cfg), check_slices(inputs, cfg),
              check_relevance(inputs, cfg), check_general_text(inputs, cfg), check_behaviour(inputs, cfg),
              check_answers(inputs, cfg), check_servable(inputs, cfg), check_preference(inputs, cfg)]
    return Verdict(passed=all(c.passed for c in checks), checks=checks)


def inputs_from_result(
    result: TrainResult | Mapping,
    has_champion: bool,
    categories: Mapping[str, str | None] | None = None,
    golden: GoldenSet | None = None,
    keep: Sequence[str] = (),
    feedback_labels: Mapping[str, bool] | None = None,
    objective: str = "sft",
) -> GateInputs:
    """Reads the worker's result (`contract.TrainResult`; a plain dict is validated into one): the trusted
    set's candidate and reference losses, per example too; `categories` maps the trusted examples' ticket
    ids to their category for the slices; the general-text losses of the candidate and the base, and the
    probe; `golden` is the set it answered; `feedback_labels` says which held-out thumbs answers were rated good,
    and `objective` is the config's training.objective."""
    result = as_result(result)
    general_losses = (result.loss("general", "candidate"), result.loss("general", "base"))
    reference = "champion" if has_champion else "base"
    candidate = result.score("trusted", "candidate") or EvalScore()
    scored = result.score("trusted", reference) or EvalScore()
    relevance = tuple((result.score(name, label) or EvalScore()).per_example
                      for label in ("candidate", reference) for name in (RELEVANCE_OWN, RELEVANCE_SWAPPED))
    return GateInputs(
        trusted_examples=int(candidate.examples or 0),
        candidate_loss=candidate.loss,
        reference_loss=scored.loss,
        reference=reference,
        paired=paired_losses(candidate.per_example, scored.per_example),
        categories=dict(categories or {}),
        general=None if None in general_losses else (float(general_losses[0]), float(general_losses[1])),
        probe=result.probe,
        golden=golden,
        relevance=relevance,  # type: ignore[arg-type]
        keep=tuple(keep),
        feedback=tuple(FeedbackScores(*((result.score(name, label) or EvalScore()).per_example  # type: ignore[arg-type]
                                        for name in (FEEDBACK_THUMBS, FEEDBACK_CHOSEN, FEEDBACK_REJECTED)))
                       for label in ("candidate", reference)),
        feedback_labels=dict(feedback_labels or {}),
        objective=objective,
    )
