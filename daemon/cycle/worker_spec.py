"""The worker's spec for one cycle: the snapshot's files, the relevance eval sets and sampled trusted
questions the gate needs, the golden prompts, and how the probe runs (`daemon/training/contract.py`)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from daemon.config import Settings
from daemon.cycle.plan import worker_settings
from daemon.gate.answers import RELEVANCE_OWN, RELEVANCE_SWAPPED, answer_prompts, relevance_sets
from daemon.gate.golden import GoldenSet, general_text_path, spec_prompts
from daemon.gate.preference import judgeable_examples
from daemon.ingest.feedback import FEEDBACK_EVAL_SETS, feedback_eval_sets, heldout_feedback
from daemon.ingest.privacy import FILLABLE_PLACEHOLDERS
from daemon.store import Snapshot
from daemon.training.contract import (
    CHECKPOINTS_DIR,
    DATA_DIR,
    GENERAL_EVAL_NAME,
    OUT_DIR,
    PROGRESS_FILE,
    SPEC_FILE,
    ProbeSpec,
    TrainSpec,
    spec_error,
    write_spec,
)


def write_worker_spec(
    settings: Settings, cycle_dir: Path, snapshot: Snapshot, golden: GoldenSet, *, champion_dir: Path | None,
    warm: bool, base_is_reference: bool,
) -> Path:
    """Writes the snapshot's files and `spec.json` into `cycle_dir`; returns the spec's path. `champion_dir`:
    the champion's adapter to compare with (and warm-start from when `warm`)."""
    cfg = settings
    gate = cfg.gate
    preference = cfg.training.preference is not None
    files = snapshot.write_jsonl(cycle_dir / DATA_DIR, cfg.training.validation_fraction, preference=preference)
    eval_files = {"trusted": files["trusted"], "batch_heldout": files["batch_heldout"]}
    supervised = snapshot.sft_view(preference)  # the answers the supervised part is judged on

    def write_set(name: str, rows: list[dict]) -> None:
        eval_files[name] = cycle_dir / DATA_DIR / f"{name}.jsonl"
        eval_files[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")

    if gate.check_relevance:
        own, swapped = relevance_sets(supervised.trusted_eval, gate.relevance_examples, cfg.training.seed)
        write_set(RELEVANCE_OWN, own)
        write_set(RELEVANCE_SWAPPED, swapped)
    thumbs, pairs = heldout_feedback(snapshot.trusted_eval, snapshot.batch_eval)
    # held-out feedback, scored by every model for the gate's preference check; not scored at all (minutes of
    # forward passes on a CPU) when the check would skip for want of examples
    if gate.check_preference and judgeable_examples(thumbs, pairs) >= gate.min_feedback_examples:
        for name, rows in feedback_eval_sets(thumbs, pairs).items():
            if rows:
                write_set(name, rows)
    samples = (answer_prompts(supervised.trusted_eval, gate.answer_samples, cfg.training.seed)
               if gate.check_answers else [])
    init = champion_dir if warm and cfg.training.warm_start == "champion" else None
    # one fresh process serves the servable, behaviour and answers checks
    probe = gate.check_servable or gate.check_behaviour or gate.check_answers
    try:
        spec = TrainSpec(
            cycle_id=snapshot.cycle_id,
            snapshot_id=snapshot.id,
            **dict(worker_settings(cfg)),
            output_dir=cycle_dir / OUT_DIR,
            init_adapter=init,
            train_file=files["train"],
            validation_file=files["validation"],
            eval_files=eval_files,
            compare_adapters={"champion": champion_dir} if champion_dir else {},
            evaluate_base=True,
            # the base's losses: the trusted set (reported beside every candidate), general text (the forgetting
            # guard's reference) and, when it is the reference, the relevance and feedback sets
            base_eval_sets=["trusted", GENERAL_EVAL_NAME] + ([RELEVANCE_OWN, RELEVANCE_SWAPPED, *FEEDBACK_EVAL_SETS]
                                                             if base_is_reference else []),
            general_text_file=general_text_path(gate.general_text) if gate.max_general_loss_increase is not None
            else None,
            golden_prompts=spec_prompts(golden, cfg.model.system_prompt) if probe else [],
            answer_prompts=samples,
            supervised_placeholders=sorted(FILLABLE_PLACEHOLDERS),
            probe=ProbeSpec(
                enabled=probe, max_new_tokens=golden.max_new_tokens or gate.max_new_tokens,
                with_base=base_is_reference, answer_max_new_tokens=gate.answer_max_new_tokens,
                embedding_model=str(gate.embedding_model) if gate.embedding_model else None,
            ),
            preference_file=files["preference_train"] if preference else None,
            preference_beta=cfg.feedback.beta,
            preference_weight=cfg.feedback.weight,
            checkpoint_dir=cycle_dir / CHECKPOINTS_DIR,
            progress_file=cycle_dir / OUT_DIR / PROGRESS_FILE,
        )
    except ValidationError as exc:  # the worker would refuse it with its bad-spec exit: not retried either
        raise spec_error(exc) from None
    return write_spec(spec, cycle_dir / SPEC_FILE)


def spec_answer_prompts(cycle_dir: Path) -> list[dict]:
    """The sampled trusted questions a cycle's spec gave the probe ([] without a readable spec)."""
    try:
        spec = TrainSpec.model_validate_json((cycle_dir / SPEC_FILE).read_bytes())
    except (OSError, ValidationError):
        return []
    return [p.model_dump(mode="json") for p in spec.answer_prompts]
