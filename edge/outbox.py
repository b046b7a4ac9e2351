"""Store-and-forward: results wait in a local SQLite queue until the cloud acknowledges them.

A result is committed to disk (WAL, synchronous FULL) before it counts as made, read back in
the order it was made, and deleted only once acknowledged, so delivery is in order and at
least once; the cloud deduplicates by event id. The queue is bounded: when it is full the
oldest results are dropped, and every drop is counted, persistently.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import NamedTuple

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Queued(NamedTuple):
    seq: int
    event_id: str
    payload: bytes


class Outbox:
    """A bounded, durable FIFO of serialized results, safe to share between threads."""

    def __init__(self, path: Path, max_results: int) -> None:
        self.max_results = max_results
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a result the agent counted survives a power cut
        self._db.executescript(_SCHEMA)

    def put(self, event_id: str, payload: bytes) -> int:
        """Queue one result; how many of the oldest were dropped to make room (0 unless full)."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            (held,) = self._db.execute("SELECT count(*) FROM results").fetchone()
            dropped = max(0, held + 1 - self.max_results)
            if dropped:
                self._db.execute("DELETE FROM results WHERE seq IN (SELECT seq FROM results ORDER BY seq LIMIT ?)", (dropped,))
                self._db.execute(
                    "INSERT INTO counters VALUES ('dropped', ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (dropped,)
                )
            self._db.execute("INSERT INTO results (event_id, payload) VALUES (?, ?)", (event_id, payload))
        return dropped

    def peek(self, limit: int) -> list[Queued]:
        """The oldest ``limit`` results, oldest first; they stay queued until acknowledged."""
        with self._lock:
            rows = self._db.execute("SELECT seq, event_id, payload FROM results ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [Queued(*row) for row in rows]

    def acknowledge(self, through_seq: int) -> None:
        """Delete every result up to and including ``through_seq``."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM results WHERE seq <= ?", (through_seq,))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM results").fetchone()[0]

    @property
    def dropped(self) -> int:
        """Results dropped because the queue was full, over the queue's whole life."""
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        return 0 if row is None else row[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
