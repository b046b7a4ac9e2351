"""Idle cost: the API server, the ingester loop and an edge agent, left idle against Apache Kafka, each use under 5% of a core.

The three run as a user runs them, concurrently, each pointed at the session's broker:
``edgelake serve`` (its card feed reading the transactions topic), ``edgelake ingest run``
(no ``--once``, every topic) and ``python -m edge run``, enrolled, its model installed,
publishing to Kafka directly. The agent's camera has no "no frames" mode, so it runs at
0.01 frames a second (the lowest ``--fps``): its first frame comes as soon as the model is
active — the ingester lands it in the lake during the warm-up — and the next one 100 s
later, after the measured window. Heartbeats go on every 5 s, as by default.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx2

from edgelake.broker import free_port
from edgelake.settings import Settings
from support import command_env
from tests.edge.conftest import Cloud, main_python, start_agent, wait_for

IDLE_S = 60.0
SETTLE_S = 10.0  # after each is up and has done its first work: start-up is not idle
MAX_CORE_SHARE = 0.05
FPS = "0.01"


def test_idle_api_ingester_and_agent_each_use_under_five_percent_of_a_core(settings: Settings, vision_run, tmp_path: Path) -> None:
    env = command_env(settings, EDGELAKE_LOG_FORMAT="json")
    port = free_port()
    cloud = Cloud(settings, port, f"http://127.0.0.1:{port}", stop_api=lambda: None, start_api=lambda: None)
    version = cloud.publish(vision_run.files, vision_run.extra)
    logs = tmp_path / "logs"
    logs.mkdir()
    with ExitStack() as running:
        api = running.enter_context(_process([sys.executable, "-m", "edgelake", "serve", "--host", "127.0.0.1", "--port", str(port)], env, logs / "api.log"))
        ingester = running.enter_context(
            _process([sys.executable, "-m", "edgelake", "ingest", "run"], env, logs / "ingester.log")
        )
        wait_for(lambda: _card_feed_partitions(cloud.url) > 0, "the API's card feed to read the transactions topic", timeout_s=90)
        agent = start_agent(
            main_python(), cloud, "idle-1", tmp_path / "device", "--fps", FPS,
            env={"EDGELAKE_EDGE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers, "EDGELAKE_TOPIC_PREFIX": settings.topic_prefix},
        )
        running.callback(_stop, agent.process)
        wait_for(lambda: agent.active() == version, "the agent to install its model", timeout_s=90, agent=agent)
        wait_for(lambda: "batch committed" in (logs / "ingester.log").read_text(), "the ingester to land the agent's first result", timeout_s=90)
        time.sleep(SETTLE_S)

        processes = {"API server": api, "ingester": ingester, "edge agent": agent.process}
        before = {name: _tree_cpu_s(process.pid) for name, process in processes.items()}
        started = time.monotonic()
        time.sleep(IDLE_S)
        seconds = time.monotonic() - started
        after = {name: _tree_cpu_s(process.pid) for name, process in processes.items()}
        exited = {name: process.returncode for name, process in processes.items() if process.poll() is not None}
        assert not exited, f"exited while idle: {exited}; logs in {logs} and {agent.state_dir}"

    shares = {name: (after[name] - before[name]) / seconds for name in processes}
    figures = ", ".join(f"{name} {share:.1%} ({after[name] - before[name]:.2f} s CPU)" for name, share in shares.items())
    print(f"idle CPU over {seconds:.0f} s: {figures}")
    busy = {name: share for name, share in shares.items() if share >= MAX_CORE_SHARE}
    assert not busy, f"busy while idle ({', '.join(busy)}): {figures} of one core over {seconds:.0f} s; limit {MAX_CORE_SHARE:.0%}"


@contextmanager
def _process(command: list[str], env: Mapping[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` running, its output in ``log``, until the block ends."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (each of the three stops cleanly on it), SIGKILL after 20 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _card_feed_partitions(url: str) -> float:
    """The card feed's partitions gauge from the API's ``/metrics``; 0 while it is not up."""
    try:
        text = httpx2.get(f"{url}/metrics", timeout=2).text
    except httpx2.TransportError:
        return 0.0
    values = [line.split()[-1] for line in text.splitlines() if line.startswith("edgelake_card_feed_partitions ")]
    return float(values[0]) if values else 0.0


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user and system) used so far by ``pid`` and its live descendants: every thread, and children already reaped."""
    parents = _parents()
    tree, frontier = [pid], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        tree += children
        frontier = children
    return sum(_cpu_s(member) for member in tree)


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields:
                parents[int(entry.name)] = int(fields[1])
    return parents


def _cpu_s(pid: int) -> float:
    fields = _stat(pid)
    ticks = sum(int(value) for value in fields[11:15]) if fields else 0  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first); empty once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text[text.rindex(")") + 2 :].split()

