import subprocess
from pathlib import Path

import yaml

from daemon.config import load_settings

REPO = Path(__file__).resolve().parent.parent


def test_the_kustomize_base_builds_into_a_single_recreate_deployment_with_probes():
    out = subprocess.run(["kubectl", "kustomize", str(REPO / "deploy/k8s/base")],
                         capture_output=True, text=True, check=True).stdout
    docs = {d["kind"]: d for d in yaml.safe_load_all(out)}
    assert {"Deployment", "Service", "ConfigMap", "PersistentVolumeClaim", "ServiceAccount"} <= set(docs)
    deployment = docs["Deployment"]["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"]["type"] == "Recreate"
    container = deployment["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert not any("value" in e and "TOKEN" in e["name"] for e in container["env"])


def test_the_shipped_config_validates(tmp_path):
    config = yaml.safe_load((REPO / "deploy/k8s/base/config.yaml").read_text())
    assert config["server"]["port"] == 9400
    settings = load_settings(REPO / "deploy/k8s/base/config.yaml", environ={})
    assert settings.store.path == Path("/data/examples.db")
