"""API keys: random tokens kept only as sha256 hashes in ``<data_dir>/api/keys.json``.

The file is rewritten whole and atomically (temp file, fsync, rename; mode 0600) under a
file lock, so the CLI can create and revoke keys while servers run; a server rereads it when it
changes (its inode, size or mtime), so a revoked key stops working on its next request.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from filelock import FileLock
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from edgelake.errors import UserError
from edgelake.files import replace_durably

Role = Literal["producer", "analyst", "device", "admin"]
ROLES: tuple[Role, ...] = ("producer", "analyst", "device", "admin")
TOKEN_PREFIX = "elk_"


class UnknownApiKey(UserError, LookupError):
    """An API key id the key file does not hold."""


class ApiKey(BaseModel):
    """One key as stored: never the token itself, only its hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    role: Role
    sha256: str
    created: AwareDatetime
    revoked: bool = False
    device_id: str | None = Field(None, description="The one device a device key speaks for.")


class KeyFile(BaseModel):
    """The contents of ``keys.json``."""

    model_config = ConfigDict(extra="forbid")

    keys: list[ApiKey] = Field(default_factory=list)


def keys_path(data_dir: Path) -> Path:
    """Where the keys of a data dir are kept."""
    return data_dir / "api" / "keys.json"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class KeyStore:
    """The keys in one ``keys.json``: create, list, revoke, and look a presented token up."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._by_hash: dict[str, ApiKey] = {}

    def create(self, name: str, role: Role, *, device_id: str | None = None) -> tuple[ApiKey, str]:
        """A new key and its token, bound to ``device_id`` if given; the token is shown this once and never stored."""
        if role not in ROLES:
            raise ValueError(f"no role '{role}'; choose one of {', '.join(ROLES)}")
        if device_id is not None and role != "device":
            raise ValueError(f"only a device key can be bound to a device, not a {role} key")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id="key_" + secrets.token_hex(6), name=name, role=role, sha256=token_hash(token), created=datetime.now(UTC), device_id=device_id
        )
        with self._editing() as file:
            file.keys.append(key)
        return key, token

    def keys(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        return self._read().keys

    def revoke(self, key_id: str) -> ApiKey:
        """Mark ``key_id`` revoked (idempotent); UnknownApiKey if there is no such key."""
        with self._editing() as file:
            for index, key in enumerate(file.keys):
                if key.id == key_id:
                    file.keys[index] = key.model_copy(update={"revoked": True})
                    return file.keys[index]
        raise UnknownApiKey(f"no API key '{key_id}'; see `edgelake keys list`")

    def authenticate(self, token: str) -> ApiKey | None:
        """The live key whose token is ``token``, or None (unknown or revoked)."""
        self._refresh()
        key = self._by_hash.get(token_hash(token))
        return key if key is not None and not key.revoked else None

    def _refresh(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._seen, self._by_hash = None, {}
            return
        seen = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if seen != self._seen:
            self._by_hash = {key.sha256: key for key in self._read().keys}
            self._seen = seen

    def _read(self) -> KeyFile:
        try:
            return KeyFile.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return KeyFile()

    @contextmanager
    def _editing(self) -> Iterator[KeyFile]:
        """The key file, locked against other writers, written back atomically when the block ends."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with FileLock(self.path.with_suffix(".lock")):
            file = self._read()
            yield file
            self._write(file)

    def _write(self, file: KeyFile) -> None:
        replace_durably(self.path, file.model_dump_json(indent=2).encode(), mode=0o600)
