"""Guarded SQL for servers: each query runs in a worker process of a small pool, so that one past its
timeout is stopped for real (its worker is killed and replaced), one that crashes the engine takes
only its worker down, and no more than ``workers`` queries run at once.

In-process, an abandoned DataFusion query kept a core busy until it finished (a recursive CTE ran
65 s past its 504), and nothing bounded how many ran side by side.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from typing import IO, Any

import pyarrow as pa

from edgelake.lake.catalog import Lake
from edgelake.lake.sql import QueryFailed, QueryResult, QueryTimeout, _read, prepared

_LENGTH = struct.Struct(">Q")


class QueryBusy(RuntimeError):
    """Every worker is running a query; try again shortly."""


class QueryPool:
    """Up to ``workers`` worker processes running ``run_query``'s reads, started on first use."""

    def __init__(self, workers: int = 2, wait_s: float = 1.0) -> None:
        self._slots = threading.BoundedSemaphore(workers)
        self._wait_s = wait_s
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()

    def run_query(
        self, lake: Lake, sql: str, *, as_of: dict[str, int] | int | None = None, limit: int = 10_000,
        max_bytes: int = 32 * 1024 * 1024, timeout_s: float = 30.0,
    ) -> QueryResult:
        """As :func:`lake.sql.run_query`, in a worker; ``QueryBusy`` when none frees up within the pool's wait."""
        started = time.monotonic()
        text, versions = prepared(sql, as_of, limit, max_bytes, timeout_s)  # refusals cost no worker
        if not self._slots.acquire(timeout=self._wait_s):
            raise QueryBusy("all SQL workers are busy; try again in a few seconds")
        try:
            table, truncated, read = self._in_worker((lake, text, versions, limit, max_bytes, started + timeout_s), timeout_s)
        finally:
            self._slots.release()
        return QueryResult(table, truncated, read, time.monotonic() - started)

    def close(self) -> None:
        """Stop the idle workers (busy ones are stopped as their queries end)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()

    def _in_worker(self, request: tuple[Any, ...], timeout_s: float) -> tuple[pa.Table, bool, dict[str, int]]:
        with self._lock:
            idle, self._idle = self._idle, []
        alive = [worker for worker in idle if worker.alive()]  # one killed from outside is replaced
        worker = alive.pop() if alive else _Worker()
        with self._lock:
            self._idle.extend(alive)
        try:
            try:
                answer = worker.ask(request, timeout_s)
            except BrokenPipeError:  # it died before the request reached it: nothing ran, a fresh one runs it
                worker.kill()
                worker = _Worker()
                answer = worker.ask(request, timeout_s)
        except BaseException:
            worker.kill()  # past its deadline or dead: its process, and whatever it still runs, go
            raise
        with self._lock:
            self._idle.append(worker)
        if isinstance(answer, BaseException):
            raise answer
        ipc, truncated, read = answer
        return pa.ipc.open_stream(ipc).read_all(), truncated, read


class _Worker:
    """One ``python -m lake.sql_pool`` process, asked one query at a time over its stdin and stdout."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "edgelake.lake.sql_pool"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )

    def ask(self, request: tuple[Any, ...], timeout_s: float) -> Any:
        """The worker's answer: (Arrow IPC bytes, truncated, versions read) or the exception the read raised."""
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        _send(stdin, request)
        answer: list[Any] = []
        reader = threading.Thread(target=lambda: answer.append(_receive(stdout)), daemon=True)
        reader.start()
        reader.join(timeout_s)
        if reader.is_alive():
            raise QueryTimeout(f"the query ran longer than its timeout of {timeout_s:g} s; it was stopped")
        if not answer or answer[0] is None:
            raise QueryFailed("the query engine stopped on this statement (its worker exited); nothing else was affected")
        return answer[0]

    def alive(self) -> bool:
        if self._process.poll() is not None:
            return False
        try:
            os.kill(self._process.pid, 0)  # reaped by some other waiter, poll() cannot tell
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> None:
        self._process.kill()
        self._process.wait()


def _send(stream: IO[bytes], value: Any) -> None:
    data = pickle.dumps(value)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    """The next value, or None at the end of the stream."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    return pickle.loads(stream.read(_LENGTH.unpack(header)[0]))  # noqa: S301  (our own worker, over its own pipe)


def _serve() -> None:
    """A worker's loop: read a request from stdin, answer on stdout, until stdin closes."""
    requests = sys.stdin.buffer
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes where stderr goes, never into the answers
    while (request := _receive(requests)) is not None:
        try:
            table, truncated, read = _read(*request)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            answer: Any = (sink.getvalue().to_pybytes(), truncated, read)
        except Exception as error:  # QueryFailed, QueryTimeout between batches, UnknownTable: handed to the caller
            answer = error
        _send(answers, answer)


if __name__ == "__main__":
    _serve()
