"""Publishing signed versions: their artifacts and manifests, written aside then renamed into place whole, and reading
them back."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import TypeAdapter, ValidationError

from edgelake.files import fsync_directory, write_synced
from edgelake.signing import MANIFEST, RESERVED, SIGNATURE, ArtifactName, FileEntry, Manifest, fingerprint, sign
from edgelake.training.registry.keys import ensure_signing_key, publish_public_key, verify
from edgelake.training.registry.layout import Registry, RegistryRefused, UnknownModel, model_dir, models, published, valid, version_numbers
from edgelake.training.registry.stages import Stage, promote, read_book, stage_book

if TYPE_CHECKING:
    from edgelake.control_db import ControlDb
    from edgelake.lake.catalog import Lake

_CHUNK = 1 << 20
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

    The version is signed by ``signer``, numbered one above the newest (safe against concurrent
    publishers) and registered as a ``candidate``.
    """
    directory = model_dir(registry.root, name)
    directory.mkdir(parents=True, exist_ok=True)
    publish_public_key(registry.root, signer.public_key())
    staging = Path(tempfile.mkdtemp(prefix=".publishing-", dir=directory))
    try:
        entries = _copy_artifacts(files, staging)
        created = datetime.now(UTC)
        while True:
            manifest = Manifest(
                name=name,
                version=_newest(directory) + 1,
                created=created,
                files=entries,
                metrics=dict(metrics),
                lineage=dict(lineage),
                feature_version=feature_version,
                extra=dict(extra or {}),
                key_fingerprint=fingerprint(signer.public_key()),
            )
            _write_signed(staging, manifest, signer)
            if _claim(staging, directory / str(manifest.version)):
                break
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with stage_book(registry, name) as book:
        book.move(manifest.version, "candidate", actor=None, reason="published")
    return ModelVersion(name, manifest.version, "candidate", directory / str(manifest.version), manifest)


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
    problems = verify(registry.root, name, version)
    if problems:
        raise RegistryRefused(f"refusing to re-sign {name} v{version}: it fails verification: {problems[0]}")
    source = get(registry, name, version)
    manifest = source.manifest
    return publish(
        registry, name, {file: source.path / file for file in manifest.files}, metrics=manifest.metrics, lineage=manifest.lineage,
        signer=signer, feature_version=manifest.feature_version, extra={**manifest.extra, "resigned_from": version},
    )


def get(registry: Registry, name: str, version: int | None = None) -> ModelVersion:
    """Version ``version`` of ``name``; by default the production one, else the newest."""
    numbers = published(registry.root, name)
    book = read_book(registry, name)  # once: each read is a control-plane transaction
    if version is None:
        production = book.holder("production")
        version = max(numbers) if production is None else production
    if version not in numbers:
        raise UnknownModel(f"model '{name}' has versions {', '.join(map(str, numbers))}; not {version}")
    path = registry.root / name / str(version)
    try:
        manifest = Manifest.model_validate_json((path / MANIFEST).read_bytes())
    except (OSError, ValidationError) as error:
        problem = type(error).__name__
        raise RegistryRefused(f"the manifest of {name} v{version} is unreadable ({problem}); run `edgelake models verify`") from None
    return ModelVersion(name, version, book.stage(version), path, manifest)


def signed_by(root: Path, key_fingerprint: str) -> list[tuple[str, int]]:
    """Every published (model, version) whose manifest names this signing key."""
    return [
        (name, version)
        for name in models(root)
        for version in version_numbers(root / name)
        if _manifest_key(root / name / str(version)) == key_fingerprint
    ]


def _manifest_key(version_dir: Path) -> str | None:
    try:
        return Manifest.model_validate_json((version_dir / MANIFEST).read_bytes()).key_fingerprint
    except (OSError, ValidationError):
        return None


def _newest(directory: Path) -> int:
    return max(version_numbers(directory), default=0)


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
        if not valid(_artifact_names, name):
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
