"""The device agent: enroll once, then classify camera frames while a second thread talks to the cloud.

The inference thread paces the camera, classifies each frame with the active model and
queues the result in the outbox before counting it. The cloud thread sends a heartbeat
every ``heartbeat_s`` (the model versions it runs, how each did since the last one, its
health and agent events), catches up with the registry's key set when the assignment names a
newer release (each release verified against the set trusted so far), applies the assignment
(an over-the-air update or a return to a kept version), and drains the outbox in order
whenever the cloud is reachable.
A model that raises at run time is rolled back to the previous version on the spot.
"""

from __future__ import annotations

import json
import logging
import platform
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from edgelake.edge.client import CloudClient, CloudRefused, CloudUnreachable
from edgelake.edge.forwarding import ApiSink, FallbackSink, KafkaSink, ResultSink
from edgelake.edge.frames import Frame, camera
from edgelake.edge.outbox import Outbox
from edgelake.edge.runner import EdgeModel
from edgelake.edge.state import Credentials, load_credentials, load_trusted_keys, save_credentials, save_trusted_keys, state_dir
from edgelake.edge.updates import ModelSlot, UpdateFailed
from edgelake.contracts import EdgeInference
from edgelake.device_api import AgentEvent, Assignment, EnrollRequest, HeartbeatRequest, ModelReport
from edgelake.files import replace_durably
from edgelake.settings import Settings
from edgelake.signing import KeySetRefused, follow, load_public_key, public_key_pem

STATUS = "status.json"
MAX_EVENTS = 100
T = TypeVar("T")
logger = logging.getLogger(__name__)


class NotEnrolled(RuntimeError):
    """The device has no credentials and no usable enrollment token."""


