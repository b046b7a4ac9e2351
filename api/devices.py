"""Edge devices: enrollment tokens, enrolled devices, their last heartbeat and model reports, and forwarding their results.

The store is SQLite at ``<data_dir>/api/devices.sqlite`` in WAL mode, shared by every server
process (uvicorn worker) and the CLI; each operation opens its own connection because
requests run on many threads. Enrollment tokens are kept only as sha256 hashes.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kafka.errors import KafkaError
from pydantic import AwareDatetime, BaseModel, Field

from edgelake.api.keys import token_hash
from edgelake.broker import configured_servers
from edgelake.contracts import EdgeInference
from edgelake.device_api import FAILURE_KINDS, AgentEvent, ModelReport, Track
from edgelake.settings import Settings
from edgelake.kafka import EventProducer

log = logging.getLogger(__name__)

ENROLLMENT_PREFIX = "enr_"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS enrollment_tokens (
    id TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
    uses_left INTEGER NOT NULL, expires TEXT NOT NULL, created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, hardware TEXT NOT NULL, key_id TEXT NOT NULL,
    enrolled TEXT NOT NULL, token_id TEXT NOT NULL, heartbeat TEXT
);
CREATE TABLE IF NOT EXISTS forwarded_results (
    event_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, forwarded TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS model_reports (
    device_id TEXT NOT NULL, model TEXT NOT NULL, version INTEGER NOT NULL, track TEXT NOT NULL, time TEXT NOT NULL,
    inferences INTEGER NOT NULL, labelled INTEGER NOT NULL, correct INTEGER NOT NULL, errors INTEGER NOT NULL,
    failed INTEGER NOT NULL, detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS model_reports_by_time ON model_reports (model, time);
"""
# A report is healthy when its version ran without errors or failures; unhealthy when it erred or failed; else idle.
_HEALTHY = "errors = 0 AND failed = 0 AND inferences >= 1"
_UNHEALTHY = "(errors > 0 OR failed = 1)"
_DETAIL_MAX = 2000


class EnrollmentToken(BaseModel):
    """An enrollment token as stored: never the token itself."""

    id: str
    name: str
    uses_left: int
    expires: AwareDatetime
    created: AwareDatetime


class Heartbeat(BaseModel):
    """What a device last reported: the model versions it runs, how they did, its health and recent agent events."""

    time: AwareDatetime
    models: dict[str, int]
    reports: dict[str, ModelReport] = Field(default_factory=dict)
    health: dict[str, Any]
    events: list[AgentEvent] = Field(default_factory=list)


class StoredReport(BaseModel):
    """How one model version did on one device between two heartbeats, on the track the device was assigned then.

    ``failed`` means the heartbeat also carried a failure event for that version (``detail`` says which);
    a failure event without a report is stored as a report with no inferences.
    """

    device_id: str
    model: str
    version: int
    track: Track
    time: AwareDatetime
    inferences: int
    labelled: int
    correct: int
    errors: int
    failed: bool
    detail: str


class ReportTotals(BaseModel):
    """One device's reports of one model version on one track, pooled."""

    track: Track
    version: int
    device_id: str
    reports: int
    healthy: int = Field(description="Reports with inferences, no errors and no failure event.")
    unhealthy: int = Field(description="Reports with errors or a failure event.")
    inferences: int
    labelled: int
    correct: int


class Device(BaseModel):
    """One enrolled device."""

    id: str
    name: str
    hardware: dict[str, Any]
    key_id: str = Field(description="The id of the device's API key.")
    enrolled: AwareDatetime
    last_heartbeat: Heartbeat | None


class EnrollmentRefused(Exception):
    """An enrollment token that is unknown, used up or expired."""


