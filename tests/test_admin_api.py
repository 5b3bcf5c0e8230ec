"""The admin API (`/v1/...`): auth, status codes, validation, the OpenAPI document; the service lock."""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from fixture_service import ADMIN_TOKEN as TOKEN
from http_helpers import http_call as call

from daemon.app.http import ADMIN_ROUTES, MAX_BODY_BYTES, AdminError, Endpoints, openapi_document, start_http_server

REPO = Path(__file__).resolve().parents[1]


def raw_call(port: int, path: str, method: str, data: bytes, token: str | None = TOKEN) -> tuple[int, dict, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=data)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")


@pytest.fixture
def api():
    """An admin API over fakes: records the calls each action got; `busy` makes /v1/cycles answer 409."""
    servers = []
    calls: list[tuple[str, dict]] = []
    busy = threading.Event()

    def action(name):
        def run(body):
            calls.append((name, body))
            if name == "cycle":
                if busy.is_set():
                    raise AdminError(409, "a cycle is already running", "cycle_running")
                return {"accepted": True, "force": body["force"], "cycle_id": "c-1", "cycle_url": "/v1/cycles/c-1"}
            if name == "cycle_status":
                if body["cycle_id"] != "c-1":
                    raise AdminError(404, f"no cycle {body['cycle_id']} in the journal", "cycle_not_found")
                return {"cycle_id": "c-1", "verdict": "running"}
            if name == "history":
                return {"versions": [{"version": "2", "champion": True}, {"version": "1", "champion": False}]}
            version = body.get("version") or body.get("to")
            if version == "404":
                raise AdminError(404, "model version 404 does not exist", "version_not_found")
            if name == "rollback" and version is None:
                raise AdminError(409, "there is no earlier champion to roll back to", "nothing_to_roll_back")
            return {"action": name, "from": "1", "to": version, "moved": True, "forced": body.get("force", False),
                    "serving": {}}
        return run

    def make(token=TOKEN):
        endpoints = Endpoints(
            status=lambda: {"examples": 7, "champion_version": "2"}, ready=lambda: (True, {"store": "ok"}),
            admin_actions={name: action(name)
                           for name in ("cycle", "cycle_status", "promote", "rollback", "approve", "history")},
            admin_token=token,
        )
        server = start_http_server("127.0.0.1", 0, endpoints)
        servers.append(server)
        return server.server_address[1]

    make.calls, make.busy = calls, busy
    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


def error_code(body: str) -> str:
    return json.loads(body)["error"]["code"]


def test_every_admin_path_answers_403_when_no_token_is_configured(api):
    port = api(token=None)
    for path in ADMIN_ROUTES:
        for method in ("GET", "POST", "DELETE"):
            status, body = call(port, path, method, body={} if method == "POST" else None)
            assert status == 403 and error_code(body) == "admin_api_off", (path, method)
    assert api.calls == []
    assert call(port, "/v1/openapi.json")[0] == 200  # the document stays public


def test_a_missing_or_wrong_token_is_401_with_a_bearer_challenge(api):
    port = api()
    for token in (None, "wrong", TOKEN + "x"):
        status, headers, body = raw_call(port, "/v1/promote", "POST", b'{"version": "1"}', token=token)
        assert status == 401 and body["error"]["code"] == "unauthorized"
        assert headers["WWW-Authenticate"].startswith("Bearer")
    assert call(port, "/v1/status")[0] == 401
    assert api.calls == []


def test_status_history_and_moves_succeed_with_the_token(api):
    port = api()
    status, body = call(port, "/v1/status", token=TOKEN)
    assert status == 200 and json.loads(body) == {"examples": 7, "champion_version": "2"}
    status, body = call(port, "/v1/history", token=TOKEN)
    assert status == 200 and [v["version"] for v in json.loads(body)["versions"]] == ["2", "1"]
    status, body = call(port, "/v1/promote", "POST", token=TOKEN, body={"version": "3", "reason": "better"})
    assert status == 200 and json.loads(body)["to"] == "3"
    status, body = call(port, "/v1/rollback", "POST", token=TOKEN, body={"to": "1", "force": True})
    assert status == 200 and json.loads(body)["forced"] is True
    status, body = call(port, "/v1/approve", "POST", token=TOKEN, body={"version": "4"})
    assert status == 200 and json.loads(body)["action"] == "approve"
    assert api.calls[1:] == [
        ("promote", {"version": "3", "reason": "better", "force": False}),
        ("rollback", {"to": "1", "reason": "admin API", "force": True}),
        ("approve", {"version": "4", "reason": "admin API"}),
    ]


