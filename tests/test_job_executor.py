"""The Kubernetes Job executor: the Job it builds (validated offline against the API schema), its
submission, re-adoption after a restart, stop, timeout and failure against a recorded fake of the
kubernetes API (no cluster exists here), and the artifact round trip through a real MLflow store with
the real worker's `run-job` verb standing in for the Job's container."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

k8s = pytest.importorskip("kubernetes.client")
from kubernetes.client.exceptions import ApiException  # noqa: E402
from mlflow.entities import FileInfo  # noqa: E402

from connectors.executors import WorkerFailed  # noqa: E402
from connectors.kubernetes_job import ANNOTATION_RUN, KubernetesJobExecutor, build_job, job_name  # noqa: E402
from daemon.app.wiring import build_executor  # noqa: E402
from daemon.config import ConfigError, ExecutorConfig, load_settings  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
GPU_POOL = ExecutorConfig(
    kind="kubernetes", namespace="ml", image="registry.example.com/ticketune-worker:1.4.0",
    service_account="ticketune-trainer", gpus_per_job=2, node_selector={"nvidia.com/gpu.present": "true"},
    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    resources={"requests": {"cpu": "4", "memory": "32Gi"}, "limits": {"memory": "48Gi"}},
    backoff_limit=1, ttl_seconds_after_finished=3600, env_from_secrets=["ticketune-mlflow"],
    image_pull_secrets=["regcred"], poll_seconds=0.05,
)

# What a real API server answers for a Job's status (kubectl get job -o json, Kubernetes 1.33), by state.
RECORDED_STATUS = {
    "active": {"active": 1, "ready": 1, "startTime": "2026-11-02T03:00:04Z", "terminating": 0,
               "uncountedTerminatedPods": {}},
    "succeeded": {"succeeded": 1, "ready": 0, "terminating": 0, "startTime": "2026-11-02T03:00:04Z",
                  "completionTime": "2026-11-02T03:41:10Z", "uncountedTerminatedPods": {}, "conditions": [
                      {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                       "message": "Reached expected number of succeeded pods",
                       "lastProbeTime": "2026-11-02T03:41:08Z", "lastTransitionTime": "2026-11-02T03:41:08Z"},
                      {"type": "Complete", "status": "True", "reason": "CompletionsReached",
                       "message": "Reached expected number of succeeded pods",
                       "lastProbeTime": "2026-11-02T03:41:10Z", "lastTransitionTime": "2026-11-02T03:41:10Z"}]},
    "failed": {"failed": 1, "ready": 0, "terminating": 0, "startTime": "2026-11-02T03:00:04Z",
               "uncountedTerminatedPods": {}, "conditions": [
                   {"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy",
                    "message": "Container worker for pod ml/x exited with code 2 matching FailJob rule at index 0",
                    "lastProbeTime": "2026-11-02T03:02:11Z", "lastTransitionTime": "2026-11-02T03:02:11Z"},
                   {"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                    "message": "Container worker for pod ml/x exited with code 2 matching FailJob rule at index 0",
                    "lastProbeTime": "2026-11-02T03:02:12Z", "lastTransitionTime": "2026-11-02T03:02:12Z"}]},
}


def terminated_pod(job: str, exit_code: int) -> dict:
    """A pod of the Job as the API server lists it once its worker container ended."""
    return {
        "metadata": {"name": f"{job}-x7k2p", "namespace": "ml", "creationTimestamp": "2026-11-02T03:00:01Z",
                     "labels": {"job-name": job, "batch.kubernetes.io/job-name": job}},
        "status": {"phase": "Failed" if exit_code else "Succeeded", "containerStatuses": [{
            "name": "worker", "image": GPU_POOL.image, "imageID": "", "ready": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed",
                                     "startedAt": "2026-11-02T03:00:09Z", "finishedAt": "2026-11-02T03:02:10Z"}},
        }]},
    }


class FakeCluster:
    """Plays BatchV1Api and CoreV1Api for one namespace: records every call, keeps the Jobs it was
    given, and answers with the client's own V1 objects built from recorded API responses. A
    `kubelet` callback, when set, runs each created Job's container and reports its state."""

    def __init__(self, kubelet=None) -> None:
        self.calls: list[tuple] = []
        self.jobs: dict[str, k8s.V1Job] = {}
        self.pods: dict[str, dict] = {}
        self.logs: dict[str, str] = {}
        self.kubelet = kubelet

    def set_state(self, name: str, state: str, exit_code: int | None = None, log_text: str = "") -> None:
        self.jobs[name].status = k8s.V1JobStatus.model_validate(RECORDED_STATUS[state])
        if exit_code is not None:
            self.pods[name] = terminated_pod(name, exit_code)
            self.logs[f"{name}-x7k2p"] = log_text

    # BatchV1Api
    def create_namespaced_job(self, namespace: str, body: k8s.V1Job, **_) -> k8s.V1Job:
        self.calls.append(("create", namespace, body.metadata.name))
        if body.metadata.name in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        job = k8s.V1Job.model_validate(k8s.ApiClient().sanitize_for_serialization(body))
        job.status = k8s.V1JobStatus.model_validate(RECORDED_STATUS["active"])
        self.jobs[body.metadata.name] = job
        if self.kubelet is not None:
            self.kubelet(self, job)
        return job

    def read_namespaced_job(self, name: str, namespace: str, **_) -> k8s.V1Job:
        self.calls.append(("read", namespace, name))
        if name not in self.jobs:
            raise ApiException(status=404, reason="Not Found")
        return self.jobs[name]

    def delete_namespaced_job(self, name: str, namespace: str, propagation_policy=None, **_) -> dict:
        self.calls.append(("delete", namespace, name, propagation_policy))
        if self.jobs.pop(name, None) is None:
            raise ApiException(status=404, reason="Not Found")
        return {"kind": "Status", "status": "Success"}

    # CoreV1Api
    def list_namespaced_pod(self, namespace: str, label_selector: str = "", **_) -> k8s.V1PodList:
        self.calls.append(("list_pods", namespace, label_selector))
        job = label_selector.removeprefix("job-name=")
        return k8s.V1PodList.model_validate({"items": [self.pods[job]] if job in self.pods else []})

    def read_namespaced_pod_log(self, name: str, namespace: str, container=None, tail_lines=None, **_) -> str:
        self.calls.append(("log", namespace, name, container, tail_lines))
        return self.logs.get(name, "")

    def verbs(self, verb: str) -> list[tuple]:
        return [call for call in self.calls if call[0] == verb]


