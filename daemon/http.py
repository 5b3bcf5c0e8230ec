"""One HTTP port: `/metrics`, `/healthz` (liveness), `/readyz` (readiness) and the admin API.

The admin API (`/admin/...`) is off unless `server.admin_token` is set, and then requires
`Authorization: Bearer <token>`. Liveness never depends on a running cycle, so a long training
run cannot get the pod restarted.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("ticketune.http")

MAX_BODY_BYTES = 64 * 1024


class AdminError(Exception):
    """An admin request that cannot be done; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Endpoints:
    """What the HTTP server asks the service; each callable returns JSON-ready data."""

    status: Callable[[], dict]
    ready: Callable[[], tuple[bool, dict]]
    admin_actions: dict[str, Callable[[dict], dict]]
    admin_token: str | None = None


def _handler(endpoints: Endpoints) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "ticketune"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
            log.debug("http %s", format % args)

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: object) -> None:
            self._send(status, (json.dumps(data, default=str) + "\n").encode())

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._json(200, {"status": "ok"})
            elif path == "/readyz":
                ok, details = endpoints.ready()
                self._json(200 if ok else 503, {"ready": ok, **details})
            elif path == "/admin/status":
                if self._authorised():
                    self._json(200, endpoints.status())
            else:
                self._json(404, {"error": f"no such endpoint {path}"})

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            path = self.path.split("?", 1)[0]
            action = path.removeprefix("/admin/")
            if not path.startswith("/admin/") or action not in endpoints.admin_actions:
                self._json(404, {"error": f"no such endpoint {path}"})
                return
            if not self._authorised():
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._json(413, {"error": "request body too large"})
                return
            try:
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                if not isinstance(body, dict):
                    raise AdminError(400, "the request body must be a JSON object")
                self._json(200, endpoints.admin_actions[action](body))
            except json.JSONDecodeError:
                self._json(400, {"error": "the request body is not valid JSON"})
            except AdminError as exc:
                self._json(exc.status, {"error": str(exc)})
            except Exception as exc:  # an admin call must never take the server down
                log.exception("admin %s failed", action)
                self._json(500, {"error": f"{type(exc).__name__}: {exc}"})

        def _authorised(self) -> bool:
            token = endpoints.admin_token
            if not token:
                self._json(403, {"error": "the admin API is off: set server.admin_token to enable it"})
                return False
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                self._json(401, {"error": "missing or wrong admin token"})
                return False
            return True

    return Handler


def start_http_server(host: str, port: int, endpoints: Endpoints) -> ThreadingHTTPServer:
    """Serves in a daemon thread; `server.server_address[1]` is the bound port (port 0 picks one)."""
    server = ThreadingHTTPServer((host, port), _handler(endpoints))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
