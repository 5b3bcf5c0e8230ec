"""Tells serving systems that the champion changed: a signed webhook, or vLLM's runtime adapter load.

Every target gets the change with retries and exponential backoff. A target that still fails keeps
the change in `serving_pending.json` beside the store, and `flush()` (the service calls it from its
loop) re-sends it until the target takes it or a newer change for that target replaces it. Nothing
here ever raises into a promotion or rollback: the alias move stands, failures are logged and counted.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import http.client
import json
import logging
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from daemon import metrics
from daemon.champion.vocabulary import TAG_ADAPTER_METHOD
from daemon.config import ServingConfig, ServingTarget
from daemon.training.methods import UnsupportedAdapter, check_servable

log = logging.getLogger("ticketune.serving")

PROMOTED = "promoted"
ROLLED_BACK = "rolled_back"
DELIVERED, FAILED, REFUSED, SUPERSEDED = "delivered", "failed", "refused", "superseded"
SIGNATURE_HEADER = "X-Ticketune-Signature"
PENDING_FILE = "serving_pending.json"
_RESPONSE_EXCERPT_CHARS = 200
_ALREADY_LOADED = "has already been loaded"  # vLLM's 400 for a loaded name when it predates load_inplace


class AdapterSource(Protocol):
    """What the notifier needs from the registry (connectors/registry.py `AdapterRegistry`)."""

    def get_version_tags(self, version: str) -> dict[str, str]: ...
    def download_adapter(self, version: str, dst_dir: Path) -> Path: ...


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ChampionChange:
    """One alias move, as every target hears of it (the webhook body, less the adapter path)."""

    event: str  # promoted | rolled_back
    model_name: str
    version: str
    previous_version: str | None
    reason: str
    actor: str
    forced: bool = False
    adapter_method: str | None = None  # the version's ticketune.adapter_method tag, e.g. "qlora+rslora"
    timestamp: str = field(default_factory=_now_iso)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)  # the same on every retry: receivers dedupe on it

    @property
    def adapter_uri(self) -> str:
        return f"models:/{self.model_name}/{self.version}"


def method_family(adapter_method: str) -> str:
    """"qlora+rslora" → "lora": the part before "+", without the q of a quantised base (QLoRA, QDoRA)."""
    name = adapter_method.split("+", 1)[0]
    return name[1:] if name in ("qlora", "qdora") else name


def sign(body: bytes, secret: str) -> str:
    """The signature header's value: `sha256=` and the hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def export_adapter(registry: AdapterSource, model_name: str, version: str, root: Path) -> Path:
    """`<root>/<model_name>/v<version>`, downloaded from the registry once; a rename makes it appear whole."""
    final = root / model_name / f"v{version}"
    if final.is_dir():
        return final
    scratch = root / model_name / f".v{version}.{uuid.uuid4().hex[:8]}.partial"
    try:
        adapter = registry.download_adapter(version, scratch)
        try:
            adapter.rename(final)
        except OSError:
            if not final.is_dir():  # another process renamed its copy first: theirs is as good
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def _post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read(4096).decode("utf-8", "replace")


