"""Local copies of what a registry on object storage holds: a published version is fetched whole into the mirror (each
file checked against its manifest, then renamed into place), the key files as they are released. Without object storage
the registry's folder is read as it is."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from pydantic import ValidationError

from edgelake.files import fsync_directory, write_synced
from edgelake.signing import MANIFEST, SIGNATURE, Manifest, sha256_file
from edgelake.training.registry.layout import Registry, RegistryRefused, create_exclusive
from edgelake.training.registry.objects import ObjectStore


def version_dir(registry: Registry, name: str, version: int) -> Path:
    """The local folder of published version ``version`` of ``name``: in the registry's folder, or fetched into its mirror.

    RegistryRefused when the object store's copy lacks a file or a file differs from its manifest.
    """
    target = registry.root / name / str(version)
    if registry.store is None or target.is_dir():
        return target
    return _fetch(registry.store, name, version, target)


def manifest_bytes(registry: Registry, name: str, version: int) -> bytes | None:
    """The manifest of version ``version`` of ``name`` as stored, without fetching the version; None without one."""
    if registry.store is None or (registry.root / name / str(version)).is_dir():
        path = registry.root / name / str(version) / MANIFEST
        return path.read_bytes() if path.is_file() else None
    return registry.store.read(f"{name}/{version}/{MANIFEST}")


def local_keys(registry: Registry, names: list[str]) -> Path:
    """``registry.root``, holding the key files ``names`` (relative paths; folders end with '/') as the registry has them.

    Key files are written once, so those in the mirror already are kept.
    """
    if registry.store is not None:
        for name in names:
            wanted = registry.store.keys(name.rstrip("/")) if name.endswith("/") else [name]
            for key in wanted:
                if not (registry.root / key).exists() and (content := registry.store.read(key)) is not None:
                    (registry.root / key).parent.mkdir(parents=True, exist_ok=True)
                    create_exclusive(registry.root / key, content, mode=0o644)
    return registry.root


def _fetch(store: ObjectStore, name: str, version: int, target: Path) -> Path:
    where = f"{name} v{version} in {store.uri}"
    raw = store.read(f"{name}/{version}/{MANIFEST}")
    if raw is None:
        raise RegistryRefused(f"{where} has no {MANIFEST}; run `edgelake models verify`")
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError:
        raise RegistryRefused(f"the {MANIFEST} of {where} does not parse; run `edgelake models verify`") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetching-", dir=target.parent))
    try:
        write_synced(staging / MANIFEST, raw)
        if (signature := store.read(f"{name}/{version}/{SIGNATURE}")) is not None:
            write_synced(staging / SIGNATURE, signature)
        for file, entry in manifest.files.items():
            path = staging / file
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                store.download(f"{name}/{version}/{file}", path)
            except FileNotFoundError:
                raise RegistryRefused(f"{where}: {file} is missing") from None
            if sha256_file(path) != entry.sha256:
                raise RegistryRefused(f"{where}: {file} does not match its manifest's sha256")
        try:
            os.rename(staging, target)
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):  # another fetch of the same version came first
                raise
        fsync_directory(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
