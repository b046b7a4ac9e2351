"""The registry's signing keys: the private keys in the key dir, the published key-set chain, rotation, revocation, and
verification of a version against the keys trusted for it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgelake.errors import UserError
from edgelake.files import replace_durably
from edgelake.signing import (
    KeySet,
    KeySetRefused,
    KeySetRelease,
    TrustedKey,
    canonical_json,
    fingerprint,
    follow,
    follow_chain,
    load_public_key,
    public_key_pem,
    verify_files,
)
from edgelake.training.registry.layout import (
    Registry,
    RegistryChanged,
    RegistryRefused,
    UnknownModel,
    create_exclusive,
    local_path,
    published,
)
from edgelake.training.registry.mirror import local_keys, version_dir

if TYPE_CHECKING:
    from edgelake.control_db import ControlDb
    from edgelake.lake.catalog import Lake

KEYS_DIR = "keys"  # under the data dir, never in the lake
PUBLIC_KEY = "registry.pub"
PRIVATE_KEY = "registry.key"
CURRENT_KEY = "current"  # in the key dir: the fingerprint of the key that signs new versions
KEY_SETS = "keys"  # in the registry: the key-set chain, <sequence>.json
_KEYS_LOCK = "registry-keys"  # held while a key file is published: each is written once


class NoPublicKey(UserError, FileNotFoundError):
    """The registry has no public key: nothing has been published to it."""


class UnknownKey(UserError, LookupError):
    """A fingerprint prefix that names no key of the registry's key set, or several."""


def ensure_signing_key(key_dir: Path, lake: Lake) -> Ed25519PrivateKey:
    """The key that signs new versions: the one ``current`` names, else ``registry.key``, generated on first use (mode 0600).

    ``key_dir`` must lie outside ``lake`` and its registry: whoever can read them must not be able to sign.
    The first key's public half is kept beside it as ``registry.pub`` for local verification.
    """
    key_dir = key_dir.resolve()
    for shared, what in ((local_path(lake.root), "the lake"), (lake.registry_dir, "the model registry"), (lake.registry_mirror, "the registry's mirror")):
        if shared is not None and key_dir.is_relative_to(shared := shared.resolve()):
            raise RegistryRefused(f"the signing key directory {key_dir} lies inside {what} {shared}; keep private keys out of {what}")
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path = key_dir / PRIVATE_KEY
    if not private_path.exists():
        create_exclusive(private_path, _private_pem(Ed25519PrivateKey.generate()), mode=0o600)  # a concurrent first use may win
    first = _load_private_key(private_path)
    create_exclusive(key_dir / PUBLIC_KEY, public_key_pem(first.public_key()), mode=0o644)
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


def local_public_key(key_dir: Path) -> Ed25519PublicKey | None:
    """The public key that :func:`ensure_signing_key` keeps in ``key_dir``, if any."""
    path = key_dir / PUBLIC_KEY
    return load_public_key(path.read_bytes()) if path.is_file() else None


def registry_public_key(registry: Registry) -> Ed25519PublicKey:
    """The public key published in the registry (proves integrity, not origin: the lake holds it)."""
    path = local_keys(registry, [PUBLIC_KEY]) / PUBLIC_KEY
    if not path.is_file():
        raise NoPublicKey(f"no public key {PUBLIC_KEY} in {registry.location}; nothing has been published to this registry")
    return load_public_key(path.read_bytes())


def key_releases(registry: Registry, after: int = 0) -> list[KeySetRelease]:
    """The key-set releases numbered above ``after``, in order (not verified)."""
    directory = local_keys(registry, [f"{KEY_SETS}/"]) / KEY_SETS
    return [KeySetRelease.model_validate_json((directory / f"{number}.json").read_bytes()) for number in _release_numbers(directory) if number > after]


def key_set_sequence(registry: Registry) -> int | None:
    """The number of the newest key-set release; None before the first rotation."""
    return max(_release_numbers(local_keys(registry, [f"{KEY_SETS}/"]) / KEY_SETS), default=None)


def key_set(registry: Registry, anchor: Ed25519PublicKey | None = None) -> KeySet:
    """The registry's key set, verified release by release from ``anchor`` (by default the published ``registry.pub``).

    KeySetRefused names the first release that does not follow.
    """
    return follow_chain(KeySet.anchored(anchor or registry_public_key(registry)), key_releases(registry))


def publish_public_key(registry: Registry, public_key: Ed25519PublicKey) -> None:
    """Publish the signer's public key as the anchor on first use; refuse a signer the registry's key set does not hold valid now."""
    with registry.db.transaction() as connection:
        registry.db.lock(connection, _KEYS_LOCK)
        _write_once(registry, PUBLIC_KEY, public_key_pem(public_key))
    trusted = key_set(registry)
    signer = trusted.get(fingerprint(public_key))
    if signer is None:
        keys = ", ".join(key.fingerprint[:16] for key in trusted.unrevoked())
        where = f"{registry.location}/{KEY_SETS if trusted.sequence else PUBLIC_KEY}"
        raise RegistryRefused(f"this registry is signed by key {keys} ({where}), not by this signer's {fingerprint(public_key)[:16]}")
    refusal = signer.refusal_at(datetime.now(UTC))
    if refusal is not None:
        raise RegistryRefused(f"refusing to sign with this key: {refusal} (`edgelake models keys list` shows the valid ones)")


