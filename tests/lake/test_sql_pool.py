"""SQL in worker processes: answers as in-process, a query past its timeout stopped for real, a dead worker
replaced, and no more queries at once than workers."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from edgelake.lake.catalog import Lake
from edgelake.lake.sql import QueryFailed, QueryTimeout, RefusedStatement, run_query
from edgelake.lake.sql_pool import QueryBusy, QueryPool
from tests.lake.test_sql import FIRST, MORE, lake  # noqa: F401  (the fixture)

FOREVER = "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) AS n FROM t"


@pytest.fixture
def pool() -> QueryPool:
    pool = QueryPool(workers=2, wait_s=0.5)
    yield pool
    pool.close()


def test_a_worker_answers_what_run_query_answers(pool: QueryPool, lake: Lake) -> None:
    sql = "SELECT card_id, count(*) AS n FROM silver_transactions GROUP BY card_id ORDER BY card_id"
    pooled, local = pool.run_query(lake, sql, limit=5), run_query(lake, sql, limit=5)
    assert pooled.table.equals(local.table) and (pooled.truncated, pooled.tables) == (local.truncated, local.tables)
    assert pool.run_query(lake, "SELECT count(*) AS n FROM silver_transactions", as_of=0).table.to_pylist() == [{"n": FIRST}]
    with pytest.raises(RefusedStatement):
        pool.run_query(lake, "DROP TABLE silver_transactions")
    with pytest.raises(QueryFailed, match="No field named nope"):
        pool.run_query(lake, "SELECT nope FROM silver_transactions")
    assert pool.run_query(lake, "SELECT count(*) AS n FROM silver_transactions").table.to_pylist() == [{"n": FIRST + MORE}]


def test_a_query_past_its_timeout_is_stopped_not_abandoned(pool: QueryPool, lake: Lake) -> None:
    # in-process, this query kept a core busy for minutes after its timeout
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match="it was stopped"):
        pool.run_query(lake, FOREVER, timeout_s=1.0)
    assert time.monotonic() - started < 3
    time.sleep(0.5)
    busy = _worker_cpu_s()
    time.sleep(2)
    assert _worker_cpu_s() - busy < 0.2, "a worker still computes the abandoned query"
    assert pool.run_query(lake, "SELECT 1 AS one").table.to_pylist() == [{"one": 1}]


def test_a_worker_that_dies_is_replaced(pool: QueryPool, lake: Lake) -> None:
    pool.run_query(lake, "SELECT 1 AS one")
    killed = _workers()
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    while any(_state(pid) not in ("Z", None) or _threads(pid) > 1 for pid in killed):  # until all its threads are gone
        time.sleep(0.01)
    assert pool.run_query(lake, "SELECT 2 AS two").table.to_pylist() == [{"two": 2}]
    killer = threading.Timer(1.0, lambda: [os.kill(pid, signal.SIGKILL) for pid in _workers()])
    killer.start()
    with pytest.raises(QueryFailed, match="worker exited"):
        pool.run_query(lake, FOREVER, timeout_s=30)
    assert pool.run_query(lake, "SELECT 3 AS three").table.to_pylist() == [{"three": 3}]


def test_no_more_queries_run_at_once_than_workers(lake: Lake) -> None:
    pool = QueryPool(workers=1, wait_s=0.5)
    try:
        running = threading.Thread(target=lambda: pytest.raises(QueryTimeout, pool.run_query, lake, FOREVER, timeout_s=3))
        running.start()
        time.sleep(0.5)
        with pytest.raises(QueryBusy):
            pool.run_query(lake, "SELECT 1 AS one")
        running.join()
        assert pool.run_query(lake, "SELECT 1 AS one").table.to_pylist() == [{"one": 1}]
    finally:
        pool.close()


def _workers() -> list[int]:
    """This process's SQL worker processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == os.getpid() and b"edgelake.lake.sql_pool" in command:
                found.append(int(entry.name))
    return found


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def _threads(pid: int) -> int:
    try:
        return len(list(Path(f"/proc/{pid}/task").iterdir()))
    except OSError:
        return 0


def _worker_cpu_s() -> float:
    total = 0
    for pid in _workers():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")
