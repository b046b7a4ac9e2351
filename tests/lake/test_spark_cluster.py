"""A Spark standalone cluster on loopback (``edgelake cluster spark``) gives the local run's results: the same
gold rows and the same fraud model metrics, even when a worker is SIGKILLed in the middle of a gold build.

The cluster is started and stopped with the README's commands, and the jobs on it run as the README's commands
(``edgelake lake build-gold --master …``, ``edgelake train fraud --master …``), each in a process of its own: a
process holds one Spark context, and this one's is the session's local one, which makes the reference results.
The commands on the cluster get the local session's two shuffle partitions (through Spark's own
``PYSPARK_SUBMIT_ARGS``): the same plan as the reference's, and a quick one on two cores.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from edgelake.broker import free_port, free_ports
from edgelake.control_db import ControlDb
from edgelake.daemons import process_alive
from edgelake.ingest.sources import shuttle
from edgelake.lake.catalog import Lake
from edgelake.lake.gold import build_gold
from edgelake.lake.spark_cluster import SparkCluster
from edgelake.lake.tables import GOLD
from edgelake.settings import Settings
from edgelake.training.fraud import FraudConfig, train_fraud
from edgelake.training.registry import Registry, get
from tests.lake.test_gold import KEYS, synthetic_lake

WORKERS = 2
SPARK_CONF = {"spark.sql.shuffle.partitions": "2", "spark.databricks.delta.snapshotPartitions": "2"}  # as the local session
TRAIN = FraudConfig(source="synthetic", epochs=2, seed=1, device="cpu")  # what the command below makes of its options
TRAIN_OPTIONS = ["--source", "synthetic", "--epochs", "2", "--seed", "1", "--device", "cpu"]
TIMINGS = ("seconds", "examples_seconds", "fit_seconds", "train_samples_per_s")


@dataclass(frozen=True)
class Cluster:
    """The cluster the module's commands started, and the environment of commands that use it."""

    spark: SparkCluster
    env: dict[str, str]

    def edgelake(self, *args: str, lake: Path | None = None, timeout: float = 300, **conf: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), capture_output=True, text=True, env=self.job_env(lake, **conf), timeout=timeout)

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "edgelake", *args]

    def job_env(self, lake: Path | None, **conf: str) -> dict[str, str]:
        """This cluster's environment, with ``lake`` as the lake and ``conf`` on the driver besides ``SPARK_CONF``."""
        submit = " ".join(f"--conf {key}={value}" for key, value in {**SPARK_CONF, **conf}.items())
        return {**self.env, "EDGELAKE_LAKE_ROOT": str(lake or "unused"), "PYSPARK_SUBMIT_ARGS": f"{submit} pyspark-shell"}


