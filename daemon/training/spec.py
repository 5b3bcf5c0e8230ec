"""The training spec: the JSON file the service writes for one cycle, read and validated in one place.

Every problem a user can fix (a missing file, a wrong type, an unsupported method) is a `SpecError`
whose message names the field and the fix; the worker reports it and exits with code 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESERVED_EVAL_NAMES = ("candidate", "base")


class SpecError(Exception):
    """A spec, model or data problem the user can fix; the message is one sentence saying how."""


@dataclass(frozen=True)
class AdapterSpec:
    method: str = "lora"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


@dataclass(frozen=True)
class TrainingSpec:
    device: str = "auto"
    epochs: float = 2.0
    max_steps: int | None = None
    learning_rate: float = 2e-4
    batch_size: int = 8
    max_seq_len: int = 2048
    seed: int = 0


@dataclass(frozen=True)
class TrainSpec:
    cycle_id: str
    base_model: str
    output_dir: Path
    train_file: Path
    base_revision: str | None = None
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    init_adapter: Path | None = None
    eval_files: dict[str, Path] = field(default_factory=dict)
    compare_adapters: dict[str, Path] = field(default_factory=dict)
    evaluate_base: bool = True


def load_spec_json(path: Path) -> dict[str, Any]:
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


def parse_spec(raw: dict[str, Any]) -> TrainSpec:
    """Validates the spec; relative paths are taken from the working directory."""
    adapter_raw = _section(raw, "adapter")
    training_raw = _section(raw, "training")
    adapter = AdapterSpec(
        method=_get(adapter_raw, "adapter.method", str, "lora"),
        r=_positive_int(adapter_raw, "adapter.r", 16),
        alpha=_positive_int(adapter_raw, "adapter.alpha", 32),
        dropout=_number(adapter_raw, "adapter.dropout", 0.05),
        target_modules=_target_modules(adapter_raw.get("target_modules", "all-linear")),
    )
    if adapter.method != "lora":
        raise SpecError(f"adapter.method {adapter.method!r} is not supported by this worker; use 'lora'")
    if not 0.0 <= adapter.dropout < 1.0:
        raise SpecError(f"adapter.dropout must be in [0, 1), got {adapter.dropout}")
    max_steps = training_raw.get("max_steps")
    training = TrainingSpec(
        device=_get(training_raw, "training.device", str, "auto"),
        epochs=_positive_number(training_raw, "training.epochs", 2.0),
        max_steps=None if max_steps is None else _positive_int(training_raw, "training.max_steps", 1),
        learning_rate=_positive_number(training_raw, "training.learning_rate", 2e-4),
        batch_size=_positive_int(training_raw, "training.batch_size", 8),
        max_seq_len=_positive_int(training_raw, "training.max_seq_len", 2048),
        seed=_get(training_raw, "training.seed", int, 0),
    )
    if training.device not in ("auto", "cpu", "cuda"):
        raise SpecError(f"training.device must be 'auto', 'cpu' or 'cuda', got {training.device!r}")

    init_adapter = raw.get("init_adapter")
    compare = _path_map(raw, "compare_adapters")
    evals = _path_map(raw, "eval_files")
    spec = TrainSpec(
        cycle_id=_required_str(raw, "cycle_id"),
        base_model=_required_str(raw, "base_model"),
        base_revision=_get(raw, "base_revision", str, None),
        output_dir=Path(_required_str(raw, "output_dir")),
        train_file=_existing_file(_required_str(raw, "train_file"), "train_file"),
        adapter=adapter,
        training=training,
        init_adapter=None if init_adapter is None else _adapter_dir(init_adapter, "init_adapter"),
        eval_files={name: _existing_file(path, f"eval_files.{name}") for name, path in evals.items()},
        compare_adapters={
            name: _adapter_dir(path, f"compare_adapters.{name}") for name, path in compare.items()
        },
        evaluate_base=_get(raw, "evaluate_base", bool, True),
    )
    for name in spec.compare_adapters:
        if name in RESERVED_EVAL_NAMES:
            raise SpecError(f"compare_adapters may not use the reserved name {name!r}; rename it")
    return spec


def _section(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise SpecError(f"spec field {key} must be an object")
    return value


def _get(raw: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = raw.get(name.rsplit(".", 1)[-1])
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        kinds = {int: "an integer", str: "a string", bool: "true or false"}
        raise SpecError(f"spec field {name} must be {kinds.get(kind, kind.__name__)}, got {value!r}")
    return value


def _number(raw: dict[str, Any], name: str, default: float) -> float:
    value = raw.get(name.rsplit(".", 1)[-1])
    if value is None:
        return float(default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"spec field {name} must be a number, got {value!r}")
    return float(value)


def _positive_number(raw: dict[str, Any], name: str, default: float) -> float:
    value = _number(raw, name, default)
    if value <= 0:
        raise SpecError(f"spec field {name} must be greater than 0, got {value}")
    return value


def _positive_int(raw: dict[str, Any], name: str, default: int) -> int:
    value = _get(raw, name, int, default)
    if value < 1:
        raise SpecError(f"spec field {name} must be a positive integer, got {value}")
    return value


def _required_str(raw: dict[str, Any], name: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value:
        raise SpecError(f"spec field {name} is required and must be a non-empty string")
    return value


def _target_modules(value: Any) -> str | list[str]:
    if value == "all-linear" or (
        isinstance(value, list) and value and all(isinstance(v, str) for v in value)
    ):
        return value
    raise SpecError(f"adapter.target_modules must be 'all-linear' or a list of module names, got {value!r}")


def _path_map(raw: dict[str, Any], key: str) -> dict[str, str]:
    value = raw.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise SpecError(f"spec field {key} must map names to paths")
    return value


def _existing_file(path: str, name: str) -> Path:
    if not isinstance(path, str) or not Path(path).is_file():
        raise SpecError(f"{name} {path} does not exist; write the JSONL file before starting the worker")
    return Path(path)


def _adapter_dir(path: Any, name: str) -> Path:
    if not isinstance(path, str) or not (Path(path) / "adapter_config.json").is_file():
        raise SpecError(
            f"{name} {path} is not an adapter directory (no adapter_config.json); "
            "point it at a directory saved by a previous cycle"
        )
    return Path(path)
