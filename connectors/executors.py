"""Where the training worker runs: a local child process (`python -m daemon.training train`, under
torchrun when the spec asks for several GPUs), or a Kubernetes Job on a GPU node (`executor.kind`,
connectors/kubernetes_job.py); `daemon/app/wiring.py` picks one from the config.

The child owns the GPUs for the length of one cycle and gives them back by exiting; its crash or
timeout is a failed cycle, never a crashed service. While it runs, its progress file feeds the
training gauges.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from daemon import metrics
from daemon.training import contract

log = logging.getLogger("ticketune.executors")

# The worker's exit codes are contract.EXIT_*. Under torchrun a failed rank makes torchrun exit 1
# whatever the rank's code, so the result file's status and exit_code are read as well.
__all__ = ["LocalProcessExecutor", "WorkerFailed", "read_json_object", "report_progress", "worker_command"]
PROGRESS_POLL_S = 1.0
KILL_GRACE_S = 20  # SIGTERM to SIGKILL: time for the worker to finish its step and checkpoint


class WorkerFailed(RuntimeError):
    """The training worker did not produce a usable result; the message says why.

    `retryable` is False when running the same spec again cannot help (a bad spec, model or data).
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def group_peak_rss(pgid: int) -> int:
    """Bytes: the sum of the peak RSS (VmHWM) of the live processes of process group `pgid`, from /proc
    (0 where there is no /proc). The worker runs in its own group, torchrun's ranks with it."""
    total = 0
    try:
        entries = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return 0
    for pid in entries:
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total


def memory_limit() -> int | None:
    """Bytes of memory the worker could have: the cgroup's limit where one is set, else the machine's RAM."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            return int(limit)
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def exit_reason(returncode: int, peak_rss: int = 0, limit: int | None = None) -> str:
    """The worker's exit code for the cycle's error; for a death by signal, its likely cause and the setting
    to change. A SIGKILL the service did not send is, on Linux, almost always the kernel's out-of-memory killer."""
    reason = f"exit code {returncode}"
    if returncode >= 0:
        return reason
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"{reason}: the training worker was killed by signal {-returncode}"
    if name == "SIGKILL":
        memory = f"peak RSS {peak_rss / 1e9:.1f} GB" + (f" of {limit / 1e9:.1f} GB" if limit else "")
        if not peak_rss:
            memory = f"{limit / 1e9:.1f} GB of memory" if limit else "memory use unknown"
        return (f"{reason}: the training worker was killed by SIGKILL, most likely by the kernel's out-of-memory "
                f"killer ({memory}); lower training.row_tokens or set training.gradient_checkpointing: true")
    if name in ("SIGSEGV", "SIGBUS", "SIGABRT", "SIGILL", "SIGFPE"):
        return (f"{reason}: the training worker crashed with {name} inside native code (torch or a kernel "
                "library; the log's last lines say where); set training.compile: false and training.precision: "
                "fp32 to take the plainest kernels")
    return f"{reason}: the training worker was killed by {name}, sent from outside the service"


def worker_command(python: str, spec_path: Path, gpus: int = 1) -> list[str]:
    """The worker's command line: plain for one GPU (or the CPU), torchrun for several."""
    train = ["-m", "daemon.training", "train", "--spec", str(spec_path)]
    if gpus > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", *train]
    return [python, *train]


def validated_spec(spec_path: Path) -> contract.TrainSpec:
    """The cycle's spec (`contract.read_spec`); one that does not validate fails the cycle for good, as the
    worker's bad-spec exit would."""
    try:
        return contract.read_spec(spec_path)
    except contract.SpecError as exc:
        raise WorkerFailed(f"training worker failed: {exc}", retryable=False) from None


def read_json_object(path: Path) -> dict | None:
    """The JSON object in `path`, or None while it is missing, partial or not an object."""
    try:
        value = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


_TRAINING_GAUGES = (
    ("step", metrics.TRAINING_STEP),
    ("total_steps", metrics.TRAINING_TOTAL_STEPS),
    ("loss", metrics.TRAINING_LOSS),
    ("tokens_per_second", metrics.TRAINING_TOKENS_PER_SECOND),
    ("eta_seconds", metrics.TRAINING_ETA),
)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def report_progress(progress: dict) -> None:
    """Sets the training gauges from a record of a training step (one with its loss); the records of
    other phases (validation, evaluation) leave them as the last step set them, so the gauges never
    show a step without its loss. Fields that are absent or null are left alone."""
    if not _is_number(progress.get("loss")):
        return
    for key, gauge in _TRAINING_GAUGES:
        if _is_number(progress.get(key)):
            gauge.set(progress[key])


