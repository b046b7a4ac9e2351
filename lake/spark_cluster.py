"""A Spark standalone cluster on loopback: one master and ``workers`` workers, for lake and training jobs.

The master and the workers are Spark's own daemons (``org.apache.spark.deploy.master.Master`` and
``…worker.Worker``), JVMs started by the pyspark wheel's ``bin/spark-class`` with its jars, each
detached in a session of its own and bound to ``127.0.0.1``. The master serves
``spark://127.0.0.1:<port>`` and its web UI, whose ``/json`` lists the workers, on ``port + 1``;
worker ``i`` (from 1) listens on ``port + 1 + i`` and offers ``WORKER_CORES`` core and
``WORKER_MEMORY`` to executors, which run this environment's Python. A worker that dies stays away
(its executors with it) until ``start`` runs again. Pid, properties and log files, the workers' work
dirs (executors' logs) and scratch space live under ``<data_dir>`` (``<settings.data_dir>/spark-cluster``),
one folder per daemon.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgelake.daemons import HOST, ClusterStatus, Daemon, java_binary, listening, terminate, wait_for
from edgelake.errors import UserError
from edgelake.settings import Settings

MASTER = "master"
WORKER_CORES = 1
WORKER_MEMORY = "2g"  # what executors may take: the default 1 GiB executor, or up to 2 GiB (spark.executor.memory)
DAEMON_MEMORY = "256m"  # the heap of the master's and workers' own JVMs
MASTER_PROPERTIES = {"spark.master.rest.enabled": "false"}  # no job-submission server (it would take port 6066)
WORKER_PROPERTIES = {"spark.worker.cleanup.enabled": "true"}  # finished applications' work dirs are removed after a week


class SparkClusterUnavailable(UserError, RuntimeError):
    """Java or pyspark's launcher is missing, a port is taken, or the master or a worker did not come up."""


