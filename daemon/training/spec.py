"""The training spec: the JSON file the service writes for one cycle, read and validated in one place.

Every problem a user can fix (a missing file, a wrong type, an unsupported method) is a `SpecError`
whose message names the field and the fix; the worker reports it and exits with code 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from daemon.config import AdapterConfig, TrainingConfig

RESERVED_EVAL_NAMES = ("candidate", "base")
GENERAL_EVAL_NAME = "general"  # the eval set made from general_text_file (the forgetting guard)
DEFAULT_PROBE_TOKENS = 96
DEFAULT_PROBE_TIMEOUT = 900  # seconds; a probe that runs longer is killed and reported failed
_Model = TypeVar("_Model", bound=BaseModel)


class SpecError(Exception):
    """A spec, model or data problem the user can fix; the message is one sentence saying how."""


@dataclass(frozen=True)
class TrainSpec:
    cycle_id: str
    base_model: str
    output_dir: Path
    train_file: Path
    snapshot_id: str = ""
    base_revision: str | None = None
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    init_adapter: Path | None = None
    eval_files: dict[str, Path] = field(default_factory=dict)
    compare_adapters: dict[str, Path] = field(default_factory=dict)
    evaluate_base: bool = True
    validation_file: Path | None = None
    checkpoint_dir: Path | None = None
    progress_file: Path | None = None
    general_text_file: Path | None = None  # plain text scored as the eval set "general", every token a label
    golden_prompts: list[dict[str, Any]] = field(default_factory=list)  # [{id, messages[, max_new_tokens]}]
    probe: bool = False  # answer golden_prompts in a fresh process after saving the adapter
    probe_max_new_tokens: int = DEFAULT_PROBE_TOKENS
    probe_timeout_seconds: int = DEFAULT_PROBE_TIMEOUT


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
    """Validates the spec; relative paths are taken from the working directory.

    The adapter and training sections are the service's own config models, so the worker and
    `ticketune validate-config` accept exactly the same fields and ranges.
    """
    adapter = _validated(AdapterConfig, _section(raw, "adapter"), "adapter")
    training = _validated(TrainingConfig, _section(raw, "training"), "training")
    init_adapter = raw.get("init_adapter")
    compare = _path_map(raw, "compare_adapters")
    evals = _path_map(raw, "eval_files")
    output_dir = Path(_required_str(raw, "output_dir"))
    validation = _get(raw, "validation_file", str, None)
    checkpoints = _get(raw, "checkpoint_dir", str, None)
    progress = _get(raw, "progress_file", str, None)
    general = _get(raw, "general_text_file", str, None)
    probe = _probe(raw)
    spec = TrainSpec(
        cycle_id=_required_str(raw, "cycle_id"),
        snapshot_id=_get(raw, "snapshot_id", str, ""),
        base_model=_required_str(raw, "base_model"),
        base_revision=_get(raw, "base_revision", str, None),
        output_dir=output_dir,
        train_file=_existing_file(_required_str(raw, "train_file"), "train_file"),
        adapter=adapter,
        training=training,
        init_adapter=None if init_adapter is None else _adapter_dir(init_adapter, "init_adapter"),
        eval_files={name: _existing_file(path, f"eval_files.{name}") for name, path in evals.items()},
        compare_adapters={name: _adapter_dir(path, f"compare_adapters.{name}") for name, path in compare.items()},
        evaluate_base=_get(raw, "evaluate_base", bool, True),
        validation_file=None if validation is None else _existing_file(validation, "validation_file"),
        checkpoint_dir=None if checkpoints is None else Path(checkpoints),
        progress_file=Path(progress) if progress else output_dir / "progress.json",
        general_text_file=None if general is None else _existing_file(general, "general_text_file"),
        golden_prompts=_golden_prompts(raw),
        probe=bool(probe.get("enabled", False)),
        probe_max_new_tokens=probe.get("max_new_tokens") or DEFAULT_PROBE_TOKENS,
        probe_timeout_seconds=probe.get("timeout_seconds") or DEFAULT_PROBE_TIMEOUT,
    )
    for name in spec.compare_adapters:
        if name in RESERVED_EVAL_NAMES:
            raise SpecError(f"compare_adapters may not use the reserved name {name!r}; rename it")
    if spec.probe and not spec.golden_prompts:
        raise SpecError("spec field probe.enabled needs golden_prompts to answer; pass them or disable the probe")
    if spec.general_text_file is not None and GENERAL_EVAL_NAME in spec.eval_files:
        raise SpecError(f"eval_files may not use the name {GENERAL_EVAL_NAME!r} with general_text_file; rename it")
    return spec


def _probe(raw: dict[str, Any]) -> dict[str, Any]:
    probe = _section(raw, "probe")
    enabled = probe.get("enabled", False)
    if not isinstance(enabled, bool):
        raise SpecError(f"spec field probe.enabled must be true or false, got {enabled!r}")
    for key in ("max_new_tokens", "timeout_seconds"):
        value = probe.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise SpecError(f"spec field probe.{key} must be an integer of 1 or more, got {value!r}")
    return probe


def _golden_prompts(raw: dict[str, Any]) -> list[dict[str, Any]]:
    prompts = raw.get("golden_prompts") or []
    if not isinstance(prompts, list):
        raise SpecError("spec field golden_prompts must be a list of {id, messages} objects")
    for index, prompt in enumerate(prompts):
        where = f"spec field golden_prompts.{index}"
        if not isinstance(prompt, dict) or not isinstance(prompt.get("id"), str):
            raise SpecError(f"{where} must be an object with a string id")
        messages = prompt.get("messages")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise SpecError(f"{where}.messages must be a non-empty list of {{role, content}} objects")
    return prompts


def _validated(model: type[_Model], values: dict[str, Any], section: str) -> _Model:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        where = f"{section}.{where}" if where else section
        raise SpecError(f"spec field {where}: {first['msg'].removeprefix('Value error, ')}") from None


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


def _required_str(raw: dict[str, Any], name: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value:
        raise SpecError(f"spec field {name} is required and must be a non-empty string")
    return value


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
