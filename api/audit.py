"""The audit log: who did what, when, from where and how it ended, for every admin action and every refused request.

Rows are appended to the control-plane database's ``audit_events`` table and never changed.
Admin actions are written before their answer leaves the server; refused requests (401, 403,
429) are written by a background thread in batches, so a flood of them costs the database one
insert per batch, and what the bounded queue cannot hold is counted as dropped
(``edgelake_audit_entries_dropped``).
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Literal

import sqlalchemy as sa
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgelake.control_db import ControlDb, audit_events, audit_exports, insert_unless_present
from edgelake.contracts import AuditRecord
from edgelake.training.registry import Transition

log = logging.getLogger(__name__)

Outcome = Literal["done", "failed", "refused"]
REFUSED_STATUSES = frozenset({401, 403, 429})
_DETAIL_MAX = 1000
_QUEUE_MAX = 10_000
_BATCH_MAX = 500
_LAKE_EXPORT = "lake"  # the export mark's name: how far the log was copied to the audit-log topic


class AuditEvent(BaseModel):
    """One entry of the audit log."""

    id: int | None = Field(None, description="Its place in the log, given when it is stored.")
    time: AwareDatetime
    actor: str = Field(description="The API key id (`anonymous` without one), `cli:<user>` for a command, `gate:<name>` for a gate.")
    role: str | None = Field(description="The actor's role, where it has one.")
    action: str = Field(description="The route (`PUT /v1/models/{name}/rollout`) or command (`keys revoke`).")
    target: str = Field(description="What it acted on: the path's parameters or the command's subject.")
    outcome: Outcome
    status: int | None = Field(description="The HTTP status answered, for requests.")
    client: str = Field(description="Where it came from: the client's address, or the host a command ran on.")
    detail: str = Field("", description="Why it was refused or failed, or what changed.")

    @classmethod
    def now(cls, **fields: object) -> AuditEvent:
        detail = str(fields.pop("detail", ""))[:_DETAIL_MAX]
        return cls.model_validate({"time": datetime.now(UTC), "detail": detail, **fields})

    def record(self) -> AuditRecord:
        """This entry as the event the lake's ``audit-log`` topic carries."""
        return AuditRecord(
            event_id=f"audit-{self.id}", event_time=self.time, actor=self.actor[:128], role=self.role, action=self.action[:256],
            target=self.target[:1024], outcome=self.outcome, status=self.status, client=self.client[:256], detail=self.detail,
        )


