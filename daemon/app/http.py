"""One HTTP port: `/metrics`, `/healthz` (liveness), `/readyz` (readiness) and the admin API.

The admin API (`/v1/...`, described by `GET /v1/openapi.json`) is off unless `server.admin_token`
is set: then every admin path answers 403. With a token it requires `Authorization: Bearer <token>`
(compared in constant time). Errors are `{"error": {"code": ..., "message": ...}}`. Liveness never
depends on a running cycle, so a long training run cannot get the pod restarted.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema

log = logging.getLogger("ticketune.http")

MAX_BODY_BYTES = 64 * 1024
DRAIN_LIMIT_BYTES = 1024 * 1024
API_VERSION = "1"
VERSION_PATTERN = r"^[0-9]+$"
_QUERY = re.compile(r"\?[^\s\"]*")


class AdminError(Exception):
    """An admin request that cannot be done; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _code_for(status)


def _code_for(status: int) -> str:
    return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")


# request and response bodies (validated with these; the OpenAPI document is generated from them) -----
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CycleRequest(_Body):
    """Start a retrain cycle now."""

    force: bool = Field(default=False, description="ignore schedule.min_new_examples")


class PromoteRequest(_Body):
    """Make `version` the champion."""

    version: str = Field(pattern=VERSION_PATTERN, description="registered model version, e.g. \"3\"")
    reason: str = Field(default="admin API", min_length=1, max_length=500)
    force: bool = Field(default=False, description="promote even a version the gate rejected (recorded as forced)")


class RollbackRequest(_Body):
    """Move the champion back: to the champion before the current one, or to `to`."""

    to: str | None = Field(default=None, pattern=VERSION_PATTERN)
    reason: str = Field(default="admin API", min_length=1, max_length=500)
    force: bool = Field(default=False, description="allow a version the gate rejected as `to` (recorded)")


class ApproveRequest(_Body):
    """Approve a candidate awaiting approval (gate.approval: manual) and promote it."""

    version: str = Field(pattern=VERSION_PATTERN)
    reason: str = Field(default="admin API", min_length=1, max_length=500)


class MoveResponse(BaseModel):
    """A champion move as the champion keeper records it."""

    model_config = ConfigDict(populate_by_name=True)
    action: str = Field(description="promote, approve or rollback")
    previous: str | None = Field(alias="from")
    current: str | None = Field(alias="to")
    moved: bool = Field(description="false when the version already was the champion")
    forced: bool
    serving: dict[str, str] = Field(description="outcome per serving target")


class CycleAccepted(BaseModel):
    accepted: bool = True
    force: bool
    cycle_id: str | None = Field(description="the cycle this request runs (a resumed one keeps its own id); null "
                                             "only when it was not planned within 30 s (the registry is slow)")
    cycle_url: str | None = Field(description="`GET` it to follow the cycle: `/v1/cycles/<cycle_id>`")
    status_url: str = "/v1/status"


class CycleRecord(BaseModel):
    """One cycle as the store's journal records it (`last_cycle` in `/v1/status` has the same shape)."""

    model_config = ConfigDict(extra="allow")
    cycle_id: str
    trigger: str = Field(description="schedule, admin, cli, restart")
    verdict: str = Field(description="running, then promoted, rejected, awaiting_approval, skipped or failed")
    started_at: str
    ended_at: str | None
    attempts: int | None = Field(default=None, description="2 and more: resumed from the checkpoints of the last")
    model_version: str | None = None
    reasons: list[str]
    metrics: dict


class HistoryResponse(BaseModel):
    versions: list[dict] = Field(description="registered versions, newest first, as `ticketune history --json`")


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. unauthorized, version_not_found, cycle_running")
    message: str
    details: list[dict] | None = Field(default=None, description="validation problems (422)")


class ErrorResponse(BaseModel):
    error: ErrorDetail


@dataclass(frozen=True)
class Route:
    method: str
    action: str  # the key in Endpoints.admin_actions ("status" is Endpoints.status)
    summary: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    success: int = 200
    conflicts: str | None = None  # what a 409 means here, for the document


