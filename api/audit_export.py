"""The audit log's copy in the lake: every ``audit_export_s`` a daemon thread sends the entries not yet copied to the
``audit-log`` topic (``AuditRecord`` events), which ingest lands in ``silver_audit_log`` like any other topic, for SQL.

Every replica may run it. The export mark in the control plane says how far the log was copied; replicas exporting
at once, or a crash between the broker's acknowledgement and the mark, may send an entry twice, and ingest's
deduplication keeps it once.
"""

from __future__ import annotations

import logging
import threading

from kafka.errors import KafkaError
from sqlalchemy.exc import SQLAlchemyError

from edgelake.api.audit import AuditLog
from edgelake.api.background import BackgroundThread
from edgelake.broker import configured_servers
from edgelake.contracts import AuditRecord
from edgelake.kafka import EventProducer
from edgelake.settings import Settings

log = logging.getLogger(__name__)


class AuditNotExported(Exception):
    """The broker did not acknowledge the audit records; the mark stays where it was."""


class AuditExporter(BackgroundThread):
    """Copies ``audit`` to the lake's ``audit-log`` topic: now (``export``), and every ``audit_export_s`` once started."""

    def __init__(self, settings: Settings, audit: AuditLog, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.audit = audit
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._producer: EventProducer | None = None
        super().__init__("audit-export")

    def export(self) -> int:
        """Send the entries not yet copied; how many. AuditNotExported when the broker does not take them."""
        with self._lock:
            return self.audit.export(self._publish)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop, and close the producer unless an export still uses it (one waiting for an absent broker must not hold
        the server's shutdown; the daemon thread goes with the process)."""
        super().close(timeout_s)
        if not self._lock.acquire(blocking=False):
            return
        try:
            producer, self._producer = self._producer, None
        finally:
            self._lock.release()
        if producer is not None:
            producer.close()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.audit_export_s):
            try:
                self.export()
            except (AuditNotExported, KafkaError, SQLAlchemyError) as error:  # the next round tries again
                log.warning("audit log not copied to the lake this time: %s", error)

    def _publish(self, records: list[AuditRecord]) -> None:
        if self._producer is None:
            self._producer = EventProducer.within(self.settings, configured_servers(self.settings), self.timeout_s)
        refused = self._producer.send_acknowledged(records, self.timeout_s)
        if refused is not None:
            producer, self._producer = self._producer, None
            producer.close()
            raise AuditNotExported(refused)
