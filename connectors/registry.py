"""The adapter registry on MLflow: cycle runs, model versions and their tags, the champion alias.

A thin adapter: every candidate adapter is a version of one registered model, tagged `ticketune.*`;
the serving champion is a model version alias (never a stage). It logs, registers, lists, reads and
writes tags and moves the alias as told; what a tag means and which moves are allowed is decided
in daemon/champion (the keeper, the rules, the audit log in the store).
Works against a local store (`sqlite:///...`) and an `mlflow server` (`http://...`) alike.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlflow.artifacts
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from daemon.champion.vocabulary import TAG_CYCLE_ID, TAG_PREFIX
from daemon.logs import mask_url_password

ADAPTER_ARTIFACT_PATH = "adapter"
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
# MLflow's own HTTP defaults retry an unreachable server for about four minutes (7 retries,
# backoff factor 2) with a 120 s read timeout; see `set_mlflow_http_defaults`.
DEFAULT_HTTP_MAX_RETRIES = 2
DEFAULT_HTTP_TIMEOUT_S = 15
DEFAULT_HTTP_BACKOFF_FACTOR = 1
_BATCH = 100  # MLflow's log_batch accepts at most 100 params or tags per call
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class RegistryError(Exception):
    """A registry operation that cannot be done; the message is one sentence for the user."""


class RegistryUnavailableError(RegistryError):
    """The tracking server or store cannot be reached."""


class VersionNotFoundError(RegistryError):
    """The named model version does not exist."""


def set_mlflow_http_defaults(
    max_retries: int = DEFAULT_HTTP_MAX_RETRIES,
    timeout_s: int = DEFAULT_HTTP_TIMEOUT_S,
    backoff_factor: int = DEFAULT_HTTP_BACKOFF_FACTOR,
) -> None:
    """Bounds MLflow's HTTP retries process-wide; values already in the environment win.

    MLflow reads `MLFLOW_HTTP_REQUEST_MAX_RETRIES`, `MLFLOW_HTTP_REQUEST_TIMEOUT` and
    `MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR` on every request and has no per-client setting, so this
    is a process-wide choice: call it once at start (the CLI and the service do), not per registry.
    With the defaults an unreachable server fails in about 3 s instead of about 4 minutes.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", str(backoff_factor))


def sqlite_database_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI; None for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db_path = tracking_uri[len("sqlite:///") :].split("?", 1)[0]
    if not db_path or db_path == ":memory:":
        return None
    return Path(db_path)


def default_artifact_location(tracking_uri: str) -> str | None:
    """`mlartifacts/` beside a sqlite database file (MLflow would use ./mlruns in the cwd)."""
    db_path = sqlite_database_path(tracking_uri)
    return (db_path.resolve().parent / "mlartifacts").as_uri() if db_path is not None else None


def create_sqlite_store_atomically(tracking_uri: str) -> None:
    """Creates a `sqlite:///` MLflow database that does not exist yet in a temporary file beside it,
    then renames it into place.

    MLflow builds its schema with dozens of DDL statements that are not one transaction: a process
    killed halfway (we measured it with `kill -9` during start-up) leaves a database that every
    later start rejects with "table ... already exists". Built aside and renamed, the database is
    either absent or complete.
    """
    db_path = sqlite_database_path(tracking_uri)
    if db_path is None or db_path.exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db_path.parent.mkdir(parents=True, exist_ok=True)
    for stale in db_path.parent.glob(f".{db_path.name}.creating-*"):
        stale.unlink(missing_ok=True)  # what a killed creation left
    partial = db_path.parent / f".{db_path.name}.creating-{os.getpid()}"
    query = tracking_uri.split("?", 1)[1] if "?" in tracking_uri else ""
    store = SqlAlchemyStore(f"sqlite:///{partial}" + (f"?{query}" if query else ""),
                            default_artifact_location(tracking_uri) or partial.parent.as_uri())
    store.engine.dispose()
    if db_path.exists():  # another process won the race; its database is as good as ours
        partial.unlink(missing_ok=True)
        return
    os.replace(partial, db_path)


