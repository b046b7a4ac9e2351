"""The stage book of each model: where each version stands, the append-only history of how it got there, and the moves
between stages (promote, rollback, reject)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import AliasChoices, AwareDatetime, BaseModel, ConfigDict, Field

from edgelake.files import replace_durably
from edgelake.signing import canonical_json
from edgelake.training.registry.keys import refuse_unverified
from edgelake.training.registry.layout import NothingToRollBack, RegistryChanged, RegistryRefused, UnknownModel, locked, published

Stage = Literal["candidate", "canary", "production", "archived", "rolled_back"]
PROMOTION_ORDER: tuple[Stage, ...] = ("candidate", "canary", "production")
STAGES = "stages.json"


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
    """A model's ``stages.json``: where each version stands and how it got there."""

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


def read_book(model_dir: Path) -> StageBook:
    """The model's stage book as last saved; an empty one before the first publication."""
    path = model_dir / STAGES
    return StageBook.model_validate_json(path.read_bytes()) if path.is_file() else StageBook()


@contextmanager
def stage_book(model_dir: Path) -> Iterator[StageBook]:
    """The model's stage book, locked against other writers and saved atomically on success."""
    with locked(model_dir / f".{STAGES}.lock"):
        book = read_book(model_dir)
        yield book
        replace_durably(model_dir / STAGES, canonical_json(book.model_dump(mode="json", by_alias=True)))


def versions(root: Path, name: str) -> dict[int, Stage]:
    """Every published version of ``name``, oldest first, with its stage."""
    numbers = published(root, name)
    book = read_book(root / name)
    return {version: book.stage(version) for version in numbers}


def current(root: Path, name: str, stage: Stage = "production") -> int | None:
    """The version of ``name`` in ``stage``, or None; no fallback to another stage."""
    versions(root, name)
    return read_book(root / name).holder(stage)


def production_line(root: Path, name: str) -> list[int]:
    """The version of ``name`` in production, then the earlier production versions it displaced (not rolled back), newest
    first: what a server falls back to, in order, while newer ones fail its checks."""
    versions(root, name)
    return read_book(root / name).production_line()


def promote(
    root: Path,
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
    refuse_unverified(root, name, version, public_key, "promote")
    with stage_book(root / name) as book:
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
    root: Path, name: str, *, public_key: Ed25519PublicKey | None = None, actor: str | None = None, reason: str | None = None
) -> list[Transition]:
    """Put the previous production version of ``name`` back into production; the transitions made.

    The current production version becomes ``rolled_back``. The previous one is the latest
    earlier production version that is archived (not itself rolled back).
    """
    versions(root, name)
    book = read_book(root / name)
    line = book.production_line()
    if not line:
        raise NothingToRollBack(f"{name} has no production version to roll back")
    if len(line) == 1:
        raise NothingToRollBack(f"no earlier production version to roll back to (v{line[0]} is the only one left)")
    failing, previous = line[:2]
    refuse_unverified(root, name, previous, public_key, "roll back to")
    with stage_book(root / name) as book:
        if book.holder("production") != failing or book.stage(previous) != "archived":
            raise RegistryChanged(f"the stages of {name} changed during the rollback; try again")
        start = len(book.history)
        book.move(failing, "rolled_back", actor, reason)
        book.move(previous, "production", actor, f"rollback from v{failing}")
        return book.history[start:]


def reject(root: Path, name: str, version: int, *, actor: str | None = None, reason: str | None = None) -> list[Transition]:
    """Mark a candidate or canary version ``rolled_back``: it failed its rollout and is never promoted; the transitions made."""
    if version not in versions(root, name):
        raise UnknownModel(f"model '{name}' has no version {version}")
    with stage_book(root / name) as book:
        before = book.stage(version)
        if before not in ("candidate", "canary"):
            raise RegistryRefused(f"{name} v{version} is {before}; only candidate and canary versions can be rejected (use `rollback`)")
        start = len(book.history)
        book.move(version, "rolled_back", actor, reason)
        return book.history[start:]

