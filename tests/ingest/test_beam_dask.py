"""Ingest on Beam's DaskRunner over a Dask cluster of two worker processes (``edgelake cluster dask up``): the
DirectRunner's rows, work on both workers, and exactly once when a worker is SIGKILLed mid-batch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from edgelake.broker import EmbeddedBroker, free_port
from edgelake.ingest.dask_cluster import DaskCluster
from edgelake.ingest.loop import IngestOptions, ingest
from edgelake.lake.tables import BRONZE, QUARANTINE, SILVER, table_uri
from edgelake.settings import Settings
from support import command_env, isolated_settings
from tests.ingest.test_ingest import TOPIC, Feed, assert_exactly_once, produce_feed, run_ingester, table

INGEST_TIME_COLUMNS = {"ingest_time", "ingest_date", "_ingest_time"}
INGEST_TIME_IN_REASON = re.compile(r"the ingest time \S+")  # a record refused for its event time: the reason says when


@dataclass(frozen=True)
class Cluster:
    """A cluster started by ``edgelake cluster dask up``: the address it printed and its processes."""

    address: str
    processes: DaskCluster
    env: dict[str, str]

    def runner_args(self) -> tuple[str, ...]:
        return ("--runner", "DaskRunner", f"--dask_client_address={self.address}")


def edgelake(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgelake", *args], env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    data_dir, port = tmp_path_factory.mktemp("dask"), free_port()
    env = {**os.environ, "EDGELAKE_DATA_DIR": str(data_dir), "EDGELAKE_DASK_SCHEDULER_PORT": str(port), "EDGELAKE_DASK_WORKERS": "2"}
    processes = DaskCluster(port, data_dir / "dask-cluster", workers=2)
    try:
        up = edgelake(env, "cluster", "dask", "up", timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        address = re.search(r"--dask_client_address=(\S+)", up.stdout)
        assert address and address.group(1) == f"tcp://127.0.0.1:{port}", up.stdout
        yield Cluster(address.group(1), processes, env)
    finally:
        down = edgelake(env, "cluster", "dask", "down", timeout=60)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not processes.status().pids, "a Dask process outlived `edgelake cluster dask down`"


def worker_counts(address: str) -> dict[str, tuple[int, int]]:
    """Per worker name: the tasks it has executed since it started, and those it is executing now."""
    from distributed import Client

    with Client(address, timeout=10, set_as_default=False) as client:
        counts = client.run(lambda dask_worker: (dask_worker.name, dask_worker.state.executed_count, dask_worker.state.executing_count))
    return {name: (executed, executing) for name, executed, executing in counts.values()}


def rows(settings: Settings, layer: str) -> list[dict[str, object]]:
    """A table's rows of this test's topic in offset order, without the columns that say when they were ingested."""
    spec = {"bronze": BRONZE[TOPIC], "silver": SILVER[TOPIC], "quarantine": QUARANTINE}[layer]
    data = table(settings, spec)
    topic_column = "_topic" if layer == "silver" else "topic"
    data = data.filter(pc.equal(data[topic_column], settings.topic(TOPIC)))
    keys = ["_partition", "_offset"] if layer == "silver" else ["partition", "offset"]
    columns = sorted(set(data.column_names) - INGEST_TIME_COLUMNS)
    found = data.select(columns).sort_by([(key, "ascending") for key in keys]).to_pylist()
    for row in found:
        if "reason" in row:
            row["reason"] = INGEST_TIME_IN_REASON.sub("the ingest time", str(row["reason"]))
    return found


def test_the_dask_runner_lands_the_direct_runners_rows_on_both_workers(kafka: EmbeddedBroker, cluster: Cluster, tmp_path: Path) -> None:
    direct = isolated_settings(kafka.bootstrap_servers, tmp_path / "direct")
    dask = direct.model_copy(update={"data_dir": tmp_path / "dask", "lake_root": str(tmp_path / "dask" / "lake")})
    feed = produce_feed(direct, 3000)
    totals = ingest(direct, IngestOptions(topics=(TOPIC,), max_events=1000), once=True)
    before = worker_counts(cluster.address)

    run = edgelake(command_env(dask), "ingest", "run", "--once", "--topics", TOPIC, "--max-events", "1000", *cluster.runner_args())

    assert run.returncode == 0, run.stdout + run.stderr
    after = worker_counts(cluster.address)
    assert sorted(after) == ["worker-1", "worker-2"]
    assert all(after[name][0] > before[name][0] for name in after), f"a worker ran no range: {before} -> {after}"
    for layer in ("bronze", "silver", "quarantine"):
        assert rows(dask, layer) == rows(direct, layer), f"{layer} differs between the runners"
    assert_exactly_once(dask, feed)
    counts = totals.counts[TOPIC]  # the command prints the counts it read back from its commits: the DirectRunner's
    printed = next(line for line in run.stdout.splitlines() if TOPIC in line)
    assert [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", printed)][:4] == [counts[k] for k in ("bronze", "silver", "quarantined", "duplicates")]
    assert counts["bronze"] == 3000 and counts["duplicates"] == len(feed.offsets["duplicate"])


def test_a_worker_killed_mid_batch_and_restarted_loses_and_duplicates_nothing(kafka: EmbeddedBroker, cluster: Cluster, tmp_path: Path) -> None:
    settings = isolated_settings(kafka.bootstrap_servers, tmp_path)
    feed = produce_feed(settings, 20_000, seed=31)
    ingester = run_ingester(settings, "--once", "--max-events", "4000", *cluster.runner_args())
    bronze = table_uri(settings.lake_root, BRONZE[TOPIC])
    deadline = time.monotonic() + 120
    while not (DeltaTable.is_deltatable(bronze) and DeltaTable(bronze).version() >= 1 and worker_counts(cluster.address)["worker-1"][1]):
        assert ingester.process.poll() is None, f"the batch ended before the kill: {ingester.output()}"
        assert time.monotonic() < deadline, "worker-1 never ran a range"
        time.sleep(0.1)
    assert cluster.processes.worker(1).kill()  # mid-batch: some ranges committed, worker-1 inside one
    landed_at_kill = DeltaTable(bronze).count()
    assert ingester.process.poll() is None, "the ingester ended with the kill"

    up = edgelake(cluster.env, "cluster", "dask", "up", timeout=120)  # starts worker-1 again
    assert up.returncode == 0, up.stdout + up.stderr
    assert cluster.processes.status().ready
    assert ingester.process.wait(timeout=300) == 0, ingester.output()  # the scheduler gave worker-1's range to worker-2
    assert 0 < landed_at_kill < 20_000

    more = produce_feed(settings, 2000, seed=32)
    again = edgelake(command_env(settings), "ingest", "run", "--once", "--topics", TOPIC, *cluster.runner_args())
    assert again.returncode == 0, again.stdout + again.stderr
    assert worker_counts(cluster.address)["worker-1"][0] > 0, "the restarted worker-1 ran no range"
    both = Feed(feed.valid_ids | more.valid_ids, {kind: feed.offsets[kind] | more.offsets[kind] for kind in feed.offsets})
    assert_exactly_once(settings, both)


def test_up_refuses_a_taken_port(cluster: Cluster, tmp_path: Path) -> None:
    port = cluster.address.rsplit(":", 1)[1]
    other = edgelake({**cluster.env, "EDGELAKE_DATA_DIR": str(tmp_path), "EDGELAKE_DASK_SCHEDULER_PORT": port}, "cluster", "dask", "up")
    assert other.returncode == 2
    assert f"port {port} is taken" in other.stderr
