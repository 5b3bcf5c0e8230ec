import json

import pytest
from http_helpers import http_call as call

from daemon.app.http import AdminError, Endpoints, start_http_server


@pytest.fixture
def server_factory():
    servers = []

    def make(token=None, ready=True):
        calls = []

        def rollback(body):
            calls.append(body)
            if body.get("to") == "404":
                raise AdminError(409, "no version 404")
            return {"from": "3", "to": body.get("to") or "2"}

        endpoints = Endpoints(status=lambda: {"examples": 7}, ready=lambda: (ready, {"store": "ok"}),
                              admin_actions={"rollback": rollback}, admin_token=token)
        server = start_http_server("127.0.0.1", 0, endpoints)
        servers.append(server)
        return server.server_address[1], calls

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


def test_metrics_health_and_readiness(server_factory):
    import daemon.metrics  # noqa: F401  (registers the metrics)

    port, _ = server_factory()
    status, body = call(port, "/metrics")
    assert status == 200 and "ticketune_tickets_consumed_total" in body and "ticketune_cycles_total" in body
    assert call(port, "/healthz")[0] == 200
    assert call(port, "/readyz")[0] == 200
    unready, _ = server_factory(ready=False)
    assert call(unready, "/readyz")[0] == 503
    assert call(port, "/nope")[0] == 404


def test_admin_api_is_off_without_a_token(server_factory):
    port, calls = server_factory(token=None)
    assert call(port, "/v1/status")[0] == 403
    assert call(port, "/v1/rollback", "POST", token="anything", body={})[0] == 403
    assert calls == []


def test_admin_api_requires_the_right_token(server_factory):
    port, calls = server_factory(token="s3cret")
    assert call(port, "/v1/status")[0] == 401
    assert call(port, "/v1/status", token="wrong")[0] == 401
    assert call(port, "/v1/rollback", "POST", token="wrong", body={"to": "1"})[0] == 401
    assert calls == []
    status, body = call(port, "/v1/status", token="s3cret")
    assert status == 200 and json.loads(body) == {"examples": 7}
    status, body = call(port, "/v1/rollback", "POST", token="s3cret", body={"to": "1"})
    assert status == 200 and json.loads(body) == {"from": "3", "to": "1"}
    status, body = call(port, "/v1/rollback", "POST", token="s3cret", body={"to": "404"})
    assert status == 409 and "no version 404" in body
