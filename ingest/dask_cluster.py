"""A Dask cluster on loopback for Beam's DaskRunner: one scheduler and ``workers`` worker processes.

Every process runs detached, in a session of its own, from this environment's Python, so the
workers import the pipeline's code as installed here. Workers have one thread and no nanny: a
worker that dies stays away until ``start`` runs again, which starts every process that does
not run. The scheduler serves ``tcp://127.0.0.1:<port>``; its and the workers' HTTP servers
(no dashboard) take free loopback ports. Pid and log files, and the workers' scratch space,
live under ``<data_dir>`` (``<settings.data_dir>/dask-cluster``), one folder per process.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edgelake.daemons import ClusterStatus, Daemon, listening, terminate, wait_for
from edgelake.errors import UserError
from edgelake.settings import Settings

SCHEDULER = "scheduler"


class DaskClusterUnavailable(UserError, RuntimeError):
    """The scheduler's port is taken, or the scheduler or a worker did not come up."""


@dataclass(frozen=True)
class DaskCluster:
    """A Dask scheduler on ``127.0.0.1:port`` and ``workers`` workers, state under ``data_dir``."""

    port: int
    data_dir: Path
    workers: int = 2

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UserError(f"a Dask cluster needs at least one worker, not {self.workers}")

    @classmethod
    def from_settings(cls, settings: Settings) -> DaskCluster:
        return cls(settings.dask_scheduler_port, settings.data_dir.resolve() / "dask-cluster", settings.dask_workers)

    @property
    def address(self) -> str:
        """What Beam's DaskRunner takes as ``--dask_client_address``."""
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def processes(self) -> list[DaskProcess]:
        return [DaskProcess(self, SCHEDULER), *(self.worker(i) for i in range(1, self.workers + 1))]

    def worker(self, number: int) -> DaskProcess:
        """Worker ``number`` (1 to ``workers``), named ``worker-<number>``."""
        if not 1 <= number <= self.workers:
            raise LookupError(f"the cluster has workers 1 to {self.workers}, not {number}")
        return DaskProcess(self, f"worker-{number}")

    def start(self, timeout_s: float = 60.0) -> ClusterStatus:
        """Start the scheduler and every worker that does not run; wait until the scheduler lists every worker.

        If they do not come up, the processes this call started are stopped again.
        """
        scheduler, *workers = self.processes
        launched = []
        if not scheduler.running():
            if listening(self.port):
                raise DaskClusterUnavailable(f"port {self.port} is taken by another process; set EDGELAKE_DASK_SCHEDULER_PORT")
            scheduler.launch()
            launched.append(scheduler)
        deadline = time.monotonic() + timeout_s
        try:
            wait_for(lambda: listening(self.port), deadline, [scheduler], DaskClusterUnavailable, "the Dask cluster")
            for worker in workers:
                if not worker.running():
                    worker.launch()
                    launched.append(worker)
            wait_for(lambda: self.status().ready, deadline, [scheduler, *workers], DaskClusterUnavailable, "the Dask cluster")
        except DaskClusterUnavailable:
            terminate(launched[::-1], time.monotonic() + 10)
            raise
        return self.status()

    def stop(self, timeout_s: float = 20.0) -> bool:
        """Stop the workers, those of a larger cluster started before included, then the scheduler; whether any ran.

        Workers go first: a worker told to close by its signal and by the closing scheduler at once can hang.
        """
        workers = [DaskProcess(self, folder.name) for folder in sorted(self.data_dir.glob("worker-*"))]
        deadline = time.monotonic() + timeout_s
        stopped_workers = terminate(workers, deadline)
        return terminate([DaskProcess(self, SCHEDULER)], deadline) or stopped_workers

    def status(self) -> ClusterStatus:
        """The scheduler joined if it answers, each worker if the scheduler lists it."""
        scheduler, *workers = self.processes
        listed = self.connected_workers() if scheduler.running() else None
        statuses = [scheduler.status(listed is not None)]
        statuses += [worker.status(listed is not None and worker.name in listed) for worker in workers]
        return ClusterStatus(self.address, tuple(statuses), self.data_dir)

    def connected_workers(self, timeout_s: float = 5.0) -> set[str] | None:
        """The names of the workers the scheduler lists; None if it does not answer."""
        from distributed import Client

        try:
            with Client(self.address, timeout=timeout_s, set_as_default=False) as client:
                return {str(info["name"]) for info in client.scheduler_info(n_workers=-1)["workers"].values()}
        except (OSError, TimeoutError):
            return None


@dataclass(frozen=True)
class DaskProcess(Daemon):
    """The scheduler or one worker of a cluster: a daemon in a folder of its own."""

    cluster: DaskCluster
    name: str

    @property
    def folder(self) -> Path:
        return self.cluster.data_dir / self.name

    def command(self) -> list[str]:
        http = ["--no-dashboard", "--dashboard-address", "127.0.0.1:0"]
        if self.name == SCHEDULER:
            return [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(self.cluster.port), *http]
        return [
            sys.executable, "-m", "distributed.cli.dask_worker", self.cluster.address, "--name", self.name, "--host", "127.0.0.1",
            "--nthreads", "1", "--nworkers", "1", "--no-nanny", "--local-directory", str(self.folder), *http,
        ]

    def launch(self) -> int:
        """Start the process in the background; its pid."""
        return self.spawn(self.command(), self.log_file)

