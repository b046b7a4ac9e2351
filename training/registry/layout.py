"""Where the registry lies, which models and version numbers it holds, and the file primitives its writers share."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from filelock import FileLock
from pydantic import TypeAdapter, ValidationError

from edgelake.control_db import ControlDb
from edgelake.errors import UserError
from edgelake.settings import Settings
from edgelake.files import synced_temp
from edgelake.signing import ModelName

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
    """A model registry: the signed versions' files under ``root``; their stage book and rollout policies in ``db``, the
    control plane's database, which every replica and command shares."""

    root: Path
    db: ControlDb

    @classmethod
    def of(cls, lake: Lake, db: ControlDb) -> Registry:
        """The registry of ``lake`` (see :func:`registry_root`), its stages kept in ``db``."""
        return cls(registry_root(lake), db)

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        """The registry of the settings' lake, its stages in their control-plane database."""
        from edgelake.lake.catalog import Lake

        return cls.of(Lake.from_settings(settings), ControlDb.from_settings(settings))


def registry_root(lake: Lake) -> Path:
    """The lake's registry directory: its ``registry_dir`` if set, else ``models`` in a lake given as a local path or ``file://`` URI."""
    if lake.registry_dir is not None:
        return lake.registry_dir
    local = local_path(lake.root)
    if local is None:
        raise RegistryRefused(
            f"the lake {lake.root} is on object storage and the model registry needs a filesystem: "
            "set registry_dir (EDGELAKE_REGISTRY_DIR) to a folder every service mounts"
        )
    return local / "models"


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


def version_numbers(directory: Path) -> list[int]:
    """The version numbers published in a model's directory, oldest first; none for a directory that does not exist."""
    if not directory.is_dir():
        return []
    return sorted(int(path.name) for path in directory.iterdir() if path.name.isdigit() and path.is_dir())


def published(root: Path, name: str) -> list[int]:
    """The version numbers of ``name``, oldest first; UnknownModel when it has none."""
    numbers = version_numbers(model_dir(root, name))
    if not numbers:
        known = ", ".join(models(root)) or "none"
        raise UnknownModel(f"no model '{name}' in the registry at {root} (models: {known})")
    return numbers


def models(root: Path) -> list[str]:
    """The names of every model with at least one published version."""
    if not root.is_dir():
        return []
    return sorted(path.name for path in root.iterdir() if path.is_dir() and version_numbers(path))


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


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive file lock on ``path`` while the block runs, against other threads and processes alike."""
    with FileLock(path):
        yield
