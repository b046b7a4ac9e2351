"""The control-plane database's embedded SQLite file: private from the start, and safe to open again beside open connections."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import sqlalchemy as sa

from edgelake.control_db import ControlDb


def posix_locks(path: Path) -> list[str]:
    """The POSIX locks this process holds on ``path``, as /proc/locks lists them."""
    device_inode = f":{path.stat().st_ino}"
    return [
        line for line in Path("/proc/locks").read_text().splitlines()
        if line.split()[1] == "POSIX" and line.split()[4] == str(os.getpid()) and line.split()[5].endswith(device_inode)
    ]


def test_the_file_is_private_and_opening_it_again_keeps_the_locks_of_open_connections(tmp_path: Path) -> None:
    path = tmp_path / "api" / "control.sqlite"
    first = ControlDb(f"sqlite:///{path}")
    with first.transaction() as connection:
        connection.execute(sa.text("SELECT 1"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    held = posix_locks(path)
    assert held, "an open connection holds a shared lock on the database file"
    second = ControlDb(f"sqlite:///{path}")  # closing any descriptor of the file would drop those locks (and let
    with second.transaction() as connection:  # another process checkpoint under the first's connections)
        connection.execute(sa.text("SELECT 1"))
    assert set(held) <= set(posix_locks(path))
