"""Where the training worker runs. Here: a local child process (`python -m daemon.training train`).

The child owns the GPU for the length of one cycle and gives it back by exiting; its crash or
timeout is a failed cycle, never a crashed service.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


class WorkerFailed(RuntimeError):
    """The training worker did not produce a usable result; the message says why."""


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text("utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class LocalProcessExecutor:
    """Runs the worker as a child process of the service, in its own process group."""

    def __init__(self, python: str | None = None, extra_env: dict[str, str] | None = None) -> None:
        self.python = python or sys.executable
        self.extra_env = extra_env or {}

    def run(
        self, spec_path: Path, result_path: Path, *, timeout_s: float, stop: threading.Event | None = None
    ) -> dict:
        log_path = spec_path.parent / "worker.log"
        env = {**os.environ, **self.extra_env, "PYTHONUNBUFFERED": "1"}
        command = [self.python, "-m", "daemon.training", "train", "--spec", str(spec_path)]
        result_path.unlink(missing_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            deadline = time.monotonic() + timeout_s
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    self._kill(proc)
                    raise WorkerFailed(f"training worker exceeded training.timeout_minutes ({timeout_s / 60:.0f} min)")
                if stop is not None and stop.is_set():
                    self._kill(proc)
                    raise WorkerFailed("training worker stopped: the service is shutting down")
                time.sleep(0.2)
        result = None
        if result_path.exists():
            try:
                result = json.loads(result_path.read_text("utf-8"))
            except json.JSONDecodeError:
                result = None
        if proc.returncode != 0 or result is None or result.get("status") != "ok":
            error = (result or {}).get("error") or f"exit code {proc.returncode}"
            raise WorkerFailed(f"training worker failed: {error} (log: {log_path})\n{_tail(log_path)}")
        return result

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        """SIGTERM the worker's process group, SIGKILL after 20 s: checkpoints get a chance to land."""
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
