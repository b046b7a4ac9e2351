"""The stage book of each model: where each version stands, the append-only history of how it got there, and the moves
between stages (promote, rollback, reject). It lives in the control plane's database, each move one transaction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Literal

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import AliasChoices, AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy.engine import Connection

from edgelake.control_db import model_stages, stage_transitions
from edgelake.training.registry.keys import refuse_unverified
from edgelake.training.registry.layout import NothingToRollBack, Registry, RegistryChanged, RegistryRefused, UnknownModel, published

Stage = Literal["candidate", "canary", "production", "archived", "rolled_back"]
PROMOTION_ORDER: tuple[Stage, ...] = ("candidate", "canary", "production")


class Transition(BaseModel):
    """One stage change of one version."""

    model_config = ConfigDict(extra="forbid")

    time: AwareDatetime
    version: int
    from_: Stage | None = Field(validation_alias=AliasChoices("from", "from_"), serialization_alias="from")
    to: Stage
    actor: str | None = None
    reason: str | None = None


class StageBook(BaseModel):
    """A model's stage book: where each version stands and how it got there."""

    model_config = ConfigDict(extra="forbid")

    stages: dict[int, Stage] = Field(default_factory=dict)
    history: list[Transition] = Field(default_factory=list)

    def stage(self, version: int) -> Stage:
        """A version's stage; a version not yet recorded was just published, so a candidate."""
        return self.stages.get(version, "candidate")

    def holder(self, stage: Stage) -> int | None:
        """The newest version in ``stage``."""
        return max((version for version, held in self.stages.items() if held == stage), default=None)

    def production_line(self) -> list[int]:
        """The production version, then each earlier production version now archived, newest first; empty without one."""
        current = self.holder("production")
        if current is None:
            return []
        earlier = (t.version for t in reversed(self.history) if t.to == "production" and self.stage(t.version) == "archived")
        return [current, *dict.fromkeys(earlier)]

    def move(self, version: int, to: Stage, actor: str | None, reason: str | None) -> None:
        """Put ``version`` in stage ``to`` and record the transition."""
        self.history.append(
            Transition(time=datetime.now(UTC), version=version, from_=self.stages.get(version), to=to, actor=actor, reason=reason)
        )
        self.stages[version] = to


def read_book(registry: Registry, name: str) -> StageBook:
    """The stage book of ``name`` as last committed; an empty one before its first publication."""
    with registry.db.transaction() as connection:
        return _read(connection, name)


@contextmanager
def stage_book(registry: Registry, name: str) -> Iterator[StageBook]:
    """The stage book of ``name``, held against other writers and saved in one transaction when the block ends cleanly."""
    with registry.db.transaction() as connection, editing(registry, connection, name) as book:
        yield book


@contextmanager
def editing(registry: Registry, connection: Connection, name: str) -> Iterator[StageBook]:
    """The stage book of ``name`` within ``connection``'s transaction, held until it ends; its moves are written there."""
    registry.db.lock(connection, f"registry:{name}")
    book = _read(connection, name)
    before, start = dict(book.stages), len(book.history)
    yield book
    moves = book.history[start:]
    if moves:
        connection.execute(sa.insert(stage_transitions), [
            {"model": name, "version": t.version, "from_stage": t.from_, "to_stage": t.to, "time": t.time, "actor": t.actor, "reason": t.reason}
            for t in moves
        ])
    for version, stage in book.stages.items():
        if version not in before:
            connection.execute(sa.insert(model_stages).values(model=name, version=version, stage=stage))
        elif before[version] != stage:
            held = (model_stages.c.model == name) & (model_stages.c.version == version)
            connection.execute(sa.update(model_stages).where(held).values(stage=stage))


def versions(registry: Registry, name: str) -> dict[int, Stage]:
    """Every published version of ``name``, oldest first, with its stage."""
    numbers = published(registry, name)
    book = read_book(registry, name)
    return {version: book.stage(version) for version in numbers}


def current(registry: Registry, name: str, stage: Stage = "production") -> int | None:
    """The version of ``name`` in ``stage``, or None; no fallback to another stage."""
    published(registry, name)
    return read_book(registry, name).holder(stage)


def production_line(registry: Registry, name: str) -> list[int]:
    """The version of ``name`` in production, then the earlier production versions it displaced (not rolled back), newest
    first: what a server falls back to, in order, while newer ones fail its checks."""
    published(registry, name)
    return read_book(registry, name).production_line()


