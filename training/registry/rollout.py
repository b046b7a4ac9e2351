"""Rollout: the policy that puts a share of devices on a canary version, which devices those are, and the gate that
settles the canary on evidence.

The gate is one mechanism for every model kind; what differs is the evidence, a parameter: a vision canary's is the
labelled frames its devices report, a shadow model's the labels that matured while it ran. Any :class:`CanaryEvidence`
says whether the canary failed outright, what it still lacks, and once complete how the canary's accuracy compares
with production's. :func:`judge` turns it into a :class:`Verdict` (promote, reject or wait) and :func:`settle` carries
a promote or reject out once, recording its reason in the stage history.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

import sqlalchemy as sa
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy.engine import Connection

from edgelake.control_db import rollout_policies
from edgelake.training.registry.keys import verify
from edgelake.training.registry.layout import Registry, RegistryRefused, UnknownModel, published
from edgelake.training.registry.stages import Transition, current, editing, promote_in, reject_in


class RolloutRules(BaseModel):
    """What an operator sets: which share of devices runs which canary version, and the gate that settles the canary."""

    model_config = ConfigDict(extra="forbid")

    canary_percent: int = Field(0, ge=0, le=100, description="Share of devices, by stable hash of (model, device id), on the canary.")
    canary_version: int | None = Field(None, ge=1, description="The version canary devices run; none means every device runs production.")
    promote_after_reports: int = Field(10, ge=1, le=1_000_000, description="Healthy canary reports needed before the gate decides.")
    max_accuracy_drop: float = Field(
        0.02, ge=0, le=1, allow_inf_nan=False,
        description="How far the canary's measure (vision: accuracy; fraud: AUPRC, the lower bound of the difference's interval) "
        "may fall below production's and still be promoted.",
    )
    min_labelled: int = Field(
        200, ge=1, le=1_000_000_000,
        description="Labelled inferences (fraud: scored transactions with matured labels) each side must pool before they are compared.",
    )
    deadline_s: float = Field(
        900, gt=0, le=30 * 86_400, allow_inf_nan=False, description="Seconds the canary has to gather that evidence; then it is rolled back."
    )


class RolloutPolicy(RolloutRules):
    """The rules in force for a model, since when and set by whom; every device off the canary runs the production version."""

    updated: AwareDatetime | None = None
    actor: str | None = None


@dataclass(frozen=True)
class Measured:
    """One side's measure (vision: accuracy; fraud: AUPRC) and the number of labelled outcomes it rests on."""

    version: int
    value: float
    labelled: int
    metric: str = "accuracy"


@dataclass(frozen=True)
class Interval:
    """A confidence interval, e.g. of the canary's measure minus production's over paired bootstrap resamples."""

    low: float
    high: float


@dataclass(frozen=True)
class Comparison:
    """Complete evidence set side by side: the canary, production (none without a production version), what else the
    numbers rest on (e.g. ``12 healthy reports``), and where the evidence gives one, the interval of the canary's
    measure minus production's."""

    canary: Measured
    production: Measured | None
    basis: str
    difference: Interval | None = None


class CanaryEvidence(Protocol):
    """What is known of a canary since its policy was set, whatever gathered it."""

    @property
    def elapsed_s(self) -> float:
        """Seconds since the policy was set."""
        ...

    def failure(self) -> str | None:
        """Why the canary is unfit whatever its accuracy (e.g. its first unhealthy report); None while there is no such sign."""
        ...

    def shortfall(self, rules: RolloutRules) -> list[str]:
        """What the evidence still lacks under ``rules`` before the sides can be compared; empty once they can."""
        ...

    def comparison(self) -> Comparison:
        """The sides side by side; asked only once nothing is lacking."""
        ...


@dataclass(frozen=True)
class Verdict:
    """What the gate makes of a canary: promote it to production, reject it, or wait for more evidence; and why."""

    outcome: Literal["promote", "reject", "wait"]
    reason: str


def judge(rules: RolloutRules, evidence: CanaryEvidence) -> Verdict:
    """The verdict on a canary under ``rules`` given ``evidence``.

    A failure rejects at once. Evidence still lacking waits, until ``deadline_s`` rejects it. Complete evidence promotes
    a canary at most ``max_accuracy_drop`` below production's measure (or with no production to compare with), else
    rejects it. Where the evidence gives an interval of the difference, its lower bound must be above ``-max_accuracy_drop``:
    with a drop of 0, the canary must be better than production beyond the interval.
    """
    failure = evidence.failure()
    if failure is not None:
        return Verdict("reject", failure)
    lacking = evidence.shortfall(rules)
    if lacking:
        if evidence.elapsed_s >= rules.deadline_s:
            return Verdict("reject", f"not enough evidence after {rules.deadline_s:g} s: {'; '.join(lacking)}")
        return Verdict("wait", f"short of evidence: {'; '.join(lacking)}")
    sides = evidence.comparison()
    canary, production, gap = sides.canary, sides.production, sides.difference
    measured = f"canary v{canary.version} {canary.metric} {canary.value:.3f} on {canary.labelled:,} labelled"
    if production is None:
        return Verdict("promote", f"{measured}, {sides.basis}; no production version to compare with")
    versus = f"vs production v{production.version} {production.value:.3f} on {production.labelled:,}"
    drop = rules.max_accuracy_drop
    if gap is None:
        within = canary.value >= production.value - drop
        judged = f"{'within' if within else 'more than'} the max drop {drop:g}"
    else:
        within = gap.low > -drop
        judged = f"difference {canary.value - production.value:+.3f}, interval [{gap.low:+.3f}, {gap.high:+.3f}], " + (
            f"{'above' if within else 'not above'} {-drop:+g}" if drop else f"{'above' if within else 'not above'} 0"
        )
    return Verdict("promote" if within else "reject", f"{measured} {versus} ({judged}), {sides.basis}")