class ServingNotifier:
    """Sends champion changes to `cfg.targets` and keeps the ones that did not land in `pending_path`.

    Safe from several threads and processes (the service, the CLI): a file lock beside the pending
    file serialises deliveries, so a target never hears two changes out of order.
    """

    def __init__(self, cfg: ServingConfig, registry: AdapterSource, model_name: str, pending_path: Path) -> None:
        self.cfg = cfg
        self.registry = registry
        self.model_name = model_name
        self.pending_path = Path(pending_path)
        self._thread_lock = threading.Lock()
        for kind in {target.kind for target in cfg.targets}:  # the targets' series from the start, at 0
            for outcome in (DELIVERED, FAILED, REFUSED, SUPERSEDED):
                metrics.SERVING_NOTIFICATIONS.labels(kind, outcome)
            metrics.SERVING_LAST_SUCCESS.labels(kind)

    # ---- what callers use ------------------------------------------------------------------

    def promoted(self, version: str, previous: str | None, *, reason: str, actor: str,
                 forced: bool = False) -> dict[str, str]:
        return self.notify(ChampionChange(PROMOTED, self.model_name, str(version), previous, reason, actor, forced))

    def rolled_back(self, version: str, previous: str | None, *, reason: str, actor: str) -> dict[str, str]:
        return self.notify(ChampionChange(ROLLED_BACK, self.model_name, str(version), previous, reason, actor))

    def notify(self, change: ChampionChange) -> dict[str, str]:
        """Delivers `change` to every target; returns {target label: delivered|failed|refused}. Never raises."""
        if not self.cfg.targets:
            return {}
        if change.adapter_method is None:
            change = self._with_method(change)
        try:
            with self._locked():
                for record in self._read().values():  # the new change replaces what was waiting
                    metrics.SERVING_NOTIFICATIONS.labels(record.get("target_kind", "unknown"), SUPERSEDED).inc()
                results = self._deliver_all({label: change for label in self._targets()}, rounds_so_far={})
                self._write({label: record for label, (_, record) in results.items() if record is not None})
        except Exception as exc:  # the pending file's volume is gone, a lock error...: log, never fail the move
            for target in self.cfg.targets:
                metrics.SERVING_NOTIFICATIONS.labels(target.kind, FAILED).inc()
            log.error("serving: version %s (%s) could not be sent or kept for a retry: %s",
                      change.version, change.event, exc)
            return {label: FAILED for label in self._targets()}
        return {label: outcome for label, (outcome, _) in results.items()}

    def flush(self) -> dict[str, str]:
        """Re-sends the pending changes; returns {target label: outcome}. Never raises."""
        try:
            if not self._read():
                metrics.SERVING_PENDING.set(0)
                return {}
            with self._locked():
                pending = self._read()
                targets = self._targets()
                for label in [label for label in pending if label not in targets]:
                    log.warning("serving: dropping the pending change for %s: no such target in serving.targets",
                                label)
                    del pending[label]
                changes = {label: ChampionChange(**record["change"]) for label, record in pending.items()}
                results = self._deliver_all(
                    changes, rounds_so_far={label: record.get("rounds", 0) for label, record in pending.items()}
                )
                self._write({label: record for label, (_, record) in results.items() if record is not None})
        except Exception as exc:
            log.error("serving: re-sending pending changes failed, trying again later: %s", exc)
            return {}
        return {label: outcome for label, (outcome, _) in results.items()}

    def pending(self) -> dict[str, dict]:
        """The changes waiting for a target, by target label (what `serving_pending.json` holds)."""
        return self._read()

    # ---- delivery --------------------------------------------------------------------------

    def _targets(self) -> dict[str, ServingTarget]:
        return {target.label: target for target in self.cfg.targets}

    def _with_method(self, change: ChampionChange) -> ChampionChange:
        try:
            method = self.registry.get_version_tags(change.version).get(TAG_ADAPTER_METHOD)
        except Exception as exc:
            log.warning("serving: the adapter method of version %s is unknown (%s)", change.version, exc)
            return change
        return ChampionChange(**{**asdict(change), "adapter_method": method})

    def _deliver_all(
        self, changes: dict[str, ChampionChange], rounds_so_far: dict[str, int]
    ) -> dict[str, tuple[str, dict | None]]:
        """{label: (outcome, the record to keep pending or None)}; the targets are sent to in parallel."""
        targets = self._targets()
        exports: dict[tuple[Path, str], Path | Exception] = {}
        for label, change in changes.items():  # one download per shared volume and version, before the sends
            root = targets[label].adapter_root
            refused = targets[label].kind == "vllm" and self._vllm_refusal(change) is not None
            if root is not None and not refused and (root, change.version) not in exports:
                try:
                    exports[(root, change.version)] = export_adapter(self.registry, self.model_name,
                                                                     change.version, root)
                except Exception as exc:
                    exports[(root, change.version)] = exc

        def one(label: str) -> tuple[str, dict | None]:
            target, change = targets[label], changes[label]
            export = exports.get((target.adapter_root, change.version)) if target.adapter_root else None
            outcome, error = self._deliver(target, change, export)
            if outcome != FAILED:
                return outcome, None
            rounds = rounds_so_far.get(label, 0) + 1
            return outcome, {"target_kind": target.kind, "change": asdict(change), "rounds": rounds,
                             "last_error": error, "last_try": _now_iso()}

        with ThreadPoolExecutor(max_workers=max(1, len(changes)), thread_name_prefix="serving") as pool:
            return dict(zip(changes, pool.map(one, changes), strict=True))

    def _deliver(
        self, target: ServingTarget, change: ChampionChange, export: Path | Exception | None
    ) -> tuple[str, str | None]:
        """(delivered|refused|failed, the last error when failed)."""
        if target.kind == "vllm":
            refusal = self._vllm_refusal(change)
            if refusal is not None:
                metrics.SERVING_NOTIFICATIONS.labels(target.kind, REFUSED).inc()
                log.error("serving: %s: version %s not sent (%s): %s", target.label, change.version,
                          change.event, refusal)
                return REFUSED, None
        if isinstance(export, Exception):
            error = f"exporting the adapter to {target.adapter_root} failed: {export}"
        else:
            location = self._location(target, change, export)
            url, body, headers = (self._vllm_request if target.kind == "vllm" else self._webhook_request)(
                target, change, location
            )
            error = self._post_with_retries(target, url, body, headers)
            if target.kind == "vllm" and error is not None and _ALREADY_LOADED in error:
                error = self._reload_on_vllm_without_inplace(target, url, body, headers)
        if error is None:
            metrics.SERVING_NOTIFICATIONS.labels(target.kind, DELIVERED).inc()
            metrics.SERVING_LAST_SUCCESS.labels(target.kind).set(time.time())
            log.info("serving: %s took version %s (%s, previous %s)", target.label, change.version, change.event,
                     change.previous_version or "none")
            return DELIVERED, None
        metrics.SERVING_NOTIFICATIONS.labels(target.kind, FAILED).inc()
        log.warning("serving: %s did not take version %s (%s): %s; kept in %s, the service re-sends it",
                    target.label, change.version, change.event, error, self.pending_path)
        return FAILED, error

    def _reload_on_vllm_without_inplace(
        self, target: ServingTarget, url: str, body: bytes, headers: dict[str, str]
    ) -> str | None:
        """vLLM before `load_inplace` (added early 2026) refuses a loaded name: unload it, then load again."""
        log.warning("serving: %s ignores load_inplace (an older vLLM); unloading and reloading the adapter, "
                    "so requests for it fail for a moment: upgrade vLLM to swap it in place", target.label)
        name = json.loads(body)["lora_name"]
        unload_url = url.removesuffix("/load_lora_adapter") + "/unload_lora_adapter"
        error = self._post_with_retries(target, unload_url, json.dumps({"lora_name": name}).encode(), headers)
        return error or self._post_with_retries(target, url, body, headers)

    def _vllm_refusal(self, change: ChampionChange) -> str | None:
        if change.adapter_method is None:
            return None  # an untagged (older) version: vLLM itself says whether it loads
        try:
            check_servable(method_family(change.adapter_method), "vllm")
        except UnsupportedAdapter as exc:
            return str(exc)
        return None

    def _location(self, target: ServingTarget, change: ChampionChange, export: Path | None) -> str:
        """Where the target reads the adapter: the exported directory as it mounts it, else the MLflow URI."""
        if export is None:
            return change.adapter_uri
        if target.served_adapter_root:
            return f"{target.served_adapter_root.rstrip('/')}/{export.relative_to(target.adapter_root).as_posix()}"
        return str(export)

    def _vllm_request(self, target: ServingTarget, change: ChampionChange, location: str):
        body = json.dumps({"lora_name": target.lora_name or self.model_name, "lora_path": location,
                           "load_inplace": True}).encode()
        headers = {"Content-Type": "application/json"}
        api_key = target.api_key or self.cfg.vllm_api_key
        if api_key is not None:
            headers["Authorization"] = f"Bearer {api_key.get_secret_value()}"
        return f"{target.url.rstrip('/')}/v1/load_lora_adapter", body, headers

    def _webhook_request(self, target: ServingTarget, change: ChampionChange, location: str):
        payload = {**asdict(change), "adapter_uri": change.adapter_uri,
                   "adapter_location": location}
        body = json.dumps(payload, sort_keys=True).encode()
        secret = target.secret or self.cfg.webhook_secret  # config validation guarantees one of them
        headers = {"Content-Type": "application/json", "X-Ticketune-Event": change.event,
                   "X-Ticketune-Delivery": change.id, SIGNATURE_HEADER: sign(body, secret.get_secret_value())}
        return target.url, body, headers

    def _post_with_retries(self, target: ServingTarget, url: str, body: bytes, headers: dict[str, str]) -> str | None:
        """None once a 2xx comes back; else the last error after `attempts` tries with doubling waits."""
        error = "not sent"
        for attempt in range(1, self.cfg.attempts + 1):
            if attempt > 1:
                time.sleep(self.cfg.backoff_seconds * 2 ** (attempt - 2))
            try:
                status, text = _post(url, body, headers, self.cfg.timeout_seconds)
            except (OSError, http.client.HTTPException) as exc:
                error = f"unreachable ({type(exc).__name__}: {getattr(exc, 'reason', exc)})"
                continue
            if 200 <= status < 300:
                return None
            error = f"HTTP {status}: {' '.join(text.split())[:_RESPONSE_EXCERPT_CHARS]}"
            if status < 500 and status not in (408, 429):
                break  # the target said no; asking again now will not change that, the next flush will ask
            log.info("serving: %s answered HTTP %d (try %d of %d)", target.label, status, attempt, self.cfg.attempts)
        return error

    # ---- the pending file ------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.pending_path.parent.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, open(f"{self.pending_path}.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.pending_path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError:
            log.error("serving: %s is not valid JSON; its pending changes are dropped", self.pending_path)
            return {}
        return data.get("pending", {}) if isinstance(data, dict) else {}

    def _write(self, pending: dict[str, dict]) -> None:
        metrics.SERVING_PENDING.set(len(pending))
        if not pending:
            self.pending_path.unlink(missing_ok=True)
            return
        partial = self.pending_path.with_name(f".{self.pending_path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps({"pending": pending}, indent=2, sort_keys=True), "utf-8")
        os.replace(partial, self.pending_path)
