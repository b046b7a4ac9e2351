"""Detached daemons on loopback (the embedded broker's nodes, the Spark and Dask clusters' processes).

Each daemon leads a process group of its own, started from a folder of its own that holds its pid
file and its log, so any later command can find, signal or stop it, and a SIGKILL takes its
children (a Spark worker's executors) with it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


@dataclass(frozen=True)
class DaemonStatus:
    name: str
    pid: int | None  # None when it does not run
    joined: bool  # it runs and its cluster counts it: the leader answers, or the leader lists this worker
    port: int | None = None  # the port it serves, where it has a fixed one

    @property
    def running(self) -> bool:
        return self.pid is not None


@dataclass(frozen=True)
class ClusterStatus:
    """A cluster of daemons: its leader (a master, a scheduler) first, then its workers."""

    address: str  # what jobs take to run on the cluster
    daemons: tuple[DaemonStatus, ...]
    data_dir: Path  # pid files and logs, one folder per daemon

    @property
    def ready(self) -> bool:
        return all(d.joined for d in self.daemons)

    @property
    def pids(self) -> list[int]:
        return [d.pid for d in self.daemons if d.pid is not None]

    @property
    def joined_workers(self) -> int:
        return sum(d.joined for d in self.daemons[1:])


class Daemon:
    """A daemon's pid file, log and signals; a subclass (a frozen dataclass) gives its ``folder``, named after it."""

    @property
    def folder(self) -> Path:
        raise NotImplementedError

    @property
    def log_file(self) -> Path:
        return self.folder / f"{self.folder.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.folder / "pid.json"

    def spawn(self, command: Sequence[str], output: Path, env: Mapping[str, str] | None = None) -> int:
        """Run ``command`` in the background from ``folder``, in a session of its own, its output appended to ``output``; its pid."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with output.open("ab") as log:
            process = subprocess.Popen(
                list(command), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.folder,
                env=None if env is None else dict(env), start_new_session=True,
            )
        self.pid_file.write_text(json.dumps({"pid": process.pid}))
        return process.pid

    def pid(self) -> int | None:
        """The daemon's pid if it runs."""
        try:
            pid = int(json.loads(self.pid_file.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None
        return pid if process_alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def signal(self, sig: signal.Signals) -> bool:
        """Send ``sig`` to the daemon's process group; False if it does not run."""
        pid = self.pid()
        if pid is None:
            return False
        os.killpg(pid, sig)
        return True

    def kill(self) -> bool:
        """SIGKILL the daemon's process group, as a crash would, and wait until it is gone; False if it did not run."""
        pid = self.pid()
        if pid is None or not self.signal(signal.SIGKILL):
            return False
        while process_alive(pid):
            time.sleep(0.05)
        return True

    def wait_or_kill(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the daemon to exit, then SIGKILL it; forget its pid."""
        deadline = time.monotonic() + timeout_s
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.kill()
        self.pid_file.unlink(missing_ok=True)

    def status(self, joined: bool, port: int | None = None) -> DaemonStatus:
        """Whether it runs, and ``joined``: whether its cluster counts it (only if it runs)."""
        pid = self.pid()
        return DaemonStatus(self.folder.name, pid, pid is not None and joined, port)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return f"{self.log_file}:\n{self.log_file.read_text(errors='replace')[-chars:]}"
        except OSError:
            return f"{self.log_file}: no log"


def terminate(daemons: Sequence[Daemon], deadline: float) -> bool:
    """SIGTERM the running ``daemons``, and SIGKILL those still running at ``deadline``; whether any ran."""
    running = [d for d in daemons if d.signal(signal.SIGTERM)]
    for daemon in running:
        daemon.wait_or_kill(max(0.0, deadline - time.monotonic()))
    return bool(running)


def wait_for(ready: Callable[[], bool], deadline: float, watched: Sequence[Daemon], error: type[Exception], what: str) -> None:
    """Poll ``ready()`` until it is true; raise ``error`` with the logs of ``watched`` if one of them exits or ``deadline`` passes."""
    while not ready():
        exited = [d for d in watched if not d.running()]
        if exited or time.monotonic() > deadline:
            why = f"{', '.join(d.folder.name for d in exited)} exited" if exited else "timed out"
            tails = "\n".join(d.log_tail() for d in (exited or watched))
            raise error(f"{what} did not come up ({why}):\n{tails}")
        time.sleep(0.3)


def java_binary(error: type[Exception]) -> str:
    """The ``java`` of ``JAVA_HOME`` or the ``PATH``; ``error`` if there is none."""
    java_home = os.environ.get("JAVA_HOME")
    binary = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not binary or not Path(binary).exists():
        raise error("Java is not installed: run `make setup` (Debian package openjdk-17-jre-headless)")
    return binary


def listening(port: int) -> bool:
    """Whether something accepts connections on ``127.0.0.1:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


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
