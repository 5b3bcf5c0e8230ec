"""The contract between the service and the training worker, in one torch-free module.

The cycle writes a `TrainSpec` as `spec.json` (`model_dump_json`); the worker and the executors read
it back with `read_spec` (`model_validate_json`), where a problem that names a field is a `SpecError`
(the worker's bad-spec exit, `EXIT_BAD_SPEC`). The worker writes a `TrainResult` as `result.json`;
the cycle, the gate and the report read its attributes. Exit codes and the names of the files and
directories both sides agree on live here too. Nothing here imports torch, transformers or peft:
`daemon/training/__init__.py` is docstring-only, so the service can import this module.

The JSON on disk keeps the shape it always had: results are written with `exclude_unset`, so a field
the worker did not write is not added; unknown fields are kept (`extra="allow"`) on results and
ignored on specs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from daemon.config import AdapterConfig, TrainingConfig, sharding_problem

# ---- exit codes of `python -m daemon.training train` (and `run-job`) --------------------------------
# Under torchrun a failed rank makes torchrun exit 1 whatever the rank's code, so readers look at the
# result file's `exit_code` and `status` as well.
EXIT_OK = 0
EXIT_FAILED = 1  # anything else: a retry may succeed
EXIT_BAD_SPEC = 2  # a spec, model or data problem the user can fix: the same spec fails again
EXIT_INTERRUPTED = 3  # SIGTERM: a checkpoint was saved, a retry of the same cycle resumes from it

# ---- names both sides agree on ------------------------------------------------------------------------
SPEC_FILE = "spec.json"  # in the cycle directory
RESULT_FILE = "result.json"  # in the spec's output_dir
RESULT_TMP_FILE = "result.json.tmp"  # written first, then renamed to RESULT_FILE
ADAPTER_DIR = "adapter"  # in output_dir: the saved adapter
PROGRESS_FILE = "progress.json"  # in output_dir unless the spec names progress_file
OUT_DIR = "out"  # in the cycle directory: the spec's output_dir
CHECKPOINTS_DIR = "checkpoints"  # in the cycle directory: the spec's checkpoint_dir
DATA_DIR = "data"  # in the cycle directory: the snapshot's JSONL files
CHAMPION_DIR = "champion"  # in the cycle directory: the champion's adapter
WORKER_LOG = "worker.log"  # in the cycle directory: the local worker's stdout and stderr
PROBE_PROMPTS_FILE = "probe_prompts.json"  # in output_dir
PROBE_FILE = "probe.json"  # in output_dir
PROBE_SAMPLES_FILE = "probe_samples.json"  # in output_dir: the sampled trusted questions with their answers
CHECKPOINT_STATE_FILE = "state.json"  # in each checkpoints/step-N: its presence marks a complete checkpoint
# set by the local executor to its own pid: the worker asks for SIGTERM when that parent dies (lifeline.py)
PARENT_PID_ENV = "TICKETUNE_WORKER_PARENT_PID"
# the artifacts of a cycle's MLflow run that carry a Kubernetes Job's inputs and outputs (job.py)
SPEC_ARTIFACT = f"job/{SPEC_FILE}"
INPUTS_ARTIFACT = "job/inputs"
OUT_ARTIFACT = "job/out"
PROGRESS_ARTIFACT = f"job/{PROGRESS_FILE}"
CHECKPOINTS_ARTIFACT = f"job/{CHECKPOINTS_DIR}"

RESERVED_EVAL_NAMES = ("candidate", "base")
GENERAL_EVAL_NAME = "general"  # the eval set made from general_text_file (the forgetting guard)
DEFAULT_PROBE_TOKENS = 96
DEFAULT_ANSWER_TOKENS = 64  # per sampled trusted question the probe answers
DEFAULT_PROBE_TIMEOUT = 900  # seconds; a probe that runs longer is killed and reported failed

# The training settings the worker reads; the rest of `training` is the service's (see test_cycle_resume).
WORKER_TRAINING_FIELDS = frozenset({
    "device", "epochs", "max_steps", "learning_rate", "lr_schedule", "warmup_fraction", "batch_size",
    "max_seq_len", "packing", "row_tokens", "rows_per_step", "cross_entropy", "loss_chunk_tokens",
    "gradient_checkpointing", "memory_budget_gib", "precision", "compile", "quantization", "max_minutes", "max_tokens",
    "eval_every_steps", "early_stop_patience", "checkpoint_every_steps", "gpus", "sharding", "seed", "objective",
})


class SpecError(Exception):
    """A spec, model or data problem the user can fix; the message is one sentence saying how."""

    retryable = False  # the same spec fails again: a cycle that raises it is not retried


def worker_training(training: TrainingConfig) -> TrainingConfig:
    """`training` with only the fields the worker reads; the service's own fields at their defaults."""
    return TrainingConfig.model_validate(training.model_dump(include=set(WORKER_TRAINING_FIELDS)))


