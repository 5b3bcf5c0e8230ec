"""The worker's progress: a log line now and then, and a small JSON file the service turns into gauges."""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("daemon.training")
MIN_WRITE_INTERVAL_S = 1.0


class ProgressReporter:
    """Writes `progress.json` atomically (at most once a second) and logs every `log_every` steps."""

    def __init__(self, path: Path | None, cycle_id: str, enabled: bool = True) -> None:
        self.path = path
        self.cycle_id = cycle_id
        self.total_steps = 0  # the training loop sets it once its step plan is known
        self.enabled = enabled
        self._last_write = 0.0

    @property
    def log_every(self) -> int:
        return max(1, self.total_steps // 20)

    def phase(self, phase: str, **fields: float | int | str | None) -> None:
        self._write({"phase": phase, "total_steps": self.total_steps, **fields}, force=True)

    def step(self, step: int, loss: float, tokens_per_second: float, elapsed_s: float, steps_this_run: int) -> None:
        remaining = self.total_steps - step
        eta = elapsed_s / steps_this_run * remaining if steps_this_run else None
        if self.enabled and (step % self.log_every == 0 or step == self.total_steps):
            log.info(
                "train step=%d/%d loss=%.4f tokens_per_s=%.0f eta_s=%.0f",
                step,
                self.total_steps,
                loss,
                tokens_per_second,
                eta or 0.0,
            )
        self._write(
            {
                "phase": "train",
                "step": step,
                "total_steps": self.total_steps,
                "loss": round(loss, 5),
                "tokens_per_second": round(tokens_per_second, 1),
                "eta_seconds": None if eta is None else round(eta, 1),
                "elapsed_seconds": round(elapsed_s, 1),
            },
            force=step == self.total_steps,
        )

    def _write(self, fields: dict, *, force: bool) -> None:
        if not self.enabled or self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._last_write < MIN_WRITE_INTERVAL_S:
            return
        self._last_write = now
        record = {"cycle_id": self.cycle_id, **fields, "updated_at": datetime.now(timezone.utc).isoformat()}
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(record) + "\n", encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:  # progress is advisory: never fail a training run over it
            log.warning("could not write progress file %s: %s", self.path, exc)
