"""Telling serving of champion changes: real local HTTP servers receive the webhook and vLLM's adapter load."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from http_helpers import http_call
from prometheus_client import REGISTRY

from connectors.registry import AdapterRegistry
from connectors.serving import PENDING_FILE, ServingNotifier, method_family
from daemon.config import ConfigError, ServingConfig, load_settings

SECRET = "whsec-test-6f1d2c"
API_KEY = "vllm-key-93ab10"
MODEL = "support-bot"


class Receiver:
    """A real HTTP server on a free loopback port: records every POST, answers from a script of statuses."""

    def __init__(self, statuses: list[int] | None = None, answer=None) -> None:
        self.statuses = list(statuses or [])
        self.answer = answer  # (path, body) -> (status, response body), instead of the script
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
                pass

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "raw": raw,
                                          "json": json.loads(raw)})
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                body = b'{"ok": true}' if status < 300 else b'{"error": "backend busy"}'
                if receiver.answer is not None:
                    status, body = receiver.answer(self.path, json.loads(raw))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def bodies(self) -> list[dict]:
        return [request["json"] for request in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[type[Receiver]]:
    started: list[Receiver] = []

    def start(statuses: list[int] | None = None, answer=None) -> Receiver:
        started.append(Receiver(statuses, answer))
        return started[-1]

    yield start
    for one in started:
        one.close()


class FakeRegistry:
    """The three registry calls the notifier makes, in memory (the MLflow-backed wiring is tested below)."""

    def __init__(self, methods: dict[str, str]) -> None:
        self.methods = methods
        self.downloads: list[str] = []

    def get_version_tags(self, version: str) -> dict[str, str]:
        return {"ticketune.adapter_method": self.methods[version]}

    def download_adapter(self, version: str, dst_dir: Path) -> Path:
        self.downloads.append(version)
        adapter = Path(dst_dir) / "adapter"
        adapter.mkdir(parents=True)
        (adapter / "adapter_config.json").write_text(json.dumps({"version": version}))
        return adapter



def notifier(tmp_path: Path, targets: list[dict], registry: FakeRegistry | None = None, **cfg) -> ServingNotifier:
    settings = ServingConfig(targets=targets, webhook_secret=SECRET, vllm_api_key=API_KEY, backoff_seconds=0.01,
                             timeout_seconds=2, **cfg)
    registry = registry or FakeRegistry({"1": "lora", "2": "lora+rslora", "3": "qlora"})
    return ServingNotifier(settings, registry, MODEL, tmp_path / "store" / PENDING_FILE)


def count(kind: str, outcome: str) -> float:
    labels = {"target_kind": kind, "outcome": outcome}
    return REGISTRY.get_sample_value("ticketune_serving_notifications_total", labels) or 0.0


def test_webhook_receives_the_change_as_json_signed_with_the_secret(tmp_path: Path, receiver) -> None:
    hook = receiver()
    sent = notifier(tmp_path, [{"kind": "webhook", "url": f"{hook.url}/hooks/ticketune"}]).promoted(
        "2", "1", reason="cycle c-7 passed the gate", actor="cycle"
    )

    assert list(sent.values()) == ["delivered"]
    (request,) = hook.requests
    assert request["path"] == "/hooks/ticketune"
    expected = "sha256=" + hmac.new(SECRET.encode(), request["raw"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request["headers"]["X-Ticketune-Signature"], expected)
    assert request["headers"]["X-Ticketune-Event"] == "promoted"
    body = request["json"]
    assert {k: body[k] for k in ("event", "model_name", "version", "previous_version", "adapter_method", "actor",
                                 "reason", "forced")} == {
        "event": "promoted", "model_name": MODEL, "version": "2", "previous_version": "1",
        "adapter_method": "lora+rslora", "actor": "cycle", "reason": "cycle c-7 passed the gate", "forced": False,
    }
    assert body["adapter_uri"] == body["adapter_location"] == f"models:/{MODEL}/2"
    assert body["timestamp"].endswith("Z") and body["id"] == request["headers"]["X-Ticketune-Delivery"]


def test_webhook_is_retried_after_two_server_errors_then_delivered(tmp_path: Path, receiver) -> None:
    hook = receiver([500, 500])
    delivered_before = count("webhook", "delivered")
    serving = notifier(tmp_path, [{"kind": "webhook", "url": hook.url}], attempts=3)

    assert list(serving.promoted("2", "1", reason="gate", actor="cycle").values()) == ["delivered"]
    assert len(hook.requests) == 3
    assert len({request["raw"] for request in hook.requests}) == 1  # the same signed body each time
    assert count("webhook", "delivered") == delivered_before + 1
    assert serving.pending() == {} and not serving.pending_path.exists()


def test_a_target_that_keeps_failing_leaves_a_pending_change_that_flush_delivers(tmp_path: Path, receiver) -> None:
    hook = receiver([503, 503, 503])
    failed_before = count("webhook", "failed")
    serving = notifier(tmp_path, [{"kind": "webhook", "url": hook.url, "name": "audit-hook"}], attempts=3)

    assert serving.promoted("3", "2", reason="gate", actor="cycle") == {"audit-hook": "failed"}
    assert len(hook.requests) == 3
    assert count("webhook", "failed") == failed_before + 1
    assert REGISTRY.get_sample_value("ticketune_serving_notifications_pending") == 1
    record = serving.pending()["audit-hook"]
    assert record["change"]["version"] == "3" and record["last_error"].startswith("HTTP 503")

    assert serving.flush() == {"audit-hook": "delivered"}  # the receiver answers 200 from now on
    assert [body["version"] for body in hook.bodies] == ["3"] * 4
    assert hook.bodies[-1]["id"] == hook.bodies[0]["id"]  # receivers can tell a re-send from a new change
    assert serving.pending() == {} and serving.flush() == {}
    assert REGISTRY.get_sample_value("ticketune_serving_notifications_pending") == 0


def test_a_newer_change_supersedes_the_pending_one_for_the_same_target(tmp_path: Path, receiver) -> None:
    hook = receiver([500] * 4)
    serving = notifier(tmp_path, [{"kind": "webhook", "url": hook.url, "name": "hook"}], attempts=2)

    serving.promoted("2", "1", reason="gate", actor="cycle")
    serving.rolled_back("1", "2", reason="bad answers", actor="cli")
    assert serving.pending()["hook"]["change"]["event"] == "rolled_back"
    serving.flush()

    assert [(body["event"], body["version"]) for body in hook.bodies[4:]] == [("rolled_back", "1")]


def test_a_4xx_answer_is_not_retried_at_once_but_kept_for_the_next_flush(tmp_path: Path, receiver) -> None:
    hook = receiver([404])
    serving = notifier(tmp_path, [{"kind": "vllm", "url": hook.url, "name": "vllm-0"}], attempts=3)

    assert serving.promoted("1", None, reason="gate", actor="cycle") == {"vllm-0": "failed"}
    assert len(hook.requests) == 1
    assert "HTTP 404" in serving.pending()["vllm-0"]["last_error"]


def test_an_unreachable_target_fails_with_a_clear_error(tmp_path: Path, receiver) -> None:
    gone = receiver()
    url = gone.url
    gone.close()
    serving = notifier(tmp_path, [{"kind": "webhook", "url": url, "name": "gone"}], attempts=2)

    assert serving.promoted("1", None, reason="gate", actor="cycle") == {"gone": "failed"}
    assert serving.pending()["gone"]["last_error"].startswith("unreachable")


def test_vllm_replicas_load_the_exported_adapter_in_place_and_again_after_a_rollback(
    tmp_path: Path, receiver
) -> None:
    replicas = [receiver(), receiver()]
    root = tmp_path / "shared-adapters"
    registry = FakeRegistry({"1": "lora", "2": "qlora+rslora"})
    serving = notifier(tmp_path, [{"kind": "vllm", "url": r.url, "adapter_root": str(root), "lora_name": "support"}
                                  for r in replicas], registry)

    assert set(serving.promoted("2", "1", reason="gate", actor="cycle").values()) == {"delivered"}
    assert set(serving.rolled_back("1", "2", reason="bad answers", actor="cli").values()) == {"delivered"}

    for replica in replicas:
        assert [r["path"] for r in replica.requests] == ["/v1/load_lora_adapter"] * 2
        assert replica.bodies == [
            {"lora_name": "support", "lora_path": str(root / MODEL / "v2"), "load_inplace": True},
            {"lora_name": "support", "lora_path": str(root / MODEL / "v1"), "load_inplace": True},
        ]
        assert replica.requests[0]["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert json.loads((root / MODEL / "v2" / "adapter_config.json").read_text()) == {"version": "2"}
    assert registry.downloads == ["2", "1"]  # one download per version, shared by both replicas
    assert not [p for p in (root / MODEL).iterdir() if p.name.startswith(".")]  # no partial copies left


def test_vllm_gets_the_path_as_it_mounts_the_volume_and_the_mlflow_uri_without_a_volume(
    tmp_path: Path, receiver
) -> None:
    mounted, bare = receiver(), receiver()
    root = tmp_path / "exports"
    serving = notifier(tmp_path, [
        {"kind": "vllm", "url": mounted.url, "adapter_root": str(root), "served_adapter_root": "/mnt/adapters/"},
        {"kind": "vllm", "url": bare.url},
    ])

    serving.promoted("1", None, reason="gate", actor="cycle")

    assert mounted.bodies[0]["lora_path"] == f"/mnt/adapters/{MODEL}/v1"
    assert bare.bodies[0] == {"lora_name": MODEL, "lora_path": f"models:/{MODEL}/1", "load_inplace": True}


def test_a_vllm_without_load_inplace_gets_the_adapter_unloaded_and_loaded_again(tmp_path: Path, receiver) -> None:
    loaded: dict[str, str] = {}

    def old_vllm(path: str, body: dict) -> tuple[int, bytes]:  # vLLM's answers before load_inplace existed
        name = body["lora_name"]
        if path == "/v1/unload_lora_adapter":
            loaded.pop(name)
            return 200, b"Success"
        if name in loaded:
            message = f"The lora adapter '{name}' has already been loaded."
            return 400, json.dumps({"object": "error", "message": message, "code": 400}).encode()
        loaded[name] = body["lora_path"]
        return 200, b"Success"

    vllm = receiver(answer=old_vllm)
    serving = notifier(tmp_path, [{"kind": "vllm", "url": vllm.url, "name": "old-vllm"}])

    assert serving.promoted("1", None, reason="gate", actor="cycle") == {"old-vllm": "delivered"}
    assert serving.promoted("2", "1", reason="gate", actor="cycle") == {"old-vllm": "delivered"}

    assert loaded == {MODEL: f"models:/{MODEL}/2"}
    assert [r["path"].rsplit("/", 1)[-1] for r in vllm.requests] == [
        "load_lora_adapter", "load_lora_adapter", "unload_lora_adapter", "load_lora_adapter"
    ]


@pytest.mark.parametrize("method", ["dora", "qdora+rslora", "ia3", "prompt_tuning"])
def test_vllm_refuses_what_it_cannot_load_while_webhooks_still_hear_of_it(
    tmp_path: Path, receiver, caplog: pytest.LogCaptureFixture, method: str
) -> None:
    vllm, hook = receiver(), receiver()
    registry = FakeRegistry({"4": method})
    refused_before = count("vllm", "refused")
    serving = notifier(tmp_path, [
        {"kind": "vllm", "url": vllm.url, "name": "vllm-0", "adapter_root": str(tmp_path / "exports")},
        {"kind": "webhook", "url": hook.url, "name": "hook"},
    ], registry)

    with caplog.at_level(logging.ERROR, logger="ticketune.serving"):
        outcomes = serving.promoted("4", "3", reason="operator choice", actor="cli", forced=True)

    assert outcomes == {"vllm-0": "refused", "hook": "delivered"}
    assert vllm.requests == [] and registry.downloads == []
    assert hook.bodies[0]["adapter_method"] == method and hook.bodies[0]["forced"] is True
    assert count("vllm", "refused") == refused_before + 1
    assert "cannot be loaded by vLLM at runtime" in caplog.text and "vllm-0: version 4 not sent" in caplog.text
    assert serving.pending() == {}  # a refusal is final: re-sending cannot make vLLM load it


def test_method_family_reads_the_adapter_tag() -> None:
    assert [method_family(tag) for tag in ("lora", "lora+rslora", "qlora", "qdora+rslora", "ia3")] == [
        "lora", "lora", "lora", "dora", "ia3"
    ]


def test_no_secret_reaches_the_logs_or_the_pending_file(
    tmp_path: Path, receiver, caplog: pytest.LogCaptureFixture
) -> None:
    vllm, hook = receiver([500, 500, 401]), receiver([500, 500, 500])
    serving = notifier(tmp_path, [{"kind": "vllm", "url": vllm.url}, {"kind": "webhook", "url": hook.url}])

    with caplog.at_level(logging.DEBUG):
        serving.promoted("1", None, reason="gate", actor="cycle")
        pending_text = serving.pending_path.read_text()
        serving.flush()

    assert len(vllm.requests) == len(hook.requests) == 4
    assert "HTTP 401" in caplog.text and "HTTP 500" in caplog.text
    for text in (caplog.text, pending_text):
        assert SECRET not in text and API_KEY not in text


def test_config_requires_a_webhook_secret_and_reads_it_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"serving": {"targets": [{"kind": "webhook", "url": "http://hooks:8080/x"}]}}))

    with pytest.raises(ConfigError) as err:
        load_settings(config, environ={})
    assert "serving: targets.0 is a webhook, and webhooks are signed" in str(err.value)

    settings = load_settings(config, environ={"TICKETUNE_SERVING__WEBHOOK_SECRET": SECRET})
    assert settings.serving.webhook_secret.get_secret_value() == SECRET
    assert SECRET not in repr(settings.serving)


def test_config_refuses_a_relative_adapter_root_and_two_targets_with_one_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="adapter_root must be an absolute path"):
        ServingConfig(targets=[{"kind": "vllm", "url": "http://vllm:8000", "adapter_root": "adapters"}])
    with pytest.raises(ValueError, match="appear twice"):
        ServingConfig(targets=[{"kind": "vllm", "url": "http://vllm:8000"}, {"kind": "vllm", "url": "http://vllm:8000/"}])


# ---- the wiring, on a real sqlite MLflow store ---------------------------------------------------


def register_version(registry: AdapterRegistry, root: Path, name: str, method: str) -> str:
    adapter = root / name
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "name": name}))
    run_id = registry.start_cycle_run(name, {}, {})
    version = registry.register_candidate(
        run_id, adapter, {"ticketune.verdict": "promoted", "ticketune.adapter_method": method}
    )
    registry.end_run(run_id, "FINISHED")
    return version


@pytest.fixture
def deployment(tmp_path: Path, mlflow_sqlite_uri: str, receiver) -> dict:
    """A config with a vLLM target and a webhook, and two lora versions registered in a real MLflow store."""
    vllm, hook = receiver(), receiver()
    root = tmp_path / "shared"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "store": {"path": str(tmp_path / "data" / "examples.db")},
        "registry": {"tracking_uri": mlflow_sqlite_uri, "model_name": MODEL},
        "server": {"host": "127.0.0.1", "port": 0, "admin_token": "admin-t"},
        "schedule": {"enabled": False},
        "serving": {"webhook_secret": SECRET, "backoff_seconds": 0.01, "targets": [
            {"kind": "vllm", "url": vllm.url, "adapter_root": str(root)},
            {"kind": "webhook", "url": hook.url},
        ]},
    }))
    registry = AdapterRegistry(tracking_uri=mlflow_sqlite_uri, model_name=MODEL)
    versions = [register_version(registry, tmp_path / "adapters", f"c-{i}", "lora") for i in (1, 2)]
    return {"config": config, "registry": registry, "versions": versions, "vllm": vllm, "hook": hook, "root": root}


def test_cli_promote_and_rollback_tell_serving(
    deployment: dict, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daemon.app.cli import main

    def cli_json(*argv: str) -> dict:
        with monkeypatch.context() as patch:  # main() points sys.stdout at stderr; give each call the real one
            patch.setattr("sys.stdout", sys.stdout)
            assert main([*argv, "--config", str(deployment["config"]), "--json"]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    root, (v1, v2) = deployment["root"], deployment["versions"]
    assert cli_json("promote", v1)["serving"] == {
        f"vllm 127.0.0.1:{deployment['vllm'].server.server_address[1]}": "delivered",
        f"webhook 127.0.0.1:{deployment['hook'].server.server_address[1]}": "delivered",
    }
    cli_json("promote", v2)
    rolled = cli_json("rollback", "--reason", "bad answers")

    assert rolled["from"] == v2 and rolled["to"] == v1 and set(rolled["serving"].values()) == {"delivered"}
    assert [body["lora_path"] for body in deployment["vllm"].bodies] == [
        str(root / MODEL / f"v{v}") for v in (v1, v2, v1)
    ]
    assert (root / MODEL / f"v{v2}" / "adapter_config.json").is_file()
    assert [(b["event"], b["version"], b["previous_version"]) for b in deployment["hook"].bodies] == [
        ("promoted", v1, None), ("promoted", v2, v1), ("rolled_back", v1, v2)
    ]
    assert all(b["actor"].startswith("cli") for b in deployment["hook"].bodies)  # cli:<OS user>
    assert deployment["hook"].bodies[-1]["reason"] == "bad answers"


def test_admin_api_promote_and_rollback_tell_serving_and_upkeep_resends(deployment: dict) -> None:
    from daemon.app.service import Service

    v1, v2 = deployment["versions"]
    deployment["vllm"].statuses = [500, 500, 500]  # down during the first promotion
    service = Service(load_settings(deployment["config"], environ={}))
    service.startup(with_scheduler=False, with_ingest=False)
    try:
        port = service.http_port
        status, body = http_call(port, "/v1/promote", "POST", token="admin-t", body={"version": v1})
        assert status == 200 and json.loads(body)["serving"] == {
            f"vllm 127.0.0.1:{deployment['vllm'].server.server_address[1]}": "failed",
            f"webhook 127.0.0.1:{deployment['hook'].server.server_address[1]}": "delivered",
        }
        service.upkeep()  # the vLLM server is back: the pending load goes out
        assert deployment["vllm"].bodies[-1]["lora_path"].endswith(f"/v{v1}")
        assert service.serving.pending() == {}

        http_call(port, "/v1/promote", "POST", token="admin-t", body={"version": v2})
        status, body = http_call(port, "/v1/rollback", "POST", token="admin-t", body={"reason": "regression"})
        assert status == 200 and set(json.loads(body)["serving"].values()) == {"delivered"}
    finally:
        service.shutdown()
    assert [b["lora_path"].rsplit("/", 1)[-1] for b in deployment["vllm"].bodies[3:]] == [f"v{v1}", f"v{v2}", f"v{v1}"]
    assert [(b["event"], b["actor"]) for b in deployment["hook"].bodies] == [
        ("promoted", "admin"), ("promoted", "admin"), ("rolled_back", "admin")
    ]


def test_a_cycle_that_promotes_in_the_service_tells_serving_through_the_keeper(deployment: dict) -> None:
    from daemon.app.service import Service
    from daemon.cycle.runner import CycleOutcome

    registry, (v1, v2) = deployment["registry"], deployment["versions"]
    registry.set_champion(v1)  # the champion before the service starts: its first watch takes it as found
    service = Service(load_settings(deployment["config"], environ={}))

    class PromotingRunner:  # stands in for training: registers nothing, promotes as a passing cycle does
        def run(self, **_: object) -> CycleOutcome:
            service.keeper.promote(v2, reason="cycle c-2 passed the gate", actor="cycle")
            return CycleOutcome("c-2", "promoted", version=v2)

    service.cycles = PromotingRunner()
    try:
        assert service.run_cycle(trigger="schedule").verdict == "promoted"
    finally:
        service.shutdown()

    (body,) = deployment["hook"].bodies
    assert (body["event"], body["version"], body["previous_version"], body["actor"], body["reason"]) == (
        "promoted", v2, v1, "cycle", "cycle c-2 passed the gate"
    )
    assert body["adapter_method"] == "lora"
    assert deployment["vllm"].bodies[0]["lora_path"] == str(deployment["root"] / MODEL / f"v{v2}")