class FolderMlflow:
    """The few MlflowClient artifact calls the executor makes, on a folder per run (for the API tests)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, run_id: str, path: str | None) -> Path:
        return self.root / run_id / (path or "")

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        shutil.copytree(local_dir, self._dir(run_id, artifact_path), dirs_exist_ok=True)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        self._dir(run_id, artifact_path).mkdir(parents=True, exist_ok=True)
        shutil.copy(local_path, self._dir(run_id, artifact_path))

    def log_dict(self, run_id: str, data: dict, artifact_file: str) -> None:
        self._dir(run_id, artifact_file).parent.mkdir(parents=True, exist_ok=True)
        self._dir(run_id, artifact_file).write_text(json.dumps(data))

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[FileInfo]:
        folder = self._dir(run_id, path)
        items = sorted(folder.iterdir()) if folder.is_dir() else []
        return [FileInfo(f"{path}/{p.name}" if path else p.name, p.is_dir(), None) for p in items]

    def download_artifacts(self, run_id: str, path: str, dst_path: str) -> str:
        source = self._dir(run_id, path)
        if not source.exists():
            raise OSError(f"no artifact {path} in run {run_id}")
        target = Path(dst_path) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
        return str(target)


def write_cycle(work_dir: Path, cycle_id: str = "c-20261102-030000-ab12") -> Path:
    cycle_dir = work_dir / cycle_id
    (cycle_dir / "data").mkdir(parents=True)
    (cycle_dir / "data" / "train.jsonl").write_text('{"messages": []}\n')
    spec = {"cycle_id": cycle_id, "base_model": "tiny", "output_dir": str(cycle_dir / "out"),
            "train_file": str(cycle_dir / "data" /
            "train.jsonl"), "checkpoint_dir": str(cycle_dir / "checkpoints"),
            "progress_file": str(cycle_dir / "out" / "progress.json"), "training": {"gpus": 2}}
    (cycle_dir / "spec.json").write_text(json.dumps(spec))
    return cycle_dir / "spec.json"


def play_job_output(mlflow: FolderMlflow, run_id: str, status: str = "ok", exit_code: int = 0) -> None:
    """What the Job's run-job verb leaves in its run: the output dir with a relative adapter_dir."""
    out = mlflow.root / run_id / "job" / "out"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "adapter_config.json").write_text("{}")
    (out / "result.json").write_text(json.dumps({"status": status, "adapter_dir": "adapter", "exit_code": exit_code,
                                                 "error": None if status == "ok" else "bad spec"}))


