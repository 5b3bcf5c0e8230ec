"""The local executor against a fake worker: a real child process that plays the worker's side of the
contract (argv, progress file, result file, exit codes, SIGTERM), without training anything."""

import json
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from connectors.executors import LocalProcessExecutor, WorkerFailed, exit_reason, worker_command
from daemon import metrics
from daemon.training.contract import TrainResult

FAKE_WORKER = """#!{python}
import json, os, signal, sys, time
from pathlib import Path

spec_path = Path(sys.argv[sys.argv.index("--spec") + 1])
spec = json.loads(spec_path.read_text())
plan = spec["fake"]
out = Path(spec["output_dir"])
out.mkdir(parents=True, exist_ok=True)
(spec_path.parent / "argv.json").write_text(json.dumps(sys.argv[1:]))


def write_result(status, error=None):
    result = {{"status": status, "error": error, "adapter_dir": "a", "exit_code": plan.get("result_exit_code")}}
    (out / "result.json").write_text(json.dumps(result))


def on_sigterm(*_):
    write_result("interrupted", "stopped by SIGTERM at step 3; checkpoint saved")
    sys.exit(3)


signal.signal(signal.SIGTERM, on_sigterm)
if plan.get("progress"):
    progress = Path(spec["progress_file"])
    progress.write_text('{{"cycle_id": "c1", "step": 1, "tot')  # half written, as a reader may catch it
    time.sleep(1.3)
    progress.write_text(json.dumps({{
        "cycle_id": "c1", "phase": "train", "step": 3, "total_steps": 10, "loss": 1.25,
        "tokens_per_second": 4321.5, "eta_seconds": 7.5, "elapsed_seconds": 2.0, "updated_at": "now",
    }}))
if plan.get("hold"):
    deadline = time.monotonic() + 30
    while not (spec_path.parent / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
if plan.get("oom_mb"):  # grows, lets the executor see it, then dies as the kernel's OOM killer kills
    ballast = bytearray(plan["oom_mb"] * 1024 * 1024)
    for offset in range(0, len(ballast), 4096):
        ballast[offset] = 1
    time.sleep(2.5)
    os.kill(os.getpid(), signal.SIGKILL)
write_result(plan["status"], plan.get("error"))
sys.exit(plan["exit"])
"""