class AuditLog:
    """The audit log in a control-plane database: append (now, or in the background), and read in order."""

    def __init__(self, db: ControlDb) -> None:
        self.db = db
        self.dropped = 0  # refused requests the queue could not hold
        self._queue: queue.Queue[AuditEvent | None] = queue.Queue(_QUEUE_MAX)
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()

    def record(self, event: AuditEvent) -> None:
        """Append ``event`` now."""
        self._insert([event])

    def record_later(self, event: AuditEvent) -> None:
        """Append ``event`` from the background writer (started on first use)."""
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_batches, name="audit-writer", daemon=True)
                self._writer.start()
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        """Write what is still queued and stop the background writer."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            self._queue.put(None)
            writer.join(30)

    def events(self, *, after: int = 0, limit: int = 100, actor: str | None = None, outcome: Outcome | None = None) -> list[AuditEvent]:
        """Up to ``limit`` entries past id ``after``, oldest first, of one actor or outcome if asked."""
        query = sa.select(audit_events).where(audit_events.c.id > after)
        if actor is not None:
            query = query.where(audit_events.c.actor == actor)
        if outcome is not None:
            query = query.where(audit_events.c.outcome == outcome)
        with self.db.transaction() as connection:
            rows = connection.execute(query.order_by(audit_events.c.id).limit(limit)).mappings().all()
        return [AuditEvent.model_validate(dict(row)) for row in rows]

    def export(self, publish: Callable[[list[AuditRecord]], None], *, batch: int = 1000) -> int:
        """Hand the entries past the export mark to ``publish`` (which returns once the broker holds them), oldest first,
        then move the mark past them; how many. No transaction stays open while ``publish`` waits on the broker, so
        replicas exporting at once, or an export repeated after a crash, may send an entry twice: the lake keeps it once."""
        exported = 0
        while True:
            with self.db.transaction() as connection:
                connection.execute(insert_unless_present(connection, audit_exports).values(name=_LAKE_EXPORT, last_id=0))
                mark = connection.execute(sa.select(audit_exports.c.last_id).where(audit_exports.c.name == _LAKE_EXPORT)).scalar_one()
                rows = connection.execute(
                    sa.select(audit_events).where(audit_events.c.id > mark).order_by(audit_events.c.id).limit(batch)
                ).mappings().all()
            if rows:
                publish([AuditEvent.model_validate(dict(row)).record() for row in rows])
                with self.db.transaction() as connection:  # forward only: another exporter may have gone further meanwhile
                    connection.execute(
                        audit_exports.update()
                        .where(audit_exports.c.name == _LAKE_EXPORT, audit_exports.c.last_id < rows[-1]["id"])
                        .values(last_id=rows[-1]["id"])
                    )
            exported += len(rows)
            if len(rows) < batch:
                return exported

    def _insert(self, events: Iterable[AuditEvent]) -> None:
        rows = [event.model_dump(exclude={"id"}) for event in events]
        if rows:
            with self.db.transaction() as connection:
                connection.execute(audit_events.insert(), rows)

    def _write_batches(self) -> None:
        while True:
            first = self._queue.get()
            batch = [] if first is None else [first]
            while len(batch) < _BATCH_MAX:
                try:
                    event = self._queue.get_nowait()
                except queue.Empty:
                    break
                if event is None:
                    first = None
                    break
                batch.append(event)
            try:
                self._insert(batch)
            except SQLAlchemyError as error:
                self.dropped += len(batch)
                log.warning("%d audit entries not written: %s", len(batch), error)
            if first is None:
                return


def gate_events(gate: str, model: str, transitions: Iterable[Transition]) -> list[AuditEvent]:
    """The entries of the stage changes an automatic gate made on ``model``."""
    return [
        AuditEvent.now(
            actor=f"gate:{gate}", role=None, action=f"models promote --to {transition.to}", target=f"{model} v{transition.version}",
            outcome="done", status=None, client=socket.gethostname(), detail=f"{transition.from_} -> {transition.to}: {transition.reason or ''}",
        )
        for transition in transitions
    ]


@contextmanager
def audited(log: AuditLog, *, actor: str, action: str, target: str, client: str) -> Iterator[dict[str, str]]:
    """Log an admin action done outside a request (a command): ``done``, or ``failed`` with the error when the block raises.

    The block may change the entry's ``target`` or add a ``detail`` in the dict it is given.
    """
    entry = {"target": target, "detail": ""}
    try:
        yield entry
    except Exception as error:
        log.record(AuditEvent.now(actor=actor, role="admin", action=action, outcome="failed", status=None, client=client, **{**entry, "detail": str(error)}))
        raise
    log.record(AuditEvent.now(actor=actor, role="admin", action=action, outcome="done", status=None, client=client, **entry))


class AuditMiddleware:
    """Logs each admin action (a request other than GET, HEAD or OPTIONS by an admin key) and each refused request.

    The key comes from ``request.state.api_key`` (set by :func:`edgelake.api.auth.require`) and the
    reason of a refusal from ``request.state.problem`` (set by the problem handlers).
    """

    def __init__(self, app: ASGIApp, audit: AuditLog) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})  # the dict request.state wraps, so what the route sets there is seen here

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                event = _audited(scope, message["status"])
                if event is not None and event.outcome == "refused":
                    self.audit.record_later(event)
                elif event is not None:
                    await run_in_threadpool(self.audit.record, event)  # logged before the admin hears it is done
            await send(message)

        await self.app(scope, receive, sending)


def _audited(scope: Scope, status: int) -> AuditEvent | None:
    """The entry a request answered with ``status`` makes, if it makes one."""
    state = scope.get("state", {})
    key = state.get("api_key")
    refused = status in REFUSED_STATUSES
    admin_action = key is not None and key.role == "admin" and scope["method"] not in ("GET", "HEAD", "OPTIONS")
    if not (refused or admin_action):
        return None
    route = getattr(scope.get("route"), "path", scope["path"])
    target = ",".join(f"{name}={value}" for name, value in sorted(scope.get("path_params", {}).items()))
    client = scope.get("client")
    return AuditEvent.now(
        actor=key.id if key is not None else "anonymous", role=None if key is None else key.role, action=f"{scope['method']} {route}",
        target=target, outcome="refused" if refused else ("done" if status < 400 else "failed"), status=status,
        client=client[0] if client else "unknown", detail=state.get("problem", ""),
    )