@dataclass(frozen=True)
class AgentOptions:
    """How one agent runs; ``from_settings`` fills what the command line leaves out."""

    device_name: str
    state_dir: Path
    api_url: str
    enrollment_token: str
    model: str
    frames: str
    frame_offset: int
    fps: float
    max_frames: int | None
    heartbeat_s: float
    outbox_max: int
    forward_batch: int
    kafka_bootstrap_servers: str
    result_topic: str
    fashion_mnist_dir: Path
    registry_key: Path | None = None
    drain_timeout_s: float = 120.0

    @classmethod
    def from_settings(cls, settings: Settings, device_name: str, **overrides: object) -> AgentOptions:
        values: dict[str, object] = {
            "device_name": device_name,
            "state_dir": settings.edge_state_dir or settings.data_dir / "edge" / device_name,
            "api_url": settings.api_url,
            "enrollment_token": settings.edge_enrollment_token,
            "model": "vision",
            "frames": "fashion-mnist",
            "frame_offset": 0,
            "fps": settings.edge_frames_per_s,
            "max_frames": None,
            "heartbeat_s": settings.edge_heartbeat_s,
            "outbox_max": settings.edge_outbox_max,
            "forward_batch": settings.edge_forward_batch,
            "kafka_bootstrap_servers": settings.edge_kafka_bootstrap_servers,
            "result_topic": settings.topic(EdgeInference.topic),
            "fashion_mnist_dir": settings.fashion_mnist_dir,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)  # type: ignore[arg-type]


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
    """One device: its credentials, model slot, outbox and the two threads that use them."""

    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.directory = state_dir(options.state_dir)
        self.stop = threading.Event()
        self._lock = threading.Lock()  # counters, events and the active model
        self._slot_lock = threading.Lock()  # one update or rollback at a time
        self._queued = threading.Event()
        self._events: deque[AgentEvent] = deque(maxlen=MAX_EVENTS)
        self._event_counts: dict[str, int] = {}
        self._report: ModelReport | None = None
        self._model: EdgeModel | None = None
        self._frames = 0
        self._labelled = 0  # over the whole run, across versions
        self._correct = 0
        self._delivered = 0
        self._reported_drops = 0
        self._key_refusal: str | None = None  # the last key-set release refused, reported once
        self._started = time.monotonic()

    def run(self) -> AgentSummary:
        """Enroll if needed, then infer until ``max_frames`` results are made and delivered, or until stopped."""
        credentials = self._enrolled()
        client = CloudClient(credentials.api_url, credentials.device_token)
        self.credentials = credentials
        self.trusted_keys = load_trusted_keys(self.directory, credentials)
        self.slot = ModelSlot(self.directory / "models", self.options.model, self.trusted_keys, self._record)
        self.outbox = Outbox(self.directory / "outbox.sqlite", self.options.outbox_max)
        self._reported_drops = self.outbox.dropped
        self._set_model(self.slot.load_active())
        sink = self._sink(client, credentials.device_id)
        cloud = threading.Thread(target=self._cloud_loop, args=(client, sink), name="cloud", daemon=True)
        cloud.start()
        try:
            self._infer()
            self._drain()
        finally:
            self.stop.set()
            cloud.join(timeout=30)
            self._heartbeat(client)  # the last counts and events
            sink.close()
            client.close()
        return self._summary()

    # -- enrollment ---------------------------------------------------------------------------

    def _enrolled(self) -> Credentials:
        credentials = load_credentials(self.directory)
        pinned = self._pinned_out_of_band()
        if credentials is None:
            credentials = self._enroll(pinned)
        elif pinned is not None and credentials.registry_public_key is None:
            credentials = credentials.model_copy(update={"registry_public_key": pinned})
            save_credentials(self.directory, credentials)
        return credentials

    def _enroll(self, pinned: str | None) -> Credentials:
        options = self.options
        if not options.enrollment_token:
            raise NotEnrolled(f"{self.directory} holds no credentials: give an enrollment token (--enrollment-token or EDGELAKE_EDGE_ENROLLMENT_TOKEN)")
        hardware = {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version()}
        request = EnrollRequest(enrollment_token=options.enrollment_token, device_name=options.device_name, hardware=hardware)
        client = CloudClient(options.api_url)
        try:
            enrollment = _retrying(lambda: client.enroll(request), self.stop, "enrollment")
        except CloudRefused as refused:
            raise NotEnrolled(f"the API refused the enrollment: {refused}") from None
        finally:
            client.close()
        key = enrollment.registry_public_key
        if pinned is not None and key is not None and public_key_pem(load_public_key(key.encode())) != pinned.encode():
            raise NotEnrolled("the registry key the API handed out differs from the one given with --registry-key; refusing to pin it")
        credentials = Credentials(
            api_url=options.api_url, device_id=enrollment.device_id, device_name=options.device_name,
            device_token=enrollment.device_token, registry_public_key=pinned or key,
        )  # fmt: skip
        save_credentials(self.directory, credentials)
        self._record(AgentEvent(kind="enrolled", time=datetime.now(UTC), detail=enrollment.device_id))
        logger.info("enrolled as %s", enrollment.device_id)
        return credentials

    def _pinned_out_of_band(self) -> str | None:
        if self.options.registry_key is None:
            return None
        return public_key_pem(load_public_key(self.options.registry_key.read_bytes())).decode()

    # -- inference ------------------------------------------------------------------------------

    def _infer(self) -> None:
        """Classify frames at the camera's pace, from the moment a model is active."""
        while self._active() is None:
            if self.stop.wait(0.1):
                return
        interval = 1.0 / self.options.fps
        due = time.monotonic()
        for frame in self._frames_to_make():
            if self.stop.wait(max(0.0, due - time.monotonic())):
                return
            self._classify(frame)
            due = max(due + interval, time.monotonic())  # a late frame does not make the next ones come in a burst

    def _frames_to_make(self) -> Iterator[Frame]:
        frames = camera(self.options.frames, self.options.fashion_mnist_dir, self.options.frame_offset)
        for made, frame in enumerate(frames):
            if self.options.max_frames is not None and made >= self.options.max_frames:
                return
            yield frame

    def _classify(self, frame: Frame) -> None:
        model = self._active()
        while model is not None:
            try:
                index, confidence, latency_ms = model.classify(frame.pixels)
            except Exception as error:  # noqa: BLE001 - a model failing at run time is rolled back, the agent goes on
                model = self._runtime_error(model, error)
                continue
            self._queue_result(model, frame, index, confidence, latency_ms)
            return

    def _queue_result(self, model: EdgeModel, frame: Frame, index: int, confidence: float, latency_ms: float) -> None:
        label = None if frame.label is None else model.class_name(frame.label)
        prediction = model.class_name(index)
        event = EdgeInference(
            event_id=uuid.uuid4().hex, event_time=datetime.now(UTC), device_id=self.credentials.device_id,
            model_name=model.name, model_version=str(model.version), input_ref=frame.frame_id, prediction=prediction,
            confidence=confidence, latency_ms=latency_ms, label=label,
        )  # fmt: skip
        dropped = self.outbox.put(event.event_id, event.to_bytes())
        with self._lock:
            self._frames += 1
            self._labelled += label is not None
            self._correct += label is not None and label == prediction
            report = self._report_for(model)
            self._report = report.model_copy(update={
                "inferences": report.inferences + 1,
                "labelled": report.labelled + (label is not None),
                "correct": report.correct + (label is not None and label == prediction),
            })  # fmt: skip
        if dropped:
            detail = "the outbox was full; the oldest results were dropped"
            self._record(AgentEvent(kind="results_dropped", time=datetime.now(UTC), count=dropped, detail=detail))
        self._queued.set()

    def _runtime_error(self, model: EdgeModel, error: Exception) -> EdgeModel | None:
        """Count the error, roll the failing version back and return the model to use instead (None: none left)."""
        detail = f"{type(error).__name__}: {error}"
        logger.error("%s v%d failed at run time: %s", model.name, model.version, detail)
        self._record(AgentEvent(kind="runtime_error", time=datetime.now(UTC), model=model.name, version=model.version, detail=detail))
        with self._lock:
            report = self._report_for(model)
            self._report = report.model_copy(update={"errors": report.errors + 1})
        with self._slot_lock:
            if self._active() is not model:
                return self._active()  # replaced meanwhile
            replacement = self.slot.roll_back(f"runtime error: {detail}")
            self._set_model(replacement)
        return replacement

    # -- the cloud ------------------------------------------------------------------------------

    def _cloud_loop(self, client: CloudClient, sink: ResultSink) -> None:
        next_beat = 0.0
        backoff = 0.5
        while not self.stop.is_set():
            try:
                if time.monotonic() >= next_beat:
                    self._heartbeat(client)
                    next_beat = time.monotonic() + self.options.heartbeat_s
                delivered = self._forward(sink)
            except Exception:  # a bug here must not silently stop forwarding: log it and go on
                logger.exception("the cloud loop failed; going on")
                delivered = None
            if delivered is None:  # unreachable: wait, then try again
                self.stop.wait(min(backoff, max(0.0, next_beat - time.monotonic())) or 0.05)
                backoff = min(backoff * 2, self.options.heartbeat_s)
                continue
            backoff = 0.5
            if delivered == 0:
                self._queued.wait(min(0.5, max(0.0, next_beat - time.monotonic())))
                self._queued.clear()

    def _forward(self, sink: ResultSink) -> int | None:
        """Deliver the oldest queued batch; how many results were delivered, None when the cloud could not take them."""
        batch = self.outbox.peek(self.options.forward_batch)
        if not batch:
            return 0
        try:
            sink.deliver([queued.payload for queued in batch])
        except (CloudUnreachable, CloudRefused) as error:
            logger.debug("results kept queued (%d): %s", len(batch), error)
            return None
        self.outbox.acknowledge(batch[-1].seq)
        with self._lock:
            self._delivered += len(batch)
        return len(batch)

    def _heartbeat(self, client: CloudClient) -> None:
        with self._lock:
            report, events = self._report, list(self._events)
            self._report = None if report is None else ModelReport(version=report.version)
            self._events.clear()
            model = self._model
        request = HeartbeatRequest(
            models={} if model is None else {model.name: model.version},
            reports={} if report is None else {self.options.model: report},
            health=self._health(model),
            events=events,
        )
        try:
            assignment = client.heartbeat(self.credentials.device_id, request)
        except (CloudUnreachable, CloudRefused) as error:
            logger.debug("heartbeat not delivered: %s", error)
            self._restore(report, events)
            return
        self._write_status(request)
        self._catch_up_keys(assignment, client)
        assigned = assignment.models.get(self.options.model)
        if assigned is not None and not self.stop.is_set():
            self._update(assigned.version, client)

    def _catch_up_keys(self, assignment: Assignment, client: CloudClient) -> None:
        """Adopt, in order, each newer key-set release that follows the set trusted so far; re-check the active model after."""
        trusted = self.trusted_keys
        newest = assignment.key_set_sequence
        if newest is None or newest <= trusted.sequence:
            return
        try:
            releases = client.fetch_key_releases(trusted.sequence)
        except (CloudUnreachable, CloudRefused) as error:
            logger.info("key-set releases not fetched yet: %s", error)
            return
        adopted = trusted
        for release in releases:
            try:
                adopted = follow(adopted, release)
            except KeySetRefused as refused:
                self._refuse_keys(str(refused))
                break
            save_trusted_keys(self.directory, release)
            self._record(AgentEvent(kind="keys_adopted", time=datetime.now(UTC), detail=f"key-set release {adopted.sequence}"))
        if adopted is trusted:
            return
        with self._slot_lock:
            self.trusted_keys = self.slot.trusted = adopted
            if self.slot.installed.active is not None:
                self._set_model(self.slot.load_active())  # a model signed by a key revoked now is refused and rolled back

    def _refuse_keys(self, reason: str) -> None:
        if reason == self._key_refusal:
            return
        self._key_refusal = reason
        logger.warning("key-set release refused: %s", reason)
        self._record(AgentEvent(kind="keys_refused", time=datetime.now(UTC), detail=reason[:2000]))

    def _update(self, version: int, client: CloudClient) -> None:
        with self._slot_lock:
            if not self.slot.wants(version):
                return
            try:
                model = self.slot.update(version, client)
            except UpdateFailed as failure:
                logger.warning("%s v%d not installed: %s", self.options.model, version, failure)
                return
            except (CloudUnreachable, CloudRefused) as error:
                logger.info("%s v%d not downloaded yet: %s", self.options.model, version, error)
                return
            self._set_model(model)
        logger.info("now running %s v%d (%s)", model.name, model.version, model.runtime)

    def _restore(self, report: ModelReport | None, events: list[AgentEvent]) -> None:
        """Put an undelivered heartbeat's counts and events back, to go with the next one."""
        with self._lock:
            current = self._report
            if report is not None and current is not None and current.version == report.version:
                self._report = ModelReport(
                    version=report.version, inferences=report.inferences + current.inferences, labelled=report.labelled + current.labelled,
                    correct=report.correct + current.correct, errors=report.errors + current.errors,
                )  # fmt: skip
            self._events.extendleft(reversed(events))

    def _sink(self, client: CloudClient, device_id: str) -> ResultSink:
        api = ApiSink(client, device_id)
        if not self.options.kafka_bootstrap_servers:
            return api
        return FallbackSink([KafkaSink(self.options.kafka_bootstrap_servers, self.options.result_topic, device_id), api])

    def _drain(self) -> None:
        """Wait, up to ``drain_timeout_s``, until every queued result is delivered."""
        deadline = time.monotonic() + self.options.drain_timeout_s
        while len(self.outbox) and time.monotonic() < deadline and not self.stop.is_set():
            self._queued.set()
            self.stop.wait(0.2)

    # -- state ----------------------------------------------------------------------------------

    def _active(self) -> EdgeModel | None:
        with self._lock:
            return self._model

    def _set_model(self, model: EdgeModel | None) -> None:
        with self._lock:
            self._model = model
            if model is not None:
                self._report_for(model)

    def _report_for(self, model: EdgeModel) -> ModelReport:
        """The running report for ``model``'s version (a new one when the version changed); call under the lock."""
        if self._report is None or self._report.version != model.version:
            self._report = ModelReport(version=model.version)
        return self._report

    def _record(self, event: AgentEvent) -> None:
        with self._lock:
            self._events.append(event)
            self._event_counts[event.kind] = self._event_counts.get(event.kind, 0) + 1
        if event.kind not in ("update_started", "results_dropped"):
            logger.info("%s: %s v%s %s", event.kind, event.model or "", event.version or "", event.detail)

    def _health(self, model: EdgeModel | None) -> dict[str, object]:
        return {
            "queued": len(self.outbox),
            "dropped": self.outbox.dropped,
            "frames": self._frames,
            "accuracy": round(self._correct / self._labelled, 4) if self._labelled else None,  # on labelled frames, this run
            "delivered": self._delivered,
            "runtime": None if model is None else model.runtime,
            "peak_rss_mb": peak_rss_mb(),
            "uptime_s": round(time.monotonic() - self._started, 1),
        }

    def _write_status(self, request: HeartbeatRequest) -> None:
        """The last heartbeat delivered, for ``edgelake edge fleet`` to show."""
        status = {"device_id": self.credentials.device_id, "device_name": self.options.device_name, **request.model_dump(mode="json")}
        replace_durably(self.directory / STATUS, json.dumps(status).encode())

    def _summary(self) -> AgentSummary:
        model = self._active()
        return AgentSummary(
            device_id=self.credentials.device_id, device_name=self.options.device_name, frames=self._frames, delivered=self._delivered,
            queued=len(self.outbox), dropped=self.outbox.dropped, model_version=None if model is None else model.version,
            runtime=None if model is None else model.runtime, peak_rss_mb=peak_rss_mb(), events=dict(self._event_counts),
        )  # fmt: skip


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB (Linux), or None where it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _retrying(call: Callable[[], T], stop: threading.Event, what: str) -> T:
    """``call()`` until it does not raise CloudUnreachable, backing off up to 30 s; stops when ``stop`` is set."""
    delay = 0.5
    while True:
        try:
            return call()
        except CloudUnreachable as error:
            logger.warning("%s: the API cannot be reached (%s); trying again in %.0f s", what, error, delay)
            if stop.wait(delay):
                raise
            delay = min(delay * 2, 30.0)