# ---- the spec -----------------------------------------------------------------------------------------


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    role: str
    content: str


class GoldenPrompt(BaseModel):
    """One prompt the probe answers: the chat up to the first customer turn."""

    model_config = ConfigDict(extra="allow", frozen=True)
    id: str
    messages: list[Message] = Field(min_length=1)
    max_new_tokens: StrictInt | None = Field(default=None, ge=1)


class AnswerPrompt(GoldenPrompt):
    """A sampled trusted question the probe answers, with the agent's real answer to score against."""

    reference: str


class ProbeSpec(BaseModel):
    """Whether and how the worker probes the saved adapter in a fresh process (spec field `probe`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    enabled: StrictBool = False
    max_new_tokens: StrictInt = Field(default=DEFAULT_PROBE_TOKENS, ge=1)
    timeout_seconds: StrictInt = Field(default=DEFAULT_PROBE_TIMEOUT, ge=1)
    with_base: StrictBool = False  # the base model (adapter disabled) answers too, as the reference
    answer_max_new_tokens: StrictInt = Field(default=DEFAULT_ANSWER_TOKENS, ge=1)
    embedding_model: str | None = None  # sentence-embedding model directory scoring the sampled answers

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, Mapping) else data


class WorkerSettings(BaseModel):
    """What the spec takes from the config; a retry needs them unchanged to resume its checkpoints."""

    model_config = ConfigDict(frozen=True)
    base_model: str
    base_revision: str | None = None
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @field_validator("training", mode="after")
    @classmethod
    def _worker_fields_only(cls, value: TrainingConfig) -> TrainingConfig:
        return worker_training(value)

    @model_validator(mode="after")
    def _adapter_fits_the_sharding(self) -> WorkerSettings:
        problem = sharding_problem(self.adapter, self.training)
        if problem:
            raise ValueError(problem)
        return self

    @field_serializer("training")
    def _dump_worker_fields(self, value: TrainingConfig) -> dict[str, Any]:
        return value.model_dump(mode="json", include=set(WORKER_TRAINING_FIELDS))


# fields whose JSON null means "the default" (the service has always written some of them as null)
_NULL_IS_DEFAULT = ("snapshot_id", "adapter", "training", "eval_files", "compare_adapters", "evaluate_base",
                    "golden_prompts", "probe")


class TrainSpec(WorkerSettings):
    """`spec.json`: one cycle's training job. Paths are as written (relative ones are taken from the
    worker's working directory); that files exist is the worker's check (`spec.check_inputs`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    cycle_id: str = Field(min_length=1)
    base_model: str = Field(min_length=1)
    output_dir: Path
    train_file: Path
    snapshot_id: str = ""
    init_adapter: Path | None = None
    eval_files: dict[str, Path] = Field(default_factory=dict)
    compare_adapters: dict[str, Path] = Field(default_factory=dict)
    evaluate_base: StrictBool = True
    base_eval_sets: list[str] | None = None  # the eval sets the base is scored on; None: every one
    validation_file: Path | None = None
    checkpoint_dir: Path | None = None
    progress_file: Path | None = None  # output_dir/progress.json when not given
    general_text_file: Path | None = None  # plain text scored as the eval set "general", every token a label
    golden_prompts: list[GoldenPrompt] = Field(default_factory=list)
    answer_prompts: list[AnswerPrompt] = Field(default_factory=list)  # sampled trusted questions (gate: answers)
    # placeholders the model may learn to write (serving fills them); the tokens of every other <PLACEHOLDER>
    # in an assistant turn carry no loss. None: every assistant token is supervised.
    supervised_placeholders: list[str] | None = None
    probe: ProbeSpec = Field(default_factory=ProbeSpec)  # answer golden_prompts in a fresh process after saving
    # training.objective kto/dpo (alone or with sft): the snapshot's thumbs and pairs (daemon/ingest/feedback.py),
    # the losses' beta and the preference loss's weight beside the supervised one
    preference_file: Path | None = None
    preference_beta: float = Field(default=0.1, gt=0)
    preference_weight: float = Field(default=1.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = {k: v for k, v in data.items() if not (k in _NULL_IS_DEFAULT and v is None)}
        output_dir = data.get("output_dir")
        if not data.get("progress_file") and isinstance(output_dir, (str, Path)) and str(output_dir):
            data["progress_file"] = str(Path(output_dir) / PROGRESS_FILE)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TrainSpec:
        for name in self.compare_adapters:
            if name in RESERVED_EVAL_NAMES:
                raise ValueError(f"compare_adapters may not use the reserved name {name!r}; rename it")
        if self.probe.enabled and not self.golden_prompts:
            raise ValueError("spec field probe.enabled needs golden_prompts to answer; pass them or disable the probe")
        if self.general_text_file is not None and GENERAL_EVAL_NAME in self.eval_files:
            raise ValueError(f"eval_files may not use the name {GENERAL_EVAL_NAME!r} with general_text_file; "
                             "rename it")
        return self

    def worker_settings(self) -> WorkerSettings:
        return WorkerSettings(base_model=self.base_model, base_revision=self.base_revision, adapter=self.adapter,
                              training=self.training)

    def cycle_inputs(self) -> list[Path]:
        """The inputs the cycle wrote for the worker (data files, adapters), for the resume check."""
        named = [self.train_file, self.validation_file, self.init_adapter, self.preference_file,
                 *self.eval_files.values(), *self.compare_adapters.values()]
        return [path for path in named if path is not None]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def spec_error(exc: ValidationError) -> SpecError:
    """The first problem of a failed validation as one sentence naming the field."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    if not where:
        return SpecError(message)
    return SpecError(f"spec field {where}: {message}")


def parse_spec_json(text: str | bytes, source: str = "spec") -> TrainSpec:
    """Validates a spec's JSON; a `SpecError` names the first bad field."""
    try:
        return TrainSpec.model_validate_json(text)
    except ValidationError as exc:
        if exc.errors(include_url=False)[0]["type"] == "json_invalid":
            raise SpecError(f"spec file {source} is not readable JSON; rewrite it as one JSON object") from None
        if exc.errors(include_url=False)[0]["type"] == "model_type":
            raise SpecError(f"spec file {source} must hold one JSON object") from None
        raise spec_error(exc) from None


def read_spec(path: Path) -> TrainSpec:
    """The spec in `path`, validated; a `SpecError` says what is wrong with it."""
    try:
        text = Path(path).read_bytes()
    except FileNotFoundError:
        raise SpecError(f"spec file {path} does not exist; pass the path the service wrote") from None
    except OSError as exc:
        raise SpecError(f"spec file {path} is not readable ({exc})") from None
    return parse_spec_json(text, str(path))


def write_spec(spec: TrainSpec, path: Path) -> Path:
    Path(path).write_text(spec.to_json(), "utf-8")
    return Path(path)


# ---- the result ---------------------------------------------------------------------------------------


class _Open(BaseModel):
    """Result parts keep fields this module does not name (newer workers), so the JSON round-trips."""

    model_config = ConfigDict(extra="allow", ser_json_inf_nan="constants")  # a diverged NaN stays NaN


class EvalScore(_Open):
    """One model on one eval set: token-weighted mean loss and, per example, `[ticket_id, loss_sum, tokens]`."""

    loss: float | None = None
    tokens: int | None = None
    examples: int | None = None
    per_example: list[tuple[str, float, int]] | None = None
    dropped_examples: int | None = None


class CheckpointingPlan(_Open):
    """Which decoder layers the worker checkpointed, and why (memory_plan.CheckpointPlan.as_dict)."""

    layers: int | None = None
    checkpointed: int | None = None
    budget_gib: float | None = None
    all_checkpointed_peak_gib: float | None = None
    layer_activations_gib: float | None = None
    reason: str = ""


class ResolvedSettings(_Open):
    """`result.train.settings`: the settings training ran with, each `auto` resolved (auto_settings.py)."""

    learning_rate: float | None = None
    epochs: float | None = None
    row_tokens: int | None = None
    loss_chunk_tokens: int | None = None
    gradient_checkpointing: bool | str | None = None  # "auto" on CUDA: `checkpointing` says what the plan chose
    precision: str | None = None  # bf16 or fp32
    base_parameters: int | None = None


class TrainSummary(_Open):
    """`result.train`: what training did (train_loop.train_adapter and lora_recipe._run)."""

    examples: int | None = None
    validation_examples: int | None = None
    steps: int | None = None
    planned_steps: int | None = None
    epochs: float | None = None
    supervised_tokens: int | None = None
    tokens: int | None = None
    seconds: float | None = None
    tokens_per_second: float | None = None
    loss_curve: list[tuple[int, float]] = Field(default_factory=list)  # [step, loss]
    validation_curve: list[tuple[int, float]] = Field(default_factory=list)
    best_step: int | None = None
    restored_best_weights: bool | None = None
    final_loss: float | None = None
    stopped_by: str | None = None
    resumed_from_step: int | None = None
    packing: bool | None = None
    row_fill: float | None = None
    world_size: int | None = None
    sharding: str | None = None  # how the ranks held the model: none (each a whole copy) or fsdp
    dropped_examples: int | None = None
    truncated_examples: int | None = None
    init_adapter: str | None = None
    checkpointing: CheckpointingPlan | None = None
    kernels: list[str] = Field(default_factory=list)
    allocator: str | None = None  # tuned (the worker's glibc malloc tunables), operator or system
    settings: ResolvedSettings | None = None
    objective: str | None = None  # training.objective
    preference_examples: int | None = None  # thumbs (kto) or pairs (dpo) trained on
    preference_weights: tuple[float, float] | None = None  # kto: desirable, undesirable
    preference_curve: list[tuple[int, float]] = Field(default_factory=list)  # [step, preference loss]


class ProbeAnswer(_Open):
    id: str
    text: str | None = ""
    new_tokens: int | None = 0
    similarity: float | None = None  # sampled answers: cosine with the agent's real answer


class ProbeResult(_Open):
    """`result.probe`: the fresh-process probe (probe.py); status `off` when the spec did not ask for it."""

    status: str = "off"
    error: str | None = None
    load_seconds: float | None = None
    seconds: float | None = None
    wall_seconds: float | None = None
    answers: dict[str, list[ProbeAnswer]] = Field(default_factory=dict)  # golden prompts, per model
    samples: dict[str, list[ProbeAnswer]] = Field(default_factory=dict)  # sampled trusted questions, per model
    embedding_model: str | None = None
    similarity_error: str | None = None  # the answers were generated but could not be scored

    def answers_of(self, label: str) -> list[ProbeAnswer]:
        return self.answers.get(label) or []

    def samples_of(self, label: str) -> list[ProbeAnswer]:
        return self.samples.get(label) or []


class TrainResult(_Open):
    """`result.json`: status `ok` (exit 0), `failed` (exit 1 or 2) or `interrupted` (exit 3)."""

    status: str = "failed"  # a result without a status is not a success
    error: str | None = None
    exit_code: int | None = None
    cycle_id: str | None = None
    snapshot_id: str | None = None
    adapter_dir: str | None = None
    adapter_method: str | None = None
    device: str | None = None
    world_size: int | None = None
    train: TrainSummary | None = None
    eval: dict[str, dict[str, EvalScore]] | None = None  # eval set → model label → score
    probe: ProbeResult | None = None
    seconds: float | None = None
    versions: dict[str, str] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def interrupted(self) -> bool:
        return self.status == "interrupted"

    def score(self, eval_set: str, label: str) -> EvalScore | None:
        """The score of model `label` on `eval_set`, None when the worker has none."""
        return (self.eval or {}).get(eval_set, {}).get(label)

    def loss(self, eval_set: str, label: str) -> float | None:
        score = self.score(eval_set, label)
        return None if score is None else score.loss

    def to_json(self) -> str:
        """The JSON the worker writes: only the fields it set, so the file keeps its shape."""
        return self.model_dump_json(indent=1, exclude_unset=True) + "\n"


def failure_result(status: str, error: str, exit_code: int, cycle_id: Any, versions: dict[str, str]) -> TrainResult:
    """The result of a worker that failed (`failed`) or was stopped (`interrupted`)."""
    return TrainResult(status=status, error=error, exit_code=exit_code,
                       cycle_id=cycle_id if isinstance(cycle_id, str) else None,
                       adapter_dir=None, device=None, train=None, eval=None, versions=versions)


def as_result(value: TrainResult | Mapping[str, Any]) -> TrainResult:
    """A result from an executor (or a test's plain dict), validated."""
    return value if isinstance(value, TrainResult) else TrainResult.model_validate(dict(value))


def read_result(path: Path) -> TrainResult | None:
    """The result in `path`, or None while it is missing, partial or not a result."""
    try:
        return TrainResult.model_validate_json(Path(path).read_bytes())
    except (OSError, ValidationError):
        return None


def write_result(output_dir: Path, result: TrainResult | Mapping[str, Any]) -> Path:
    """Temp file then rename, so a reader sees either no result.json or a whole one."""
    import os

    final = Path(output_dir) / RESULT_FILE
    temporary = Path(output_dir) / RESULT_TMP_FILE
    temporary.write_text(as_result(result).to_json(), encoding="utf-8")
    os.replace(temporary, final)
    return final