def _as_uri(location: str) -> str:
    return location if _URI_SCHEME.match(location) else Path(location).resolve().as_uri()


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _prefixed(key: str) -> str:
    return key if key.startswith(TAG_PREFIX) else TAG_PREFIX + key


def _ms_to_iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


class AdapterRegistry:
    """One registered model (`model_name`) and its experiment on one MLflow tracking URI.

    Uses an explicit `MlflowClient` (no `mlflow.start_run` globals), so one instance can serve
    several threads; the experiment and the registered model are created on first use.
    HTTP retries and timeouts follow MLflow's environment variables: see `set_mlflow_http_defaults`.
    """

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        champion_alias: str = "champion",
        experiment_name: str = "ticketune",
        artifact_location: str | None = None,
        ping_timeout_s: float = 5.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.shown_uri = mask_url_password(tracking_uri)  # what messages and logs show: never a password
        self.model_name = model_name
        self.champion_alias = champion_alias
        self.experiment_name = experiment_name
        location = artifact_location or default_artifact_location(tracking_uri)
        self.artifact_location = _as_uri(location) if location else None
        self.ping_timeout_s = ping_timeout_s
        with self._mlflow_errors("opening the client"):
            try:
                create_sqlite_store_atomically(tracking_uri)
                self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            except (MlflowException, requests.RequestException):
                raise
            except Exception as exc:  # SQLAlchemy's errors on a damaged database file, among others
                raise RegistryError(
                    f"MLflow at {self.shown_uri} could not be opened ({type(exc).__name__}: "
                    f"{mask_url_password(str(exc).strip().splitlines()[0] if str(exc).strip() else '')}); "
                    "check registry.tracking_uri"
                ) from exc
        self._setup_lock = threading.Lock()
        self._experiment_id: str | None = None
        self._model_ready = False

    # ---- errors ---------------------------------------------------------------------------

    @contextmanager
    def _mlflow_errors(self, doing: str) -> Iterator[None]:
        """Turns MLflow and transport failures into one-sentence `RegistryError`s."""
        try:
            yield
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise self._unreachable(doing) from exc
        except (MlflowException, requests.RequestException) as exc:
            message = mask_url_password(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__
            if message.startswith("API request to") and " failed with " in message:
                raise self._unreachable(doing) from exc
            raise RegistryError(f"MLflow at {self.shown_uri} failed while {doing}: {message}") from exc

    def _unreachable(self, doing: str) -> RegistryUnavailableError:
        return RegistryUnavailableError(
            f"MLflow at {self.shown_uri} is unreachable while {doing}; check registry.tracking_uri "
            "and that the tracking server is running."
        )

    # ---- lazy setup -----------------------------------------------------------------------

    def _experiment(self) -> str:
        with self._setup_lock:
            if self._experiment_id is None:
                self._experiment_id = self._find_or_create_experiment()
            return self._experiment_id

    def _find_or_create_experiment(self) -> str:
        with self._mlflow_errors(f"opening experiment {self.experiment_name!r}"):
            experiment = self._client.get_experiment_by_name(self.experiment_name)
            if experiment is None:
                try:
                    return self._client.create_experiment(
                        self.experiment_name, artifact_location=self.artifact_location
                    )
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    experiment = self._client.get_experiment_by_name(self.experiment_name)
        if experiment.lifecycle_stage == "deleted":
            raise RegistryError(
                f"MLflow experiment {self.experiment_name!r} is deleted; restore it or set "
                "registry.experiment_name to another name."
            )
        return experiment.experiment_id

    def _ensure_model(self) -> None:
        with self._setup_lock:
            if self._model_ready:
                return
            with self._mlflow_errors(f"creating registered model {self.model_name!r}"):
                try:
                    self._client.create_registered_model(self.model_name)
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
            self._model_ready = True

    # ---- runs -----------------------------------------------------------------------------

    def start_cycle_run(self, cycle_id: str, params: Mapping[str, Any], tags: Mapping[str, Any]) -> str:
        """Opens the run of one cycle (run name = cycle id) and returns its run id."""
        experiment_id = self._experiment()
        run_tags = {k: _as_text(v) for k, v in tags.items()} | {TAG_CYCLE_ID: cycle_id}
        with self._mlflow_errors(f"starting the run of cycle {cycle_id}"):
            run = self._client.create_run(experiment_id, run_name=cycle_id, tags=run_tags)
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, _as_text(v)) for k, v in params.items()]
        with self._mlflow_errors(f"logging params of run {run_id}"):
            for start in range(0, len(items), _BATCH):
                self._client.log_batch(run_id, params=items[start : start + _BATCH])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
        now_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
        items = [Metric(k, float(v), now_ms, step or 0) for k, v in metrics.items()]
        with self._mlflow_errors(f"logging metrics of run {run_id}"):
            for start in range(0, len(items), _BATCH):
                self._client.log_batch(run_id, metrics=items[start : start + _BATCH])

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        with self._mlflow_errors(f"uploading {local_dir} to run {run_id}"):
            self._client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_dict(self, run_id: str, data: dict | list, artifact_file: str) -> None:
        with self._mlflow_errors(f"uploading {artifact_file} to run {run_id}"):
            self._client.log_dict(run_id, data, artifact_file)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        with self._mlflow_errors(f"uploading {artifact_file} to run {run_id}"):
            self._client.log_text(run_id, text, artifact_file)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Closes the run as FINISHED, FAILED or KILLED."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {', '.join(RUN_STATUSES)}, not {status!r}")
        with self._mlflow_errors(f"ending run {run_id}"):
            self._client.set_terminated(run_id, status)

    # ---- versions -------------------------------------------------------------------------

    def register_candidate(
        self, run_id: str, adapter_dir: Path, tags: Mapping[str, Any], await_ready_s: int = 300
    ) -> str:
        """Uploads `adapter_dir` as the run's `adapter` artifact and registers it; returns the version.

        Tag keys without the `ticketune.` prefix get it; values that are not strings are stored as JSON.
        """
        adapter_dir = Path(adapter_dir)
        if not adapter_dir.is_dir() or not any(adapter_dir.iterdir()):
            raise RegistryError(f"adapter directory {adapter_dir} is missing or empty; nothing to register.")
        self._ensure_model()
        version_tags = {_prefixed(k): _as_text(v) for k, v in tags.items()}
        with self._mlflow_errors(f"registering the adapter of run {run_id}"):
            self._client.log_artifacts(run_id, str(adapter_dir), ADAPTER_ARTIFACT_PATH)
            artifact_uri = self._client.get_run(run_id).info.artifact_uri
            created = self._client.create_model_version(
                self.model_name,
                source=f"{artifact_uri.rstrip('/')}/{ADAPTER_ARTIFACT_PATH}",
                run_id=run_id,
                tags=version_tags,
                await_creation_for=await_ready_s,
            )
            if created.status != "READY":
                created = self._client.get_model_version(self.model_name, created.version)
        if created.status != "READY":
            raise RegistryError(
                f"model version {created.version} of {self.model_name} is {created.status} after "
                f"{await_ready_s} s: {created.status_message or 'no message'}."
            )
        return str(created.version)

    def _version(self, version: str) -> ModelVersion:
        if not str(version).isdigit():
            raise VersionNotFoundError(f"{version!r} is not a model version number (e.g. 3).")
        with self._mlflow_errors(f"reading version {version} of {self.model_name}"):
            try:
                return self._client.get_model_version(self.model_name, str(version))
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                raise VersionNotFoundError(
                    f"model {self.model_name} has no version {version}; `ticketune history` lists them."
                ) from exc

    def run_id_of(self, version: str) -> str | None:
        """The MLflow run a version was registered from (its cycle's run), or None."""
        return self._version(version).run_id or None

    def _tag_version(self, version: str, tags: Mapping[str, Any]) -> None:
        with self._mlflow_errors(f"tagging version {version} of {self.model_name}"):
            for key, value in tags.items():
                self._client.set_model_version_tag(
                    self.model_name, str(version), _prefixed(key), _as_text(value)
                )

    def set_version_tags(self, version: str, tags: Mapping[str, Any]) -> None:
        """Sets tags on a version; keys get the `ticketune.` prefix when they lack it."""
        self._version(version)
        self._tag_version(version, tags)

    def get_version_tags(self, version: str) -> dict[str, str]:
        return dict(self._version(version).tags)

    def download_adapter(self, version: str, dst_dir: Path) -> Path:
        """Downloads the adapter files of `version` under `dst_dir`; returns the adapter directory."""
        source = self._version(version).source
        Path(dst_dir).mkdir(parents=True, exist_ok=True)
        with self._mlflow_errors(f"downloading the adapter of version {version}"):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(dst_dir), tracking_uri=self.tracking_uri
            )
        return Path(local)

    def list_versions(self) -> list[dict]:
        """Every version, newest first: `version`, `champion` (whether the alias points to it),
        `created_at`, `run_id` and its `tags`."""
        champion = self.champion_version()
        versions: list[ModelVersion] = []
        with self._mlflow_errors(f"listing versions of {self.model_name}"):
            page_token = None
            while True:
                page = self._client.search_model_versions(
                    f"name = '{self.model_name}'", max_results=1000, page_token=page_token
                )
                versions.extend(page)
                page_token = page.token
                if not page_token:
                    break
        versions.sort(key=lambda mv: int(mv.version), reverse=True)
        return [
            {
                "version": str(mv.version),
                "champion": str(mv.version) == champion,
                "created_at": _ms_to_iso(mv.creation_timestamp),
                "run_id": mv.run_id,
                "tags": dict(mv.tags),
            }
            for mv in versions
        ]

    # ---- champion -------------------------------------------------------------------------

    def _registered_model(self) -> RegisteredModel | None:
        """The registered model, or None before the first candidate."""
        with self._mlflow_errors(f"reading registered model {self.model_name}"):
            try:
                return self._client.get_registered_model(self.model_name)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                return None

    def champion_version(self) -> str | None:
        """The version the champion alias points to, or None when there is none."""
        model = self._registered_model()
        if model is None:
            return None
        version = (model.aliases or {}).get(self.champion_alias)
        return str(version) if version is not None else None

    def set_champion(self, version: str) -> None:
        """Points the champion alias at `version` (which the caller has checked exists)."""
        with self._mlflow_errors(f"moving alias {self.champion_alias!r} to version {version}"):
            self._client.set_registered_model_alias(self.model_name, self.champion_alias, str(version))

    # ---- health ---------------------------------------------------------------------------

    def ping(self) -> None:
        """Raises `RegistryUnavailableError` unless the tracking server or store answers now.

        For an HTTP server this is one GET of `/health` bounded by `ping_timeout_s`, with no retries.
        """
        if self.tracking_uri.startswith(("http://", "https://")):
            url = f"{self.tracking_uri.rstrip('/')}/health"
            try:
                response = requests.get(url, timeout=self.ping_timeout_s)
            except requests.RequestException as exc:
                raise self._unreachable("checking its health") from exc
            if response.status_code != 200:
                raise RegistryUnavailableError(
                    f"MLflow at {self.shown_uri} answered {response.status_code} to {mask_url_password(url)}; "
                    "check that the tracking server is healthy."
                )
            return
        with self._mlflow_errors("checking its health"):
            self._client.search_experiments(max_results=1)