def run_in_thread(executor, spec_path: Path, **kwargs) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = executor.run(spec_path, spec_path.parent / "out" / "result.json", **kwargs)
        except Exception as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def wait_for(condition, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def executor_for(cluster: FakeCluster, tmp_path: Path, cfg: ExecutorConfig = GPU_POOL, **kwargs):
    return KubernetesJobExecutor(cfg, tracking_uri="http://mlflow.ml.svc:5000", work_dir=tmp_path / "work",
                                 batch_api=cluster, core_api=cluster,
                                 mlflow_client=kwargs.pop("mlflow", None) or FolderMlflow(tmp_path / "mlflow"))


# ---- (a) the Job object, offline -----------------------------------------------------------------


def job_document(cfg: ExecutorConfig = GPU_POOL, **kwargs) -> dict:
    job = build_job(cfg, name=job_name("c-20261102-030000-ab12"), namespace="ml", cycle_id="c-20261102-030000-ab12",
                    command=["python", "-m", "daemon.training", "run-job", "--run-id", "r1"], timeout_s=5400.5,
                    run_id="r1", **kwargs)
    return k8s.ApiClient().sanitize_for_serialization(job)


def test_the_job_name_is_the_same_for_every_attempt_of_a_cycle_and_a_valid_dns_label() -> None:
    import re

    name = job_name("c-20261102-030000-ab12")
    assert name == job_name("c-20261102-030000-ab12") and name.startswith("ticketune-train-c-20261102-030000-ab12-")
    for cycle_id in ("c-20261102-030000-ab12", "C_Weird/ID" * 20, "---", "c-1.2"):
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job_name(cycle_id)) and len(job_name(cycle_id)) <= 63
    assert job_name("c_1") != job_name("c-1")  # ids that sanitise alike stay apart


@pytest.mark.parametrize("shared", [False, True], ids=["artifacts", "shared-volume"])
def test_the_job_validates_strictly_against_the_kubernetes_schema(shared: bool, tmp_path: Path) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    cfg = GPU_POOL.model_copy(update={"shared_volume_claim": "ticketune-work"}) if shared else GPU_POOL
    document = job_document(cfg, shared_mount_path="/data/work" if shared else None)
    kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)
    path = tmp_path / "job.json"
    path.write_text(json.dumps(document))
    cli = Path(sys.executable).parent / "kubernetes-validate"
    completed = subprocess.run([str(cli), "--strict", "--quiet", str(path)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_the_job_carries_the_deadlines_the_gpus_and_a_restricted_security_context() -> None:
    document = job_document()
    spec = document["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert document["metadata"]["labels"] == {"app.kubernetes.io/name": "ticketune",
                                              "app.kubernetes.io/component": "training-job",
                                              "ticketune.io/cycle-id": "c-20261102-030000-ab12"}
    assert document["metadata"]["annotations"][ANNOTATION_RUN] == "r1"
    assert spec["backoffLimit"] == 1 and spec["ttlSecondsAfterFinished"] == 3600
    assert spec["activeDeadlineSeconds"] == 5401  # training.timeout_minutes when not configured
    assert job_document(GPU_POOL.model_copy(update={"active_deadline_seconds": 600}))["spec"][
        "activeDeadlineSeconds"] == 600
    assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"] == {"containerName": "worker", "operator": "In",
                                                                    "values": [2]}
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == "ticketune-trainer"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert container["envFrom"] == [{"secretRef": {"name": "ticketune-mlflow"}}]
    assert container["resources"] == {"requests": {"cpu": "4", "memory": "32Gi"},
                                      "limits": {"memory": "48Gi", "nvidia.com/gpu": "2"}}
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                            "readOnlyRootFilesystem": True, "runAsNonRoot": True}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts == {"/tmp": "tmp", "/dev/shm": "dshm", "/scratch": "scratch"}
    assert all("emptyDir" in volumes[name] for name in mounts.values())
    shared = job_document(GPU_POOL.model_copy(update={"shared_volume_claim": "rwx"}), shared_mount_path="/data")
    shared_pod = shared["spec"]["template"]["spec"]
    assert {"name": "shared", "persistentVolumeClaim": {"claimName": "rwx"}} in shared_pod["volumes"]
    assert {"name": "shared", "mountPath": "/data"} in shared_pod["containers"][0]["volumeMounts"]


