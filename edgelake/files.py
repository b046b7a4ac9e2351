"""Durable local file writes shared by the registry, the API's stores and the CLI."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

_CHUNK = 1 << 20


def replace_durably(path: Path, content: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``content`` atomically and durably: a synced temp file (with ``mode``) renamed
    over ``path``, then the directory synced so the rename itself survives a crash."""
    temp = synced_temp(path, content, mode)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def synced_temp(path: Path, content: bytes, mode: int | None = None) -> Path:
    """A temp file beside ``path`` holding ``content`` (with ``mode``), written through to disk; the caller moves or removes it."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return Path(temp)


def write_synced(path: Path, content: bytes) -> None:
    """Write ``path`` and sync it to disk (not atomic: for files inside a directory that is itself renamed into place)."""
    with path.open("wb") as file:
        file.write(content)
        file.flush()
        os.fsync(file.fileno())


def copy_synced(reader: IO[bytes], target: Path) -> None:
    """Copy what ``reader`` holds into the new file ``target`` and sync it to disk; FileExistsError if ``target`` exists."""
    with target.open("xb") as writer:
        shutil.copyfileobj(reader, writer, _CHUNK)
        writer.flush()
        os.fsync(writer.fileno())


def fsync_directory(path: Path) -> None:
    """Make the directory's entries (created, renamed or removed files) durable."""
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
