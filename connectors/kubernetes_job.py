"""The training worker as a Kubernetes Job on a GPU node (`executor.kind: kubernetes`): one Job per cycle,
named after the cycle so a restarted daemon adopts it; the spec, data and results travel as artifacts of
the cycle's MLflow run (or through `executor.shared_volume_claim`)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from connectors.executors import (
    WorkerFailed,
    clear_training_gauges,
    read_json_object,
    report_progress,
    validated_spec,
    worker_command,
)
from daemon.config import ExecutorConfig
from daemon.training.contract import (
    CHECKPOINT_STATE_FILE,
    EXIT_BAD_SPEC,
    EXIT_INTERRUPTED,
    TrainResult,
    TrainSpec,
    read_result,
    write_result,
)

log = logging.getLogger("ticketune.executors")


JOB_NAME_PREFIX = "ticketune-train-"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_CYCLE = "ticketune.io/cycle-id"
ANNOTATION_RUN = "ticketune.io/mlflow-run-id"
ANNOTATION_CYCLE = "ticketune.io/cycle-id"
CONTAINER = "worker"
SCRATCH = "/scratch"
JOB_RECORD = "job.json"  # in the cycle dir: the Job and MLflow run of the latest attempt
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DELETE_WAIT_S = 120
LOG_TAIL_LINES = 20


def job_name(cycle_id: str) -> str:
    """The cycle's Job name: the same for every attempt of one cycle (so a restarted service finds it),
    DNS-1123, at most 63 characters; a hash of the raw id keeps two ids that sanitise alike apart."""
    readable = re.sub(r"[^a-z0-9-]+", "-", cycle_id.lower()).strip("-")[:38].rstrip("-")
    digest = hashlib.sha256(cycle_id.encode()).hexdigest()[:6]
    return f"{JOB_NAME_PREFIX}{readable}-{digest}" if readable else f"{JOB_NAME_PREFIX}{digest}"


def _label_value(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63].strip("-_.") or "none"


def build_job(
    cfg: ExecutorConfig, *, name: str, namespace: str, cycle_id: str, command: list[str], timeout_s: float,
    run_id: str | None = None, shared_mount_path: str | None = None,
) -> Any:
    """The V1Job of one cycle: one pod, never restarted in place, restricted security context, GPUs as limits.

    Exit code 2 (bad spec) fails the Job at once whatever `backoff_limit` says; a pod disrupted by the
    cluster (preemption, node drain) does not count against it.
    """
    from kubernetes import client as k8s

    labels = {LABEL_NAME: "ticketune", LABEL_COMPONENT: "training-job", LABEL_CYCLE: _label_value(cycle_id)}
    annotations = {ANNOTATION_CYCLE: cycle_id, **({ANNOTATION_RUN: run_id} if run_id else {})}
    limits = dict(cfg.resources.get("limits", {}))
    if cfg.gpus_per_job:
        limits["nvidia.com/gpu"] = str(cfg.gpus_per_job)
    mounts = [k8s.V1VolumeMount(name="tmp", mount_path="/tmp"), k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm")]
    volumes = [
        k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource()),
        k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory")),  # NCCL, data loaders
    ]
    if shared_mount_path is not None:
        mounts.append(k8s.V1VolumeMount(name="shared", mount_path=shared_mount_path))
        volumes.append(k8s.V1Volume(name="shared", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
            claim_name=cfg.shared_volume_claim)))
    else:
        mounts.append(k8s.V1VolumeMount(name="scratch", mount_path=SCRATCH))
        volumes.append(k8s.V1Volume(name="scratch", empty_dir=k8s.V1EmptyDirVolumeSource()))
    container = k8s.V1Container(
        name=CONTAINER,
        image=cfg.image,
        image_pull_policy=cfg.image_pull_policy,
        command=command,
        env=[k8s.V1EnvVar(name=key, value=value) for key, value in (
            ("PYTHONUNBUFFERED", "1"), ("HOME", "/tmp"), ("XDG_CACHE_HOME", "/tmp/.cache"),
            ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
        )],
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=secret))
                  for secret in cfg.env_from_secrets] or None,
        resources=k8s.V1ResourceRequirements(requests=cfg.resources.get("requests") or None, limits=limits or None),
        security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False, read_only_root_filesystem=True, run_as_non_root=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
        ),
        volume_mounts=mounts,
    )
    pod = k8s.V1PodSpec(
        restart_policy="Never",
        containers=[container],
        service_account_name=cfg.service_account,
        automount_service_account_token=False,  # the worker talks to MLflow, never to the API server
        node_selector=cfg.node_selector or None,
        tolerations=[k8s.V1Toleration.model_validate(t) for t in cfg.tolerations] or None,
        image_pull_secrets=[k8s.V1LocalObjectReference(name=s) for s in cfg.image_pull_secrets] or None,
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True, seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
        termination_grace_period_seconds=cfg.termination_grace_seconds,
        volumes=volumes,
    )
    return k8s.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=k8s.V1ObjectMeta(name=name, namespace=namespace, labels=labels, annotations=annotations),
        spec=k8s.V1JobSpec(
            backoff_limit=cfg.backoff_limit,
            active_deadline_seconds=cfg.active_deadline_seconds or max(1, math.ceil(timeout_s)),
            ttl_seconds_after_finished=cfg.ttl_seconds_after_finished,
            pod_failure_policy=k8s.V1PodFailurePolicy(rules=[
                k8s.V1PodFailurePolicyRule(action="FailJob", on_exit_codes=k8s.V1PodFailurePolicyOnExitCodesRequirement(
                    container_name=CONTAINER, operator="In", values=[EXIT_BAD_SPEC])),
                k8s.V1PodFailurePolicyRule(action="Ignore", on_pod_conditions=[
                    k8s.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")]),
            ]),
            template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels, annotations=annotations),
                                           spec=pod),
        ),
    )


def _condition(job: Any, kind: str) -> Any:
    for condition in (getattr(job.status, "conditions", None) or []):
        if condition.type == kind and condition.status == "True":
            return condition
    return None


def _job_state(job: Any) -> str:
    """`succeeded`, `failed` or `running` (pending pods included)."""
    if _condition(job, "Complete") is not None:
        return "succeeded"
    if _condition(job, "Failed") is not None:
        return "failed"
    return "running"


class KubernetesJobExecutor:
    """Runs each cycle's worker as a Kubernetes Job on a GPU node (the `job-executor` deployment).

    The Job is named after the cycle, so a service restarted mid-cycle finds its Job and waits for it
    instead of starting another. Without `shared_volume_claim` nothing is shared but MLflow: the spec
    and data go up to the cycle's run under `job/`, the Job's `run-job` verb logs progress, checkpoints,
    result and adapter back there, and they come down into the cycle's `out/`. With the claim, the Job
    mounts it where the service does and runs the plain `train` verb on the spec as written.
    """

    def __init__(self, cfg: ExecutorConfig, *, tracking_uri: str, work_dir: Path, batch_api: Any = None,
                 core_api: Any = None, mlflow_client: Any = None) -> None:
        self.cfg = cfg
        self.tracking_uri = tracking_uri
        self.work_dir = Path(work_dir)
        self.namespace = cfg.namespace or _own_namespace()
        self._batch = batch_api
        self._core = core_api
        self._mlflow = mlflow_client

    # ---- clients ------------------------------------------------------------------------------

    def _apis(self) -> tuple[Any, Any]:
        if self._batch is None or self._core is None:
            from kubernetes import client as k8s
            from kubernetes import config as k8s_config

            try:
                k8s_config.load_incluster_config()
            except k8s_config.ConfigException:
                k8s_config.load_kube_config()
            self._batch = self._batch or k8s.BatchV1Api()
            self._core = self._core or k8s.CoreV1Api()
        return self._batch, self._core

    def _client(self) -> Any:
        if self._mlflow is None:
            from mlflow import MlflowClient

            self._mlflow = MlflowClient(tracking_uri=self.tracking_uri)
        return self._mlflow

    # ---- the executor protocol ------------------------------------------------------------------

    def run(
        self, spec_path: Path, result_path: Path, *, timeout_s: float, stop: threading.Event | None = None,
        run_id: str | None = None,
    ) -> TrainResult:
        """Creates (or adopts) the cycle's Job, waits for it, and returns the worker's result from `out/`."""
        spec = validated_spec(spec_path)
        cycle_dir = spec_path.parent
        cycle_id = spec.cycle_id
        name = job_name(cycle_id)
        shared = self.cfg.shared_volume_claim is not None
        record = read_json_object(cycle_dir / JOB_RECORD) or {}
        result_path.unlink(missing_ok=True)
        job = self._read(name)
        previous_run = (job.metadata.annotations or {}).get(ANNOTATION_RUN) if job is not None else None
        previous_run = previous_run or record.get("run_id")
        if job is not None and _job_state(job) == "failed":  # an earlier attempt's: this attempt retries it
            log.info("cycle %s: Job %s of an earlier attempt failed; replacing it", cycle_id, name)
            self._delete(name, wait=True)
            job = None
        if job is not None:
            log.info("cycle %s: adopting the existing Job %s (MLflow run %s)", cycle_id, name, previous_run)
            job_run = previous_run
        else:
            if not shared:
                if run_id is None:
                    raise WorkerFailed("the Kubernetes executor needs the cycle's MLflow run id to hand the spec "
                                       "and data to the Job", retryable=False)
                if previous_run and previous_run != run_id:
                    earlier = self._finished_result(previous_run, result_path)
                    if earlier is not None:  # the Job finished while the service was away and is gone (TTL)
                        log.info("cycle %s: the Job of run %s finished earlier; using its result", cycle_id,
                                 previous_run)
                        return earlier
                    self._pull_checkpoint(previous_run, spec)
                self._upload_inputs(spec, cycle_dir, run_id)
            job_run = run_id
            body = build_job(self.cfg, name=name, namespace=self.namespace, cycle_id=cycle_id,
                             command=self._command(spec_path, spec, run_id), timeout_s=timeout_s, run_id=run_id,
                             shared_mount_path=self._shared_mount_path() if shared else None)
            self._apis()[0].create_namespaced_job(self.namespace, body)
            (cycle_dir / JOB_RECORD).write_text(json.dumps({"job": name, "namespace": self.namespace,
                                                            "run_id": run_id}), "utf-8")
            log.info("cycle %s: created Job %s in namespace %s", cycle_id, name, self.namespace)
        clear_training_gauges()
        try:
            state = self._wait(name, job_run, spec, timeout_s, stop)
        finally:
            clear_training_gauges()
        result = self._collect(job_run, result_path) if not shared else read_result(result_path)
        if state == "succeeded" and result is not None and result.ok:
            return result
        exit_code, tail = self._pod_outcome(name)
        error = ((result.error if result is not None else None) or self._failure_reason(name)
                 or (f"its result is not in MLflow run {job_run}" if state == "succeeded"
                     else f"exit code {exit_code}"))
        if (result is not None and result.interrupted) or exit_code == EXIT_INTERRUPTED:
            raise WorkerFailed(f"training Job {name} was interrupted: {error}; the retry of this cycle resumes "
                               "from its checkpoint")
        raise WorkerFailed(
            f"training Job {name} failed: {error}" + (f"\n{tail}" if tail else ""),
            retryable=EXIT_BAD_SPEC not in (exit_code, result.exit_code if result is not None else None),
        )

    # ---- steps ----------------------------------------------------------------------------------

    def _command(self, spec_path: Path, spec: TrainSpec, run_id: str | None) -> list[str]:
        if self.cfg.shared_volume_claim is not None:
            return worker_command("python", spec_path, spec.training.gpus)
        command = ["python", "-m", "daemon.training", "run-job", "--tracking-uri", self.tracking_uri,
                   "--run-id", str(run_id), "--scratch", SCRATCH]
        return command + (["--base-model", self.cfg.base_model] if self.cfg.base_model else [])

    def _shared_mount_path(self) -> str:
        return self.cfg.shared_volume_mount_path or str(self.work_dir.resolve())

    def _upload_inputs(self, spec: TrainSpec, cycle_dir: Path, run_id: str) -> None:
        from daemon.training.job import INPUTS_ARTIFACT, SPEC_ARTIFACT, portable_spec

        client = self._client()
        portable, uploads = portable_spec(spec, cycle_dir)
        for artifact, local in uploads.items():
            folder, _, leaf = f"{INPUTS_ARTIFACT}/{artifact}".rpartition("/")
            if local.is_dir():
                client.log_artifacts(run_id, str(local), f"{folder}/{leaf}")
            elif local.name == leaf:
                client.log_artifact(run_id, str(local), folder)
            else:  # a file travelling under another name (extra/<hash>-<name>)
                with tempfile.TemporaryDirectory() as temporary:
                    renamed = Path(temporary) / leaf
                    shutil.copyfile(local, renamed)
                    client.log_artifact(run_id, str(renamed), folder)
        checkpoints = spec.checkpoint_dir
        steps = sorted(checkpoints.glob("step-*")) if checkpoints is not None and checkpoints.is_dir() else []
        complete = [step for step in steps if (step / CHECKPOINT_STATE_FILE).is_file()]
        if complete:
            client.log_artifacts(run_id, str(complete[-1]), f"{INPUTS_ARTIFACT}/checkpoints/{complete[-1].name}")
        client.log_dict(run_id, portable.model_dump(mode="json"), SPEC_ARTIFACT)

    def _pull_checkpoint(self, previous_run: str, spec: TrainSpec) -> None:
        """The newest checkpoint an earlier attempt's Job logged, into the cycle's checkpoint dir."""
        from daemon.training.job import download_into, newest_checkpoint

        if spec.checkpoint_dir is None:
            return
        try:
            newest = newest_checkpoint(self._client(), previous_run)
            if newest is None:
                return
            checkpoints = spec.checkpoint_dir
            checkpoints.mkdir(parents=True, exist_ok=True)
            download_into(self._client(), previous_run, newest, checkpoints / newest.rsplit("/", 1)[-1])
        except Exception as exc:  # without it the retry starts from step 0, which is slower, not wrong
            log.warning("could not fetch the checkpoint of run %s: %s", previous_run, exc)

    def _finished_result(self, run_id: str, result_path: Path) -> TrainResult | None:
        try:
            result = self._collect(run_id, result_path)
        except Exception:
            return None
        return result if result is not None and result.ok else None

    def _collect(self, run_id: str | None, result_path: Path) -> TrainResult | None:
        """`job/out` of the run into the cycle's `out/`, with `adapter_dir` pointing there; None when absent."""
        from daemon.training.job import OUT_ARTIFACT, download_into

        if run_id is None:
            return None
        out_dir = result_path.parent
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            download_into(self._client(), run_id, OUT_ARTIFACT, out_dir)
        except Exception as exc:
            log.warning("no worker output in MLflow run %s: %s", run_id, str(exc).splitlines()[0] if str(exc) else exc)
            return None
        result = read_result(result_path)
        if result is not None and result.adapter_dir is not None and not Path(result.adapter_dir).is_absolute():
            result = result.model_copy(update={"adapter_dir": str((out_dir / result.adapter_dir).resolve())})
            write_result(out_dir, result)
        return result

    def _wait(self, name: str, run_id: str | None, spec: TrainSpec, timeout_s: float,
              stop: threading.Event | None) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self._read(name)
            if job is None:
                raise WorkerFailed(f"training Job {name} disappeared (deleted outside ticketune?); the retry of "
                                   "this cycle starts it again")
            state = _job_state(job)
            if state != "running":
                return state
            if stop is not None and stop.is_set():
                raise WorkerFailed(f"the service is shutting down; training is still running as Job {name}; "
                                   "re-adopted at the next start")
            if time.monotonic() > deadline:
                self._delete(name, wait=False)
                raise WorkerFailed(f"training Job {name} exceeded training.timeout_minutes "
                                   f"({timeout_s / 60:.0f} min) and was deleted; the retry of this cycle resumes "
                                   "from its last logged checkpoint")
            progress = self._progress(run_id, spec)
            if progress is not None:
                report_progress(progress)
            if stop is not None:
                stop.wait(self.cfg.poll_seconds)
            else:
                time.sleep(self.cfg.poll_seconds)

    def _progress(self, run_id: str | None, spec: TrainSpec) -> dict | None:
        if self.cfg.shared_volume_claim is not None:
            return read_json_object(spec.progress_file) if spec.progress_file is not None else None
        from daemon.training.job import PROGRESS_ARTIFACT

        if run_id is None:
            return None
        try:
            with tempfile.TemporaryDirectory() as temporary:
                return read_json_object(Path(self._client().download_artifacts(run_id, PROGRESS_ARTIFACT, temporary)))
        except Exception:  # not logged yet
            return None

    # ---- the API server -----------------------------------------------------------------------------

    def _read(self, name: str) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._apis()[0].read_namespaced_job(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _delete(self, name: str, *, wait: bool) -> None:
        """Deletes the Job and its pods (Background propagation); `wait` until the name is free again."""
        from kubernetes.client.exceptions import ApiException

        try:
            self._apis()[0].delete_namespaced_job(name, self.namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise
        deadline = time.monotonic() + DELETE_WAIT_S
        while wait and self._read(name) is not None:
            if time.monotonic() > deadline:
                raise WorkerFailed(f"Job {name} of an earlier attempt is still being deleted after {DELETE_WAIT_S} s")
            time.sleep(1.0)

    def _failure_reason(self, name: str) -> str | None:
        job = self._read(name)
        condition = _condition(job, "Failed") if job is not None else None
        if condition is None:
            return None
        return f"{condition.reason or 'Failed'}: {condition.message or 'no message'}"

    def _pod_outcome(self, name: str) -> tuple[int | None, str]:
        """The exit code of the Job's newest pod's worker container and the tail of its log."""
        from kubernetes.client.exceptions import ApiException

        core = self._apis()[1]
        try:
            pods = core.list_namespaced_pod(self.namespace, label_selector=f"job-name={name}").items or []
        except ApiException as exc:
            log.warning("could not list the pods of Job %s: %s", name, exc.reason)
            return None, ""
        if not pods:
            return None, ""
        pod = max(pods, key=lambda p: (p.metadata.creation_timestamp is not None, p.metadata.creation_timestamp))
        exit_code = None
        for status in (pod.status.container_statuses or []) if pod.status else []:
            terminated = status.state.terminated if status.state else None
            if status.name == CONTAINER and terminated is not None:
                exit_code = terminated.exit_code
        try:
            tail = core.read_namespaced_pod_log(pod.metadata.name, self.namespace, container=CONTAINER,
                                                tail_lines=LOG_TAIL_LINES)
        except ApiException as exc:
            tail = f"(no log from pod {pod.metadata.name}: {exc.reason})"
        return exit_code, tail or ""


def _own_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text("utf-8").strip() or "default"
    except OSError:
        return "default"