class DeviceStore:
    """Enrollment tokens, devices and forwarded result ids in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ready = False

    def issue_token(self, name: str, uses: int, expires_in_s: int) -> tuple[EnrollmentToken, str]:
        """A new enrollment token good for ``uses`` enrollments within ``expires_in_s``; the token is shown this once."""
        token = ENROLLMENT_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        record = EnrollmentToken(
            id="et_" + secrets.token_hex(6), name=name, uses_left=uses, expires=now + timedelta(seconds=expires_in_s), created=now
        )
        with self._transaction() as db:
            db.execute(
                "INSERT INTO enrollment_tokens VALUES (?, ?, ?, ?, ?, ?)",
                (record.id, token_hash(token), name, uses, record.expires.isoformat(), now.isoformat()),
            )
        return record, token

    def enroll(self, token: str, name: str, hardware: dict[str, Any], new_key: Callable[[str], str]) -> Device:
        """Spend one use of ``token`` on a new device named ``name``; ``new_key(device_id)`` makes its API key and returns the key id.

        Nothing is spent when ``new_key`` fails. EnrollmentRefused for an unknown, used-up or expired token.
        """
        now = datetime.now(UTC)
        with self._transaction() as db:
            row = db.execute("SELECT id, uses_left, expires FROM enrollment_tokens WHERE sha256 = ?", (token_hash(token),)).fetchone()
            if row is None:
                raise EnrollmentRefused("the enrollment token is unknown")
            token_id, uses_left, expires = row
            if uses_left < 1:
                raise EnrollmentRefused(f"enrollment token {token_id} has been used up")
            if datetime.fromisoformat(expires) <= now:
                raise EnrollmentRefused(f"enrollment token {token_id} expired at {expires}")
            device_id = "dev_" + secrets.token_hex(8)
            device = Device(id=device_id, name=name, hardware=hardware, key_id=new_key(device_id), enrolled=now, last_heartbeat=None)
            db.execute("UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE id = ?", (token_id,))
            db.execute(
                "INSERT INTO devices VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (device.id, name, json.dumps(hardware), device.key_id, now.isoformat(), token_id),
            )
        return device

    def device(self, device_id: str) -> Device | None:
        """One device, or None."""
        with self._transaction() as db:
            row = db.execute("SELECT * FROM devices WHERE id = ?", (device_id,)).fetchone()
        return None if row is None else _device(row)

    def devices(self) -> list[Device]:
        """Every device, first enrolled first."""
        with self._transaction() as db:
            rows = db.execute("SELECT * FROM devices ORDER BY enrolled, id").fetchall()
        return [_device(row) for row in rows]

    def record_heartbeat(self, device_id: str, heartbeat: Heartbeat, tracks: Mapping[str, Track]) -> None:
        """Keep ``heartbeat`` as the device's last one, and its reports and failure events of each model in ``tracks``
        (model -> the track the device was assigned when it sent the heartbeat)."""
        rows = [
            (r.device_id, r.model, r.version, r.track, _timestamp(r.time), r.inferences, r.labelled, r.correct, r.errors, int(r.failed), r.detail)
            for r in _reports(device_id, heartbeat, tracks)
        ]
        with self._transaction() as db:
            db.execute("UPDATE devices SET heartbeat = ? WHERE id = ?", (heartbeat.model_dump_json(), device_id))
            db.executemany("INSERT INTO model_reports VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def reports(self, model: str, since: datetime, *, unhealthy_only: bool = False) -> list[StoredReport]:
        """The reports of ``model`` made at or after ``since``, oldest first; only those with errors or failures if asked."""
        where = f"model = ? AND time >= ?{f' AND {_UNHEALTHY}' if unhealthy_only else ''}"
        with self._transaction() as db:
            rows = db.execute(f"SELECT * FROM model_reports WHERE {where} ORDER BY time, rowid", (model, _timestamp(since))).fetchall()
        fields = list(StoredReport.model_fields)
        return [StoredReport.model_validate(dict(zip(fields, row, strict=True))) for row in rows]

    def report_totals(self, model: str, since: datetime) -> list[ReportTotals]:
        """The reports of ``model`` made at or after ``since``, pooled per track, version and device."""
        query = f"""
            SELECT track, version, device_id, COUNT(*), SUM({_HEALTHY}), SUM({_UNHEALTHY}), SUM(inferences), SUM(labelled), SUM(correct)
            FROM model_reports WHERE model = ? AND time >= ? GROUP BY track, version, device_id ORDER BY track, version, device_id
        """
        with self._transaction() as db:
            rows = db.execute(query, (model, _timestamp(since))).fetchall()
        fields = list(ReportTotals.model_fields)
        return [ReportTotals.model_validate(dict(zip(fields, row, strict=True))) for row in rows]

    def forwarded(self, event_ids: Iterable[str]) -> set[str]:
        """Which of ``event_ids`` have already been forwarded."""
        ids = list(event_ids)
        with self._transaction() as db:
            rows = db.execute(f"SELECT event_id FROM forwarded_results WHERE event_id IN ({','.join('?' * len(ids))})", ids).fetchall()
        return {event_id for (event_id,) in rows}

    def mark_forwarded(self, device_id: str, event_ids: Iterable[str]) -> None:
        """Remember ``event_ids`` as forwarded, so a resent batch is not forwarded again."""
        now = datetime.now(UTC).isoformat()
        with self._transaction() as db:
            db.executemany("INSERT OR IGNORE INTO forwarded_results VALUES (?, ?, ?)", [(event_id, device_id, now) for event_id in event_ids])

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one write transaction, committed when the block ends cleanly, else rolled back."""
        if not self._ready:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with closing(sqlite3.connect(self.path, timeout=30)) as db:
                db.execute("PRAGMA journal_mode=WAL")  # readers and one writer at a time, across processes
                db.executescript(_SCHEMA)
            self._ready = True
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")  # take the write lock up front: read-then-write must not interleave
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")


