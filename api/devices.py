"""Edge devices: enrollment tokens, enrolled devices, their last heartbeat and model reports, and forwarding their results.

They live in the control-plane database (:mod:`edgelake.control_db`), shared by every server
process and replica and by the CLI. Enrollment tokens are kept only as sha256 hashes, and a
token's uses are spent by the database, so two replicas racing for its last use cannot both win.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from kafka.errors import KafkaError
from pydantic import AwareDatetime, BaseModel, Field

from edgelake.control_db import ControlDb, devices, enrollment_tokens, forwarded_results, insert_unless_present, model_reports
from edgelake.api.keys import KeyStore, token_hash
from edgelake.broker import configured_servers
from edgelake.contracts import EdgeInference
from edgelake.device_api import FAILURE_KINDS, AgentEvent, ModelReport, Track
from edgelake.settings import Settings
from edgelake.kafka import EventProducer

log = logging.getLogger(__name__)

ENROLLMENT_PREFIX = "enr_"

# A report is healthy when its version ran without errors or failures; unhealthy when it erred or failed; else idle.
_HEALTHY = sa.and_(model_reports.c.errors == 0, model_reports.c.failed.is_(False), model_reports.c.inferences >= 1)
_UNHEALTHY = sa.or_(model_reports.c.errors > 0, model_reports.c.failed.is_(True))
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
    """Enrollment tokens, devices, their reports and forwarded result ids in a control-plane database."""

    def __init__(self, db: ControlDb) -> None:
        self.db = db

    def issue_token(self, name: str, uses: int, expires_in_s: int) -> tuple[EnrollmentToken, str]:
        """A new enrollment token good for ``uses`` enrollments within ``expires_in_s``; the token is shown this once."""
        token = ENROLLMENT_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        record = EnrollmentToken(
            id="et_" + secrets.token_hex(6), name=name, uses_left=uses, expires=now + timedelta(seconds=expires_in_s), created=now
        )
        with self.db.transaction() as connection:
            connection.execute(enrollment_tokens.insert().values(sha256=token_hash(token), **record.model_dump()))
        return record, token

    def enroll(self, token: str, name: str, hardware: dict[str, Any], keys: KeyStore) -> tuple[Device, str]:
        """Spend one use of ``token`` on a new device named ``name`` with a new device key from ``keys``; the device and the key's token.

        The use, the device and its key are kept together or not at all. EnrollmentRefused for an unknown, used-up or expired token.
        """
        now = datetime.now(UTC)
        digest = token_hash(token)
        with self.db.transaction() as connection:
            spent = connection.execute(  # one statement: the database decides which of two racing enrollments gets the last use
                enrollment_tokens.update()
                .where(enrollment_tokens.c.sha256 == digest, enrollment_tokens.c.uses_left >= 1, enrollment_tokens.c.expires > now)
                .values(uses_left=enrollment_tokens.c.uses_left - 1)
            )
            if not spent.rowcount:
                raise EnrollmentRefused(_why_refused(connection, digest))
            token_id = connection.execute(sa.select(enrollment_tokens.c.id).where(enrollment_tokens.c.sha256 == digest)).scalar_one()
            device_id = "dev_" + secrets.token_hex(8)
            key, device_token = keys.create(f"device {name}", "device", device_id=device_id, within=connection)
            device = Device(id=device_id, name=name, hardware=hardware, key_id=key.id, enrolled=now, last_heartbeat=None)
            connection.execute(
                devices.insert().values(
                    id=device.id, name=name, hardware=json.dumps(hardware), key_id=key.id, enrolled=now, token_id=token_id, heartbeat=None
                )
            )
        return device, device_token

    def device(self, device_id: str) -> Device | None:
        """One device, or None."""
        with self.db.transaction() as connection:
            row = connection.execute(sa.select(devices).where(devices.c.id == device_id)).mappings().one_or_none()
        return None if row is None else _device(row)

    def devices(self) -> list[Device]:
        """Every device, first enrolled first."""
        with self.db.transaction() as connection:
            rows = connection.execute(sa.select(devices).order_by(devices.c.enrolled, devices.c.id)).mappings().all()
        return [_device(row) for row in rows]

    def record_heartbeat(self, device_id: str, heartbeat: Heartbeat, tracks: Mapping[str, Track]) -> None:
        """Keep ``heartbeat`` as the device's last one, and its reports and failure events of each model in ``tracks``
        (model -> the track the device was assigned when it sent the heartbeat)."""
        rows = [report.model_dump() for report in _reports(device_id, heartbeat, tracks)]
        with self.db.transaction() as connection:
            connection.execute(devices.update().where(devices.c.id == device_id).values(heartbeat=heartbeat.model_dump_json()))
            if rows:
                connection.execute(model_reports.insert(), rows)

    def reports(self, model: str, since: datetime, *, unhealthy_only: bool = False) -> list[StoredReport]:
        """The reports of ``model`` made at or after ``since``, oldest first; only those with errors or failures if asked."""
        query = sa.select(*(model_reports.c[name] for name in StoredReport.model_fields)).where(
            model_reports.c.model == model, model_reports.c.time >= since
        )
        if unhealthy_only:
            query = query.where(_UNHEALTHY)
        with self.db.transaction() as connection:
            rows = connection.execute(query.order_by(model_reports.c.time, model_reports.c.id)).mappings().all()
        return [StoredReport.model_validate(dict(row)) for row in rows]

    def report_totals(self, model: str, since: datetime) -> list[ReportTotals]:
        """The reports of ``model`` made at or after ``since``, pooled per track, version and device."""
        r = model_reports.c
        counted = {"healthy": _HEALTHY, "unhealthy": _UNHEALTHY}
        query = (
            sa.select(
                r.track, r.version, r.device_id, sa.func.count().label("reports"),
                *(sa.func.sum(sa.case((condition, 1), else_=0)).label(name) for name, condition in counted.items()),
                *(sa.func.sum(r[name]).label(name) for name in ("inferences", "labelled", "correct")),
            )
            .where(r.model == model, r.time >= since)
            .group_by(r.track, r.version, r.device_id)
            .order_by(r.track, r.version, r.device_id)
        )
        with self.db.transaction() as connection:
            rows = connection.execute(query).mappings().all()
        return [ReportTotals.model_validate(dict(row)) for row in rows]

    def forwarded(self, event_ids: Iterable[str]) -> set[str]:
        """Which of ``event_ids`` have already been forwarded."""
        ids = list(event_ids)
        with self.db.transaction() as connection:
            return set(connection.execute(sa.select(forwarded_results.c.event_id).where(forwarded_results.c.event_id.in_(ids))).scalars())

    def mark_forwarded(self, device_id: str, event_ids: Iterable[str]) -> None:
        """Remember ``event_ids`` as forwarded, so a resent batch is not forwarded again; ids remembered before stay as they were."""
        now = datetime.now(UTC)
        rows = [{"event_id": event_id, "device_id": device_id, "forwarded": now} for event_id in dict.fromkeys(event_ids)]
        if rows:
            with self.db.transaction() as connection:
                connection.execute(insert_unless_present(connection, forwarded_results), rows)  # ids remembered meanwhile stay


def _why_refused(connection: sa.Connection, digest: str) -> str:
    row = connection.execute(sa.select(enrollment_tokens).where(enrollment_tokens.c.sha256 == digest)).mappings().one_or_none()
    if row is None:
        return "the enrollment token is unknown"
    if row["uses_left"] < 1:
        return f"enrollment token {row['id']} has been used up"
    return f"enrollment token {row['id']} expired at {row['expires'].isoformat()}"


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


def _device(row: sa.RowMapping) -> Device:
    heartbeat = row["heartbeat"]
    return Device(
        id=row["id"], name=row["name"], hardware=json.loads(row["hardware"]), key_id=row["key_id"], enrolled=row["enrolled"],
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
                refused = producer.send_acknowledged(events, self.timeout_s)
            except KafkaError as error:
                self._discard()
                log.warning("results not forwarded: %r", error)
                raise BrokerUnavailable(f"Kafka did not acknowledge the results within {self.timeout_s:g} s") from None
            if refused is not None:
                self._discard()
                raise BrokerUnavailable(refused)

    def close(self) -> None:
        """Close the producer, delivering what it still holds."""
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            _close_quietly(producer)

    def _open(self) -> EventProducer:
        self._producer = EventProducer.within(self.settings, configured_servers(self.settings), self.timeout_s)
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
