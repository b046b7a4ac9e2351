"""The vision canary's rollout gate on the API's side: the evidence its devices report, gathered from the device store
and handed to the registry's gate (:mod:`edgelake.training.registry.rollout`) after each heartbeat.

The evidence on a canary is the reports made since the policy was set: the canary's (devices on the canary track
running the canary version) and production's (devices on the production track running the production version).
One unhealthy canary report (errors, or a failure event for the canary version) is a failure that rejects the canary
at once. The evidence is complete with ``promote_after_reports`` healthy canary reports and ``min_labelled`` labelled
inferences on each side. A side's accuracy is the median of its devices' accuracies: a device's counts are its own
claims, and one claiming a billion labelled inferences must not decide for the fleet. The registry's gate carries
verdicts out under its rollout lock on freshly read policy and evidence, so every server process may run the gate and a
canary is settled once.
"""

from __future__ import annotations

import statistics
from datetime import UTC, datetime

from pydantic import BaseModel, Field, computed_field

from edgelake.api.devices import DeviceStore, ReportTotals
from edgelake.device_api import Track
from edgelake.training import registry
from edgelake.training.registry import RolloutPolicy, RolloutRules, Transition, rollout

ACTOR = "rollout-gate"
_EPOCH = datetime.fromtimestamp(0, UTC)


class Tally(BaseModel):
    """One side of the comparison: the reports of one version on one track since the policy was set, pooled, and
    each reporting device's accuracy."""

    version: int | None = Field(description="The version; none on the production side when there is no production version.")
    healthy_reports: int = 0
    unhealthy_reports: int = 0
    labelled: int = 0
    correct: int = 0
    device_accuracies: list[float] = Field(default_factory=list, description="Each device's correct over labelled inferences.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def accuracy(self) -> float | None:
        """The median of the devices' accuracies, so that no device outweighs the others whatever counts it claims
        (pooled correct over labelled where devices are not told apart); none before any labelled inference."""
        if self.device_accuracies:
            return statistics.median(self.device_accuracies)
        return self.correct / self.labelled if self.labelled else None

    def measured(self) -> rollout.Measured:
        """This side as the gate compares it; only once it has a version and a labelled inference."""
        assert self.version is not None and self.accuracy is not None
        return rollout.Measured(self.version, self.accuracy, self.labelled)


class Evidence(BaseModel):
    """What the gate knows of a vision canary: the labelled frames and health its devices reported (a
    :class:`~edgelake.training.registry.rollout.CanaryEvidence`)."""

    canary: Tally
    production: Tally
    first_failure: str | None = Field(None, description="The earliest unhealthy canary report: its device and what went wrong.")
    elapsed_s: float = Field(description="Seconds since the policy was set.")

    def failure(self) -> str | None:
        """The unhealthy canary reports, with the first one's device and what went wrong; None while there are none."""
        if self.first_failure is None:
            return None
        return f"{self.canary.unhealthy_reports} unhealthy canary report(s) of v{self.canary.version}, the first from {self.first_failure}"

    def shortfall(self, rules: RolloutRules) -> list[str]:
        """The healthy canary reports and labelled inferences still lacking; production's side counts only when there is a
        production version."""
        canary, production = self.canary, self.production
        lacking = []
        if canary.healthy_reports < rules.promote_after_reports:
            lacking.append(f"{canary.healthy_reports} of {rules.promote_after_reports} healthy canary reports")
        if canary.labelled < rules.min_labelled:
            lacking.append(f"{canary.labelled:,} of {rules.min_labelled:,} labelled canary inferences")
        if production.version is not None and production.labelled < rules.min_labelled:
            lacking.append(f"{production.labelled:,} of {rules.min_labelled:,} labelled production inferences")
        return lacking

    def comparison(self) -> rollout.Comparison:
        """The canary's accuracy and production's (min_labelled >= 1 on each side), on the canary's healthy reports."""
        production = None if self.production.version is None else self.production.measured()
        return rollout.Comparison(self.canary.measured(), production, f"{self.canary.healthy_reports} healthy reports")


class GateStatus(Evidence):
    """The gate's view of a canary for operators: the evidence, what it still lacks and the time left to gather it."""

    missing: list[str] = Field(description="What the gate still waits for before it compares accuracies; empty when it can.")
    deadline_s_left: float = Field(description="Seconds until a canary still short of evidence is rolled back.")


def status(policy: RolloutPolicy, evidence: Evidence) -> GateStatus:
    """The evidence with what it lacks and the time left."""
    return GateStatus(
        canary=evidence.canary, production=evidence.production, first_failure=evidence.first_failure, elapsed_s=evidence.elapsed_s,
        missing=evidence.shortfall(policy), deadline_s_left=max(0.0, policy.deadline_s - evidence.elapsed_s),
    )


def gather(store: DeviceStore, models: registry.Registry, name: str, policy: RolloutPolicy) -> Evidence:
    """The evidence on the policy's canary of ``name``: the reports since the policy was set (all of them for a policy without a time)."""
    since = policy.updated or _EPOCH
    totals = store.report_totals(name, since)
    canary = _tally(totals, "canary", policy.canary_version)
    first_failure = None
    if canary.unhealthy_reports:
        first = next(r for r in store.reports(name, since, unhealthy_only=True) if r.track == "canary" and r.version == canary.version)
        first_failure = f"{first.device_id}: {first.detail or f'{first.errors} errors in {first.inferences} inferences'}"
    return Evidence(
        canary=canary, production=_tally(totals, "production", registry.current(models, name)), first_failure=first_failure,
        elapsed_s=(datetime.now(UTC) - since).total_seconds(),
    )


def settle(store: DeviceStore, models: registry.Registry, name: str) -> list[Transition]:
    """Promote or reject the canary of ``name`` when its devices' evidence allows; the registry transitions made."""
    return rollout.settle(models, name, lambda policy: gather(store, models, name, policy), actor=ACTOR)


def settle_all(store: DeviceStore, models: registry.Registry) -> dict[str, list[Transition]]:
    """:func:`settle` every model of ``models``: the transitions made, by model."""
    return {name: transitions for name in registry.models(models) if (transitions := settle(store, models, name))}


def gate_status(store: DeviceStore, models: registry.Registry, name: str) -> GateStatus | None:
    """The gate's view of the canary of ``name``; None when no canary is on."""
    policy = registry.rollout_policy(models, name)
    return None if policy.canary_version is None else status(policy, gather(store, models, name, policy))


def _tally(totals: list[ReportTotals], track: Track, version: int | None) -> Tally:
    mine = [t for t in totals if t.track == track and t.version == version]  # one per device
    return Tally(
        version=version, healthy_reports=sum(t.healthy for t in mine), unhealthy_reports=sum(t.unhealthy for t in mine),
        labelled=sum(t.labelled for t in mine), correct=sum(t.correct for t in mine),
        device_accuracies=[t.correct / t.labelled for t in mine if t.labelled],
    )
