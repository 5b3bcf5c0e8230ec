"""A loopback TCP proxy in front of a real `mlflow server` that a test can cut at a chosen request.

Bytes pass through unchanged; the proxy only reads the request lines going upstream, so that a cut
can land exactly after (or on) one REST call, e.g. `POST /api/2.0/mlflow/model-versions/create`.
While it is cut, every new connection is accepted and reset at once, and every kept-alive
connection is reset on its next request: to the client that is an MLflow server that went away.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time

from harness import free_port

_REQUEST_LINE = re.compile(rb"(GET|POST|PUT|PATCH|DELETE|HEAD) (\S+) HTTP/1\.[01]\r\n")


def _reset(sock: socket.socket) -> None:
    """Closes with an RST (SO_LINGER 0): the peer sees `connection reset`, not a clean end."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class MlflowProxy:
    """`url` forwards to `127.0.0.1:upstream_port` until `cut_now()`, or until the request that
    `cut_after(pattern)` names has had its answer forwarded (`cut_on(pattern)`: that request itself
    is refused); `restore()` lets traffic through again."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[float, str, str]] = []  # (monotonic time, method, path) forwarded upstream
        self.refused = 0  # connections or requests reset while cut
        self.cut_at: float | None = None  # monotonic time the current outage began
        self.cut_reason = ""
        self._down = threading.Event()
        self._after: re.Pattern | None = None
        self._on: re.Pattern | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._listener.settimeout(0.5)
        self._thread = threading.Thread(target=self._accept_loop, name="mlflow-proxy", daemon=True)
        self._thread.start()

    # ---- control -------------------------------------------------------------------------

    @property
    def down(self) -> bool:
        return self._down.is_set()

    def cut_now(self, reason: str = "cut by the test") -> None:
        with self._lock:
            if not self._down.is_set():
                self.cut_at, self.cut_reason = time.monotonic(), reason
                self._down.set()

    def cut_after(self, path_pattern: str) -> None:
        """Cut as soon as the answer to the first request whose `METHOD path` matches has gone back."""
        self._after = re.compile(path_pattern.encode())

    def cut_on(self, path_pattern: str) -> None:
        """Cut when the first request whose `METHOD path` matches arrives: it never reaches MLflow."""
        self._on = re.compile(path_pattern.encode())

    def restore(self) -> None:
        with self._lock:
            self._after = self._on = None
            self._down.clear()

    def seen(self, path_pattern: str) -> list[str]:
        regex = re.compile(path_pattern)
        return [f"{method} {path}" for _, method, path in self.requests if regex.search(f"{method} {path}")]

    def close(self) -> None:
        self._closing.set()
        self._listener.close()
        self._thread.join(timeout=5)

    # ---- plumbing ------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.down:
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            connection = {"cut_after_answer": False}
            threading.Thread(target=self._upstream_pump, args=(client, upstream, connection), daemon=True).start()
            threading.Thread(target=self._downstream_pump, args=(upstream, client, connection), daemon=True).start()

    def _upstream_pump(self, client: socket.socket, upstream: socket.socket, connection: dict) -> None:
        """Client → MLflow; reads the request lines to find the cut point."""
        tail = b""
        try:
            while True:
                chunk = client.recv(65536)
                if not chunk:
                    break
                if self.down:
                    self.refused += 1
                    break
                window = tail + chunk
                for match in _REQUEST_LINE.finditer(window):
                    if match.end() <= len(tail):
                        continue  # seen in the previous chunk already
                    method, path = match.group(1), match.group(2)
                    line = method + b" " + path
                    if self._on is not None and self._on.search(line):
                        self.cut_now(f"on {line.decode()}")
                        self.refused += 1
                        raise ConnectionAbortedError
                    self.requests.append((time.monotonic(), method.decode(), path.decode()))
                    if self._after is not None and self._after.search(line):
                        connection["cut_after_answer"] = True
                tail = window[-512:]
                upstream.sendall(chunk)
        except OSError:
            pass
        _reset(client)
        _reset(upstream)

    def _downstream_pump(self, upstream: socket.socket, client: socket.socket, connection: dict) -> None:
        """MLflow → client; the first answer bytes after the cut-after request start the outage."""
        try:
            while True:
                chunk = upstream.recv(65536)
                if not chunk:
                    break
                client.sendall(chunk)
                if connection["cut_after_answer"] and b"\r\n\r\n" in chunk:
                    connection["cut_after_answer"] = False
                    self.cut_now("after the answer to the chosen request")
        except OSError:
            _reset(client)
            _reset(upstream)
            return
        # MLflow closed an idle kept-alive connection: a clean close, as the server itself would make
        for sock in (client, upstream):
            try:
                sock.close()
            except OSError:
                pass
