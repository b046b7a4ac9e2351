"""The fraud canary's rollout gate on the API's side: every ``fraud_gate_check_s`` seconds a daemon thread judges the
version scoring in shadow on the labels that matured (:mod:`edgelake.training.matured_labels`) and promotes or rejects
it once the evidence is complete. Every server process may run it: the registry's gate carries a verdict out once."""

from __future__ import annotations

import logging

from edgelake.api.audit import AuditLog, gate_events
from edgelake.api.background import BackgroundThread
from edgelake.lake.catalog import Lake
from edgelake.settings import Settings
from edgelake.training import registry
from edgelake.training.matured_labels import MODEL_NAME, settle_shadow

ACTOR = "shadow-gate"
log = logging.getLogger(__name__)


class ShadowGate(BackgroundThread):
    """Settles the fraud model's shadow canary in ``models`` on ``settings``' lake from a daemon thread: ``start()``, ``close()``."""

    def __init__(self, settings: Settings, models: registry.Registry, audit: AuditLog) -> None:
        self._audit = audit
        self._models = models
        self._lake = Lake.from_settings(settings)
        self._maturity = settings.fraud_label_maturity
        self._interval_s = settings.fraud_gate_check_s
        super().__init__("shadow-gate")

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                transitions = settle_shadow(self._lake, self._models, self._maturity, actor=ACTOR)
            except registry.UnknownModel:
                continue  # no fraud model published yet
            except Exception:  # a lake or registry failure must not end the checks: the next one tries again
                log.exception("the fraud shadow gate's check failed")
                continue
            for transition in transitions:
                log.info("shadow gate: fraud v%d %s -> %s: %s", transition.version, transition.from_, transition.to, transition.reason)
            for event in gate_events(ACTOR, MODEL_NAME, transitions):
                self._audit.record(event)