@pytest.fixture
def fake_python(tmp_path) -> str:
    path = tmp_path / "fake-python"
    path.write_text(FAKE_WORKER.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


def write_spec(tmp_path: Path, gpus: int = 1, **plan) -> Path:
    cycle_dir = tmp_path / "c1"
    cycle_dir.mkdir()
    spec = {  # a valid contract.TrainSpec (the executor validates it), plus the fake worker's plan
        "cycle_id": "c1",
        "base_model": "tiny",
        "train_file": str(cycle_dir / "train.jsonl"),
        "output_dir": str(cycle_dir / "out"),
        "progress_file": str(cycle_dir / "out" / "progress.json"),
        "training": {"gpus": gpus},
        "fake": {"status": "ok", "exit": 0, **plan},
    }
    path = cycle_dir / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


def wait_for(condition, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def run_in_thread(executor, spec, stop=None) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target():
        try:
            box["result"] = executor.run(spec, spec.parent / "out" / "result.json", timeout_s=60, stop=stop)
        except Exception as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def test_the_progress_file_feeds_the_training_gauges_and_all_read_0_when_the_worker_ends(
    tmp_path, fake_python
):
    spec = write_spec(tmp_path, progress=True, hold=True)
    metrics.TRAINING_STEP.set(0)
    thread, box = run_in_thread(LocalProcessExecutor(python=fake_python), spec)
    try:
        wait_for(lambda: gauge("ticketune_training_step") == 3)
        assert gauge("ticketune_training_total_steps") == 10
        assert gauge("ticketune_training_loss_nats") == 1.25
        assert gauge("ticketune_training_tokens_per_second") == 4321.5
        assert gauge("ticketune_training_eta_seconds") == 7.5
    finally:
        (spec.parent / "release").touch()
        thread.join(30)
    assert isinstance(box["result"], TrainResult) and box["result"].ok and box["result"].adapter_dir == "a"
    for name in ("step", "total_steps", "loss_nats", "tokens_per_second", "eta_seconds"):
        assert gauge(f"ticketune_training_{name}") == 0, name  # nothing stale once no worker trains


def test_a_worker_that_exits_3_failed_retryably_and_resumes_from_its_checkpoint(tmp_path, fake_python):
    spec = write_spec(tmp_path, status="interrupted", exit=3, error="stopped by SIGTERM at step 4; checkpoint saved")
    with pytest.raises(WorkerFailed, match="interrupted: stopped by SIGTERM at step 4.*resumes") as caught:
        LocalProcessExecutor(python=fake_python).run(spec, spec.parent / "out" / "result.json", timeout_s=60)
    assert caught.value.retryable


@pytest.mark.parametrize(("code", "result_code", "retryable"), [(1, 1, True), (2, 2, False), (1, 2, False)],
                         ids=["failed", "bad-spec", "bad-spec-under-torchrun"])
def test_only_a_bad_spec_exit_is_not_retryable(tmp_path, fake_python, code, result_code, retryable):
    # under torchrun the process exit code is torchrun's 1; the worker's own code is in its result
    spec = write_spec(tmp_path, status="failed", exit=code, result_exit_code=result_code,
                      error="spec field training.gpus: bad")
    with pytest.raises(WorkerFailed, match="training worker failed: spec field training.gpus") as caught:
        LocalProcessExecutor(python=fake_python).run(spec, spec.parent / "out" / "result.json", timeout_s=60)
    assert caught.value.retryable is retryable


def test_a_shutdown_sigterms_the_worker_which_checkpoints_and_exits_3(tmp_path, fake_python):
    spec = write_spec(tmp_path, progress=True, hold=True)
    stop = threading.Event()
    thread, box = run_in_thread(LocalProcessExecutor(python=fake_python), spec, stop=stop)
    wait_for(lambda: gauge("ticketune_training_step") == 3)
    started = time.monotonic()
    stop.set()
    thread.join(30)
    assert time.monotonic() - started < 10  # no 20 s SIGKILL wait: the worker answered SIGTERM
    assert "shutting down; it saved a checkpoint" in str(box["error"]) and box["error"].retryable


def test_an_earlier_attempts_progress_file_is_not_read_and_no_file_is_no_update(tmp_path, fake_python):
    spec = write_spec(tmp_path, hold=True)
    progress = spec.parent / "out" / "progress.json"
    progress.parent.mkdir()
    progress.write_text('{"step": 99, "total_steps": 99}')
    metrics.TRAINING_TOTAL_STEPS.set(5)  # what the last run left
    thread, box = run_in_thread(LocalProcessExecutor(python=fake_python), spec)
    time.sleep(1.5)
    assert gauge("ticketune_training_total_steps") == 0  # cleared at the start, and 99 was never read
    (spec.parent / "release").touch()
    thread.join(30)
    assert box["result"].status == "ok" and not progress.exists()


def test_a_record_of_another_phase_never_shows_a_step_without_its_loss():
    from connectors.executors import clear_training_gauges, report_progress

    clear_training_gauges()
    report_progress({"phase": "evaluate", "step": 2, "total_steps": 2})  # the first record the service saw
    assert gauge("ticketune_training_step") == 0 and gauge("ticketune_training_total_steps") == 0
    report_progress({"phase": "train", "step": 1, "total_steps": 2, "loss": 2.5, "tokens_per_second": 900.0})
    report_progress({"phase": "validate", "step": 2, "total_steps": 2})
    assert (gauge("ticketune_training_step"), gauge("ticketune_training_loss_nats")) == (1, 2.5)


def test_a_spec_that_does_not_validate_fails_for_good_without_starting_the_worker(tmp_path, fake_python):
    spec = write_spec(tmp_path, gpus=0)
    with pytest.raises(WorkerFailed, match="training worker failed: spec field training.gpus") as caught:
        LocalProcessExecutor(python=fake_python).run(spec, spec.parent / "out" / "result.json", timeout_s=60)
    assert caught.value.retryable is False and not (spec.parent / "argv.json").exists()


@pytest.mark.parametrize("gpus", [1, 2])
def test_several_gpus_run_the_worker_under_torchrun(tmp_path, fake_python, gpus):
    spec = write_spec(tmp_path, gpus=gpus)
    LocalProcessExecutor(python=fake_python).run(spec, spec.parent / "out" / "result.json", timeout_s=60)
    argv = json.loads((spec.parent / "argv.json").read_text())
    train = ["-m", "daemon.training", "train", "--spec", str(spec)]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"] if gpus > 1 else []
    assert argv == launcher + train


def test_the_torchrun_command_line_is_one_torchrun_accepts():
    run = pytest.importorskip("torch.distributed.run")
    command = worker_command("python", Path("/cycles/c1/spec.json"), gpus=4)
    args = run.parse_args(command[3:])
    assert (args.standalone, args.nproc_per_node, args.module) == (True, "4", True)
    assert (args.training_script, args.training_script_args) == (
        "daemon.training", ["train", "--spec", "/cycles/c1/spec.json"])


PARENT = """
import os, subprocess, sys, time
from daemon.training.contract import PARENT_PID_ENV
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env={**os.environ, PARENT_PID_ENV: str(os.getpid())},
                         start_new_session=True)
print(child.pid, flush=True)
time.sleep(120)
"""
WORKER = """
import signal, sys, time
from daemon.training.lifeline import die_with_parent
signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))  # as the worker does: stop, checkpoint, exit 3
die_with_parent()
time.sleep(120)
"""


def test_a_worker_stops_when_the_service_that_started_it_is_killed_outright():
    import os
    import signal
    import subprocess

    import psutil

    parent = subprocess.Popen([sys.executable, "-c", PARENT, WORKER], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    worker = psutil.Process(int(parent.stdout.readline()))
    try:
        time.sleep(0.5)  # the worker has asked for its signal
        assert worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        gone, _ = psutil.wait_procs([worker], timeout=10)
        assert gone, "the worker outlived the process that started it"
    finally:
        if worker.is_running():
            worker.kill()


def test_a_worker_killed_by_sigkill_is_reported_as_a_likely_oom_kill_with_its_peak_and_the_settings_to_change(
    tmp_path, fake_python
):
    spec_path = write_spec(tmp_path, oom_mb=300)
    with pytest.raises(WorkerFailed) as failed:
        LocalProcessExecutor(python=fake_python).run(spec_path, spec_path.parent / "out" / "result.json",
                                                     timeout_s=60)
    message = str(failed.value)
    assert "exit code -9: the training worker was killed by SIGKILL, most likely by the kernel's out-of-memory killer" \
        in message
    assert "lower training.row_tokens or set training.gradient_checkpointing: true" in message
    peak, limit = (float(x) for x in re.search(r"peak RSS ([0-9.]+) GB of ([0-9.]+) GB", message).groups())
    assert 0.3 <= peak < limit
    assert failed.value.retryable


def test_exit_reason_names_the_signal_its_likely_cause_and_a_setting():
    assert exit_reason(1) == "exit code 1"
    assert exit_reason(-signal.SIGKILL, 5_400_000_000, 24_000_000_000) == (
        "exit code -9: the training worker was killed by SIGKILL, most likely by the kernel's out-of-memory killer "
        "(peak RSS 5.4 GB of 24.0 GB); lower training.row_tokens or set training.gradient_checkpointing: true")
    assert "(24.0 GB of memory)" in exit_reason(-signal.SIGKILL, 0, 24_000_000_000)
    crashed = exit_reason(-signal.SIGSEGV)
    assert crashed.startswith("exit code -11: the training worker crashed with SIGSEGV")
    assert "training.precision" in crashed
    assert exit_reason(-signal.SIGTERM).endswith("killed by SIGTERM, sent from outside the service")
