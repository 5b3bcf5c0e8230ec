"""The promotion gate: pure functions from eval metrics to a verdict, with a reason per check.

Loss is the token-weighted mean cross-entropy over assistant tokens, in nats, on the trusted eval
set. The candidate is compared with the champion, or with the base model when there is none yet.
A candidate passes when every check passes; each check reports its numbers either way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GateInputs:
    trusted_examples: int
    candidate_loss: float | None
    reference_loss: float | None
    reference: str  # "champion" or "base"


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    message: str


@dataclass(frozen=True)
class Verdict:
    passed: bool
    checks: list[CheckResult]

    @property
    def reasons(self) -> list[str]:
        """Failed checks first, then the passed ones: every decision names its numbers."""
        failed = [f"FAIL {c.name}: {c.message}" for c in self.checks if not c.passed]
        passed = [f"ok {c.name}: {c.message}" for c in self.checks if c.passed]
        return failed + passed

    def to_dict(self) -> dict:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks]}


def check_eval_size(inputs: GateInputs, min_eval_examples: int) -> CheckResult:
    n = inputs.trusted_examples
    return CheckResult(
        "min_eval_examples",
        n >= min_eval_examples,
        f"{n} trusted eval examples, at least {min_eval_examples} required",
    )


def check_improvement(inputs: GateInputs, min_improvement: float) -> CheckResult:
    if inputs.candidate_loss is None or inputs.reference_loss is None:
        return CheckResult("improvement", False, f"no loss to compare with the {inputs.reference}")
    improvement = inputs.reference_loss - inputs.candidate_loss
    return CheckResult(
        "improvement",
        improvement > min_improvement,
        f"candidate loss {inputs.candidate_loss:.4f} vs {inputs.reference} {inputs.reference_loss:.4f} nats: "
        f"improvement {improvement:+.4f}, must be > {min_improvement:.4f}",
    )


def judge(inputs: GateInputs, *, min_eval_examples: int, min_improvement: float) -> Verdict:
    checks = [check_eval_size(inputs, min_eval_examples), check_improvement(inputs, min_improvement)]
    return Verdict(passed=all(c.passed for c in checks), checks=checks)


def inputs_from_result(result: dict, has_champion: bool) -> GateInputs:
    """Reads the worker's result file: the trusted set's candidate and reference losses."""
    trusted = result.get("eval", {}).get("trusted", {})
    reference = "champion" if has_champion else "base"
    candidate = trusted.get("candidate") or {}
    return GateInputs(
        trusted_examples=int(candidate.get("examples") or 0),
        candidate_loss=candidate.get("loss"),
        reference_loss=(trusted.get(reference) or {}).get("loss"),
        reference=reference,
    )