def promote(
    registry: Registry,
    name: str,
    version: int,
    to: str | None = None,
    *,
    public_key: Ed25519PublicKey | None = None,
    actor: str | None = None,
    reason: str | None = None,
) -> list[Transition]:
    """Move ``version`` forward to stage ``to`` (by default the next one); the transitions made.

    Only candidate and canary versions move, only forward, and only when they verify. The
    version that held ``to`` before becomes ``archived``.
    """
    refuse_unverified(registry, name, version, public_key, "promote")
    with stage_book(registry, name) as book:
        return promote_in(book, name, version, to, actor=actor, reason=reason)


def promote_in(book: StageBook, name: str, version: int, to: str | None, *, actor: str | None, reason: str | None) -> list[Transition]:
    """:func:`promote`'s move within ``book``, for a caller that holds it; the transitions made."""
    before = book.stage(version)
    if before not in ("candidate", "canary"):
        raise RegistryRefused(
            f"{name} v{version} is {before}; only candidate and canary versions can be promoted"
            + (" (use `rollback` to bring back the previous production version)" if before == "archived" else "")
        )
    later = PROMOTION_ORDER[PROMOTION_ORDER.index(before) + 1 :]
    target = next((stage for stage in later if stage == (to or later[0])), None)
    if target is None:
        raise RegistryRefused(f"cannot promote {name} v{version} from {before} to {to}; stages go {' -> '.join(PROMOTION_ORDER)}")
    start = len(book.history)
    displaced = book.holder(target)
    if displaced is not None:
        book.move(displaced, "archived", actor, f"replaced by v{version}")
    book.move(version, target, actor, reason)
    return book.history[start:]


def rollback(
    registry: Registry, name: str, *, public_key: Ed25519PublicKey | None = None, actor: str | None = None, reason: str | None = None
) -> list[Transition]:
    """Put the previous production version of ``name`` back into production; the transitions made.

    The current production version becomes ``rolled_back``. The previous one is the latest
    earlier production version that is archived (not itself rolled back).
    """
    published(registry, name)
    line = read_book(registry, name).production_line()
    if not line:
        raise NothingToRollBack(f"{name} has no production version to roll back")
    if len(line) == 1:
        raise NothingToRollBack(f"no earlier production version to roll back to (v{line[0]} is the only one left)")
    failing, previous = line[:2]
    refuse_unverified(registry, name, previous, public_key, "roll back to")
    with stage_book(registry, name) as book:
        if book.holder("production") != failing or book.stage(previous) != "archived":
            raise RegistryChanged(f"the stages of {name} changed during the rollback; try again")
        start = len(book.history)
        book.move(failing, "rolled_back", actor, reason)
        book.move(previous, "production", actor, f"rollback from v{failing}")
        return book.history[start:]


def reject(registry: Registry, name: str, version: int, *, actor: str | None = None, reason: str | None = None) -> list[Transition]:
    """Mark a candidate or canary version ``rolled_back``: it failed its rollout and is never promoted; the transitions made."""
    if version not in published(registry, name):
        raise UnknownModel(f"model '{name}' has no version {version}")
    with stage_book(registry, name) as book:
        return reject_in(book, name, version, actor=actor, reason=reason)


def reject_in(book: StageBook, name: str, version: int, *, actor: str | None, reason: str | None) -> list[Transition]:
    """:func:`reject`'s move within ``book``, for a caller that holds it; the transitions made."""
    before = book.stage(version)
    if before not in ("candidate", "canary"):
        raise RegistryRefused(f"{name} v{version} is {before}; only candidate and canary versions can be rejected (use `rollback`)")
    start = len(book.history)
    book.move(version, "rolled_back", actor, reason)
    return book.history[start:]


def _read(connection: Connection, name: str) -> StageBook:
    stages = connection.execute(sa.select(model_stages.c.version, model_stages.c.stage).where(model_stages.c.model == name))
    history = connection.execute(sa.select(stage_transitions).where(stage_transitions.c.model == name).order_by(stage_transitions.c.id))
    return StageBook(
        stages={row.version: row.stage for row in stages},
        history=[
            Transition(time=row.time, version=row.version, from_=row.from_stage, to=row.to_stage, actor=row.actor, reason=row.reason)
            for row in history
        ],
    )

