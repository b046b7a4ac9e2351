"""The embedded broker: Apache Kafka in KRaft mode on loopback, when no Kafka cluster is configured.

Each node is one JVM that is both broker and controller, run from the jars the install step
fetched with Maven (``edgelake.jars``). One node is the default; three make a real quorum
with replicated topics. Node ``i`` (from 0) of a cluster at ``port`` serves clients on
``port + i`` and its controller on ``port + brokers + i``; its configuration, data, pid and
log file live under ``<data_dir>/node-<id>``, formatted on its first start.
"""

from __future__ import annotations

import base64
import random
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from edgelake.daemons import Daemon, DaemonStatus, java_binary, listening, terminate
from edgelake.errors import UserError
from edgelake.jars import classpath
from edgelake.kafka import ensure_topics, wait_until_ready
from edgelake.settings import Settings

HEAP_MB = 1024  # per node: ample for loopback loads; a three-node cluster takes 3 GiB of a 24 GB machine
MAX_NODES = 9


class BrokerUnavailable(UserError, RuntimeError):
    """Java or Kafka's jars are missing, a port is taken, or the broker did not come up."""


@dataclass(frozen=True)
class BrokerStatus:
    bootstrap_servers: str
    nodes: tuple[DaemonStatus, ...]  # a node joined when it answers on its port
    data_dir: Path

    @property
    def running(self) -> bool:
        return all(node.running for node in self.nodes)

    @property
    def answering(self) -> bool:
        return all(node.joined for node in self.nodes)

    @property
    def pids(self) -> list[int]:
        return [node.pid for node in self.nodes if node.pid is not None]


@dataclass(frozen=True)
class EmbeddedBroker:
    """Apache Kafka on ``127.0.0.1``: ``brokers`` nodes from ``port`` on, state under ``data_dir``, jars from ``jars_dir``."""

    port: int
    data_dir: Path
    jars_dir: Path
    brokers: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.brokers <= MAX_NODES:
            raise UserError(f"an embedded cluster has 1 to {MAX_NODES} brokers, not {self.brokers}")

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbeddedBroker:
        folder = settings.data_dir.resolve() / "broker" / f"kafka-{settings.broker_count}"
        return cls(settings.broker_port, folder, settings.jars_path.resolve(), settings.broker_count)

    @property
    def nodes(self) -> list[KafkaNode]:
        return [KafkaNode(self, node_id) for node_id in range(1, self.brokers + 1)]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        """The node with Kafka's ``node_id`` (1 to ``brokers``)."""
        if not 1 <= node_id <= self.brokers:
            raise LookupError(f"the embedded cluster has nodes 1 to {self.brokers}, not {node_id}")
        return KafkaNode(self, node_id)

    def start(self, timeout_s: float = 90.0) -> BrokerStatus:
        """Start every node that does not run, formatting new ones; wait until all brokers answer."""
        current = self.status()
        if current.running and current.answering:
            return current
        stopped = [node for node in self.nodes if not node.running()]
        taken = [port for node in stopped for port in (node.port, node.controller_port) if listening(port)]
        if taken:
            raise BrokerUnavailable(
                f"port(s) {', '.join(map(str, taken))} are taken by another process; set EDGELAKE_BROKER_PORT "
                "(or EDGELAKE_BROKER_COUNT if an embedded cluster of another size runs) or EDGELAKE_KAFKA_BOOTSTRAP_SERVERS"
            )
        for node in stopped:
            node.launch()
        try:
            wait_until_ready(self.bootstrap_servers, timeout_s, brokers=self.brokers)
        except TimeoutError as error:
            tails = "\n".join(node.log_tail() for node in stopped)
            self.stop()
            raise BrokerUnavailable(f"Apache Kafka did not come up: {error}\n{tails}") from None
        return self.status()

    def stop(self, timeout_s: float = 20.0) -> bool:
        """Stop every node (data is kept); return whether any was running."""
        return terminate(self.nodes, time.monotonic() + timeout_s)

    def status(self) -> BrokerStatus:
        nodes = (node.status(listening(node.port), node.port) for node in self.nodes)
        return BrokerStatus(self.bootstrap_servers, tuple(nodes), self.data_dir)

    def cluster_id(self) -> str:
        """The cluster's id, made on first use: a UUID in Kafka's 22-character base64url form."""
        path = self.data_dir / "cluster.id"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
        return path.read_text().strip()

    def java(self) -> list[str]:
        """The ``java`` command with Kafka's jars on its classpath."""
        binary = java_binary(BrokerUnavailable)
        try:
            return [binary, "-cp", classpath(self.jars_dir, "kafka")]
        except RuntimeError as error:
            raise BrokerUnavailable(str(error)) from None


