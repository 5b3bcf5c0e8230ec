"""deploy/: every kustomize overlay renders, validates against the Kubernetes schemas and keeps the
pod's promises (one replica, probes, restricted security, Secrets by reference); the alert rules pass
promtool's checks and unit tests; the dashboard queries only metrics the service exports."""

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from daemon.config import load_settings

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy/k8s"
RULES = REPO / "deploy/prometheus/ticketune-rules.yaml"
RULES_TEST = REPO / "deploy/prometheus/ticketune-rules.test.yaml"
DASHBOARD = REPO / "deploy/grafana/ticketune-dashboard.json"
KUBERNETES_VERSION = "1.32.0"  # the schemas kubernetes-validate ships; the oldest Kubernetes we support
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}  # Prometheus Operator kinds: no schema in kubernetes-validate
WORKER_IMAGE = "ghcr.io/ticketune/ticketune-worker:0.1.0"
SERVICE_IMAGE = "ghcr.io/ticketune/ticketune:0.1.0"

# What each kustomization renders (kind/name); "+monitoring" is the overlay with the monitoring component.
RENDERED = {
    "base": [
        "ServiceAccount/ticketune", "ConfigMap/ticketune-config", "Service/ticketune",
        "PersistentVolumeClaim/ticketune-data", "Deployment/ticketune", "NetworkPolicy/ticketune",
    ],
    "overlays/gpu": [
        "ServiceAccount/ticketune", "ConfigMap/ticketune-config", "Service/ticketune",
        "PersistentVolumeClaim/ticketune-data", "Deployment/ticketune", "NetworkPolicy/ticketune",
    ],
    "overlays/job-executor": [
        "ServiceAccount/ticketune", "ServiceAccount/ticketune-training", "Role/ticketune-job-executor",
        "RoleBinding/ticketune-job-executor", "ConfigMap/ticketune-config", "Service/ticketune",
        "PersistentVolumeClaim/ticketune-data", "Deployment/ticketune", "NetworkPolicy/ticketune",
        "NetworkPolicy/ticketune-kube-api",
    ],
}
RENDERED["overlays/gpu+monitoring"] = RENDERED["overlays/gpu"] + ["ServiceMonitor/ticketune",
                                                                  "PrometheusRule/ticketune"]
RENDERED["overlays/job-executor+monitoring"] = RENDERED["overlays/job-executor"] + ["ServiceMonitor/ticketune",
                                                                                    "PrometheusRule/ticketune"]
OVERLAYS = ["overlays/gpu", "overlays/job-executor"]


@functools.cache
def render(target: str) -> tuple[dict, ...]:
    """`kubectl kustomize` of base, an overlay, or `overlay+monitoring` (the overlay with the component)."""
    overlay, _, component = target.partition("+")
    with tempfile.TemporaryDirectory() as scratch:
        root = K8S / overlay
        if component:  # what uncommenting the overlay's `components:` lines does
            namespace = yaml.safe_load((root / "kustomization.yaml").read_text())["namespace"]
            root = Path(scratch)
            (root / "kustomization.yaml").write_text(yaml.safe_dump({
                "namespace": namespace,
                "resources": [os.path.relpath(K8S / overlay, scratch)],
                "components": [os.path.relpath(K8S / "components" / component, scratch)],
            }))
        out = subprocess.run(["kubectl", "kustomize", str(root)], capture_output=True, text=True)
    assert out.returncode == 0, f"kubectl kustomize {target}: {out.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def object_names(docs: tuple[dict, ...]) -> list[str]:
    """kind/name of each object, the ConfigMap without its content hash."""
    return [f"{d['kind']}/{d['metadata']['name']}" if d["kind"] != "ConfigMap"
            else f"ConfigMap/{d['metadata']['name'].rsplit('-', 1)[0]}" for d in docs]


