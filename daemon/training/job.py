"""The worker inside a Kubernetes Job: the cycle's spec and data come from its MLflow run, results go back there.

`python -m daemon.training run-job --tracking-uri URI --run-id RUN` downloads `job/spec.json` and
`job/inputs/` into a scratch directory, points the spec at the local copies, runs the ordinary `train`
verb as a child (torchrun for several GPUs), and logs back to the same run: `job/progress.json` every
few seconds, each new checkpoint under `job/checkpoints/` as it lands, and at exit the output directory
under `job/out/` (result.json, adapter). A restarted pod resumes from the run's newest checkpoint.
This module imports no torch: the service uses its artifact layout to fill and read the run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from daemon.training.contract import (
    CHECKPOINT_STATE_FILE,
    CHECKPOINTS_ARTIFACT,
    CHECKPOINTS_DIR,
    EXIT_BAD_SPEC,
    EXIT_FAILED,
    INPUTS_ARTIFACT,
    OUT_ARTIFACT,
    OUT_DIR,
    PROGRESS_ARTIFACT,
    PROGRESS_FILE,
    RESULT_FILE,
    SPEC_ARTIFACT,
    SPEC_FILE,
    SpecError,
    TrainResult,
    TrainSpec,
    read_result,
    read_spec,
    write_result,
    write_spec,
)

log = logging.getLogger("daemon.training")

__all__ = ["CHECKPOINTS_ARTIFACT", "INPUTS_ARTIFACT", "OUT_ARTIFACT", "PROGRESS_ARTIFACT", "SPEC_ARTIFACT",
           "download_into", "local_spec", "newest_checkpoint", "portable_spec", "run_job"]
INPUT_FIELDS = ("train_file", "validation_file", "init_adapter", "general_text_file")
INPUT_MAPS = ("eval_files", "compare_adapters")
OUTPUT_DEFAULTS = {"output_dir": OUT_DIR, "checkpoint_dir": CHECKPOINTS_DIR,
                   "progress_file": f"{OUT_DIR}/{PROGRESS_FILE}"}
PROGRESS_SYNC_S = 5.0


def portable_spec(spec: TrainSpec, cycle_dir: Path) -> tuple[TrainSpec, dict[str, Path]]:
    """The spec with every path relative to the inputs root, and what to upload there (artifact path → local).

    Inputs inside the cycle directory keep their place (`data/train.jsonl`, `champion/...`); files
    elsewhere (the general text the service ships) travel under `extra/`. Outputs keep their place
    under the cycle directory, so the Job writes `out/` and `checkpoints/` as the local worker would.
    """
    root = cycle_dir.resolve()
    uploads: dict[str, Path] = {}

    def portable(path: Path | None) -> Path | None:
        if path is None:
            return None
        try:
            relative = path.resolve().relative_to(root)
        except ValueError:
            key = f"extra/{hashlib.sha256(str(path).encode()).hexdigest()[:8]}-{path.name}"
            if path.exists():
                uploads[key] = path
            return Path(key)
        top = relative.parts[0]
        if (root / top).exists():
            uploads[top] = root / top
        return Path(relative.as_posix())

    update: dict[str, Any] = {name: portable(getattr(spec, name)) for name in INPUT_FIELDS}
    for name in INPUT_MAPS:
        update[name] = {key: portable(value) for key, value in getattr(spec, name).items()}
    for name, default in OUTPUT_DEFAULTS.items():
        value = getattr(spec, name)
        if value is not None:
            try:
                update[name] = Path(value.resolve().relative_to(root).as_posix())
            except ValueError:
                update[name] = Path(default)
    uploads.pop(CHECKPOINTS_DIR, None)  # only the newest checkpoint travels (the executor picks it)
    return spec.model_copy(update=update), uploads


def local_spec(portable: TrainSpec, root: Path) -> TrainSpec:
    """The portable spec with its relative paths resolved against `root` (the downloaded inputs)."""

    def local(path: Path | None) -> Path | None:
        return root / path if path is not None and not path.is_absolute() else path

    update: dict[str, Any] = {name: local(getattr(portable, name)) for name in (*INPUT_FIELDS, *OUTPUT_DEFAULTS)}
    for name in INPUT_MAPS:
        update[name] = {key: local(value) for key, value in getattr(portable, name).items()}
    return portable.model_copy(update=update)


def newest_checkpoint(client: Any, run_id: str, artifact_dir: str = CHECKPOINTS_ARTIFACT) -> str | None:
    """The artifact path of the newest `step-N` checkpoint under `artifact_dir` of the run, or None."""
    try:
        steps = [item.path for item in client.list_artifacts(run_id, artifact_dir)
                 if item.is_dir and item.path.rsplit("/", 1)[-1].startswith("step-")]
    except Exception:  # no such directory yet, on some artifact stores an error
        return None
    return max(steps, key=lambda path: path.rsplit("/", 1)[-1], default=None)


def download_into(client: Any, run_id: str, artifact_path: str, dst: Path) -> Path:
    """Downloads one artifact (file or directory) to exactly `dst`."""
    with tempfile.TemporaryDirectory(dir=dst.parent) as temporary:
        local = Path(client.download_artifacts(run_id, artifact_path, temporary))
        if dst.is_dir():
            shutil.rmtree(dst)
        else:
            dst.unlink(missing_ok=True)
        shutil.move(str(local), dst)
    return dst


def relative_result(result: TrainResult, output_dir: Path) -> TrainResult:
    """`adapter_dir` relative to the output directory, so the service can place it in its own `out/`."""
    if result.adapter_dir is not None:
        try:
            relative = Path(result.adapter_dir).resolve().relative_to(output_dir.resolve()).as_posix()
        except ValueError:
            return result
        return result.model_copy(update={"adapter_dir": relative})
    return result


def train_command(python: str, spec_path: Path, gpus: int) -> list[str]:
    train = ["-m", "daemon.training", "train", "--spec", str(spec_path)]
    if gpus > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", *train]
    return [python, *train]


class _Syncer:
    """Logs the progress file and every new checkpoint of the running worker to the run."""

    def __init__(self, client: Any, run_id: str, spec: TrainSpec) -> None:
        self.client = client
        self.run_id = run_id
        self.progress = spec.progress_file
        self.checkpoints = spec.checkpoint_dir
        self.sent: set[str] = set()
        self.progress_mtime = 0.0

    def sync(self) -> None:
        try:
            if self.progress is not None and self.progress.is_file():
                mtime = self.progress.stat().st_mtime
                if mtime != self.progress_mtime:
                    self.progress_mtime = mtime
                    self.client.log_artifact(self.run_id, str(self.progress), "job")
            if self.checkpoints is not None and self.checkpoints.is_dir():
                for step in sorted(self.checkpoints.glob("step-*")):
                    if step.name not in self.sent and (step / CHECKPOINT_STATE_FILE).is_file():
                        self.client.log_artifacts(self.run_id, str(step), f"{CHECKPOINTS_ARTIFACT}/{step.name}")
                        self.sent.add(step.name)
        except Exception as exc:  # MLflow briefly unreachable: the next sync tries again
            log.warning("could not log progress or checkpoints to run %s: %s", self.run_id, exc)


def run_job(tracking_uri: str, run_id: str, scratch: Path, *, base_model: str | None = None,
            python: str | None = None) -> int:
    """The Job's main: inputs from the run, `train` as a child, outputs back to the run; the child's exit code."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        portable = read_spec(Path(client.download_artifacts(run_id, SPEC_ARTIFACT, str(scratch))))
    except SpecError as exc:
        log.error("the spec of run %s does not validate: %s", run_id, exc)
        return EXIT_BAD_SPEC
    root = scratch / (portable.cycle_id or "cycle")  # the same paths in every pod of this cycle
    root.mkdir(parents=True, exist_ok=True)
    for item in client.list_artifacts(run_id, INPUTS_ARTIFACT):
        download_into(client, run_id, item.path, root / item.path.rsplit("/", 1)[-1])
    spec = local_spec(portable, root)
    if base_model:
        spec = spec.model_copy(update={"base_model": base_model})
    own = newest_checkpoint(client, run_id)  # an earlier pod of this Job got further than the inputs
    if own is not None and spec.checkpoint_dir is not None:
        spec.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        download_into(client, run_id, own, spec.checkpoint_dir / own.rsplit("/", 1)[-1])
    spec_path = write_spec(spec, root / SPEC_FILE)
    output_dir = spec.output_dir

    syncer = _Syncer(client, run_id, spec)
    syncer.sent = {path.name for path in (spec.checkpoint_dir or root / "none").glob("step-*")}
    child = subprocess.Popen(train_command(python or sys.executable, spec_path, spec.training.gpus),
                             start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def forward(signum: int, _frame: Any) -> None:  # the pod is deleted: the worker checkpoints and exits 3
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while child.poll() is None:
        syncer.sync()
        try:
            child.wait(timeout=PROGRESS_SYNC_S)
        except subprocess.TimeoutExpired:
            pass
    syncer.sync()
    code = child.returncode
    result = read_result(output_dir / RESULT_FILE)
    if result is None:
        log.error("the worker left no readable result.json in %s (exit code %s)", output_dir, code)
    else:
        try:
            write_result(output_dir, relative_result(result, output_dir))
        except OSError as exc:
            log.error("could not rewrite result.json in %s: %s", output_dir, exc)
        if not result.ok and result.exit_code is not None:
            code = result.exit_code  # under torchrun the child's code is torchrun's
    try:
        if output_dir.is_dir():
            client.log_artifacts(run_id, str(output_dir), OUT_ARTIFACT)
    except Exception as exc:
        log.error("could not log the worker's output to run %s: %s", run_id, exc)
        return code if code not in (0, None) else EXIT_FAILED
    log.info("run-job done run_id=%s exit_code=%s", run_id, code)
    return code
