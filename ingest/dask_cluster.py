"""A Dask cluster on loopback for Beam's DaskRunner: one scheduler and ``workers`` worker processes.

Every process runs detached, in a session of its own, from this environment's Python, so the
workers import the pipeline's code as installed here. Workers have one thread and no nanny: a
worker that dies stays away until ``start`` runs again, which starts every process that does
not run. The scheduler serves ``tcp://127.0.0.1:<port>``; its and the workers' HTTP servers
(no dashboard) take free loopback ports. Pid and log files, and the workers' scratch space,
live under ``<data_dir>`` (``<settings.data_dir>/dask-cluster``), one folder per process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgelake.broker import process_alive
from edgelake.errors import UserError
from edgelake.settings import Settings

SCHEDULER = "scheduler"


class DaskClusterUnavailable(UserError, RuntimeError):
    """The scheduler's port is taken, or the scheduler or a worker did not come up."""


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    pid: int | None
    running: bool
    connected: bool  # the scheduler answers (for the scheduler) or lists this worker


@dataclass(frozen=True)
class DaskClusterStatus:
    address: str
    processes: tuple[ProcessStatus, ...]  # the scheduler, then the workers
    data_dir: Path

    @property
    def ready(self) -> bool:
        return all(p.running and p.connected for p in self.processes)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]


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

    def start(self, timeout_s: float = 60.0) -> DaskClusterStatus:
        """Start the scheduler and every worker that does not run; wait until the scheduler lists every worker.

        If they do not come up, the processes this call started are stopped again.
        """
        scheduler, *workers = self.processes
        launched = []
        if not scheduler.running():
            if _listening(self.port):
                raise DaskClusterUnavailable(f"port {self.port} is taken by another process; set EDGELAKE_DASK_SCHEDULER_PORT")
            scheduler.launch()
            launched.append(scheduler)
        deadline = time.monotonic() + timeout_s
        try:
            _wait_for(lambda: _listening(self.port), deadline, [scheduler])
            for worker in workers:
                if not worker.running():
                    worker.launch()
                    launched.append(worker)
            _wait_for(lambda: self.status().ready, deadline, [scheduler, *workers])
        except DaskClusterUnavailable:
            _terminate(launched[::-1], time.monotonic() + 10)
            raise
        return self.status()

    def stop(self, timeout_s: float = 20.0) -> bool:
        """Stop the workers, those of a larger cluster started before included, then the scheduler; whether any ran.

        Workers go first: a worker told to close by its signal and by the closing scheduler at once can hang.
        """
        workers = [DaskProcess(self, folder.name) for folder in sorted(self.data_dir.glob("worker-*"))]
        deadline = time.monotonic() + timeout_s
        stopped_workers = _terminate(workers, deadline)
        return _terminate([DaskProcess(self, SCHEDULER)], deadline) or stopped_workers

    def status(self) -> DaskClusterStatus:
        scheduler, *workers = self.processes
        listed = self.connected_workers() if scheduler.running() else None
        statuses = [scheduler.status(listed is not None)]
        statuses += [worker.status(listed is not None and worker.name in listed) for worker in workers]
        return DaskClusterStatus(self.address, tuple(statuses), self.data_dir)

    def connected_workers(self, timeout_s: float = 5.0) -> set[str] | None:
        """The names of the workers the scheduler lists; None if it does not answer."""
        from distributed import Client

        try:
            with Client(self.address, timeout=timeout_s, set_as_default=False) as client:
                return {str(info["name"]) for info in client.scheduler_info(n_workers=-1)["workers"].values()}
        except (OSError, TimeoutError):
            return None


@dataclass(frozen=True)
class DaskProcess:
    """The scheduler or one worker of a cluster: a process with a pid file and a log file in a folder of its own."""

    cluster: DaskCluster
    name: str

    @property
    def folder(self) -> Path:
        return self.cluster.data_dir / self.name

    @property
    def log_file(self) -> Path:
        return self.folder / f"{self.name}.log"

    @property
    def _pid_file(self) -> Path:
        return self.folder / "pid.json"

    def command(self) -> list[str]:
        http = ["--no-dashboard", "--dashboard-address", "127.0.0.1:0"]
        if self.name == SCHEDULER:
            return [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(self.cluster.port), *http]
        return [
            sys.executable, "-m", "distributed.cli.dask_worker", self.cluster.address, "--name", self.name, "--host", "127.0.0.1",
            "--nthreads", "1", "--nworkers", "1", "--no-nanny", "--local-directory", str(self.folder), *http,
        ]

    def launch(self) -> int:
        """Start the process in the background, in a session of its own; its pid."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.folder, start_new_session=True
            )
        self._pid_file.write_text(json.dumps({"pid": process.pid}))
        return process.pid

    def pid(self) -> int | None:
        """The pid of the process if it runs."""
        try:
            pid = int(json.loads(self._pid_file.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None
        return pid if process_alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def signal(self, sig: signal.Signals) -> bool:
        """Send ``sig`` to the process's group; False if it does not run."""
        pid = self.pid()
        if pid is None:
            return False
        os.killpg(pid, sig)
        return True

    def kill(self) -> bool:
        """SIGKILL the process, as a crash would, and wait until it is gone; False if it did not run."""
        pid = self.pid()
        if pid is None or not self.signal(signal.SIGKILL):
            return False
        while process_alive(pid):
            time.sleep(0.05)
        return True

    def wait_or_kill(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the process to exit, then SIGKILL it; forget its pid."""
        deadline = time.monotonic() + timeout_s
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.kill()
        self._pid_file.unlink(missing_ok=True)

    def status(self, connected: bool) -> ProcessStatus:
        pid = self.pid()
        return ProcessStatus(self.name, pid, pid is not None, pid is not None and connected)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return f"{self.log_file}:\n{self.log_file.read_text(errors='replace')[-chars:]}"
        except OSError:
            return f"{self.log_file}: no log"


def _terminate(processes: list[DaskProcess], deadline: float) -> bool:
    """SIGTERM the running ``processes``, and SIGKILL those still running at ``deadline``; whether any ran."""
    running = [p for p in processes if p.signal(signal.SIGTERM)]
    for process in running:
        process.wait_or_kill(max(0.0, deadline - time.monotonic()))
    return bool(running)


def _wait_for(ready: Callable[[], bool], deadline: float, watched: list[DaskProcess]) -> None:
    """Poll ``ready()`` until it is true; raise with the logs of ``watched`` if one of them exits or ``deadline`` passes."""
    while not ready():
        exited = [p for p in watched if not p.running()]
        if exited or time.monotonic() > deadline:
            why = f"{', '.join(p.name for p in exited)} exited" if exited else "timed out"
            tails = "\n".join(p.log_tail() for p in (exited or watched))
            raise DaskClusterUnavailable(f"the Dask cluster did not come up ({why}):\n{tails}")
        time.sleep(0.3)


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