ADMIN_ROUTES: dict[str, Route] = {
    "/v1/status": Route("GET", "status", "Store counts, champion, last cycle, ingest and schedule state"),
    "/v1/history": Route("GET", "history", "Registered adapter versions, newest first", response=HistoryResponse),
    "/v1/cycles": Route("POST", "cycle", "Start a retrain cycle now", CycleRequest, CycleAccepted, 202,
                        "a cycle is already running"),
    "/v1/cycles/{cycle_id}": Route("GET", "cycle_status", "One cycle: running, then its verdict and reasons",
                                   response=CycleRecord),
    "/v1/promote": Route("POST", "promote", "Make a version the champion", PromoteRequest, MoveResponse, 200,
                         "the promotion is refused (rejected or incomplete version without force)"),
    "/v1/rollback": Route("POST", "rollback", "Move the champion back", RollbackRequest, MoveResponse, 200,
                          "nothing to roll back to, or the target is refused"),
    "/v1/approve": Route("POST", "approve", "Approve a candidate awaiting approval and promote it",
                         ApproveRequest, MoveResponse, 200, "the version is not awaiting approval"),
}
PUBLIC_GETS = ("/metrics", "/healthz", "/readyz", "/v1/openapi.json")
_PATH_PARAMETER = re.compile(r"\{(\w+)\}")


def resolve_route(path: str) -> tuple[Route | None, dict[str, str]]:
    """The admin route `path` names and its path parameters (`/v1/cycles/c-1` → cycle_id c-1)."""
    if path in ADMIN_ROUTES:
        return ADMIN_ROUTES[path], {}
    for template, route in ADMIN_ROUTES.items():
        pattern = _PATH_PARAMETER.sub(lambda m: f"(?P<{m[1]}>[A-Za-z0-9._-]+)", template)
        if "(?P<" in pattern and (found := re.fullmatch(pattern, path)):
            return route, found.groupdict()
    return None, {}


@dataclass
class Endpoints:
    """What the HTTP server asks the service; each callable returns JSON-ready data.

    `admin_actions` maps a route's action ("cycle", "cycle_status", "promote", "rollback", "approve",
    "history") to a callable taking the validated request body and the path's parameters as one dict;
    one that is missing answers 404.
    """

    status: Callable[[], dict]
    ready: Callable[[], tuple[bool, dict]]
    admin_actions: dict[str, Callable[[dict], dict]] = field(default_factory=dict)
    admin_token: str | None = None


def openapi_document() -> dict:
    """The OpenAPI 3.1 document of the admin API, with schemas generated from the request models."""
    models = [(m, "validation") for m in (CycleRequest, PromoteRequest, RollbackRequest, ApproveRequest)]
    models += [(m, "serialization") for m in (MoveResponse, CycleAccepted, CycleRecord, HistoryResponse,
                                              ErrorResponse)]
    _, top = models_json_schema(models, ref_template="#/components/schemas/{model}")
    schemas = top.get("$defs", {})

    def ref(model: type[BaseModel]) -> dict:
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def error(description: str) -> dict:
        return {"description": description, "content": {"application/json": {"schema": ref(ErrorResponse)}}}

    paths: dict[str, dict] = {}
    for path, route in ADMIN_ROUTES.items():
        ok_schema = ref(route.response) if route.response else {"type": "object", "additionalProperties": True}
        responses = {
            str(route.success): {"description": "done" if route.success == 200 else "accepted",
                                 "content": {"application/json": {"schema": ok_schema}}},
            "401": error("missing or wrong bearer token"),
            "403": error("the admin API is off (server.admin_token is not set)"),
            "405": error("wrong method"),
        }
        operation: dict = {"summary": route.summary, "operationId": route.action, "security": [{"bearerAuth": []}],
                           "responses": responses}
        if route.request is not None:
            operation["requestBody"] = {"required": False,
                                        "content": {"application/json": {"schema": ref(route.request)}}}
            responses["400"] = error("the body is not valid JSON")
            responses["413"] = error(f"the body is larger than {MAX_BODY_BYTES} bytes")
            responses["422"] = error("the body is JSON but not a valid request")
        if route.action in ("promote", "rollback", "approve"):
            responses["404"] = error("no such model version")
            responses["503"] = error("the registry (MLflow) is unreachable")
        if route.conflicts:
            responses["409"] = error(route.conflicts)
        names = _PATH_PARAMETER.findall(path)
        if names:
            operation["parameters"] = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                                       for name in names]
            responses["404"] = error(f"no such {names[0].replace('_id', '')}")
        paths[path] = {route.method.lower(): operation}
    paths["/v1/openapi.json"] = {"get": {"summary": "This document", "operationId": "openapi", "security": [],
                                         "responses": {"200": {"description": "OpenAPI 3.1 document"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "ticketune admin API", "version": API_VERSION,
                 "description": "Operate the ticketune service: status, cycles, champion moves, history. "
                                "Off unless server.admin_token is set."},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                                          "description": "server.admin_token"}}},
        "security": [{"bearerAuth": []}],
    }