def edgelake(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgelake", *args], capture_output=True, text=True, env=env, timeout=180)


def fresh_env(data_dir: Path, port: int) -> dict[str, str]:
    return {**os.environ, "COLUMNS": "250", "EDGELAKE_DATA_DIR": str(data_dir), "EDGELAKE_SPARK_CLUSTER_PORT": str(port)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A master and two workers started by ``edgelake cluster spark up``, stopped by ``… down`` at the end."""
    data_dir = tmp_path_factory.mktemp("spark-cluster")
    env = fresh_env(data_dir, free_ports(2 + WORKERS))
    spark = SparkCluster(int(env["EDGELAKE_SPARK_CLUSTER_PORT"]), data_dir / "spark-cluster", WORKERS)
    try:
        up = edgelake(env, "cluster", "spark", "up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"Spark up at {spark.master_url} ({WORKERS} workers" in up.stdout
        assert f"edgelake lake build-gold --master {spark.master_url}" in up.stdout
        yield Cluster(spark, env)
    finally:
        edgelake(env, "cluster", "spark", "down")
        assert not spark.status().pids


@pytest.fixture(scope="module")
def silver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Silver transactions, labels and IoT readings: 1,500 synthetic transactions of 60 cards, 1,250 labelled, and
    300 Shuttle readings of three devices."""
    root = tmp_path_factory.mktemp("silver") / "lake"
    lake = synthetic_lake(root, 1500, 1250)
    lake.append(list(shuttle.readings(datetime(2025, 1, 1, tzinfo=UTC), 300, devices=3)))
    return root


def copy_of(silver: Path, target: Path) -> Path:
    shutil.copytree(silver, target)
    return target


def gold_rows(root: Path) -> dict[str, pa.Table]:
    """Every gold table's rows, sorted by their identity."""
    return {name: Lake(str(root)).open(name).to_pyarrow_table().sort_by([(key, "ascending") for key in KEYS[name]]) for name in GOLD}


def assert_same_gold(root: Path, expected: dict[str, pa.Table]) -> None:
    actual = gold_rows(root)
    for name in GOLD:
        assert actual[name].num_rows > 0 and actual[name].equals(expected[name]), name


@pytest.fixture(scope="module")
def local_lake(spark, silver: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The silver data with gold built on the session's local Spark (``local[2]``)."""
    root = copy_of(silver, tmp_path_factory.mktemp("local") / "lake")
    build_gold(spark, Lake(str(root)))
    return root


@pytest.fixture(scope="module")
def local_gold(local_lake: Path) -> dict[str, pa.Table]:
    return gold_rows(local_lake)


@pytest.fixture(scope="module")
def cluster_lake(cluster: Cluster, silver: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The silver data with gold built by ``edgelake lake build-gold --master spark://…``."""
    root = copy_of(silver, tmp_path_factory.mktemp("on-cluster") / "lake")
    built = cluster.edgelake("lake", "build-gold", "--master", cluster.spark.master_url, lake=root)
    assert built.returncode == 0, built.stdout + built.stderr
    return root


def test_up_says_clearly_when_a_port_is_taken_or_java_is_missing(tmp_path: Path) -> None:
    port = free_ports(2 + WORKERS)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 1))
        taken.listen()
        result = edgelake(fresh_env(tmp_path, port), "cluster", "spark", "up")
    assert result.returncode == 2 and f"port(s) {port + 1} are taken" in result.stderr and "EDGELAKE_SPARK_CLUSTER_PORT" in result.stderr
    result = edgelake({**fresh_env(tmp_path, port), "JAVA_HOME": str(tmp_path / "no-java")}, "cluster", "spark", "up")
    assert result.returncode == 2 and "Java is not installed" in result.stderr
    assert not SparkCluster(port, tmp_path / "spark-cluster", WORKERS).status().pids


def test_status_lists_the_master_and_every_worker_alive(cluster: Cluster) -> None:
    result = edgelake(cluster.env, "cluster", "spark", "status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[1:3] for line in result.stdout.splitlines()[:3]] == [["master", "running"], ["worker-1", "running"], ["worker-2", "running"]]
    workers = cluster.spark.master_state()["workers"]  # type: ignore[index]
    assert sorted((w["port"], w["state"], w["cores"]) for w in workers) == [(cluster.spark.worker(i).port, "ALIVE", 1) for i in (1, 2)]


def test_build_gold_on_the_cluster_gives_the_local_gold_rows(cluster_lake: Path, local_gold: dict[str, pa.Table]) -> None:
    assert_same_gold(cluster_lake, local_gold)


def test_train_fraud_on_the_cluster_gives_the_local_metrics(
    spark, cluster: Cluster, cluster_lake: Path, local_lake: Path, tmp_path: Path
) -> None:
    local = train_fraud(spark, Lake(str(local_lake)), tmp_path, TRAIN)
    trained = cluster.edgelake("train", "fraud", *TRAIN_OPTIONS, "--master", cluster.spark.master_url, lake=cluster_lake)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    control = ControlDb.from_settings(Settings(data_dir=Path(cluster.env["EDGELAKE_DATA_DIR"])))
    published = get(Registry.of(Lake(str(cluster_lake)), control), "fraud")
    metrics = json.loads((published.path / "metrics.json").read_text())
    assert {k: v for k, v in metrics.items() if k not in TIMINGS} == {k: v for k, v in local.metrics.items() if k not in TIMINGS}
    assert published.manifest.lineage == local.lineage


def test_a_worker_sigkilled_mid_build_changes_no_gold_row(cluster: Cluster, silver: Path, local_gold: dict[str, pa.Table], tmp_path: Path) -> None:
    root = copy_of(silver, tmp_path / "lake")
    worker = cluster.spark.worker(1)
    ui_port = free_port()
    command = cluster.command("lake", "build-gold", "--master", cluster.spark.master_url)
    build = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cluster.job_env(root, **{"spark.ui.port": str(ui_port)}))
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(build.stdout or []), daemon=True)
    reader.start()
    try:
        wait_for(lambda: busy_executor(cluster.spark, worker.port, ui_port), build, "a task running on worker-1's executor")
        group = process_group(worker.pid())  # type: ignore[arg-type]
        assert any("CoarseGrainedExecutorBackend" in command for command in group.values()), group
        assert worker.kill()
        assert not [pid for pid in group if process_alive(pid)]
        build.wait(timeout=300)
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
        reader.join(10)
    assert build.returncode == 0, "".join(output)
    assert_same_gold(root, local_gold)
    workers = cluster.spark.master_state()["workers"]  # type: ignore[index]
    assert {(w["port"], w["state"]) for w in workers} == {(worker.port, "DEAD"), (cluster.spark.worker(2).port, "ALIVE")}

    up = edgelake(cluster.env, "cluster", "spark", "up")  # starts the worker that is away
    assert up.returncode == 0 and f"({WORKERS} workers" in up.stdout, up.stdout + up.stderr
    assert cluster.spark.status().ready


def test_down_stops_every_daemon_and_status_then_exits_non_zero(cluster: Cluster) -> None:
    groups = [process_group(pid) for pid in cluster.spark.status().pids]
    down = edgelake(cluster.env, "cluster", "spark", "down")
    assert down.returncode == 0 and "Spark stopped" in down.stdout
    assert not [pid for group in groups for pid in group if process_alive(pid)]
    status = edgelake(cluster.env, "cluster", "spark", "status")
    assert status.returncode == 1 and "Spark master stopped" in status.stdout, status.stdout + status.stderr
    assert "Spark was not running" in edgelake(cluster.env, "cluster", "spark", "down").stdout


# --- watching a running job -----------------------------------------------------------------------------------


def busy_executor(spark: SparkCluster, worker_port: int, ui_port: int) -> str | None:
    """The id of the executor on the worker at ``worker_port`` once the job's driver says that it finished a task
    and runs another one; None before."""
    state = spark.master_state() or {"workers": []}
    workers = [w for w in state["workers"] if w["port"] == worker_port and w["state"] == "ALIVE"]
    on_worker = {str(e["id"]) for w in workers for e in (get_json(w["webuiaddress"] + "/json/") or {}).get("executors", [])}
    applications = get_json(f"http://127.0.0.1:{ui_port}/api/v1/applications") or []
    for application in applications:
        for executor in get_json(f"http://127.0.0.1:{ui_port}/api/v1/applications/{application['id']}/executors") or []:
            if executor["id"] in on_worker and executor["completedTasks"] > 0 and executor["activeTasks"] > 0:
                return str(executor["id"])
    return None


def get_json(url: str) -> Any:
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=2) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def wait_for(found: Callable[[], str | None], process: subprocess.Popen[str], what: str, timeout_s: float = 180) -> str:
    deadline = time.monotonic() + timeout_s
    while (value := found()) is None:
        assert process.poll() is None, f"the build ended before {what}"
        assert time.monotonic() < deadline, f"no {what} in {timeout_s:g} s"
        time.sleep(0.1)
    return value


def process_group(pgid: int) -> dict[int, str]:
    """The processes of group ``pgid`` with their command lines (from /proc)."""
    members = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                members[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return members