def clear_training_gauges() -> None:
    """No worker trains: every training gauge reads 0 (before a worker starts and after it ends)."""
    for _, gauge in _TRAINING_GAUGES:
        gauge.set(0)


def tail_of(path: Path, lines: int = 15) -> str:
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
        self, spec_path: Path, result_path: Path, *, timeout_s: float, stop: threading.Event | None = None,
        run_id: str | None = None,
    ) -> contract.TrainResult:
        """Runs the worker on `spec_path`; its `training.gpus` picks torchrun, its `progress_file` is polled.
        `run_id` (the cycle's MLflow run) is for executors that move the data through MLflow; unused here."""
        spec = validated_spec(spec_path)
        gpus = spec.training.gpus
        progress_path = spec.progress_file
        log_path = spec_path.parent / contract.WORKER_LOG
        env = {**os.environ, **self.extra_env, "PYTHONUNBUFFERED": "1"}
        if gpus == 1:  # the worker is this process's own child: it stops when this process dies (torchrun's are not)
            env[contract.PARENT_PID_ENV] = str(os.getpid())
        result_path.unlink(missing_ok=True)
        if progress_path is not None:
            progress_path.unlink(missing_ok=True)  # an earlier attempt's progress is not this one's
        clear_training_gauges()
        try:
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    worker_command(self.python, spec_path, gpus), stdout=log, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True,
                )
                deadline = time.monotonic() + timeout_s
                next_poll = time.monotonic()
                peak_rss = 0
                while proc.poll() is None:
                    if time.monotonic() > deadline:
                        self._kill(proc)
                        raise WorkerFailed(f"training worker exceeded training.timeout_minutes "
                                           f"({timeout_s / 60:.0f} min){_checkpoint_note(proc, result_path)}")
                    if stop is not None and stop.is_set():
                        self._kill(proc)
                        raise WorkerFailed(f"training worker stopped: the service is shutting down"
                                           f"{_checkpoint_note(proc, result_path)}")
                    if time.monotonic() >= next_poll:
                        next_poll = time.monotonic() + PROGRESS_POLL_S
                        peak_rss = max(peak_rss, group_peak_rss(proc.pid))  # for exit_reason's OOM note
                        progress = read_json_object(progress_path) if progress_path is not None else None
                        if progress is not None:
                            report_progress(progress)
                    time.sleep(0.2)
        finally:
            clear_training_gauges()
        result = contract.read_result(result_path)
        if proc.returncode == contract.EXIT_OK and result is not None and result.ok:
            return result
        error = (result.error if result is not None else None) or exit_reason(proc.returncode, peak_rss,
                                                                              memory_limit())
        if _interrupted(proc, result):
            raise WorkerFailed(f"training worker interrupted: {error}; the retry of this cycle resumes from "
                               f"its checkpoint (log: {log_path})")
        raise WorkerFailed(
            f"training worker failed: {error} (log: {log_path})\n{tail_of(log_path)}",
            # under torchrun the exit code is torchrun's: the result file carries the worker's own
            retryable=contract.EXIT_BAD_SPEC not in (proc.returncode, result.exit_code if result is not None else None),
        )

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        """SIGTERM the worker's process group, SIGKILL after 20 s: checkpoints get a chance to land."""
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            proc.wait()


def _interrupted(proc: subprocess.Popen, result: contract.TrainResult | None) -> bool:
    """The worker stopped on SIGTERM after saving a checkpoint (its exit code, or its result under torchrun)."""
    return proc.returncode == contract.EXIT_INTERRUPTED or (result is not None and result.interrupted)


def _checkpoint_note(proc: subprocess.Popen, result_path: Path) -> str:
    if _interrupted(proc, contract.read_result(result_path)):
        return "; it saved a checkpoint and the retry of this cycle resumes from it"
    return ""


# ---- Kubernetes Jobs ----------------------------------------------------------------------------