def one(docs: tuple[dict, ...], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(docs: tuple[dict, ...]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def shipped_settings(docs: tuple[dict, ...], tmp_path: Path):
    config = tmp_path / "config.yaml"
    config.write_text(one(docs, "ConfigMap")["data"]["config.yaml"])
    return load_settings(config, environ={})


def metric_names() -> set[str]:
    """Every series name daemon/metrics.py declares (histograms with their _bucket/_sum/_count)."""
    source = (REPO / "daemon/metrics.py").read_text()
    names = set(re.findall(r'(?:Counter|Gauge)\(\s*"(ticketune_\w+)"', source))
    for histogram in re.findall(r'Histogram\(\s*"(ticketune_\w+)"', source):
        names |= {histogram + suffix for suffix in ("_bucket", "_sum", "_count")}
    return names


def promtool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: apt-get install --no-install-recommends prometheus (.ci/run does)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=RULES.parent)


@pytest.mark.parametrize("target", list(RENDERED))
def test_every_kustomization_renders_the_listed_objects_and_validates_strictly(target):
    docs = render(target)
    print(f"{target}: {', '.join(object_names(docs))}")
    assert sorted(object_names(docs)) == sorted(RENDERED[target])
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    if target != "base":
        assert {d["metadata"].get("namespace") for d in docs} == {"ticketune"}


def test_strict_validation_rejects_an_unknown_field():
    deployment = json.loads(json.dumps(one(render("overlays/gpu"), "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("target", ["base", *OVERLAYS])
def test_the_deployment_is_one_recreated_replica_with_probes_that_survive_a_long_training_run(target):
    spec = one(render(target), "Deployment")["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    main = container(render(target))
    assert main["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"  # served by the HTTP thread, never by training
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    liveness = main["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    assert {"name": "http", "containerPort": 9400, "protocol": "TCP"} in main["ports"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(main["resources"][kind])


@pytest.mark.parametrize("target", ["base", *OVERLAYS])
def test_the_pod_runs_restricted_with_a_read_only_root_and_writable_caches(target):
    pod = one(render(target), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    main = pod["containers"][0]
    security = main["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {m["mountPath"] for m in main["volumeMounts"]
                if not m.get("readOnly") and ("emptyDir" in volumes[m["name"]]
                                              or "persistentVolumeClaim" in volumes[m["name"]])}
    assert "/tmp" in writable and "emptyDir" in volumes["tmp"]
    env = {e["name"]: e.get("value") for e in main["env"]}
    for name in ("HOME", "XDG_CACHE_HOME", "HF_HOME", "MPLCONFIGDIR"):
        assert any(Path(env[name]).is_relative_to(mount) for mount in writable), f"{name}={env[name]} is read-only"


@pytest.mark.parametrize("target", ["base", *OVERLAYS])
def test_the_grace_period_covers_the_configured_shutdown_budget_with_a_margin(target, tmp_path):
    settings = shipped_settings(render(target), tmp_path)
    grace = one(render(target), "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert settings.server.shutdown_budget_seconds == 60 and grace == 90


@pytest.mark.parametrize("target", ["base", *OVERLAYS])
def test_secrets_come_by_reference_and_no_value_is_rendered(target, tmp_path):
    docs = render(target)
    assert not [d for d in docs if d["kind"] == "Secret"]
    main = container(docs)
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in main["env"] if "valueFrom" in e}
    assert set(secret_env) == {"TICKETUNE_SERVER__ADMIN_TOKEN", "TICKETUNE_KAFKA__SASL_PASSWORD"}
    for name, value in ((e["name"], e.get("value", "")) for e in main["env"]):
        assert not re.search(r"TOKEN|PASSWORD|SECRET|KEY", name) or name in secret_env, name
        assert not re.search(r"(?i)password|token", value), name
    assert [s["secretRef"]["name"] for s in main["envFrom"]] == ["ticketune-mlflow", "ticketune-hf"]
    settings = shipped_settings(docs, tmp_path)
    assert settings.server.admin_token is None and settings.kafka.sasl_password is None
    assert settings.serving.webhook_secret is None and settings.store.identity_key is None


@pytest.mark.parametrize("target", ["base", *OVERLAYS])
def test_the_service_and_network_policy_open_the_metrics_and_admin_port_only(target):
    docs = render(target)
    service = one(docs, "Service")
    assert service["spec"]["ports"] == [{"name": "http", "port": 9400, "targetPort": "http", "protocol": "TCP"}]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert one(docs, "Deployment")["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    policy = one(docs, "NetworkPolicy", "ticketune")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["ingress"] == [{"ports": [{"port": 9400, "protocol": "TCP"}]}]
    egress_ports = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (9092, "TCP"), (5000, "TCP"), (443, "TCP")} <= egress_ports


def test_the_gpu_overlay_trains_in_the_pod_on_a_gpu_node():
    docs = render("overlays/gpu")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    main = pod["containers"][0]
    assert main["image"] == WORKER_IMAGE
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["automountServiceAccountToken"] is False  # no API access without the job-executor overlay
    assert "nvidia.com/gpu" not in str(render("base"))


def test_the_job_executor_overlay_runs_the_slim_daemon_and_submits_jobs_with_narrow_rights(tmp_path):
    docs = render("overlays/job-executor")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == SERVICE_IMAGE
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"] and "nodeSelector" not in pod
    assert pod["automountServiceAccountToken"] is True and pod["serviceAccountName"] == "ticketune"
    role = one(docs, "Role")
    assert role["rules"] == [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "watch", "delete"]},
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]},
    ]
    binding = one(docs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ticketune", "namespace": "ticketune"}]
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    kube_api = one(docs, "NetworkPolicy", "ticketune-kube-api")["spec"]
    assert {p["port"] for rule in kube_api["egress"] for p in rule["ports"]} == {443, 6443}

    executor = shipped_settings(docs, tmp_path).executor
    assert executor.kind == "kubernetes" and executor.image == WORKER_IMAGE
    assert executor.namespace is None  # the daemon's own namespace, where the Role applies
    assert executor.service_account == "ticketune-training"
    one(docs, "ServiceAccount", executor.service_account)
    assert executor.gpus_per_job == 1 and executor.node_selector and executor.tolerations
    daemon_secrets = [s["secretRef"]["name"] for s in pod["containers"][0]["envFrom"]]
    assert executor.env_from_secrets == daemon_secrets


def test_the_job_executor_config_is_the_base_config_plus_the_executor_section():
    base = yaml.safe_load((K8S / "base/config.yaml").read_text())
    overlay = yaml.safe_load((K8S / "overlays/job-executor/config.yaml").read_text())
    assert overlay.pop("executor")["kind"] == "kubernetes"
    assert overlay == base, "edit deploy/k8s/base/config.yaml and overlays/job-executor/config.yaml together"


@pytest.mark.parametrize("target", ["overlays/gpu+monitoring", "overlays/job-executor+monitoring"])
def test_the_monitoring_objects_have_the_operators_required_fields_and_select_the_service(target):
    docs = render(target)
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["namespace"] == "ticketune"
    service = one(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert all(e["port"] in port_names and e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
    assert service["metadata"]["name"] == "ticketune"  # the scrape job's name, as the rules' job="ticketune" wants

    rule = one(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["metadata"]["namespace"] == "ticketune"
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for item in group["rules"]:
            assert isinstance(item["expr"], str) and ("alert" in item) != ("record" in item)
            assert set(item) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            assert "for" not in item or re.fullmatch(r"\d+[smhd]", item["for"])
            assert "record" in item or item["labels"]["severity"] in ("warning", "critical")
    assert rule["spec"] == yaml.safe_load(RULES.read_text()), (
        "the PrometheusRule differs from deploy/prometheus/ticketune-rules.yaml: "
        "run python deploy/prometheus/make_prometheusrule.py"
    )


def test_the_alert_rules_pass_promtool_check_and_their_unit_tests():
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", RULES_TEST.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    tested_alerts = {case["alertname"] for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
                     for case in test["alert_rule_test"]}
    assert alerts == tested_alerts
    fired = {case["alertname"] for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
             for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert fired == alerts  # every alert has a case where it fires (and, by its earlier eval_time, one where not)


def test_the_rules_and_the_dashboard_query_only_metrics_the_service_exports():
    exported = metric_names() | {"up", "process_start_time_seconds"}
    rules_text = RULES.read_text()
    used_in_rules = set(re.findall(r"\bticketune_\w+", rules_text))
    assert {"ticketune_last_successful_cycle_timestamp_seconds", "ticketune_consumer_lag_records",
            "ticketune_cycles_total", "ticketune_dead_lettered_total", "ticketune_champion_failed_gate",
            "ticketune_serving_notifications_pending"} <= used_in_rules
    assert used_in_rules <= exported, used_in_rules - exported

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bticketune_\w+", expr)}
    assert used <= exported, used - exported
    for wanted in ("ticketune_tickets_consumed_total", "ticketune_consumer_lag_records",
                   "ticketune_dead_lettered_total", "ticketune_cycles_total", "ticketune_champion_version",
                   "ticketune_champion_eval_loss_nats", "ticketune_candidate_eval_loss_nats",
                   "ticketune_training_step", "ticketune_training_eta_seconds",
                   "ticketune_serving_notifications_total", "ticketune_serving_notifications_pending"):
        assert wanted in used, wanted


def test_the_readme_lists_every_metric_the_service_exports():
    readme = (REPO / "README.md").read_text()
    listed = readme[readme.index("Metrics: `ticketune_"):readme.index("## Online probation")]
    source = (REPO / "daemon/metrics.py").read_text()
    declared = re.findall(r'(?:Counter|Gauge|Histogram)\(\s*"(ticketune_\w+)"', source)
    missing = {name for name in declared if f"`{name}" not in listed}
    assert not missing, f"add to the README's metrics list: {sorted(missing)}"


def test_the_shipped_config_validates():
    config = yaml.safe_load((K8S / "base/config.yaml").read_text())
    assert config["server"]["port"] == 9400
    settings = load_settings(K8S / "base/config.yaml", environ={})
    assert settings.store.path == Path("/data/examples.db")
    assert settings.log.format == "json"


def test_both_image_targets_run_as_a_user_with_the_ticketune_entrypoint_and_oci_labels():
    stages = re.split(r"(?m)^FROM ", (REPO / "Dockerfile").read_text())[1:]
    targets = {stage.split("\n", 1)[0].split(" AS ")[1].strip(): stage for stage in stages}
    assert {"build", "service", "worker"} <= set(targets)
    for name in ("service", "worker"):
        stage = targets[name]
        assert re.search(r"(?m)^USER 10001", stage), name
        assert re.search(r'(?m)^ENTRYPOINT \["ticketune"\]$', stage), name
        for label in ("source", "revision", "version", "title", "description", "licenses"):
            assert f"org.opencontainers.image.{label}=" in stage, (name, label)
        copies = re.findall(r"(?m)^COPY (.+)$", stage)
        assert copies == ["--from=build /wheels /wheels"], (name, copies)  # the wheel only: no data, no config
