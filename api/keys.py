"""API keys: random tokens kept only as sha256 hashes in the control-plane database (:mod:`edgelake.control_db`).

The CLI and every server share the database; a server trusts what it read about a token for
``api_key_cache_s``, so a key revoked anywhere stops working on every replica within that time
(at once on the replica that revoked it).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from datetime import UTC, datetime
from typing import Literal

import sqlalchemy as sa
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy.engine import Connection

from edgelake.control_db import ControlDb, api_keys
from edgelake.errors import UserError

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


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class KeyStore:
    """The API keys in a control-plane database: create, list, revoke, and look a presented token up."""

    def __init__(self, db: ControlDb, *, cache_s: float = 1.0) -> None:
        self.db = db
        self.cache_s = cache_s
        self._seen: dict[str, tuple[float, ApiKey | None]] = {}  # token hash -> (when read, the key or None)
        self._lock = threading.Lock()

    def create(
        self, name: str, role: Role, *, device_id: str | None = None, within: Connection | None = None
    ) -> tuple[ApiKey, str]:
        """A new key and its token, bound to ``device_id`` if given; the token is shown this once and never stored.

        ``within`` adds the key in a transaction the caller holds, so it is kept only if that transaction commits.
        """
        if role not in ROLES:
            raise ValueError(f"no role '{role}'; choose one of {', '.join(ROLES)}")
        if device_id is not None and role != "device":
            raise ValueError(f"only a device key can be bound to a device, not a {role} key")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id="key_" + secrets.token_hex(6), name=name, role=role, sha256=token_hash(token), created=datetime.now(UTC), device_id=device_id
        )
        if within is not None:
            within.execute(api_keys.insert().values(**key.model_dump()))
        else:
            with self.db.transaction() as connection:
                connection.execute(api_keys.insert().values(**key.model_dump()))
        return key, token

    def keys(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        with self.db.transaction() as connection:
            rows = connection.execute(sa.select(api_keys).order_by(api_keys.c.created, api_keys.c.id)).mappings().all()
        return [ApiKey.model_validate(dict(row)) for row in rows]

    def revoke(self, key_id: str) -> ApiKey:
        """Mark ``key_id`` revoked (idempotent); UnknownApiKey if there is no such key."""
        with self.db.transaction() as connection:
            connection.execute(api_keys.update().where(api_keys.c.id == key_id).values(revoked=True))
            row = connection.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).mappings().one_or_none()
        if row is None:
            raise UnknownApiKey(f"no API key '{key_id}'; see `edgelake keys list`")
        key = ApiKey.model_validate(dict(row))
        with self._lock:
            self._seen.pop(key.sha256, None)
        return key

    def authenticate(self, token: str) -> ApiKey | None:
        """The live key whose token is ``token``, or None (unknown or revoked)."""
        digest = token_hash(token)
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(digest)
        if seen is None or now - seen[0] >= self.cache_s:
            with self.db.transaction() as connection:
                row = connection.execute(sa.select(api_keys).where(api_keys.c.sha256 == digest)).mappings().one_or_none()
            seen = (now, None if row is None else ApiKey.model_validate(dict(row)))
            with self._lock:
                if len(self._seen) >= _MAX_CACHED:
                    self._seen.clear()  # a flood of made-up tokens must not grow memory without bound
                self._seen[digest] = seen
        key = seen[1]
        return key if key is not None and not key.revoked else None


_MAX_CACHED = 100_000
