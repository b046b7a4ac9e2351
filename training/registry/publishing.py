"""Publishing signed versions and reading them back. A publisher reserves the next version number in the control plane's
database, writes the artifacts, then the manifest and its signature, and finally marks the version published, in the same
transaction that makes it a candidate: readers list versions from the database only, so a version is visible whole or not
at all, on a filesystem or on object storage alike, without rename or file locks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import TypeAdapter, ValidationError

from edgelake.control_db import model_versions
from edgelake.files import copy_synced, fsync_directory, write_synced
from edgelake.signing import MANIFEST, RESERVED, SIGNATURE, ArtifactName, FileEntry, Manifest, fingerprint, sha256_file, sign
from edgelake.training.registry.keys import ensure_signing_key, publish_public_key, verify
from edgelake.training.registry.layout import Registry, RegistryRefused, UnknownModel, model_dir, models, published, valid
from edgelake.training.registry.mirror import manifest_bytes, version_dir
from edgelake.training.registry.stages import Stage, editing, promote, read_book

if TYPE_CHECKING:
    from edgelake.control_db import ControlDb
    from edgelake.lake.catalog import Lake

_artifact_names = TypeAdapter(ArtifactName)


@dataclass(frozen=True)
class ModelVersion:
    """One published version: where it lies, its stage and its manifest."""

    name: str
    version: int
    stage: Stage
    path: Path
    manifest: Manifest


def publish(
    registry: Registry,
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

    The version is signed by ``signer``, numbered one above the newest reserved (safe against concurrent
    publishers; a publisher that dies leaves its number unused) and registered as a ``candidate``.
    """
    model_dir(registry.root, name)
    publish_public_key(registry, signer.public_key())
    sources = _sources(files)
    entries = {file: _entry(source) for file, source in sources.items()}
    created = datetime.now(UTC)
    while True:
        manifest = Manifest(
            name=name,
            version=_reserve(registry, name),
            created=created,
            files=entries,
            metrics=dict(metrics),
            lineage=dict(lineage),
            feature_version=feature_version,
            extra=dict(extra or {}),
            key_fingerprint=fingerprint(signer.public_key()),
        )
        if _write_version(registry, manifest, sources, signer):
            break
    with registry.db.transaction() as connection, editing(registry, connection, name) as book:
        held = (model_versions.c.model == name) & (model_versions.c.version == manifest.version)
        connection.execute(sa.update(model_versions).where(held).values(published=datetime.now(UTC)))
        book.move(manifest.version, "candidate", actor=None, reason="published")
    return get(registry, name, manifest.version)


