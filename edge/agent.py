"""The device agent: enroll once, then classify camera frames while a second thread talks to the cloud.

The agent coordinates the jobs of its modules: ``enrollment`` (credentials, key-set catch-up),
``updates`` (the model it runs, updates over the air, rollbacks), ``inference`` (the camera loop)
and ``forwarding`` (the outbox's results on their way to the cloud). The inference thread paces
the camera, classifies each frame with the active model and queues the result in the outbox
before counting it. The cloud thread sends a heartbeat every ``heartbeat_s`` (the model versions
it runs, how each did since the last one, its health and agent events), catches up with the
registry's key set when the assignment names a newer release (each release verified against the
set trusted so far), applies the assignment (an over-the-air update or a return to a kept
version), and drains the outbox in order whenever the cloud is reachable.
A model that raises at run time is rolled back to the previous version on the spot.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgelake.edge.client import CloudClient, CloudRefused, CloudUnreachable
from edgelake.edge.enrollment import TrustedKeys, enrolled
from edgelake.edge.events import EventLog
from edgelake.edge.forwarding import Forwarder, result_sink
from edgelake.edge.inference import Inference
from edgelake.edge.options import AgentOptions
from edgelake.edge.outbox import Outbox
from edgelake.edge.runner import EdgeModel
from edgelake.edge.state import load_trusted_keys, state_dir
from edgelake.edge.updates import ModelSlot, Updater
from edgelake.device_api import HeartbeatRequest
from edgelake.files import replace_durably

STATUS = "status.json"
logger = logging.getLogger(__name__)


@dataclass
class AgentSummary:
    """What a run did, printed as JSON when the agent exits."""

    device_id: str
    device_name: str
    frames: int = 0
    delivered: int = 0
    queued: int = 0
    dropped: int = 0
    model_version: int | None = None
    runtime: str | None = None
    peak_rss_mb: float | None = None
    events: dict[str, int] = field(default_factory=dict)


class Agent:
    """One device: enrolls, then runs the camera loop while a second thread talks to the cloud, until done or ``stop``."""

    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.directory = state_dir(options.state_dir)
        self.stop = threading.Event()
        self.events = EventLog()
        self._started = time.monotonic()

    def run(self) -> AgentSummary:
        """Enroll if needed, then infer until ``max_frames`` results are made and delivered, or until stopped."""
        options, record = self.options, self.events.record
        credentials = enrolled(options, self.directory, self.stop, record)
        self.device_id = credentials.device_id
        client = CloudClient(credentials.api_url, credentials.device_token)
        self.keys = TrustedKeys(self.directory, load_trusted_keys(self.directory, credentials), record)
        self.models = Updater(ModelSlot(self.directory / "models", options.model, self.keys.trusted, record), record)
        outbox = Outbox(self.directory / "outbox.sqlite", options.outbox_max)
        sink = result_sink(client, self.device_id, options.kafka_bootstrap_servers, options.result_topic)
        self.forwarder = Forwarder(outbox, sink, options.forward_batch)
        self.inference = Inference(options, self.device_id, outbox, self.models, record, self.forwarder.queued)
        cloud = threading.Thread(target=self._cloud_loop, args=(client,), name="cloud", daemon=True)
        cloud.start()
        try:
            self.inference.run(self.stop)
            self.forwarder.drain(self.stop, options.drain_timeout_s)
        finally:
            self.stop.set()
            cloud.join(timeout=30)
            self._heartbeat(client)  # the last counts and events
            sink.close()
            client.close()
        return self._summary()

    def _cloud_loop(self, client: CloudClient) -> None:
        """Heartbeat every ``heartbeat_s``; in between, forward results as they are queued, backing off while the cloud is away."""
        next_beat = 0.0
        backoff = 0.5
        while not self.stop.is_set():
            try:
                if time.monotonic() >= next_beat:
                    self._heartbeat(client)
                    next_beat = time.monotonic() + self.options.heartbeat_s
                delivered = self.forwarder.forward()
            except Exception:  # a bug here must not silently stop forwarding: log it and go on
                logger.exception("the cloud loop failed; going on")
                delivered = None
            if delivered is None:  # unreachable: wait, then try again (the heartbeats keep their pace)
                self.stop.wait(min(backoff, max(0.0, next_beat - time.monotonic())) or 0.05)
                backoff = min(backoff * 2, self.options.heartbeat_s)
                continue
            backoff = 0.5
            if delivered == 0:
                self.forwarder.queued.wait(min(0.5, max(0.0, next_beat - time.monotonic())))
                self.forwarder.queued.clear()

    def _heartbeat(self, client: CloudClient) -> None:
        """Report to the cloud, then follow its assignment: newer key sets first, then the model version to run."""
        model = self.models.active()
        report, events = self.inference.take_report(), self.events.take()
        request = HeartbeatRequest(
            models={} if model is None else {model.name: model.version},
            reports={} if report is None else {self.options.model: report},
            health=self._health(model),
            events=events,
        )
        try:
            assignment = client.heartbeat(self.device_id, request)
        except (CloudUnreachable, CloudRefused) as error:
            logger.debug("heartbeat not delivered: %s", error)
            self.inference.put_back(report)
            self.events.put_back(events)
            return
        self._write_status(request)
        adopted = self.keys.catch_up(assignment.key_set_sequence, client)
        if adopted is not None:
            self.models.trust(adopted)
        assigned = assignment.models.get(self.options.model)
        if assigned is not None and not self.stop.is_set():
            self.models.apply(assigned.version, client)

    def _health(self, model: EdgeModel | None) -> dict[str, object]:
        outbox = self.forwarder.outbox
        return {
            "queued": len(outbox),
            "dropped": outbox.dropped,
            "frames": self.inference.frames,
            "accuracy": self.inference.accuracy(),  # on labelled frames, this run
            "delivered": self.forwarder.delivered,
            "runtime": None if model is None else model.runtime,
            "peak_rss_mb": peak_rss_mb(),
            "uptime_s": round(time.monotonic() - self._started, 1),
        }

    def _write_status(self, request: HeartbeatRequest) -> None:
        """The last heartbeat delivered, for ``edgelake edge fleet`` to show."""
        status = {"device_id": self.device_id, "device_name": self.options.device_name, **request.model_dump(mode="json")}
        replace_durably(self.directory / STATUS, json.dumps(status).encode())

    def _summary(self) -> AgentSummary:
        model, outbox = self.models.active(), self.forwarder.outbox
        return AgentSummary(
            device_id=self.device_id, device_name=self.options.device_name, frames=self.inference.frames, delivered=self.forwarder.delivered,
            queued=len(outbox), dropped=outbox.dropped, model_version=None if model is None else model.version,
            runtime=None if model is None else model.runtime, peak_rss_mb=peak_rss_mb(), events=self.events.counts(),
        )


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB (Linux), or None where it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None
