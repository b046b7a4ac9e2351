"""The rollout gate: settles a model's canary on the quality its devices report, not only on whether it deploys.

After each heartbeat, for each model whose rollout policy names a canary version, the gate pools
the reports made since the policy was set: the canary's (devices on the canary track running the
canary version) and production's (devices on the production track running the production
version). One unhealthy canary report (errors, or a failure event for the canary version) rejects
the canary at once. Once there are ``promote_after_reports`` healthy canary reports and
``min_labelled`` labelled inferences on each side, the canary is promoted to production when its
accuracy is at most ``max_accuracy_drop`` below production's, else rejected. A side's accuracy is the
median of its devices' accuracies: a device's counts are its own claims, and one claiming a billion
labelled inferences must not decide for the fleet. A canary still short
of that evidence after ``deadline_s`` is rejected. Verdicts are carried out under the registry's
rollout lock on freshly read policy and evidence, so every server process may run the gate and a
canary is settled once.
"""

from __future__ import annotations

import statistics
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field, computed_field

from edgelake.api.devices import DeviceStore, ReportTotals
from edgelake.device_api import Track
from edgelake.training import registry
from edgelake.training.registry import CanaryVerdict, RolloutPolicy, Transition

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


class Evidence(BaseModel):
    """What the gate knows of a canary."""

    canary: Tally
    production: Tally
    first_failure: str | None = Field(None, description="The earliest unhealthy canary report: its device and what went wrong.")
    elapsed_s: float = Field(description="Seconds since the policy was set.")


class GateStatus(Evidence):
    """The gate's view of a canary for operators: the evidence, what it still lacks and the time left to gather it."""

    missing: list[str] = Field(description="What the gate still waits for before it compares accuracies; empty when it can.")
    deadline_s_left: float = Field(description="Seconds until a canary still short of evidence is rolled back.")


def judge(policy: RolloutPolicy, evidence: Evidence) -> CanaryVerdict | None:
    """The verdict on the policy's canary given ``evidence``; None while the evidence is still being gathered."""
    canary, production = evidence.canary, evidence.production
    if evidence.first_failure is not None:
        return CanaryVerdict(
            "reject", f"{canary.unhealthy_reports} unhealthy canary report(s) of v{canary.version}, the first from {evidence.first_failure}"
        )
    missing = missing_evidence(policy, evidence)
    if missing:
        if evidence.elapsed_s >= policy.deadline_s:
            return CanaryVerdict("reject", f"not enough evidence after {policy.deadline_s:g} s: {'; '.join(missing)}")
        return None
    canary_accuracy = canary.accuracy  # min_labelled >= 1 on each side
    production_accuracy = production.accuracy
    assert canary_accuracy is not None
    measured = f"canary v{canary.version} accuracy {canary_accuracy:.3f} on {canary.labelled:,} labelled"
    reports = f"{canary.healthy_reports} healthy reports"
    if production.version is None:
        return CanaryVerdict("promote", f"{measured}, {reports}; no production version to compare with")
    assert production_accuracy is not None
    within = canary_accuracy >= production_accuracy - policy.max_accuracy_drop
    return CanaryVerdict(
        "promote" if within else "reject",
        f"{measured} vs production v{production.version} {production_accuracy:.3f} on {production.labelled:,} "
        f"({'within' if within else 'more than'} the max drop {policy.max_accuracy_drop:g}), {reports}",
    )


def missing_evidence(policy: RolloutPolicy, evidence: Evidence) -> list[str]:
    """What the gate still needs before it compares accuracies; production's side counts only when there is a production version."""
    canary, production = evidence.canary, evidence.production
    missing = []
    if canary.healthy_reports < policy.promote_after_reports:
        missing.append(f"{canary.healthy_reports} of {policy.promote_after_reports} healthy canary reports")
    if canary.labelled < policy.min_labelled:
        missing.append(f"{canary.labelled:,} of {policy.min_labelled:,} labelled canary inferences")
    if production.version is not None and production.labelled < policy.min_labelled:
        missing.append(f"{production.labelled:,} of {policy.min_labelled:,} labelled production inferences")
    return missing


def status(policy: RolloutPolicy, evidence: Evidence) -> GateStatus:
    """The evidence with what it lacks and the time left."""
    return GateStatus(
        canary=evidence.canary, production=evidence.production, first_failure=evidence.first_failure, elapsed_s=evidence.elapsed_s,
        missing=missing_evidence(policy, evidence), deadline_s_left=max(0.0, policy.deadline_s - evidence.elapsed_s),
    )  # fmt: skip


def gather(store: DeviceStore, root: Path, name: str, policy: RolloutPolicy) -> Evidence:
    """The evidence on the policy's canary of ``name``: the reports since the policy was set (all of them for a policy without a time)."""
    since = policy.updated or _EPOCH
    totals = store.report_totals(name, since)
    canary = _tally(totals, "canary", policy.canary_version)
    first_failure = None
    if canary.unhealthy_reports:
        first = next(r for r in store.reports(name, since, unhealthy_only=True) if r.track == "canary" and r.version == canary.version)
        first_failure = f"{first.device_id}: {first.detail or f'{first.errors} errors in {first.inferences} inferences'}"
    return Evidence(
        canary=canary, production=_tally(totals, "production", registry.current(root, name)), first_failure=first_failure,
        elapsed_s=(datetime.now(UTC) - since).total_seconds(),
    )  # fmt: skip


def settle(store: DeviceStore, root: Path, name: str) -> list[Transition]:
    """Promote or reject the canary of ``name`` when the evidence allows; the registry transitions made."""
    policy = registry.rollout(root, name)
    if policy.canary_version is None or judge(policy, gather(store, root, name, policy)) is None:
        return []  # the common case, decided without the lock
    return registry.settle_canary(root, name, lambda current: judge(current, gather(store, root, name, current)), actor=ACTOR)


def settle_all(store: DeviceStore, root: Path) -> list[Transition]:
    """:func:`settle` every model of the registry at ``root``."""
    return [transition for name in registry.models(root) for transition in settle(store, root, name)]


def gate_status(store: DeviceStore, root: Path, name: str) -> GateStatus | None:
    """The gate's view of the canary of ``name``; None when no canary is on."""
    policy = registry.rollout(root, name)
    return None if policy.canary_version is None else status(policy, gather(store, root, name, policy))


def _tally(totals: list[ReportTotals], track: Track, version: int | None) -> Tally:
    mine = [t for t in totals if t.track == track and t.version == version]  # one per device
    return Tally(
        version=version, healthy_reports=sum(t.healthy for t in mine), unhealthy_reports=sum(t.unhealthy for t in mine),
        labelled=sum(t.labelled for t in mine), correct=sum(t.correct for t in mine),
        device_accuracies=[t.correct / t.labelled for t in mine if t.labelled],
    )  # fmt: skip