def rotate(key_dir: Path, lake: Lake, db: ControlDb, valid_days: int | None = None) -> KeySet:
    """Make a new signing key current and release the bridge key set in ``lake``'s registry (its versions and locks in
    ``db``), signed by the old key and the new one.

    The old key stays trusted for what it signed until now and signs nothing newer; the new one
    is valid from now, for ``valid_days`` when given.
    """
    registry = Registry.of(lake, db)
    old = ensure_signing_key(key_dir, lake)
    publish_public_key(registry, old.public_key())
    new = Ed25519PrivateKey.generate()
    now = datetime.now(UTC)
    retiring = fingerprint(old.public_key())
    with registry.db.transaction() as connection:
        registry.db.lock(connection, _KEYS_LOCK)
        trusted = key_set(registry)
        kept = [
            key.model_copy(update={"not_after": now}) if key.fingerprint == retiring and (key.not_after is None or key.not_after > now) else key
            for key in trusted.keys
        ]
        added = TrustedKey.of(new.public_key(), not_before=now, not_after=None if valid_days is None else now + timedelta(days=valid_days))
        create_exclusive(key_dir.resolve() / f"{added.fingerprint}.key", _private_pem(new), mode=0o600)
        released = _release(registry, trusted, [*kept, added], [old, new], now)
    replace_durably(key_dir.resolve() / CURRENT_KEY, added.fingerprint.encode(), mode=0o600)
    return released


def revoke(key_dir: Path, lake: Lake, db: ControlDb, key: str) -> KeySet:
    """Release a key set in ``lake``'s registry (its versions and locks in ``db``) in which ``key`` (a fingerprint or a unique
    prefix of one) is revoked, signed by the current key.

    Refused for the last valid key and for the current signing key (rotate first).
    """
    registry = Registry.of(lake, db)
    signer = ensure_signing_key(key_dir, lake)
    now = datetime.now(UTC)
    with registry.db.transaction() as connection:
        registry.db.lock(connection, _KEYS_LOCK)
        trusted = key_set(registry)
        target = _one_key(trusted, key)
        if target.revoked_at is not None:
            raise RegistryRefused(f"key {target.fingerprint[:16]} was revoked already, at {target.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
        if not [other for other in trusted.keys if other.fingerprint != target.fingerprint and other.refusal_at(now) is None]:
            raise RegistryRefused(f"refusing to revoke key {target.fingerprint[:16]}: it is the last valid key (rotate first)")
        if target.fingerprint == fingerprint(signer.public_key()):
            raise RegistryRefused(f"key {target.fingerprint[:16]} is the current signing key; rotate first (`edgelake models keys rotate`), then revoke it")
        keys = [other.model_copy(update={"revoked_at": now}) if other is target else other for other in trusted.keys]
        return _release(registry, trusted, keys, [signer], now)


def verify(registry: Registry, name: str, version: int, public_key: Ed25519PublicKey | None = None) -> list[str]:
    """Every problem with version ``version`` of ``name``; empty when it is intact and signed by a valid key.

    ``public_key`` is the trusted (pinned) anchor of the key-set chain; by default the one published in the registry.
    """
    if version not in published(registry, name):
        raise UnknownModel(f"model '{name}' has no version {version}")
    try:
        trusted = key_set(registry, public_key)
    except KeySetRefused as refused:
        return [f"the registry's key set does not verify: {refused}"]
    try:
        directory = version_dir(registry, name, version)
    except RegistryRefused as refused:
        return [str(refused)]
    return verify_files(directory, trusted, name=name, version=version)


def refuse_unverified(registry: Registry, name: str, version: int, public_key: Ed25519PublicKey | None, action: str) -> None:
    """RegistryRefused, naming the first problem, when version ``version`` of ``name`` does not verify, so it is not ``action``-ed."""
    problems = verify(registry, name, version, public_key)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise RegistryRefused(f"refusing to {action} {name} v{version}: it fails verification: {problems[0]}{more}")


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise RegistryRefused(f"{path} is not an Ed25519 private key")
    return key


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _one_key(trusted: KeySet, key: str) -> TrustedKey:
    matches = [candidate for candidate in trusted.keys if candidate.fingerprint.startswith(key.lower())] if len(key) >= 8 else []
    if len(matches) != 1:
        known = ", ".join(candidate.fingerprint[:16] for candidate in trusted.keys)
        what = "names no key" if not matches else "names several keys"
        raise UnknownKey(f"'{key}' {what} of the registry's key set (give at least 8 hex digits of one of: {known})")
    return matches[0]


def _release(registry: Registry, trusted: KeySet, keys: list[TrustedKey], signers: list[Ed25519PrivateKey], now: datetime) -> KeySet:
    """Sign and publish the key set after ``trusted`` holding ``keys``, once it verifies as a device would check it; the
    caller holds the keys' lock."""
    release = KeySetRelease.signed(KeySet(sequence=trusted.sequence + 1, created=now, keys=tuple(keys)), signers)
    released = follow(trusted, release)
    if not _write_once(registry, f"{KEY_SETS}/{released.sequence}.json", canonical_json(release.model_dump(mode="json"))):
        raise RegistryChanged(f"key-set release {released.sequence} appeared meanwhile in {registry.location}; try again")
    return released


def _write_once(registry: Registry, key: str, content: bytes) -> bool:
    """Publish the key file ``key`` unless the registry has it; whether this call wrote it. The caller holds the keys' lock."""
    if registry.store is not None:
        if registry.store.read(key) is not None:
            return False
        registry.store.write(key, content)
        return True
    path = registry.root / key
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    create_exclusive(path, content, mode=0o644)
    return True


def _release_numbers(directory: Path) -> list[int]:
    return sorted(int(path.stem) for path in directory.glob("*.json") if path.stem.isdigit()) if directory.is_dir() else []