def publish_run(
    lake: Lake,
    db: ControlDb,
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
) -> ModelVersion:
    """Publish a training run's files into ``lake``'s registry (its stages kept in ``db``), signed with the registry's key
    (made on first use in ``key_dir``), then
    promote it to ``promote_to`` if given. Numeric metrics go to the manifest's metrics, the rest to ``extra["details"]``."""
    numbers = {key: float(value) for key, value in metrics.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
    details = {key: value for key, value in metrics.items() if key not in numbers}
    registry = Registry.of(lake, db)
    version = publish(
        registry, name, files, metrics=numbers, lineage=lineage, signer=ensure_signing_key(key_dir, lake),
        feature_version=feature_version, extra={**(extra or {}), **({"details": details} if details else {})},
    )
    if promote_to is None:
        return version
    promote(registry, name, version.version, promote_to, reason=reason)
    return get(registry, name, version.version)


def resign(registry: Registry, name: str, version: int, signer: Ed25519PrivateKey) -> ModelVersion:
    """Publish ``version`` of ``name`` again as its next version, signed by ``signer``: how production moves off a key before it is revoked.

    The version must verify first; its artifacts, metrics, lineage and feature version carry over
    (``extra.resigned_from`` names the source). The new version starts as a ``candidate``.
    """
    problems = verify(registry, name, version)
    if problems:
        raise RegistryRefused(f"refusing to re-sign {name} v{version}: it fails verification: {problems[0]}")
    source = get(registry, name, version)
    manifest = source.manifest
    return publish(
        registry, name, {file: source.path / file for file in manifest.files}, metrics=manifest.metrics, lineage=manifest.lineage,
        signer=signer, feature_version=manifest.feature_version, extra={**manifest.extra, "resigned_from": version},
    )


def get(registry: Registry, name: str, version: int | None = None) -> ModelVersion:
    """Version ``version`` of ``name``; by default the production one, else the newest. Its files are local (fetched into
    the mirror of a registry on object storage)."""
    numbers = published(registry, name)
    book = read_book(registry, name)  # once: each read is a control-plane transaction
    if version is None:
        production = book.holder("production")
        version = max(numbers) if production is None else production
    if version not in numbers:
        raise UnknownModel(f"model '{name}' has versions {', '.join(map(str, numbers))}; not {version}")
    path = version_dir(registry, name, version)
    try:
        manifest = Manifest.model_validate_json((path / MANIFEST).read_bytes())
    except (OSError, ValidationError) as error:
        problem = type(error).__name__
        raise RegistryRefused(f"the manifest of {name} v{version} is unreadable ({problem}); run `edgelake models verify`") from None
    return ModelVersion(name, version, book.stage(version), path, manifest)


def manifest(registry: Registry, name: str, version: int) -> Manifest:
    """The manifest of published version ``version`` of ``name`` (not verified), read without fetching the version's files."""
    if version not in published(registry, name):
        raise UnknownModel(f"model '{name}' has no version {version}")
    try:
        return Manifest.model_validate_json(manifest_bytes(registry, name, version) or b"")
    except ValidationError:
        raise RegistryRefused(f"the manifest of {name} v{version} is missing or unreadable; run `edgelake models verify`") from None


def signed_by(registry: Registry, key_fingerprint: str) -> list[tuple[str, int]]:
    """Every published (model, version) whose manifest names this signing key."""
    return [
        (name, version)
        for name in models(registry)
        for version in published(registry, name)
        if _manifest_key(manifest_bytes(registry, name, version)) == key_fingerprint
    ]


def _manifest_key(raw: bytes | None) -> str | None:
    try:
        return Manifest.model_validate_json(raw).key_fingerprint if raw is not None else None
    except ValidationError:
        return None


def _reserve(registry: Registry, name: str) -> int:
    """The next version number of ``name``, reserved for this publisher: no other is given it, published or not."""
    with registry.db.transaction() as connection:
        registry.db.lock(connection, f"registry-numbers:{name}")  # not the stage book's lock: numbering waits on no stage move
        newest = connection.execute(sa.select(sa.func.max(model_versions.c.version)).where(model_versions.c.model == name)).scalar()
        version = (newest or 0) + 1
        connection.execute(sa.insert(model_versions).values(model=name, version=version, reserved=datetime.now(UTC), published=None))
    return version


def _write_version(registry: Registry, manifest: Manifest, sources: Mapping[str, Path], signer: Ed25519PrivateKey) -> bool:
    """Write the artifacts, then the manifest and its signature, where the version's files go; False, writing nothing,
    when files are there already (left by a publisher whose database was reset), so the version needs another number."""
    raw = manifest.canonical_bytes()
    signature = sign(raw, signer)
    prefix = f"{manifest.name}/{manifest.version}"
    if registry.store is not None:
        if registry.store.keys(prefix):
            return False
        for file, source in sources.items():
            registry.store.upload(source, f"{prefix}/{file}")
        registry.store.write(f"{prefix}/{MANIFEST}", raw)
        registry.store.write(f"{prefix}/{SIGNATURE}", signature)
        return True
    directory = registry.root / prefix
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        directory.mkdir()
    except FileExistsError:
        return False
    for file, source in sources.items():
        _copy(source, directory / file)
    write_synced(directory / MANIFEST, raw)
    write_synced(directory / SIGNATURE, signature)
    fsync_directory(directory)
    fsync_directory(directory.parent)
    return True


def _sources(files: Mapping[str, Path]) -> dict[str, Path]:
    """Every file to publish, by its registry name (a directory gives each file under it)."""
    sources: dict[str, Path] = {}
    for name, source in files.items():
        if source.is_dir():
            sources.update({f"{name}/{path.relative_to(source).as_posix()}": path for path in sorted(source.rglob("*")) if path.is_file()})
        elif source.is_file():
            sources[name] = source
        else:
            raise FileNotFoundError(f"artifact '{name}': no file or directory at {source}")
    for name in sources:
        if not valid(_artifact_names, name):
            raise ValueError(f"'{name}' is not an artifact name: a relative path of letters, digits, '.', '-', '_'")
        if name in RESERVED:
            raise ValueError(f"'{name}' is reserved for the registry; name the artifact otherwise")
    return sources


def _entry(source: Path) -> FileEntry:
    return FileEntry(sha256=sha256_file(source), bytes=source.stat().st_size)


def _copy(source: Path, target: Path) -> None:
    """Copy and fsync one file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as reader:
        copy_synced(reader, target)
