"""The model registry in lake storage: signed, versioned models and their rollout stages.

Layout under ``<lake_root>/models`` (or the ``registry_dir`` setting)::

    registry.pub                   PEM anchor key: the first signing key, the one devices pin at enrollment
    keys/<sequence>.json           the key-set chain after the anchor: each release lists every signing key with its
                                   validity and revocation, signed by a valid key of the release before and by every key it adds
    <name>/stages.json             stage of each version + append-only history of transitions
    <name>/rollout.json            rollout policy: which share of devices runs which canary version, and its gate
    <name>/<version>/manifest.json canonical JSON: files with sha256 and size, metrics, lineage
    <name>/<version>/manifest.sig  base64 Ed25519 signature of manifest.json's exact bytes
    <name>/<version>/...           the artifacts (model, .tflite, metrics JSON, plots)

A version directory appears whole or not at all (it is written aside, then renamed into
place). Stages move forward only, candidate -> canary -> production; the version a
promotion displaces from canary or production becomes ``archived``; ``rollback`` brings the
previous production version back and marks the current one ``rolled_back``. A version put
on canary by the rollout policy becomes ``canary``; the rollout gate settles it by promoting
it to production or rejecting it (``rolled_back``). The stage and rollout files are
local-filesystem only (atomic rename plus an flock): a lake on object storage keeps its
registry in a folder of its own that every service mounts (``registry_dir``).

The private keys live outside the lake, in the key dir (``<data_dir>/keys``): ``registry.key``
(the anchor's), ``<fingerprint>.key`` for each key a rotation made, and ``current`` naming the
one that signs new versions (absent: ``registry.key``). ``rotate`` makes a new current key and
releases a bridge key set signed by both; ``revoke`` releases a set in which a key is revoked.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import AliasChoices, AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from edgelake.files import fsync_directory, replace_durably, synced_temp, write_synced
from edgelake.signing import (
    MANIFEST,
    RESERVED,
    SIGNATURE,
    ArtifactName,
    FileEntry,
    KeySet,
    KeySetRefused,
    KeySetRelease,
    Manifest,
    ModelName,
    TrustedKey,
    canonical_json,
    fingerprint,
    follow,
    follow_chain,
    load_public_key,
    public_key_pem,
    sign,
    verify_files,
)

if TYPE_CHECKING:
    from edgelake.settings import Settings

Stage = Literal["candidate", "canary", "production", "archived", "rolled_back"]
PROMOTION_ORDER: tuple[Stage, ...] = ("candidate", "canary", "production")
KEYS_DIR = "keys"  # under the data dir, never in the lake
PUBLIC_KEY = "registry.pub"
PRIVATE_KEY = "registry.key"
CURRENT_KEY = "current"  # in the key dir: the fingerprint of the key that signs new versions
KEY_SETS = "keys"  # in the registry: the key-set chain, <sequence>.json
STAGES = "stages.json"
ROLLOUT = "rollout.json"

_CHUNK = 1 << 20
_names = TypeAdapter(ModelName)
_artifact_names = TypeAdapter(ArtifactName)


class UnknownModel(LookupError):
    """A model name or version the registry does not hold."""


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

    def move(self, version: int, to: Stage, actor: str | None, reason: str | None) -> None:
        """Put ``version`` in stage ``to`` and record the transition."""
        self.history.append(
            Transition(time=datetime.now(UTC), version=version, from_=self.stages.get(version), to=to, actor=actor, reason=reason)
        )
        self.stages[version] = to


class RolloutRules(BaseModel):
    """What an operator sets: which share of devices runs which canary version, and the gate that settles the canary."""

    model_config = ConfigDict(extra="forbid")

    canary_percent: int = Field(0, ge=0, le=100, description="Share of devices, by stable hash of (model, device id), on the canary.")
    canary_version: int | None = Field(None, ge=1, description="The version canary devices run; none means every device runs production.")
    promote_after_reports: int = Field(10, ge=1, le=1_000_000, description="Healthy canary reports needed before the gate decides.")
    max_accuracy_drop: float = Field(
        0.02, ge=0, le=1, allow_inf_nan=False, description="How far the canary's accuracy may fall below production's and still be promoted."
    )
    min_labelled: int = Field(200, ge=1, le=1_000_000_000, description="Labelled inferences each side must pool before they are compared.")
    deadline_s: float = Field(
        900, gt=0, le=30 * 86_400, allow_inf_nan=False, description="Seconds the canary has to gather that evidence; then it is rolled back."
    )


class RolloutPolicy(RolloutRules):
    """The rules in force for a model, since when and set by whom; every device off the canary runs the production version."""

    updated: AwareDatetime | None = None
    actor: str | None = None


@dataclass(frozen=True)
class CanaryVerdict:
    """How a canary is settled: promoted to production or rejected, and why (with the evidence's numbers)."""

    outcome: Literal["promote", "reject"]
    reason: str


@dataclass(frozen=True)
class ModelVersion:
    """One published version: where it lies, its stage and its manifest."""

    name: str
    version: int
    stage: Stage
    path: Path
    manifest: Manifest


def registry_root(lake_root: str, registry_dir: Path | None = None) -> Path:
    """The registry directory: ``registry_dir`` if given, else ``models`` in a lake given as a local path or ``file://`` URI."""
    if registry_dir is not None:
        return registry_dir
    lake = local_path(lake_root)
    if lake is None:
        raise ValueError(
            f"the lake {lake_root} is on object storage and the model registry needs a filesystem: "
            "set registry_dir (EDGELAKE_REGISTRY_DIR) to a folder every service mounts"
        )
    return lake / "models"


def registry_root_for(settings: Settings) -> Path:
    """The registry directory the settings name: ``registry_dir``, else ``models`` in the lake."""
    return registry_root(settings.lake_root, settings.registry_dir)


def local_path(uri: str) -> Path | None:
    """``uri`` as a local path; None for an object store's URI."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:  # a one-letter scheme is a Windows drive
        return None
    return Path(uri)


def ensure_signing_key(key_dir: Path, lake_root: str, registry_dir: Path | None = None) -> Ed25519PrivateKey:
    """The key that signs new versions: the one ``current`` names, else ``registry.key``, generated on first use (mode 0600).

    ``key_dir`` must lie outside the lake and the registry: whoever can read them must not be able to sign.
    The first key's public half is kept beside it as ``registry.pub`` for local verification.
    """
    key_dir = key_dir.resolve()
    for shared, what in ((local_path(lake_root), "the lake"), (registry_dir, "the model registry")):
        if shared is not None and key_dir.is_relative_to(shared := shared.resolve()):
            raise ValueError(f"the signing key directory {key_dir} lies inside {what} {shared}; keep private keys out of {what}")
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path = key_dir / PRIVATE_KEY
    if not private_path.exists():
        _create_exclusive(private_path, _private_pem(Ed25519PrivateKey.generate()), mode=0o600)  # a concurrent first use may win
    first = _load_private_key(private_path)
    _create_exclusive(key_dir / PUBLIC_KEY, public_key_pem(first.public_key()), mode=0o644)
    current = key_dir / CURRENT_KEY
    return _load_private_key(key_dir / f"{current.read_text().strip()}.key") if current.is_file() else first


def current_fingerprint(key_dir: Path) -> str | None:
    """The fingerprint of the key that signs new versions; None when the key dir holds none."""
    current, first = key_dir / CURRENT_KEY, key_dir / PRIVATE_KEY
    if current.is_file():
        return current.read_text().strip()
    return fingerprint(_load_private_key(first).public_key()) if first.is_file() else None


def signing_keys(key_dir: Path) -> dict[str, Ed25519PrivateKey]:
    """Every private key the key dir holds, by fingerprint."""
    paths = sorted(key_dir.glob("*.key")) if key_dir.is_dir() else []
    keys = [_load_private_key(path) for path in paths]
    return {fingerprint(key.public_key()): key for key in keys}


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def key_releases(root: Path, after: int = 0) -> list[KeySetRelease]:
    """The key-set releases numbered above ``after``, in order (not verified)."""
    directory = root / KEY_SETS
    numbers = sorted(int(path.stem) for path in directory.glob("*.json") if path.stem.isdigit()) if directory.is_dir() else []
    return [KeySetRelease.model_validate_json((directory / f"{number}.json").read_bytes()) for number in numbers if number > after]


def key_set_sequence(root: Path) -> int | None:
    """The number of the newest key-set release; None before the first rotation."""
    directory = root / KEY_SETS
    return max((int(path.stem) for path in directory.glob("*.json") if path.stem.isdigit()), default=None) if directory.is_dir() else None


def key_set(root: Path, anchor: Ed25519PublicKey | None = None) -> KeySet:
    """The registry's key set, verified release by release from ``anchor`` (by default the published ``registry.pub``).

    KeySetRefused names the first release that does not follow.
    """
    return follow_chain(KeySet.anchored(anchor or registry_public_key(root)), key_releases(root))


def rotate(key_dir: Path, lake_root: str, registry_dir: Path | None = None, valid_days: int | None = None) -> KeySet:
    """Make a new signing key current and release the bridge key set, signed by the old key and the new one.

    The old key stays trusted for what it signed until now and signs nothing newer; the new one
    is valid from now, for ``valid_days`` when given.
    """
    root = registry_root(lake_root, registry_dir)
    old = ensure_signing_key(key_dir, lake_root, registry_dir)
    root.mkdir(parents=True, exist_ok=True)
    _publish_public_key(root, old.public_key())
    new = Ed25519PrivateKey.generate()
    now = datetime.now(UTC)
    retiring = fingerprint(old.public_key())
    with _locked(root / f".{KEY_SETS}.lock"):
        trusted = key_set(root)
        kept = [
            key.model_copy(update={"not_after": now}) if key.fingerprint == retiring and (key.not_after is None or key.not_after > now) else key
            for key in trusted.keys
        ]
        added = TrustedKey.of(new.public_key(), not_before=now, not_after=None if valid_days is None else now + timedelta(days=valid_days))
        _create_exclusive(key_dir.resolve() / f"{added.fingerprint}.key", _private_pem(new), mode=0o600)
        released = _release(root, trusted, [*kept, added], [old, new], now)
    replace_durably(key_dir.resolve() / CURRENT_KEY, added.fingerprint.encode(), mode=0o600)
    return released


def revoke(key_dir: Path, lake_root: str, key: str, registry_dir: Path | None = None) -> KeySet:
    """Release a key set in which ``key`` (a fingerprint or a unique prefix of one) is revoked, signed by the current key.

    Refused for the last valid key and for the current signing key (rotate first).
    """
    root = registry_root(lake_root, registry_dir)
    signer = ensure_signing_key(key_dir, lake_root, registry_dir)
    now = datetime.now(UTC)
    with _locked(root / f".{KEY_SETS}.lock"):
        trusted = key_set(root)
        target = _one_key(trusted, key)
        if target.revoked_at is not None:
            raise ValueError(f"key {target.fingerprint[:16]} was revoked already, at {target.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
        if not [other for other in trusted.keys if other.fingerprint != target.fingerprint and other.refusal_at(now) is None]:
            raise ValueError(f"refusing to revoke key {target.fingerprint[:16]}: it is the last valid key (rotate first)")
        if target.fingerprint == fingerprint(signer.public_key()):
            raise ValueError(f"key {target.fingerprint[:16]} is the current signing key; rotate first (`edgelake models keys rotate`), then revoke it")
        keys = [other.model_copy(update={"revoked_at": now}) if other is target else other for other in trusted.keys]
        return _release(root, trusted, keys, [signer], now)


def signed_by(root: Path, key_fingerprint: str) -> list[tuple[str, int]]:
    """Every published (model, version) whose manifest names this signing key."""
    return [
        (name, version)
        for name in models(root)
        for version in versions(root, name)
        if _manifest_key(root / name / str(version)) == key_fingerprint
    ]


def _manifest_key(version_dir: Path) -> str | None:
    try:
        return Manifest.model_validate_json((version_dir / MANIFEST).read_bytes()).key_fingerprint
    except (OSError, ValidationError):
        return None


def _one_key(trusted: KeySet, key: str) -> TrustedKey:
    matches = [candidate for candidate in trusted.keys if candidate.fingerprint.startswith(key.lower())] if len(key) >= 8 else []
    if len(matches) != 1:
        known = ", ".join(candidate.fingerprint[:16] for candidate in trusted.keys)
        what = "names no key" if not matches else "names several keys"
        raise LookupError(f"'{key}' {what} of the registry's key set (give at least 8 hex digits of one of: {known})")
    return matches[0]


def _release(root: Path, trusted: KeySet, keys: list[TrustedKey], signers: list[Ed25519PrivateKey], now: datetime) -> KeySet:
    """Sign and publish the key set after ``trusted`` holding ``keys``, once it verifies as a device would check it."""
    release = KeySetRelease.signed(KeySet(sequence=trusted.sequence + 1, created=now, keys=tuple(keys)), signers)
    released = follow(trusted, release)
    directory = root / KEY_SETS
    directory.mkdir(exist_ok=True)
    path = directory / f"{released.sequence}.json"
    if path.exists():
        raise RuntimeError(f"key-set release {released.sequence} appeared meanwhile ({path}); try again")
    _create_exclusive(path, canonical_json(release.model_dump(mode="json")), mode=0o644)
    return released


def local_public_key(key_dir: Path) -> Ed25519PublicKey | None:
    """The public key that :func:`ensure_signing_key` keeps in ``key_dir``, if any."""
    path = key_dir / PUBLIC_KEY
    return load_public_key(path.read_bytes()) if path.is_file() else None


def registry_public_key(root: Path) -> Ed25519PublicKey:
    """The public key published in the registry (proves integrity, not origin: the lake holds it)."""
    path = root / PUBLIC_KEY
    if not path.is_file():
        raise FileNotFoundError(f"no public key at {path}; nothing has been published to this registry")
    return load_public_key(path.read_bytes())


def publish(
    root: Path,
    name: str,
    files: Mapping[str, Path],
    *,
    metrics: Mapping[str, float],
    lineage: Mapping[str, int],
    signer: Ed25519PrivateKey,
    feature_version: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ModelVersion:
    """Publish ``files`` (registry name -> source file or directory) as the next version of ``name``.

    The version is signed by ``signer``, numbered one above the newest (safe against concurrent
    publishers) and registered as a ``candidate``.
    """
    model_dir = _model_dir(root, name)
    model_dir.mkdir(parents=True, exist_ok=True)
    _publish_public_key(root, signer.public_key())
    staging = Path(tempfile.mkdtemp(prefix=".publishing-", dir=model_dir))
    try:
        entries = _copy_artifacts(files, staging)
        created = datetime.now(UTC)
        while True:
            manifest = Manifest(
                name=name,
                version=_newest(model_dir) + 1,
                created=created,
                files=entries,
                metrics=dict(metrics),
                lineage=dict(lineage),
                feature_version=feature_version,
                extra=dict(extra or {}),
                key_fingerprint=fingerprint(signer.public_key()),
            )
            _write_signed(staging, manifest, signer)
            if _claim(staging, model_dir / str(manifest.version)):
                break
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with _stage_book(model_dir) as book:
        book.move(manifest.version, "candidate", actor=None, reason="published")
    return ModelVersion(name, manifest.version, "candidate", model_dir / str(manifest.version), manifest)


def resign(root: Path, name: str, version: int, signer: Ed25519PrivateKey) -> ModelVersion:
    """Publish ``version`` of ``name`` again as its next version, signed by ``signer``: how production moves off a key before it is revoked.

    The version must verify first; its artifacts, metrics, lineage and feature version carry over
    (``extra.resigned_from`` names the source). The new version starts as a ``candidate``.
    """
    problems = verify(root, name, version)
    if problems:
        raise ValueError(f"refusing to re-sign {name} v{version}: it fails verification: {problems[0]}")
    source = get(root, name, version)
    manifest = source.manifest
    return publish(
        root, name, {file: source.path / file for file in manifest.files}, metrics=manifest.metrics, lineage=manifest.lineage,
        signer=signer, feature_version=manifest.feature_version, extra={**manifest.extra, "resigned_from": version},
    )  # fmt: skip


def publish_run(
    lake_root: str,
    key_dir: Path,
    name: str,
    files: Mapping[str, Path],
    *,
    metrics: Mapping[str, Any],
    lineage: Mapping[str, int],
    feature_version: str | None = None,
    extra: Mapping[str, Any] | None = None,
    promote_to: Stage | None = None,
    reason: str | None = None,
    registry_dir: Path | None = None,
) -> ModelVersion:
    """Publish a training run's files into the lake's registry (or ``registry_dir``), signed with the registry's key
    (made on first use in ``key_dir``), then
    promote it to ``promote_to`` if given. Numeric metrics go to the manifest's metrics, the rest to ``extra["details"]``."""
    numbers = {key: float(value) for key, value in metrics.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
    details = {key: value for key, value in metrics.items() if key not in numbers}
    root = registry_root(lake_root, registry_dir)
    version = publish(
        root, name, files, metrics=numbers, lineage=lineage, signer=ensure_signing_key(key_dir, lake_root, registry_dir),
        feature_version=feature_version, extra={**(extra or {}), **({"details": details} if details else {})},
    )  # fmt: skip
    if promote_to is None:
        return version
    promote(root, name, version.version, promote_to, reason=reason)
    return get(root, name, version.version)


def models(root: Path) -> list[str]:
    """The names of every model with at least one published version."""
    if not root.is_dir():
        return []
    return sorted(path.name for path in root.iterdir() if path.is_dir() and _versions(path))


def versions(root: Path, name: str) -> dict[int, Stage]:
    """Every published version of ``name``, oldest first, with its stage."""
    numbers = _versions(_model_dir(root, name))
    if not numbers:
        known = ", ".join(models(root)) or "none"
        raise UnknownModel(f"no model '{name}' in the registry at {root} (models: {known})")
    book = _read_book(root / name)
    return {version: book.stage(version) for version in numbers}


def current(root: Path, name: str, stage: Stage = "production") -> int | None:
    """The version of ``name`` in ``stage``, or None; no fallback to another stage."""
    versions(root, name)
    return _read_book(root / name).holder(stage)


def get(root: Path, name: str, version: int | None = None) -> ModelVersion:
    """Version ``version`` of ``name``; by default the production one, else the newest."""
    stages = versions(root, name)
    if version is None:
        production = current(root, name)
        version = max(stages) if production is None else production
    if version not in stages:
        raise UnknownModel(f"model '{name}' has versions {', '.join(map(str, stages))}; not {version}")
    path = root / name / str(version)
    try:
        manifest = Manifest.model_validate_json((path / MANIFEST).read_bytes())
    except (OSError, ValidationError) as error:
        problem = type(error).__name__
        raise ValueError(f"the manifest of {name} v{version} is unreadable ({problem}); run `edgelake models verify`") from None
    return ModelVersion(name, version, stages[version], path, manifest)


def verify(root: Path, name: str, version: int, public_key: Ed25519PublicKey | None = None) -> list[str]:
    """Every problem with version ``version`` of ``name``; empty when it is intact and signed by a valid key.

    ``public_key`` is the trusted (pinned) anchor of the key-set chain; by default the one published in the registry.
    """
    if version not in versions(root, name):
        raise UnknownModel(f"model '{name}' has no version {version}")
    try:
        trusted = key_set(root, public_key)
    except KeySetRefused as refused:
        return [f"the registry's key set does not verify: {refused}"]
    return verify_files(root / name / str(version), trusted, name=name, version=version)


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
    _refuse_unverified(root, name, version, public_key, "promote")
    with _stage_book(root / name) as book:
        before = book.stage(version)
        if before not in ("candidate", "canary"):
            raise ValueError(
                f"{name} v{version} is {before}; only candidate and canary versions can be promoted"
                + (" (use `rollback` to bring back the previous production version)" if before == "archived" else "")
            )
        later = PROMOTION_ORDER[PROMOTION_ORDER.index(before) + 1 :]
        target = next((stage for stage in later if stage == (to or later[0])), None)
        if target is None:
            raise ValueError(f"cannot promote {name} v{version} from {before} to {to}; stages go {' -> '.join(PROMOTION_ORDER)}")
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
    book = _read_book(root / name)
    failing = book.holder("production")
    if failing is None:
        raise LookupError(f"{name} has no production version to roll back")
    previous = _previous_production(book, failing)
    _refuse_unverified(root, name, previous, public_key, "roll back to")
    with _stage_book(root / name) as book:
        if book.holder("production") != failing or book.stage(previous) != "archived":
            raise RuntimeError(f"the stages of {name} changed during the rollback; try again")
        start = len(book.history)
        book.move(failing, "rolled_back", actor, reason)
        book.move(previous, "production", actor, f"rollback from v{failing}")
        return book.history[start:]


def rollout(root: Path, name: str) -> RolloutPolicy:
    """The rollout policy of ``name``; without one, no device is on a canary."""
    versions(root, name)
    path = root / name / ROLLOUT
    return RolloutPolicy.model_validate_json(path.read_bytes()) if path.is_file() else RolloutPolicy()


def set_rollout(root: Path, name: str, rules: RolloutRules, *, actor: str | None = None) -> RolloutPolicy:
    """Put ``rules`` in force for ``name`` from now on (written atomically, so every reader sees all of it or none).

    A candidate put on canary moves to stage ``canary``; a version past it (production,
    archived, rolled back) cannot go on canary.
    """
    published = versions(root, name)
    version = rules.canary_version
    if version is not None and version not in published:
        raise UnknownModel(f"model '{name}' has no version {version} to put on canary")
    with _locked(root / name / f".{ROLLOUT}.lock"):
        if version is not None:
            stage = _read_book(root / name).stage(version)
            if stage == "candidate":
                promote(root, name, version, "canary", actor=actor, reason=f"canary on {rules.canary_percent}% of devices")
            elif stage != "canary":
                raise ValueError(f"{name} v{version} is {stage}; only a candidate or canary version can go on canary")
        return _write_rollout(root, name, rules, actor)


def settle_canary(
    root: Path, name: str, judge: Callable[[RolloutPolicy], CanaryVerdict | None], *, actor: str | None = None
) -> list[Transition]:
    """Ask ``judge`` about the canary of the policy in force and carry out its verdict, once; the transitions made.

    Under the rollout lock, so concurrent callers see each other's outcome: a promoted canary
    becomes production (the previous one archived), a rejected one ``rolled_back``, and either
    way the policy's canary ends. A canary that no longer verifies is rejected, never promoted.
    Nothing happens without a canary, without a verdict, or when the version has already left
    the canary stages by hand.
    """
    versions(root, name)
    with _locked(root / name / f".{ROLLOUT}.lock"):
        policy = rollout(root, name)
        version = policy.canary_version
        if version is None or _read_book(root / name).stage(version) not in ("candidate", "canary"):
            return []
        verdict = judge(policy)
        if verdict is None:
            return []
        problems = verify(root, name, version) if verdict.outcome == "promote" else []
        if problems:
            transitions = reject(root, name, version, actor=actor, reason=f"{verdict.reason}; but it fails verification: {problems[0]}")
        elif verdict.outcome == "promote":
            transitions = promote(root, name, version, "production", actor=actor, reason=verdict.reason)
        else:
            transitions = reject(root, name, version, actor=actor, reason=verdict.reason)
        _write_rollout(root, name, policy.model_copy(update={"canary_version": None}), actor)
        return transitions


def reject(root: Path, name: str, version: int, *, actor: str | None = None, reason: str | None = None) -> list[Transition]:
    """Mark a candidate or canary version ``rolled_back``: it failed its rollout and is never promoted; the transitions made."""
    if version not in versions(root, name):
        raise UnknownModel(f"model '{name}' has no version {version}")
    with _stage_book(root / name) as book:
        before = book.stage(version)
        if before not in ("candidate", "canary"):
            raise ValueError(f"{name} v{version} is {before}; only candidate and canary versions can be rejected (use `rollback`)")
        start = len(book.history)
        book.move(version, "rolled_back", actor, reason)
        return book.history[start:]


def rollout_bucket(name: str, device_id: str) -> int:
    """A device's stable place in 0..99 for model ``name``, the same on every replica and run."""
    digest = hashlib.sha256(f"{name}\0{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def assigned_version(root: Path, name: str, device_id: str) -> tuple[int, Literal["canary", "production"]] | None:
    """The version of ``name`` that ``device_id`` should run and why; None when there is neither canary nor production."""
    policy = rollout(root, name)
    if policy.canary_version is not None and rollout_bucket(name, device_id) < policy.canary_percent:
        return policy.canary_version, "canary"
    production = current(root, name)
    return None if production is None else (production, "production")


def _write_rollout(root: Path, name: str, rules: RolloutRules, actor: str | None) -> RolloutPolicy:
    policy = RolloutPolicy.model_validate({**rules.model_dump(include=set(RolloutRules.model_fields)), "updated": datetime.now(UTC), "actor": actor})
    replace_durably(root / name / ROLLOUT, canonical_json(policy.model_dump(mode="json")))
    return policy


def _previous_production(book: StageBook, failing: int) -> int:
    earlier = [t.version for t in book.history if t.to == "production" and t.version != failing]
    for version in reversed(earlier):
        if book.stage(version) == "archived":
            return version
    raise LookupError(f"no earlier production version to roll back to (v{failing} is the only one left)")


def _refuse_unverified(root: Path, name: str, version: int, public_key: Ed25519PublicKey | None, action: str) -> None:
    problems = verify(root, name, version, public_key)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(f"refusing to {action} {name} v{version}: it fails verification: {problems[0]}{more}")


def _model_dir(root: Path, name: str) -> Path:
    if not _valid(_names, name):
        raise ValueError(f"'{name}' is not a model name: lower-case letters, digits, '-' and '_', at most 64")
    return root / name


def _valid(adapter: TypeAdapter[str], value: str) -> bool:
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def _versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(path.name) for path in model_dir.iterdir() if path.name.isdigit() and path.is_dir())


def _newest(model_dir: Path) -> int:
    return max(_versions(model_dir), default=0)


def _copy_artifacts(files: Mapping[str, Path], staging: Path) -> dict[str, FileEntry]:
    """Copy every source into ``staging`` under its registry name; the manifest entry of each file."""
    sources: dict[str, Path] = {}
    for name, source in files.items():
        if source.is_dir():
            sources.update({f"{name}/{path.relative_to(source).as_posix()}": path for path in sorted(source.rglob("*")) if path.is_file()})
        elif source.is_file():
            sources[name] = source
        else:
            raise FileNotFoundError(f"artifact '{name}': no file or directory at {source}")
    for name in sources:
        if not _valid(_artifact_names, name):
            raise ValueError(f"'{name}' is not an artifact name: a relative path of letters, digits, '.', '-', '_'")
        if name in RESERVED:
            raise ValueError(f"'{name}' is reserved for the registry; name the artifact otherwise")
    return {name: _copy(source, staging / name) for name, source in sources.items()}


def _copy(source: Path, target: Path) -> FileEntry:
    """Copy and fsync one file, hashing the bytes as they are written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with source.open("rb") as reader, target.open("xb") as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            writer.write(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return FileEntry(sha256=digest.hexdigest(), bytes=size)


def _write_signed(directory: Path, manifest: Manifest, signer: Ed25519PrivateKey) -> None:
    raw = manifest.canonical_bytes()
    write_synced(directory / MANIFEST, raw)
    write_synced(directory / SIGNATURE, sign(raw, signer))


def _claim(staging: Path, target: Path) -> bool:
    """Rename ``staging`` to ``target``; False when another publisher already holds that version."""
    try:
        os.rename(staging, target)
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
            return False
        raise
    fsync_directory(target.parent)
    return True


def _publish_public_key(root: Path, public_key: Ed25519PublicKey) -> None:
    """Publish the signer's public key as the anchor on first use; refuse a signer the registry's key set does not hold valid now."""
    path = root / PUBLIC_KEY
    _create_exclusive(path, public_key_pem(public_key), mode=0o644)
    trusted = key_set(root)
    signer = trusted.get(fingerprint(public_key))
    if signer is None:
        keys = ", ".join(key.fingerprint[:16] for key in trusted.unrevoked())
        where = root / KEY_SETS if trusted.sequence else path
        raise ValueError(f"this registry is signed by key {keys} ({where}), not by this signer's {fingerprint(public_key)[:16]}")
    refusal = signer.refusal_at(datetime.now(UTC))
    if refusal is not None:
        raise ValueError(f"refusing to sign with this key: {refusal} (`edgelake models keys list` shows the valid ones)")


def _create_exclusive(path: Path, content: bytes, mode: int) -> None:
    """Create ``path`` with ``content`` unless it exists; readers never see it half-written."""
    if path.exists():
        return
    temp = synced_temp(path, content, mode)
    try:
        os.link(temp, path)
    except FileExistsError:
        pass
    finally:
        temp.unlink()


def _read_book(model_dir: Path) -> StageBook:
    path = model_dir / STAGES
    return StageBook.model_validate_json(path.read_bytes()) if path.is_file() else StageBook()


@contextmanager
def _stage_book(model_dir: Path) -> Iterator[StageBook]:
    """The model's stage book, locked against other writers and saved atomically on success."""
    with _locked(model_dir / f".{STAGES}.lock"):
        book = _read_book(model_dir)
        yield book
        replace_durably(model_dir / STAGES, canonical_json(book.model_dump(mode="json", by_alias=True)))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` (created if absent) while the block runs, against other threads and processes alike."""
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