@dataclass(frozen=True)
class SparkCluster:
    """A Spark master on ``127.0.0.1:port`` with ``workers`` workers, state under ``data_dir``."""

    port: int
    data_dir: Path
    workers: int = 2

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UserError(f"a Spark cluster needs at least one worker, not {self.workers}")

    @classmethod
    def from_settings(cls, settings: Settings) -> SparkCluster:
        return cls(settings.spark_cluster_port, settings.data_dir.resolve() / "spark-cluster", settings.spark_cluster_workers)

    @property
    def master_url(self) -> str:
        """What Spark sessions take as their master (``--master`` of the lake and training commands)."""
        return f"spark://{HOST}:{self.port}"

    @property
    def web_ui_url(self) -> str:
        return f"http://{HOST}:{self.port + 1}"

    @property
    def daemons(self) -> list[SparkDaemon]:
        return [SparkDaemon(self, MASTER), *(self.worker(i) for i in range(1, self.workers + 1))]

    def worker(self, number: int) -> SparkDaemon:
        """Worker ``number`` (1 to ``workers``), named ``worker-<number>``."""
        if not 1 <= number <= self.workers:
            raise LookupError(f"the cluster has workers 1 to {self.workers}, not {number}")
        return SparkDaemon(self, f"worker-{number}")

    def start(self, timeout_s: float = 90.0) -> ClusterStatus:
        """Start the master and every worker that does not run; wait until the master lists every worker as alive.

        If they do not come up, the daemons this call started are stopped again.
        """
        master, *workers = self.daemons
        stopped = [daemon for daemon in self.daemons if not daemon.running()]
        taken = [port for daemon in stopped for port in daemon.ports if listening(port)]
        if taken:
            raise SparkClusterUnavailable(
                f"port(s) {', '.join(map(str, taken))} are taken by another process; set EDGELAKE_SPARK_CLUSTER_PORT"
            )
        launched = []
        deadline = time.monotonic() + timeout_s
        try:
            if master in stopped:
                master.launch()
                launched.append(master)
            wait_for(lambda: self.master_state() is not None, deadline, [master], SparkClusterUnavailable, "the Spark cluster")
            for worker in workers:
                if worker in stopped:
                    worker.launch()
                    launched.append(worker)
            wait_for(lambda: self.status().ready, deadline, self.daemons, SparkClusterUnavailable, "the Spark cluster")
        except SparkClusterUnavailable:
            terminate(launched[::-1], time.monotonic() + 10)
            raise
        return self.status()

    def stop(self, timeout_s: float = 20.0) -> bool:
        """Stop the workers (those of a larger cluster started before included), then the master; whether any ran."""
        workers = [SparkDaemon(self, folder.name) for folder in sorted(self.data_dir.glob("worker-*"))]
        deadline = time.monotonic() + timeout_s
        stopped_workers = terminate(workers, deadline)
        return terminate([SparkDaemon(self, MASTER)], deadline) or stopped_workers

    def status(self) -> ClusterStatus:
        """The master joined if it answers, each worker if the master lists it as alive."""
        master, *workers = self.daemons
        state = self.master_state() if master.running() else None
        alive = {w.get("port") for w in state["workers"] if w.get("state") == "ALIVE"} if state is not None else set()
        daemons = [master.status(state is not None, master.port), *(w.status(w.port in alive, w.port) for w in workers)]
        return ClusterStatus(self.master_url, tuple(daemons), self.data_dir)

    def master_state(self, timeout_s: float = 2.0) -> dict[str, Any] | None:
        """The master's view of the cluster (its web UI's ``/json``: workers, applications); None if it does not answer."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
        try:
            with opener.open(f"{self.web_ui_url}/json/", timeout=timeout_s) as response:
                state: dict[str, Any] = json.loads(response.read())
        except (OSError, ValueError):
            return None
        return state


@dataclass(frozen=True)
class SparkDaemon(Daemon):
    """The master or one worker of a cluster: a JVM with its pid, properties and log files in a folder of its own."""

    cluster: SparkCluster
    name: str

    @property
    def port(self) -> int:
        """Its RPC port."""
        return self.cluster.port if self.name == MASTER else self.cluster.port + 1 + int(self.name.removeprefix("worker-"))

    @property
    def ports(self) -> list[int]:
        """The ports it binds to itself (a worker's web UI takes any free one)."""
        return [self.port, self.port + 1] if self.name == MASTER else [self.port]

    @property
    def folder(self) -> Path:
        return self.cluster.data_dir / self.name

    def command(self) -> list[str]:
        """``spark-class`` running the Master or Worker class, with its properties file."""
        spark_class = str(_spark_home() / "bin" / "spark-class")
        common = ["--host", HOST, "--port", str(self.port), "--properties-file", str(self.folder / "spark.properties")]
        if self.name == MASTER:
            return [spark_class, "org.apache.spark.deploy.master.Master", *common, "--webui-port", str(self.port + 1)]
        return [
            spark_class, "org.apache.spark.deploy.worker.Worker", *common, "--webui-port", "0", "--cores", str(WORKER_CORES),
            "--memory", WORKER_MEMORY, "--work-dir", str(self.folder / "work"), self.cluster.master_url,
        ]

    def launch(self) -> int:
        """Start the daemon in the background, in a session of its own; its pid."""
        java_binary(SparkClusterUnavailable)
        self.folder.mkdir(parents=True, exist_ok=True)
        properties = MASTER_PROPERTIES if self.name == MASTER else WORKER_PROPERTIES
        (self.folder / "spark.properties").write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
        env = {
            **os.environ, "SPARK_HOME": str(_spark_home()), "SPARK_LOCAL_IP": HOST, "SPARK_DAEMON_MEMORY": DAEMON_MEMORY,
            "SPARK_LOCAL_DIRS": str(self.folder / "local"), "PYSPARK_PYTHON": sys.executable,
        }
        return self.spawn(self.command(), self.log_file, env)


def _spark_home() -> Path:
    """The pyspark wheel's folder: Spark's jars and launcher scripts."""
    import pyspark

    home = Path(pyspark.__file__).parent
    if not (home / "bin" / "spark-class").exists():
        raise SparkClusterUnavailable(f"pyspark at {home} has no bin/spark-class: reinstall it (pip install --force-reinstall pyspark)")
    return home
