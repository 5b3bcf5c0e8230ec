"""What the candidate report shows of the probe's answers: the golden prompts and a few sampled trusted
questions, each with the candidate's and the reference's (champion or base) answers. The report scrubs
every text before writing it."""

from __future__ import annotations

from daemon.gate.checks import Verdict
from daemon.gate.golden import GoldenSet
from daemon.training.contract import ProbeResult, TrainResult, as_result


def golden_rows(result: TrainResult | dict, verdict: Verdict, golden: GoldenSet, reference: str) -> list[dict]:
    """The golden prompts with the candidate's and the reference's (champion or base) answers and the
    behaviour check's findings, for the report (which scrubs every answer before writing it)."""
    probe = as_result(result).probe or ProbeResult()
    by_model = {label: {a.id: a.text for a in rows} for label, rows in probe.answers.items()}
    behaviour = next((c for c in verdict.checks if c.name == "behaviour"), None)
    findings = {row.get("id"): row for row in (behaviour.details.get("prompts", []) if behaviour else [])}
    rows = []
    for prompt in golden.prompts:
        found = findings.get(prompt.id, {})
        rows.append({
            "id": prompt.id, "prompt": prompt.prompt,
            "candidate": by_model.get("candidate", {}).get(prompt.id, ""),
            "reference": by_model.get(reference, {}).get(prompt.id),
            "status": found.get("status", "off"),
            "failures": list(found.get("failed", [])) + [f"{name} (advisory)" for name in found.get("advisory", [])],
        })
    return rows


SAMPLE_ROWS = 6  # sampled trusted questions shown in the report


def sample_rows(result: TrainResult | dict, prompts: list[dict], reference: str) -> list[dict]:
    """A few sampled trusted questions with the agent's, the candidate's and the reference's answers and
    their similarities, for the report (which scrubs them)."""
    probe = as_result(result).probe or ProbeResult()
    candidate = {a.id: a for a in probe.samples_of("candidate")}
    other = {a.id: a for a in probe.samples_of(reference)}
    rows = []
    for prompt in prompts[:SAMPLE_ROWS]:
        mine, theirs = candidate.get(prompt["id"]), other.get(prompt["id"])
        rows.append({
            "id": prompt["id"], "question": prompt["messages"][-1]["content"], "agent": prompt["reference"],
            "candidate": mine.text if mine else None, "reference": theirs.text if theirs else None,
            "candidate_similarity": mine.similarity if mine else None,
            "reference_similarity": theirs.similarity if theirs else None,
        })
    return rows
