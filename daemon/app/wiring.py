"""The one wiring module: each part of the service built from the config (registry, serving notifier,
champion keeper, cycle runner, quality filter) and the status document. `service`, `cli` and the demo
build their parts here, so a part is built the same way wherever it runs."""

from __future__ import annotations

import logging
import re

from connectors.executors import LocalProcessExecutor
from connectors.kubernetes_job import KubernetesJobExecutor
from connectors.registry import AdapterRegistry, RegistryError, set_mlflow_http_defaults
from connectors.serving import PENDING_FILE, ServingNotifier
from daemon.champion.keeper import ChampionKeeper
from daemon.config import Settings
from daemon.cycle.runner import CycleRunner
from daemon.ingest.filters import QualityFilter, tokenizer_json_for
from daemon.logs import mask_url_password
from daemon.store import ExampleStore

log = logging.getLogger("ticketune.service")


def build_registry(settings: Settings) -> AdapterRegistry:
    set_mlflow_http_defaults(timeout_s=60)  # bounded retries: an MLflow outage fails a cycle in seconds, not minutes
    reg = settings.registry
    return AdapterRegistry(
        tracking_uri=reg.tracking_uri,
        model_name=reg.model_name,
        champion_alias=reg.champion_alias,
        experiment_name=reg.experiment_name,
        artifact_location=reg.artifact_location,
    )


def build_serving_notifier(settings: Settings, registry: AdapterRegistry) -> ServingNotifier:
    """Tells `serving.targets` of champion changes; what fails waits in a JSON file beside the store."""
    return ServingNotifier(settings.serving, registry, settings.registry.model_name,
                           settings.store.path.parent / PENDING_FILE)


def build_keeper(settings: Settings, store: ExampleStore, registry: AdapterRegistry) -> ChampionKeeper:
    """Every champion move (cycle, CLI, admin API, outside) goes through one keeper: audit log and serving."""
    return ChampionKeeper(store, registry, build_serving_notifier(settings, registry))


def build_cycle_runner(settings: Settings, store: ExampleStore, registry: AdapterRegistry,
                       keeper: ChampionKeeper | None = None) -> CycleRunner:
    return CycleRunner(settings, store, registry, build_executor(settings),
                       keeper or build_keeper(settings, store, registry))


def build_quality_filter(settings: Settings, store: ExampleStore) -> QualityFilter:
    """The quality filter, its dedupe index in the store (memory stays flat however much is ingested)."""
    quality = QualityFilter(settings.quality, tokenizer_json_for(settings.model.base), store=store)
    loaded = quality.load(())
    log.info("quality filter ready: %d stored examples in the dedupe index", loaded)
    return quality


def collect_status(settings: Settings, store: ExampleStore, registry: AdapterRegistry) -> dict:
    """What `ticketune status` and `/v1/status` show; never a secret or ticket text."""
    counts = store.counts()
    try:
        champion = registry.champion_version()
    except RegistryError as exc:
        champion = None
        log.warning("status: %s", exc)
    cycles = store.cycles(limit=1)
    probation = None
    if champion is not None:
        try:
            from daemon.champion.probation import OnlineMonitor

            probation = OnlineMonitor(settings, store, build_keeper(settings, store, registry)).evaluate().as_dict()
        except Exception as exc:  # the registry went away between the calls: status still answers
            log.warning("status: online probation: %s", exc)
    return {
        "online_probation": probation,
        "examples": counts["examples"],
        "pending_examples": counts["pending"],
        "quarantined_examples": counts["quarantined"],
        "champion_version": champion,
        "last_cycle": cycles[0] if cycles else None,
        "model_base": settings.model.base,
        "registry": {"model_name": settings.registry.model_name,
                     "champion_alias": settings.registry.champion_alias,
                     "tracking_uri": mask_url_password(settings.registry.tracking_uri)},
        "kafka": {"topic": settings.kafka.topic, "group_id": settings.kafka.group_id},
        "store_path": str(settings.store.path),
    }


def build_executor(settings: Settings) -> LocalProcessExecutor | KubernetesJobExecutor:
    """The executor `settings.executor.kind` names: a local child process, or a Kubernetes Job per cycle."""
    if settings.executor.kind == "local":
        return LocalProcessExecutor(python=settings.training.python)
    uri = settings.registry.tracking_uri
    if settings.executor.shared_volume_claim is None and not re.match(r"^(https?|databricks)", uri):
        log.warning("executor.kind is kubernetes but registry.tracking_uri %s is not a server the Job can reach; "
                    "use an MLflow server (http://...) or executor.shared_volume_claim", uri)
    return KubernetesJobExecutor(settings.executor, tracking_uri=uri, work_dir=settings.training.work_dir)
