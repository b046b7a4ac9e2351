"""The agent's events (enrolled, activated, rolled back, keys adopted, ...): logged, held for the next heartbeat, counted."""

from __future__ import annotations

import logging
import threading
from collections import deque

from edgelake.device_api import AgentEvent

MAX_EVENTS = 100
logger = logging.getLogger(__name__)


class EventLog:
    """The events waiting for a heartbeat (the newest ``MAX_EVENTS``) and how many of each kind this run recorded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: deque[AgentEvent] = deque(maxlen=MAX_EVENTS)
        self._counts: dict[str, int] = {}

    def record(self, event: AgentEvent) -> None:
        """Hold ``event`` for the next heartbeat, count it and log it (an update started and dropped results only count)."""
        with self._lock:
            self._waiting.append(event)
            self._counts[event.kind] = self._counts.get(event.kind, 0) + 1
        if event.kind not in ("update_started", "results_dropped"):
            logger.info("%s: %s v%s %s", event.kind, event.model or "", event.version or "", event.detail)

    def take(self) -> list[AgentEvent]:
        """The events waiting, handed to a heartbeat."""
        with self._lock:
            events = list(self._waiting)
            self._waiting.clear()
        return events

    def put_back(self, events: list[AgentEvent]) -> None:
        """The events of a heartbeat that was not delivered, back ahead of those recorded since."""
        with self._lock:
            self._waiting.extendleft(reversed(events))

    def counts(self) -> dict[str, int]:
        """How many events of each kind this run recorded."""
        with self._lock:
            return dict(self._counts)
