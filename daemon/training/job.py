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
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("daemon.training")

SPEC_ARTIFACT = "job/spec.json"
INPUTS_ARTIFACT = "job/inputs"
OUT_ARTIFACT = "job/out"
PROGRESS_ARTIFACT = "job/progress.json"
CHECKPOINTS_ARTIFACT = "job/checkpoints"
INPUT_FIELDS = ("train_file", "validation_file", "init_adapter", "general_text_file")
INPUT_MAPS = ("eval_files", "compare_adapters")
OUTPUT_DEFAULTS = {"output_dir": "out", "checkpoint_dir": "checkpoints", "progress_file": "out/progress.json"}
PROGRESS_SYNC_S = 5.0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 3


def portable_spec(spec: dict[str, Any], cycle_dir: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """The spec with every path relative to the inputs root, and what to upload there (artifact path → local).

    Inputs inside the cycle directory keep their place (`data/train.jsonl`, `champion/...`); files
    elsewhere (the general text the service ships) travel under `extra/`. Outputs keep their place
    under the cycle directory, so the Job writes `out/` and `checkpoints/` as the local worker would.
    """
    root = cycle_dir.resolve()
    uploads: dict[str, Path] = {}

    def portable(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        path = Path(value)
        try:
            relative = path.resolve().relative_to(root)
        except ValueError:
            key = f"extra/{hashlib.sha256(value.encode()).hexdigest()[:8]}-{path.name}"
            if path.exists():
                uploads[key] = path
            return key
        top = relative.parts[0]
        if (root / top).exists():
            uploads[top] = root / top
        return relative.as_posix()

    out = dict(spec)
    for name in INPUT_FIELDS:
        out[name] = portable(spec.get(name))
    for name in INPUT_MAPS:
        if isinstance(spec.get(name), dict):
            out[name] = {key: portable(value) for key, value in spec[name].items()}
    for name, default in OUTPUT_DEFAULTS.items():
        value = spec.get(name)
        if isinstance(value, str):
            try:
                out[name] = Path(value).resolve().relative_to(root).as_posix()
            except ValueError:
                out[name] = default
    uploads.pop("checkpoints", None)  # only the newest checkpoint travels (the executor picks it)
    return out, uploads


def local_spec(portable: dict[str, Any], root: Path) -> dict[str, Any]:
    """The portable spec with its relative paths resolved against `root` (the downloaded inputs)."""

    def local(value: Any) -> Any:
        return str(root / value) if isinstance(value, str) and not Path(value).is_absolute() else value

    out = dict(portable)
    for name in (*INPUT_FIELDS, *OUTPUT_DEFAULTS):
        out[name] = local(portable.get(name))
    for name in INPUT_MAPS:
        if isinstance(portable.get(name), dict):
            out[name] = {key: local(value) for key, value in portable[name].items()}
    return out


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


def relative_result(result: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """`adapter_dir` relative to the output directory, so the service can place it in its own `out/`."""
    adapter = result.get("adapter_dir")
    if isinstance(adapter, str):
        try:
            result = {**result, "adapter_dir": Path(adapter).resolve().relative_to(output_dir.resolve()).as_posix()}
        except ValueError:
            pass
    return result


def train_command(python: str, spec_path: Path, gpus: int) -> list[str]:
    train = ["-m", "daemon.training", "train", "--spec", str(spec_path)]
    if gpus > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", *train]
    return [python, *train]


class _Syncer:
    """Logs the progress file and every new checkpoint of the running worker to the run."""

    def __init__(self, client: Any, run_id: str, spec: dict[str, Any]) -> None:
        self.client = client
        self.run_id = run_id
        self.progress = Path(spec["progress_file"]) if spec.get("progress_file") else None
        self.checkpoints = Path(spec["checkpoint_dir"]) if spec.get("checkpoint_dir") else None
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
                    if step.name not in self.sent and (step / "state.json").is_file():
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
    portable = json.loads(Path(client.download_artifacts(run_id, SPEC_ARTIFACT, str(scratch))).read_text("utf-8"))
    root = scratch / str(portable.get("cycle_id") or "cycle")  # the same paths in every pod of this cycle
    root.mkdir(parents=True, exist_ok=True)
    for item in client.list_artifacts(run_id, INPUTS_ARTIFACT):
        download_into(client, run_id, item.path, root / item.path.rsplit("/", 1)[-1])
    spec = local_spec(portable, root)
    if base_model:
        spec["base_model"] = base_model
    own = newest_checkpoint(client, run_id)  # an earlier pod of this Job got further than the inputs
    if own is not None and spec.get("checkpoint_dir"):
        checkpoints = Path(spec["checkpoint_dir"])
        checkpoints.mkdir(parents=True, exist_ok=True)
        download_into(client, run_id, own, checkpoints / own.rsplit("/", 1)[-1])
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2), "utf-8")
    output_dir = Path(spec["output_dir"])

    syncer = _Syncer(client, run_id, spec)
    syncer.sent = {path.name for path in Path(spec.get("checkpoint_dir") or root / "none").glob("step-*")}
    gpus = int((spec.get("training") or {}).get("gpus") or 1)
    child = subprocess.Popen(train_command(python or sys.executable, spec_path, gpus), start_new_session=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})

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
    result_file = output_dir / "result.json"
    try:
        result = json.loads(result_file.read_text("utf-8"))
        result_file.write_text(json.dumps(relative_result(result, output_dir), indent=1) + "\n", "utf-8")
        if result.get("status") != "ok" and isinstance(result.get("exit_code"), int):
            code = result["exit_code"]  # under torchrun the child's code is torchrun's
    except (OSError, ValueError):
        log.error("the worker left no readable result.json in %s (exit code %s)", output_dir, code)
    try:
        if output_dir.is_dir():
            client.log_artifacts(run_id, str(output_dir), OUT_ARTIFACT)
    except Exception as exc:
        log.error("could not log the worker's output to run %s: %s", run_id, exc)
        return code if code not in (0, None) else EXIT_FAILED
    log.info("run-job done run_id=%s exit_code=%s", run_id, code)
    return code
