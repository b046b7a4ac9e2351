"""The camera loop: each frame classified by the model the device runs, each result queued in the outbox, then counted."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from edgelake.edge.frames import Frame, camera
from edgelake.edge.options import AgentOptions
from edgelake.edge.outbox import Outbox
from edgelake.edge.runner import EdgeModel
from edgelake.edge.updates import Report, Updater
from edgelake.contracts import EdgeInference
from edgelake.device_api import AgentEvent, ModelReport


class Inference:
    """Classifies camera frames at the camera's pace; counts the run's frames and how the running version did since the last heartbeat.

    A model that raises at run time is handed to ``models.failed`` (which rolls it back) and the frame
    goes through the model it returns. ``queued`` is set after each result is queued.
    """

    def __init__(
        self, options: AgentOptions, device_id: str, outbox: Outbox, models: Updater, record: Report, queued: threading.Event
    ) -> None:
        self.options = options
        self.device_id = device_id
        self.outbox = outbox
        self.models = models
        self._record = record
        self._queued = queued
        self._lock = threading.Lock()  # the counts, written here and read by the heartbeat
        self._report: ModelReport | None = None  # the running version's counts since the last heartbeat
        self.frames = 0
        self._labelled = 0  # over the whole run, across versions
        self._correct = 0

    def run(self, stop: threading.Event) -> None:
        """Classify frames at the camera's pace, from the moment a model is active, until ``max_frames`` or ``stop``."""
        while self.models.active() is None:
            if stop.wait(0.1):
                return
        interval = 1.0 / self.options.fps
        due = time.monotonic()
        for frame in self._frames_to_make():
            if stop.wait(max(0.0, due - time.monotonic())):
                return
            self._classify(frame)
            due = max(due + interval, time.monotonic())  # a late frame does not make the next ones come in a burst

    def accuracy(self) -> float | None:
        """The share of labelled frames classified right, this run."""
        with self._lock:
            return round(self._correct / self._labelled, 4) if self._labelled else None

    def take_report(self) -> ModelReport | None:
        """The running version's counts since the last heartbeat, handed to a heartbeat: its counting starts again."""
        model = self.models.active()
        with self._lock:
            report = self._report if model is None else self._report_for(model)
            self._report = None if report is None else ModelReport(version=report.version)
        return report

    def put_back(self, report: ModelReport | None) -> None:
        """The counts of a heartbeat that was not delivered, added back to go with the next one (if the version still runs)."""
        with self._lock:
            current = self._report
            if report is not None and current is not None and current.version == report.version:
                self._report = ModelReport(
                    version=report.version, inferences=report.inferences + current.inferences, labelled=report.labelled + current.labelled,
                    correct=report.correct + current.correct, errors=report.errors + current.errors,
                )

    def _frames_to_make(self) -> Iterator[Frame]:
        frames = camera(self.options.frames, self.options.fashion_mnist_dir, self.options.frame_offset)
        for made, frame in enumerate(frames):
            if self.options.max_frames is not None and made >= self.options.max_frames:
                return
            yield frame

    def _classify(self, frame: Frame) -> None:
        model = self.models.active()
        while model is not None:
            try:
                index, confidence, latency_ms = model.classify(frame.pixels)
            except Exception as error:  # noqa: BLE001 - a model failing at run time is rolled back, the agent goes on
                with self._lock:
                    report = self._report_for(model)
                    self._report = report.model_copy(update={"errors": report.errors + 1})
                model = self.models.failed(model, error)
                continue
            self._queue_result(model, frame, index, confidence, latency_ms)
            return

    def _queue_result(self, model: EdgeModel, frame: Frame, index: int, confidence: float, latency_ms: float) -> None:
        label = None if frame.label is None else model.class_name(frame.label)
        prediction = model.class_name(index)
        event = EdgeInference(
            event_id=uuid.uuid4().hex, event_time=datetime.now(UTC), device_id=self.device_id,
            model_name=model.name, model_version=str(model.version), input_ref=frame.frame_id, prediction=prediction,
            confidence=confidence, latency_ms=latency_ms, label=label,
        )
        dropped = self.outbox.put(event.event_id, event.to_bytes())
        with self._lock:
            self.frames += 1
            self._labelled += label is not None
            self._correct += label is not None and label == prediction
            report = self._report_for(model)
            self._report = report.model_copy(update={
                "inferences": report.inferences + 1,
                "labelled": report.labelled + (label is not None),
                "correct": report.correct + (label is not None and label == prediction),
            })
        if dropped:
            detail = "the outbox was full; the oldest results were dropped"
            self._record(AgentEvent(kind="results_dropped", time=datetime.now(UTC), count=dropped, detail=detail))
        self._queued.set()

    def _report_for(self, model: EdgeModel) -> ModelReport:
        """The counts for ``model``'s version (new ones when the version changed); call under the lock."""
        if self._report is None or self._report.version != model.version:
            self._report = ModelReport(version=model.version)
        return self._report