@dataclass(frozen=True)
class KafkaNode(Daemon):
    """One node of an embedded cluster: an Apache Kafka JVM that is broker and controller."""

    cluster: EmbeddedBroker
    node_id: int

    @property
    def port(self) -> int:
        return self.cluster.port + self.node_id - 1

    @property
    def controller_port(self) -> int:
        return self.cluster.port + self.cluster.brokers + self.node_id - 1

    @property
    def folder(self) -> Path:
        return self.cluster.data_dir / f"node-{self.node_id}"

    @property
    def log_file(self) -> Path:
        return self.folder / "server.log"

    def launch(self) -> int:
        """Start this node's JVM in the background (formatting its storage first if new); its pid."""
        self.folder.mkdir(parents=True, exist_ok=True)
        properties = self.folder / "server.properties"
        properties.write_text(self._server_properties())
        (self.folder / "log4j2.properties").write_text(_LOG4J2.format(log=self.log_file))
        java = self.cluster.java()
        with (self.folder / "stdout.log").open("ab") as out:
            if not (self.folder / "data" / "meta.properties").exists():
                formatted = subprocess.run(
                    [*java, "kafka.tools.StorageTool", "format", "--ignore-formatted", f"--cluster-id={self.cluster.cluster_id()}", f"--config={properties}"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False,
                )
                if formatted.returncode != 0:
                    raise BrokerUnavailable(f"formatting Kafka's storage failed; see {self.folder / 'stdout.log'}")
            jvm = [
                f"-Xms{HEAP_MB}m", f"-Xmx{HEAP_MB}m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.folder / 'log4j2.properties'}", f"-Dkafka.logs.dir={self.folder}",
            ]
        return self.spawn([java[0], *jvm, *java[1:], "kafka.Kafka", str(properties)], self.folder / "stdout.log")

    def _server_properties(self) -> str:
        nodes = self.cluster.nodes
        replication = min(3, len(nodes))
        min_isr = max(1, replication - 1)
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)
        settings = {
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": self.folder / "data",
            "auto.create.topics.enable": "false",  # topics are created with their partition counts (edgelake.kafka.ensure_topics)
            "default.replication.factor": replication,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replication,
            "offsets.topic.num.partitions": 4,
            "transaction.state.log.replication.factor": replication,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": 4,
            "share.coordinator.state.topic.replication.factor": replication,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": 0,
        }
        return "".join(f"{key}={value}\n" for key, value in settings.items())


_LOG4J2 = """\
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def configured_servers(settings: Settings) -> str:
    """The configured cluster, or the embedded broker's loopback addresses; nothing is started or waited for."""
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
    """A loopback port nobody listens on right now (see ``free_ports``)."""
    return free_ports(1)


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback ports that can be bound right now.

    They are picked below the kernel's ephemeral range: a port inside it can be taken as the local
    end of some outgoing connection between this check and the server's own bind.
    """
    ephemeral_low = _ephemeral_port_low()
    for _ in range(200):
        first = random.randrange(_LOWEST_PICKED_PORT, ephemeral_low - count)
        if all(_bindable(first + i) for i in range(count)):
            return first
    raise BrokerUnavailable(f"no {count} consecutive free loopback ports found below {ephemeral_low}")


_LOWEST_PICKED_PORT = 10000


def _ephemeral_port_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default
    return max(low, _LOWEST_PICKED_PORT + 1000)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Kafka and uvicorn bind: a TIME_WAIT leftover is no obstacle
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