def test_build_executor_picks_the_configured_kind(tmp_path: Path) -> None:
    local = build_executor(load_settings(environ={}))
    assert type(local).__name__ == "LocalProcessExecutor"
    settings = load_settings(environ={"TICKETUNE_EXECUTOR__KIND": "kubernetes", "TICKETUNE_EXECUTOR__IMAGE": "w:1",
                                      "TICKETUNE_EXECUTOR__NAMESPACE": "ml"})
    executor = build_executor(settings)
    assert isinstance(executor, KubernetesJobExecutor) and executor.namespace == "ml"
    assert executor.tracking_uri == settings.registry.tracking_uri
    code = "import sys, daemon.app.wiring; sys.exit('kubernetes' in sys.modules)"  # the client: when first used
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_fsdp_travels_to_the_job_in_its_spec_and_the_job_starts_a_rank_on_each_of_its_gpus(tmp_path: Path) -> None:
    from daemon.config import TrainingConfig
    from daemon.training.contract import TrainSpec, parse_spec_json
    from daemon.training.job import local_spec, portable_spec, train_command

    cycle_dir = tmp_path / "work" / "c1"
    spec = TrainSpec(cycle_id="c1", base_model="m", output_dir=cycle_dir / "out",
                     train_file=cycle_dir / "data" / "train.jsonl",
                     training=TrainingConfig(gpus=4, sharding="fsdp", quantization="nf4"))
    portable, _ = portable_spec(spec, cycle_dir)
    arrived = local_spec(parse_spec_json(portable.to_json()), tmp_path / "scratch" / "c1")  # what run-job reads
    assert (arrived.training.gpus, arrived.training.sharding, arrived.training.quantization) == (4, "fsdp", "nf4")
    assert train_command("python", tmp_path / "spec.json", arrived.training.gpus)[:5] == [
        "python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    with pytest.raises(ConfigError, match="set executor.gpus_per_job: 4"):
        load_settings(environ={"TICKETUNE_EXECUTOR__KIND": "kubernetes", "TICKETUNE_EXECUTOR__IMAGE": "w:1",
                               "TICKETUNE_TRAINING__GPUS": "4", "TICKETUNE_TRAINING__SHARDING": "fsdp"})


# ---- (b) submission and re-adoption against the recorded fake ------------------------------------


def test_a_restarted_service_adopts_the_running_job_instead_of_creating_another(tmp_path: Path) -> None:
    spec_path = write_cycle(tmp_path / "work")
    name = job_name("c-20261102-030000-ab12")
    cluster = FakeCluster()
    first = executor_for(cluster, tmp_path)
    stop = threading.Event()
    thread, box = run_in_thread(first, spec_path, timeout_s=600, stop=stop, run_id="run-1")
    wait_for(lambda: cluster.verbs("create"))
    stop.set()  # the service shuts down mid-cycle
    thread.join(10)
    assert isinstance(box["error"], WorkerFailed) and box["error"].retryable
    assert f"still running as Job {name}; re-adopted at the next start" in str(box["error"])
    assert not cluster.verbs("delete") and name in cluster.jobs  # the Job keeps training
    uploaded = tmp_path / "mlflow" / "run-1" / "job"
    assert json.loads((uploaded / "spec.json").read_text())["train_file"] == "data/train.jsonl"
    assert (uploaded / "inputs" / "data" / "train.jsonl").is_file()
    assert cluster.jobs[name].spec.template.spec.containers[0].command[-6:] == [
        "--tracking-uri", "http://mlflow.ml.svc:5000", "--run-id", "run-1", "--scratch", "/scratch"]

    second = executor_for(cluster, tmp_path)  # the restarted service retries the cycle: attempt 2, run-2
    thread, box = run_in_thread(second, spec_path, timeout_s=600, run_id="run-2")
    wait_for(lambda: len(cluster.verbs("read")) >= 4)
    play_job_output(second._mlflow, "run-1")
    cluster.set_state(name, "succeeded")
    thread.join(10)
    out = spec_path.parent / "out"
    assert box["result"].status == "ok" and box["result"].adapter_dir == str((out / "adapter").resolve())
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert json.loads((out / "result.json").read_text())["adapter_dir"] == str((out / "adapter").resolve())
    assert len(cluster.verbs("create")) == 1 and not (tmp_path / "mlflow" / "run-2").exists()


def test_a_job_that_outlives_the_timeout_is_deleted_and_the_cycle_is_retryable(tmp_path: Path) -> None:
    spec_path = write_cycle(tmp_path / "work")
    cluster = FakeCluster()
    with pytest.raises(WorkerFailed, match="exceeded training.timeout_minutes") as failed:
        executor_for(cluster, tmp_path).run(spec_path, spec_path.parent / "out" / "result.json", timeout_s=0.3,
                                            run_id="run-1")
    assert failed.value.retryable
    assert cluster.verbs("delete") == [("delete", "ml", job_name("c-20261102-030000-ab12"), "Background")]


@pytest.mark.parametrize(("exit_code", "retryable"), [(2, False), (1, True)])
def test_a_failed_job_reports_its_pod_log_and_a_bad_spec_is_not_retried(
    tmp_path: Path, exit_code: int, retryable: bool
) -> None:
    spec_path = write_cycle(tmp_path / "work")
    name = job_name("c-20261102-030000-ab12")

    def fail_soon(cluster: FakeCluster, job: k8s.V1Job) -> None:
        threading.Timer(0.2, cluster.set_state, (name, "failed", exit_code,
                                                 "ERROR failed: train_file /scratch/x does not exist")).start()

    cluster = FakeCluster(kubelet=fail_soon)
    with pytest.raises(WorkerFailed) as failed:
        executor_for(cluster, tmp_path).run(spec_path, spec_path.parent / "out" / "result.json", timeout_s=60,
                                            run_id="run-1")
    assert failed.value.retryable is retryable
    assert f"training Job {name} failed" in str(failed.value)
    assert "train_file /scratch/x does not exist" in str(failed.value)  # the pod's log tail
    assert ("log", "ml", f"{name}-x7k2p", "worker", 20) in cluster.calls
    assert ("list_pods", "ml", f"job-name={name}") in cluster.calls


def test_the_failed_job_of_an_earlier_attempt_is_replaced_and_its_checkpoint_carried_over(tmp_path: Path) -> None:
    spec_path = write_cycle(tmp_path / "work")
    name = job_name("c-20261102-030000-ab12")
    mlflow = FolderMlflow(tmp_path / "mlflow")
    old = build_job(GPU_POOL, name=name, namespace="ml", cycle_id="c-20261102-030000-ab12", command=["x"],
                    timeout_s=60, run_id="run-1")
    cluster = FakeCluster()
    cluster.create_namespaced_job("ml", old)
    cluster.set_state(name, "failed", 1)
    step = mlflow.root / "run-1" / "job" / "checkpoints" / "step-00000040"
    step.mkdir(parents=True)
    (step / "state.json").write_text("{}")

    def succeed_soon(cluster: FakeCluster, job: k8s.V1Job) -> None:
        play_job_output(mlflow, "run-2")
        threading.Timer(0.2, cluster.set_state, (name, "succeeded")).start()

    cluster.kubelet = succeed_soon
    result = executor_for(cluster, tmp_path, mlflow=mlflow).run(
        spec_path, spec_path.parent / "out" / "result.json", timeout_s=60, run_id="run-2")
    assert result.status == "ok"
    assert [c[0] for c in cluster.calls if c[0] in ("create", "delete")] == ["create", "delete", "create"]
    assert cluster.jobs[name].metadata.annotations[ANNOTATION_RUN] == "run-2"
    assert (mlflow.root / "run-2" / "job" / "inputs" / "checkpoints" / "step-00000040" / "state.json").is_file()


# ---- (c) the artifact round trip: real MLflow, the real worker as the Job's container ---------------


@pytest.mark.slow  # a real worker trains inside `run-job`: about 50 s
def test_the_job_gets_spec_and_data_from_mlflow_and_its_result_and_adapter_come_back_into_out(
    tmp_path: Path, tiny_model_dir: Path, mlflow_sqlite_uri: str
) -> None:
    from test_training import make_spec, support_examples, write_jsonl

    from connectors.registry import AdapterRegistry

    cycle_id = "c-20261102-030000-ab12"
    cycle_dir = tmp_path / "work" / cycle_id
    (cycle_dir / "data").mkdir(parents=True)
    train = write_jsonl(cycle_dir / "data" / "train.jsonl", support_examples(8, 1, "t"))
    trusted = write_jsonl(cycle_dir / "data" / "trusted.jsonl", support_examples(4, 2, "e"))
    general = tmp_path / "elsewhere" / "general_text.txt"  # outside the cycle dir, as the shipped text is
    general.parent.mkdir()
    general.write_text("The quick brown fox jumps over the lazy dog. " * 5)
    spec = make_spec(tiny_model_dir, cycle_dir / "out", train, {"trusted": trusted}, cycle_id=cycle_id,
                     snapshot_id="snap-1", checkpoint_dir=str(cycle_dir / "checkpoints"),
                     progress_file=str(cycle_dir / "out" / "progress.json"), general_text_file=str(general),
                     probe={"enabled": False}, evaluate_base=False)
    spec["training"].update(epochs=1.0, max_steps=2, row_tokens=512, checkpoint_every_steps=1)
    spec_path = cycle_dir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    run_id = AdapterRegistry(mlflow_sqlite_uri, "ticketune-test").start_cycle_run(cycle_id, {}, {})
    scratch = tmp_path / "scratch"
    containers: list[subprocess.Popen] = []

    def kubelet(cluster: FakeCluster, job: k8s.V1Job) -> None:
        """Runs the Job's container command here, with this Python and a local scratch dir."""
        command = [sys.executable if part == "python" else str(scratch) if part == "/scratch" else part
                   for part in job.spec.template.spec.containers[0].command]
        log = open(tmp_path / "container.log", "wb")  # noqa: SIM115 (closed with the process)
        containers.append(subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                           env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}))
        reader = cluster.read_namespaced_job

        def read(name: str, namespace: str, **_) -> k8s.V1Job:
            code = containers[-1].poll()
            if code is not None and cluster.jobs[name].status.conditions is None:
                cluster.set_state(name, "succeeded" if code == 0 else "failed", code,
                                  (tmp_path / "container.log").read_text(errors="replace"))
            return reader(name, namespace)

        cluster.read_namespaced_job = read

    cluster = FakeCluster(kubelet=kubelet)
    executor = KubernetesJobExecutor(GPU_POOL.model_copy(update={"poll_seconds": 0.2}), tracking_uri=mlflow_sqlite_uri,
                                     work_dir=tmp_path / "work", batch_api=cluster, core_api=cluster)
    try:
        result = executor.run(spec_path, cycle_dir / "out" / "result.json", timeout_s=240, run_id=run_id)
    finally:
        for container in containers:
            if container.poll() is None:
                container.kill()
    log_text = (tmp_path / "container.log").read_text(errors="replace")
    assert result.status == "ok", log_text[-3000:]
    adapter = Path(result.adapter_dir)
    assert adapter == (cycle_dir / "out" / "adapter").resolve() and (adapter / "adapter_config.json").is_file()
    assert "general" in result.eval and result.train.steps == 2
    assert json.loads((cycle_dir / "out" / "result.json").read_text())["adapter_dir"] == str(adapter)
    assert str(scratch / cycle_id / "data" / "train.jsonl") in json.loads(
        (scratch / cycle_id / "spec.json").read_text())["train_file"]  # the Job trained on its own copies
    from mlflow import MlflowClient

    logged = {item.path for item in MlflowClient(mlflow_sqlite_uri).list_artifacts(run_id, "job")}
    assert {"job/spec.json", "job/inputs", "job/out", "job/progress.json", "job/checkpoints"} <= logged
    assert len(cluster.verbs("create")) == 1