def rollout_policy(registry: Registry, name: str) -> RolloutPolicy:
    """The rollout policy of ``name``; without one, no device is on a canary."""
    published(registry, name)
    with registry.db.transaction() as connection:
        return _policy(connection, name)


def set_rollout(registry: Registry, name: str, rules: RolloutRules, *, actor: str | None = None) -> RolloutPolicy:
    """Put ``rules`` in force for ``name`` from now on, in one transaction with the stage move it makes.

    A candidate put on canary moves to stage ``canary``; a version past it (production,
    archived, rolled back) cannot go on canary.
    """
    version = rules.canary_version
    if version is not None and version not in published(registry, name):
        raise UnknownModel(f"model '{name}' has no version {version} to put on canary")
    with registry.db.transaction() as connection, editing(registry, connection, name) as book:
        if version is not None:
            stage = book.stage(version)
            if stage == "candidate":
                promote_in(book, name, version, "canary", actor=actor, reason=f"canary on {rules.canary_percent}% of devices")
            elif stage != "canary":
                raise RegistryRefused(f"{name} v{version} is {stage}; only a candidate or canary version can go on canary")
        return _write_policy(connection, name, rules, actor)


def settle(
    registry: Registry, name: str, evidence_of: Callable[[RolloutPolicy], CanaryEvidence], *, actor: str | None = None
) -> list[Transition]:
    """Judge the canary of the policy in force on the evidence ``evidence_of`` gathers for it and carry out a promote or
    reject verdict, once; the transitions made, whose reason is the verdict's.

    The evidence is gathered and judged outside any transaction. The verdict is carried out in one transaction, and only
    if the policy is still the one judged, so of concurrent callers one acts and the others find the canary settled: a
    promoted canary becomes production (the previous one archived), a rejected one ``rolled_back``, and either way the
    policy's canary ends. A canary that no longer verifies is rejected, never promoted. Nothing happens when the version
    has already left the canary stages by hand.
    """
    policy = rollout_policy(registry, name)
    version = policy.canary_version
    if version is None:
        return []
    verdict = judge(policy, evidence_of(policy))
    if verdict.outcome == "wait":
        return []
    problems = verify(registry, name, version) if verdict.outcome == "promote" else []
    with registry.db.transaction() as connection, editing(registry, connection, name) as book:
        if _policy(connection, name) != policy or book.stage(version) not in ("candidate", "canary"):
            return []
        if problems:
            transitions = reject_in(book, name, version, actor=actor, reason=f"{verdict.reason}; but it fails verification: {problems[0]}")
        elif verdict.outcome == "promote":
            transitions = promote_in(book, name, version, "production", actor=actor, reason=verdict.reason)
        else:
            transitions = reject_in(book, name, version, actor=actor, reason=verdict.reason)
        _write_policy(connection, name, policy.model_copy(update={"canary_version": None}), actor)
        return transitions


def rollout_bucket(name: str, device_id: str) -> int:
    """A device's stable place in 0..99 for model ``name``, the same on every replica and run."""
    digest = hashlib.sha256(f"{name}\0{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def assigned_version(registry: Registry, name: str, device_id: str) -> tuple[int, Literal["canary", "production"]] | None:
    """The version of ``name`` that ``device_id`` should run and why; None when there is neither canary nor production."""
    policy = rollout_policy(registry, name)
    if policy.canary_version is not None and rollout_bucket(name, device_id) < policy.canary_percent:
        return policy.canary_version, "canary"
    production = current(registry, name)
    return None if production is None else (production, "production")


def _policy(connection: Connection, name: str) -> RolloutPolicy:
    row = connection.execute(sa.select(rollout_policies).where(rollout_policies.c.model == name)).first()
    return RolloutPolicy() if row is None else RolloutPolicy.model_validate({**row.rules, "updated": row.updated, "actor": row.actor})


def _write_policy(connection: Connection, name: str, rules: RolloutRules, actor: str | None) -> RolloutPolicy:
    policy = RolloutPolicy.model_validate({**rules.model_dump(include=set(RolloutRules.model_fields)), "updated": datetime.now(UTC), "actor": actor})
    row = {"rules": policy.model_dump(mode="json", include=set(RolloutRules.model_fields)), "updated": policy.updated, "actor": actor}
    connection.execute(sa.delete(rollout_policies).where(rollout_policies.c.model == name))
    connection.execute(sa.insert(rollout_policies).values(model=name, **row))
    return policy