def _handler(endpoints: Endpoints) -> type[BaseHTTPRequestHandler]:
    openapi = json.dumps(openapi_document()).encode()

    class Handler(BaseHTTPRequestHandler):
        server_version = "ticketune"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
            # without the query string: a token sent there by mistake must not reach the log
            log.debug("http %s", _QUERY.sub("?...", format % args))

        def _send(self, status: int, body: bytes, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: object, headers: dict[str, str] | None = None) -> None:
            self._send(status, (json.dumps(data, default=str) + "\n").encode(), headers=headers)

        def _error(self, status: int, message: str, code: str | None = None, *, details: list | None = None,
                   headers: dict[str, str] | None = None) -> None:
            error: dict = {"code": code or _code_for(status), "message": message}
            if details is not None:
                error["details"] = details
            self._json(status, {"error": error}, headers)

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._json(200, {"status": "ok"})
            elif path == "/readyz":
                ok, details = endpoints.ready()
                self._json(200 if ok else 503, {"ready": ok, **details})
            elif path == "/v1/openapi.json":
                self._send(200, openapi)
            else:
                self._admin("GET", path)

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            self._admin("POST", self.path.split("?", 1)[0])

        def do_PUT(self) -> None:  # noqa: N802 - stdlib name
            self._admin("PUT", self.path.split("?", 1)[0])

        def do_PATCH(self) -> None:  # noqa: N802 - stdlib name
            self._admin("PATCH", self.path.split("?", 1)[0])

        def do_DELETE(self) -> None:  # noqa: N802 - stdlib name
            self._admin("DELETE", self.path.split("?", 1)[0])

        def _admin(self, method: str, path: str) -> None:
            route, parameters = resolve_route(path)
            if route is None or (route.action != "status" and route.action not in endpoints.admin_actions):
                if method != "GET" and path in PUBLIC_GETS:
                    self._error(405, f"{path} allows GET", headers={"Allow": "GET"})
                else:
                    self._error(404, f"no such endpoint {path}", "not_found")
                return
            if not self._authorised():  # before the method check: with the API off, every admin path is 403
                return
            if method != route.method:
                self._error(405, f"{path} allows {route.method}", headers={"Allow": route.method})
                return
            body = self._body(route)
            if body is None:
                return
            try:
                if route.action == "status":
                    result = endpoints.status()
                else:
                    result = endpoints.admin_actions[route.action](body | parameters)
                self._json(route.success, result)
            except AdminError as exc:
                self._error(exc.status, str(exc), exc.code)
            except Exception as exc:  # an admin call must never take the server down
                log.exception("admin %s failed", route.action)
                self._error(500, f"{type(exc).__name__}: {exc}", "internal_error")

        def _body(self, route: Route) -> dict | None:
            """The validated request body as a dict, or None after answering 400/413/422."""
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self._error(400, "Content-Length is not a number", "bad_request")
                return None
            if length > MAX_BODY_BYTES:
                self.rfile.read(min(length, DRAIN_LIMIT_BYTES))  # so the client reads the answer, not a reset
                self.close_connection = True  # what is left unread must not be taken for the next request
                self._error(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", "payload_too_large")
                return None
            raw = self.rfile.read(length) if length > 0 else b""
            if route.request is None:
                return {}
            try:
                data = json.loads(raw) if raw.strip() else {}
            except (json.JSONDecodeError, UnicodeDecodeError):
                self._error(400, "the request body is not valid JSON", "invalid_json")
                return None
            try:
                return route.request.model_validate(data).model_dump()
            except ValidationError as exc:
                details = [{"field": ".".join(str(p) for p in err["loc"]) or "<body>", "problem": err["msg"]}
                           for err in exc.errors(include_url=False)]
                message = "; ".join(f"{d['field']}: {d['problem']}" for d in details)
                self._error(422, f"invalid request: {message}", "validation_error", details=details)
                return None

        def _authorised(self) -> bool:
            token = endpoints.admin_token
            if not token:
                self._error(403, "the admin API is off: set server.admin_token to enable it", "admin_api_off")
                return False
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                self._error(401, "missing or wrong admin token", "unauthorized",
                            headers={"WWW-Authenticate": 'Bearer realm="ticketune"'})
                return False
            return True

    return Handler


def start_http_server(host: str, port: int, endpoints: Endpoints) -> ThreadingHTTPServer:
    """Serves in a daemon thread; `server.server_address[1]` is the bound port (port 0 picks one)."""
    server = ThreadingHTTPServer((host, port), _handler(endpoints))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