def test_starting_a_cycle_is_202_and_409_while_one_runs(api):
    port = api()
    status, body = call(port, "/v1/cycles", "POST", token=TOKEN, body={"force": True})
    assert status == 202 and json.loads(body)["cycle_url"] == "/v1/cycles/c-1"
    status, body = call(port, "/v1/cycles/c-1", token=TOKEN)
    assert status == 200 and json.loads(body)["verdict"] == "running"
    assert api.calls[-1] == ("cycle_status", {"cycle_id": "c-1"})  # the path's parameter
    assert error_code(call(port, "/v1/cycles/c-2", token=TOKEN)[1]) == "cycle_not_found"
    assert raw_call(port, "/v1/cycles/c-1", "POST", b"{}")[0] == 405
    status, _, body = raw_call(port, "/v1/cycles", "POST", b"")  # no body: the defaults
    assert status == 202 and body["force"] is False
    api.busy.set()
    status, body = call(port, "/v1/cycles", "POST", token=TOKEN, body={})
    assert status == 409 and error_code(body) == "cycle_running"


def test_unknown_paths_and_versions_are_404_and_wrong_methods_405(api):
    port = api()
    status, body = call(port, "/v1/nope", token=TOKEN)
    assert status == 404 and error_code(body) == "not_found"
    assert call(port, "/v1/nope", "POST", token=TOKEN, body={})[0] == 404
    status, body = call(port, "/v1/promote", "POST", token=TOKEN, body={"version": "404"})
    assert status == 404 and error_code(body) == "version_not_found"
    status, headers, body = raw_call(port, "/v1/promote", "GET", None)
    assert status == 405 and headers["Allow"] == "POST" and body["error"]["code"] == "method_not_allowed"
    assert raw_call(port, "/v1/status", "POST", b"{}")[0] == 405
    assert raw_call(port, "/v1/history", "DELETE", None)[0] == 405
    assert raw_call(port, "/metrics", "POST", b"", token=None)[0] == 405


def test_nothing_to_roll_back_is_409(api):
    port = api()
    status, body = call(port, "/v1/rollback", "POST", token=TOKEN, body={})
    assert status == 409 and error_code(body) == "nothing_to_roll_back"


def test_malformed_json_is_400_and_invalid_bodies_are_422(api):
    port = api()
    status, _, body = raw_call(port, "/v1/promote", "POST", b'{"version": ')
    assert status == 400 and body["error"]["code"] == "invalid_json"
    for bad in ({}, {"version": 3}, {"version": "three"}, {"version": "3", "force": "yes"},
                {"version": "3", "extra": 1}, {"version": "3", "reason": ""}):
        status, body = call(port, "/v1/promote", "POST", token=TOKEN, body=bad)
        assert status == 422, bad
        error = json.loads(body)["error"]
        assert error["code"] == "validation_error" and error["details"], bad
    status, _, body = raw_call(port, "/v1/rollback", "POST", b"[1, 2]")
    assert status == 422 and body["error"]["details"][0]["field"] == "<body>"
    status, body = call(port, "/v1/cycles", "POST", token=TOKEN, body={"force": 1})
    assert status == 422 and json.loads(body)["error"]["details"][0]["field"] == "force"
    assert [name for name, _ in api.calls] == []


def test_a_body_over_the_limit_is_413(api):
    port = api()
    status, _, body = raw_call(port, "/v1/promote", "POST", b'{"reason": "' + b"x" * MAX_BODY_BYTES + b'"}')
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert call(port, "/v1/status", token=TOKEN)[0] == 200  # the server goes on


def test_only_the_versioned_paths_exist(api):
    port = api()
    assert call(port, "/v1/status", token=TOKEN)[0] == 200
    assert call(port, "/admin/status", token=TOKEN)[0] == 404
    assert call(port, "/admin/rollback", "POST", token=TOKEN, body={"to": "1"})[0] == 404


def test_the_openapi_document_describes_the_paths_schemas_and_security(api):
    port = api()
    status, body = call(port, "/v1/openapi.json")
    assert status == 200
    doc = json.loads(body)
    assert doc == json.loads(json.dumps(openapi_document()))
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "server.admin_token"}
    assert {path: list(ops) for path, ops in doc["paths"].items()} == {
        "/v1/status": ["get"], "/v1/history": ["get"], "/v1/cycles": ["post"], "/v1/cycles/{cycle_id}": ["get"],
        "/v1/promote": ["post"],
        "/v1/rollback": ["post"], "/v1/approve": ["post"], "/v1/openapi.json": ["get"]}
    promote = doc["paths"]["/v1/promote"]["post"]
    assert promote["security"] == [{"bearerAuth": []}]
    assert set(promote["responses"]) >= {"200", "400", "401", "403", "404", "405", "409", "413", "422"}
    schemas = doc["components"]["schemas"]
    assert schemas["PromoteRequest"]["required"] == ["version"]
    assert set(schemas["MoveResponse"]["properties"]) >= {"from", "to", "moved", "forced", "serving"}
    follow = doc["paths"]["/v1/cycles/{cycle_id}"]["get"]
    assert follow["parameters"][0]["name"] == "cycle_id" and "404" in follow["responses"]
    assert {"cycle_id", "cycle_url"} <= set(schemas["CycleAccepted"]["properties"])
    refs = {m for m in json.dumps(doc).split('"') if m.startswith("#/components/schemas/")}
    assert {ref.rsplit("/", 1)[1] for ref in refs} <= set(schemas)  # every $ref resolves
    from jsonschema import Draft202012Validator

    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)


