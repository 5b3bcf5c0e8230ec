"""The training spec as the worker reads it: the typed model is `contract.TrainSpec` (torch-free, shared
with the service); this module adds the worker's own checks, that the files and adapters it names exist.

Every problem a user can fix (a missing file, a wrong type, an unsupported method) is a `SpecError`
whose message names the field and the fix; the worker reports it and exits with `EXIT_BAD_SPEC` (2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from daemon.training.contract import (
    DEFAULT_PROBE_TIMEOUT,
    DEFAULT_PROBE_TOKENS,
    GENERAL_EVAL_NAME,
    RESERVED_EVAL_NAMES,
    SpecError,
    TrainSpec,
    read_spec,
    spec_error,
)

__all__ = ["DEFAULT_PROBE_TIMEOUT", "DEFAULT_PROBE_TOKENS", "GENERAL_EVAL_NAME", "RESERVED_EVAL_NAMES", "SpecError",
           "TrainSpec", "check_inputs", "load_spec", "load_spec_json", "parse_spec"]


def load_spec_json(path: Path) -> dict[str, Any]:
    """The spec file as a plain JSON object: what the worker needs (output_dir, cycle_id) to report a
    spec that does not validate."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"spec file {path} does not exist; pass the path the service wrote") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpecError(
            f"spec file {path} is not readable JSON ({exc}); rewrite it as one JSON object"
        ) from None
    if not isinstance(raw, dict):
        raise SpecError(f"spec file {path} must hold one JSON object, not {type(raw).__name__}")
    return raw


def load_spec(path: Path) -> TrainSpec:
    """The spec file validated (`TrainSpec.model_validate_json`) and its inputs checked."""
    return check_inputs(read_spec(path))


def parse_spec(raw: dict[str, Any]) -> TrainSpec:
    """Validates a spec given as a dict; relative paths are taken from the working directory.

    The adapter and training sections are the service's own config models, so the worker and
    `ticketune validate-config` accept exactly the same fields and ranges.
    """
    try:
        spec = TrainSpec.model_validate(raw)
    except ValidationError as exc:
        raise spec_error(exc) from None
    return check_inputs(spec)


def check_inputs(spec: TrainSpec) -> TrainSpec:
    """The files and adapter directories the spec names exist (the worker's side of the contract)."""
    _existing_file(spec.train_file, "train_file")
    if spec.init_adapter is not None:
        _adapter_dir(spec.init_adapter, "init_adapter")
    for name, path in spec.eval_files.items():
        _existing_file(path, f"eval_files.{name}")
    if spec.training.preference is not None:
        if spec.preference_file is None:
            raise SpecError(f"training.objective {spec.training.objective} needs preference_file (the snapshot's "
                            "thumbs and pairs); write it with the snapshot or use objective sft")
        _existing_file(spec.preference_file, "preference_file")
    for name, path in spec.compare_adapters.items():
        _adapter_dir(path, f"compare_adapters.{name}")
    if spec.validation_file is not None:
        _existing_file(spec.validation_file, "validation_file")
    if spec.general_text_file is not None:
        _existing_file(spec.general_text_file, "general_text_file")
    return spec


def _existing_file(path: Path, name: str) -> None:
    if not Path(path).is_file():
        raise SpecError(f"{name} {path} does not exist; write the JSONL file before starting the worker")


def _adapter_dir(path: Path, name: str) -> None:
    if not (Path(path) / "adapter_config.json").is_file():
        raise SpecError(
            f"{name} {path} is not an adapter directory (no adapter_config.json); "
            "point it at a directory saved by a previous cycle"
        )
