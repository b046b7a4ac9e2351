"""Where the registry lies, which models and version numbers it holds, and the file primitives its writers share."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from pydantic import TypeAdapter, ValidationError

import sqlalchemy as sa

from edgelake.control_db import ControlDb, model_versions
from edgelake.errors import UserError
from edgelake.settings import Settings
from edgelake.files import synced_temp
from edgelake.signing import ModelName
from edgelake.training.registry.objects import ObjectStore, is_object_store

if TYPE_CHECKING:
    from edgelake.lake.catalog import Lake

_names = TypeAdapter(ModelName)


class UnknownModel(UserError, LookupError):
    """A model name or version the registry does not hold."""


class NothingToRollBack(UserError, LookupError):
    """A model without a production version, or without an earlier one to go back to."""


class RegistryRefused(UserError, ValueError):
    """An action the registry refuses: a name it cannot hold, a stage move out of order, a version or key that fails its checks."""


class RegistryChanged(UserError, RuntimeError):
    """Another writer changed the registry during an action; trying again settles it."""


@dataclass(frozen=True)
class Registry:
    """A model registry: the signed versions' files under ``root``, a local folder, or on object storage in ``store`` with
    ``root`` their local mirror; which versions are published, their stage book and rollout policies in ``db``, the
    control plane's database, which every replica and command shares."""

    root: Path
    db: ControlDb
    store: ObjectStore | None = None

    @classmethod
    def of(cls, lake: Lake, db: ControlDb) -> Registry:
        """The registry of ``lake`` (see :func:`registry_root`), its versions and stages kept in ``db``."""
        if lake.registry_dir is None and local_path(lake.root) is None:
            if not is_object_store(lake.root):
                raise RegistryRefused(f"the lake {lake.root} is on a storage the model registry cannot use: set registry_dir (EDGELAKE_REGISTRY_DIR)")
            return cls(registry_root(lake), db, ObjectStore(f"{lake.root.rstrip('/')}/models", lake.storage_options))
        return cls(registry_root(lake), db)

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        """The registry of the settings' lake, its versions and stages in their control-plane database."""
        from edgelake.lake.catalog import Lake

        return cls.of(Lake.from_settings(settings), ControlDb.from_settings(settings))

    @property
    def location(self) -> str:
        """Where the files lie, for people."""
        return self.store.uri if self.store is not None else str(self.root)


def registry_root(lake: Lake) -> Path:
    """The local folder of ``lake``'s registry: its ``registry_dir`` if set, else ``models`` in a lake given as a local path
    or ``file://`` URI, else (a lake on object storage) the local mirror of the registry kept there."""
    if lake.registry_dir is not None:
        return lake.registry_dir
    local = local_path(lake.root)
    if local is not None:
        return local / "models"
    if lake.registry_mirror is None:
        raise RegistryRefused(f"the lake {lake.root} is on object storage: its model registry needs a local folder for its mirror (registry_mirror)")
    return lake.registry_mirror


def local_path(uri: str) -> Path | None:
    """``uri`` as a local path; None for an object store's URI."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:  # a one-letter scheme is a Windows drive
        return None
    return Path(uri)


def model_dir(root: Path, name: str) -> Path:
    """The directory of model ``name``; RegistryRefused for a name the registry cannot hold."""
    if not valid(_names, name):
        raise RegistryRefused(f"'{name}' is not a model name: lower-case letters, digits, '-' and '_', at most 64")
    return root / name


def valid(adapter: TypeAdapter[str], value: str) -> bool:
    """Whether ``value`` passes ``adapter``."""
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def published(registry: Registry, name: str) -> list[int]:
    """The published version numbers of ``name``, oldest first; UnknownModel when it has none."""
    model_dir(registry.root, name)
    held = (model_versions.c.model == name) & model_versions.c.published.is_not(None)
    with registry.db.transaction() as connection:
        numbers = list(connection.execute(sa.select(model_versions.c.version).where(held).order_by(model_versions.c.version)).scalars())
    if not numbers:
        known = ", ".join(models(registry)) or "none"
        raise UnknownModel(f"no model '{name}' in the registry at {registry.location} (models: {known})")
    return numbers


def models(registry: Registry) -> list[str]:
    """The names of every model with at least one published version."""
    query = sa.select(model_versions.c.model).where(model_versions.c.published.is_not(None)).distinct().order_by(model_versions.c.model)
    with registry.db.transaction() as connection:
        return list(connection.execute(query).scalars())


def create_exclusive(path: Path, content: bytes, mode: int) -> None:
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