# with a real Service (no training: an empty store, a sqlite MLflow; the config is fixture_service's) ----------
def test_a_real_service_answers_the_admin_api_and_stays_ready_while_kafka_is_down(service_config):
    from prometheus_client import REGISTRY

    from daemon.app.service import Service
    from daemon.config import load_settings

    service = Service(load_settings(service_config, environ={}))
    service.startup(with_scheduler=False)
    try:
        port = service.http_port
        deadline = time.monotonic() + 30
        while not json.loads(call(port, "/readyz")[1])["kafka"].startswith("down:"):
            assert time.monotonic() < deadline, call(port, "/readyz")
            time.sleep(0.2)
        status, body = call(port, "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True
        assert REGISTRY.get_sample_value("ticketune_kafka_up") == 0
        status, body = call(port, "/v1/status", token=TOKEN)
        assert status == 200 and json.loads(body)["champion_version"] is None and TOKEN not in body
        assert json.loads(body)["kafka"].startswith("down:")
        status, body = call(port, "/v1/history", token=TOKEN)
        assert status == 200 and json.loads(body) == {"versions": []}
        status, body = call(port, "/v1/promote", "POST", token=TOKEN, body={"version": "7"})
        assert status == 404 and error_code(body) == "version_not_found"
        status, body = call(port, "/v1/rollback", "POST", token=TOKEN, body={})
        assert status == 409 and error_code(body) == "nothing_to_roll_back"
        status, body = call(port, "/v1/approve", "POST", token=TOKEN, body={"version": "7"})
        assert status == 404
        with service._cycle_lock:  # a cycle runs
            status, body = call(port, "/v1/cycles", "POST", token=TOKEN, body={})
            assert status == 409 and error_code(body) == "cycle_running"
        status, body = call(port, "/v1/cycles", "POST", token=TOKEN, body={})
        accepted = json.loads(body)
        assert status == 202 and accepted["accepted"] is True and accepted["cycle_id"].startswith("c-")
        status, body = call(port, accepted["cycle_url"], token=TOKEN)  # too few examples: a quick skip, recorded
        assert status == 200 and json.loads(body)["verdict"] == "skipped", body
        assert "schedule.min_new_examples" in json.loads(body)["reasons"][0]
        last = json.loads(call(port, "/v1/status", token=TOKEN)[1])["last_cycle"]
        assert (last["cycle_id"], last["verdict"]) == (accepted["cycle_id"], "skipped")
    finally:
        service.shutdown()


def test_a_second_service_on_the_same_store_is_refused(service_config, tmp_path):
    from daemon.app.service import Service
    from daemon.config import load_settings
    from daemon.store import LockBusy

    first = Service(load_settings(service_config, environ={}))
    first.startup(with_scheduler=False, with_ingest=False)
    try:
        second = Service(load_settings(service_config, environ={}))
        with pytest.raises(LockBusy, match="one replica per store"):
            second.startup(with_scheduler=False, with_ingest=False)
        second.shutdown()  # what a failed start leaves is safe to stop, and the first keeps its lock

        proc = subprocess.run([sys.executable, "-m", "daemon.app.cli", "run", "--config", str(service_config)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 3, proc.stderr[-2000:]
        assert "already serves the store" in proc.stderr and "Traceback" not in proc.stderr
        assert f"process {os.getpid()} (" in proc.stderr  # the holder is named: this test's process
        assert "stopped in" not in proc.stderr  # it never started, so it has nothing to stop
        assert "warning: model.base: directory" in proc.stderr  # said at start, not found at the first cycle
    finally:
        first.shutdown()
    again = Service(load_settings(service_config, environ={}))  # released by shutdown
    again.startup(with_scheduler=False, with_ingest=False)
    again.shutdown()


def test_a_refusal_names_the_request_field_that_overrides_it_not_the_cli_flag(service_config, monkeypatch):
    from daemon.app.service import Service
    from daemon.champion.rules import PromotionRefusedError, previous_champion, refusal
    from daemon.config import load_settings

    def refuse_rejected(version, **_):
        raise PromotionRefusedError(refusal(version, {"ticketune.verdict": "rejected"}, force=False))

    def refuse_first(to_version, **_):
        previous_champion([], "1")

    service = Service(load_settings(service_config, environ={}))
    monkeypatch.setattr(service.keeper, "promote", refuse_rejected)
    monkeypatch.setattr(service.keeper, "rollback", refuse_first)
    service.startup(with_scheduler=False, with_ingest=False)
    try:
        status, body = call(service.http_port, "/v1/promote", "POST", token=TOKEN, body={"version": "1"})
        message = json.loads(body)["error"]["message"]
        assert status == 409 and '"force": true' in message and "--force" not in message
        status, body = call(service.http_port, "/v1/rollback", "POST", token=TOKEN, body={})
        message = json.loads(body)["error"]["message"]
        assert status == 409 and '"to": "VERSION"' in message and "--to" not in message
    finally:
        service.shutdown()