def devices_path(data_dir: Path) -> Path:
    """Where the devices of a data dir are kept."""
    return data_dir / "api" / "devices.sqlite"


def _reports(device_id: str, heartbeat: Heartbeat, tracks: Mapping[str, Track]) -> list[StoredReport]:
    """The heartbeat's reports, each marked failed when a failure event names its version, then the other failure events."""
    failures: dict[tuple[str, int], list[str]] = {}
    for event in heartbeat.events:
        if event.kind in FAILURE_KINDS and event.model is not None and event.model in tracks and event.version is not None:
            failures.setdefault((event.model, event.version), []).append(f"{event.kind}: {event.detail}" if event.detail else event.kind)
    counted = [(model, report) for model, report in heartbeat.reports.items() if model in tracks]
    reported = {(model, report.version) for model, report in counted}
    quiet = [(model, ModelReport(version=version)) for model, version in failures if (model, version) not in reported]
    reports = []
    for model, report in counted + quiet:
        failed = failures.get((model, report.version), [])
        reports.append(
            StoredReport(
                device_id=device_id, model=model, track=tracks[model], time=heartbeat.time, failed=bool(failed),
                detail="; ".join(failed)[:_DETAIL_MAX], **report.model_dump(),
            )
        )
    return reports


def _timestamp(moment: datetime) -> str:
    """``moment`` as UTC ISO text of fixed width, so stored times compare as text."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _device(row: tuple[Any, ...]) -> Device:
    device_id, name, hardware, key_id, enrolled, _token_id, heartbeat = row
    return Device(
        id=device_id, name=name, hardware=json.loads(hardware), key_id=key_id, enrolled=datetime.fromisoformat(enrolled),
        last_heartbeat=None if heartbeat is None else Heartbeat.model_validate_json(heartbeat),
    )


class BrokerUnavailable(Exception):
    """The results could not be handed to Kafka in time; nothing may be assumed delivered."""


class ResultForwarder:
    """Sends device results to the ``edge-inferences`` topic, flushed before they are acknowledged.

    One producer per server process, used by one batch at a time so a failure is the batch's own.
    """

    def __init__(self, settings: Settings, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._producer: EventProducer | None = None

    def forward(self, events: Sequence[EdgeInference]) -> None:
        """Deliver ``events`` to Kafka (acknowledged by the broker) or raise BrokerUnavailable."""
        with self._lock:
            try:
                producer = self._producer or self._open()
                failed = producer.report.failed
                producer.send_many(events)
                report = producer.flush(self.timeout_s)
            except KafkaError as error:
                self._discard()
                log.warning("results not forwarded: %r", error)
                raise BrokerUnavailable(f"Kafka did not acknowledge the results within {self.timeout_s:g} s") from None
            if report.failed != failed:
                self._discard()
                raise BrokerUnavailable(report.errors[-1] if report.errors else "the broker refused the results")

    def close(self) -> None:
        """Close the producer, delivering what it still holds."""
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            _close_quietly(producer)

    def _open(self) -> EventProducer:
        servers = configured_servers(self.settings)
        timeout_ms = int(self.timeout_s * 1000)
        self._producer = EventProducer(
            self.settings, servers, max_block_ms=timeout_ms, request_timeout_ms=timeout_ms, delivery_timeout_ms=2 * timeout_ms
        )
        return self._producer

    def _discard(self) -> None:
        """Drop the producer after a failure; it is closed aside once its pending sends succeed or time out."""
        producer, self._producer = self._producer, None
        if producer is not None:
            threading.Thread(target=_close_quietly, args=(producer,), name="close-result-producer", daemon=True).start()


def _close_quietly(producer: EventProducer) -> None:
    try:
        producer.close()
    except KafkaError:
        pass  # the results were already reported as undelivered; the device sends them again
