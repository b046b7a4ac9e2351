"""Signed model manifests: the contract between the registry, the API and edge devices.

A published model version is a directory holding its artifacts, ``manifest.json`` (canonical
JSON naming every artifact with its sha256 and size) and ``manifest.sig`` (base64 of the
Ed25519 signature of the manifest's exact bytes). Public keys travel as PEM
(SubjectPublicKeyInfo). This module is light on purpose: an edge device verifies a
downloaded version with :func:`verify_files` and needs only pydantic and cryptography.

Which keys may sign is a :class:`KeySet`. Its chain starts at the anchor (the key a device
pins at enrollment, sequence 0); each :class:`KeySetRelease` after it holds the whole next
set, signed by a key the previous set trusts and by every key it adds (:func:`follow`).
A manifest verifies when the key it names is in the set, not revoked, and was valid when
the manifest was created.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from edgelake.errors import UserError

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
RESERVED = frozenset({MANIFEST, SIGNATURE})

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
ModelName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
# A relative POSIX path whose parts are plain names: no '..', no hidden files, no absolute paths.
ArtifactName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$")]

_CHUNK = 1 << 20
_SINCE_ALWAYS = datetime(1970, 1, 1, tzinfo=UTC)


class FileEntry(BaseModel):
    """One artifact as the manifest pins it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: Sha256
    bytes: int = Field(ge=0)


class Manifest(BaseModel):
    """What a model version is made of, what it scored and what it was trained on."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    format: Literal[1] = 1
    name: ModelName
    version: int = Field(ge=1)
    created: AwareDatetime
    files: dict[ArtifactName, FileEntry]
    metrics: dict[str, float]
    lineage: dict[str, int] = Field(description="Lake table name -> Delta version the model was trained on.")
    feature_version: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    key_fingerprint: Sha256 = Field(description="sha256 of the raw Ed25519 public key that signs this manifest.")

    def canonical_bytes(self) -> bytes:
        """The manifest as it is written and signed: sorted keys, no insignificant whitespace."""
        return canonical_json(self.model_dump(mode="json"))


def canonical_json(value: Any) -> bytes:
    """``value`` as canonical JSON bytes: sorted keys, compact separators, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's contents."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """The hex sha256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    """The public key as PEM (SubjectPublicKeyInfo), the form it is published and pinned in."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM; ValueError for anything else."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"expected an Ed25519 public key, got {type(key).__name__}")
    return key


def sign(manifest_bytes: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """The content of ``manifest.sig`` for these exact manifest bytes."""
    return base64.b64encode(private_key.sign(manifest_bytes))


class KeySetRefused(UserError, ValueError):
    """A key-set release that does not prove to follow the key set trusted so far."""


class TrustedKey(BaseModel):
    """One signing key of a key set and when it may vouch for a manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fingerprint: Sha256
    public_key: str = Field(description="PEM (SubjectPublicKeyInfo) Ed25519 public key.")
    not_before: AwareDatetime | None = Field(None, description="Manifests created earlier are not its to sign; none: since always.")
    not_after: AwareDatetime | None = Field(None, description="Manifests created later are not its to sign; none: no end.")
    revoked_at: AwareDatetime | None = Field(None, description="When it was revoked: nothing it signed is trusted any more.")

    @model_validator(mode="after")
    def _consistent(self) -> TrustedKey:
        if fingerprint(self.key()) != self.fingerprint:
            raise ValueError(f"fingerprint {self.fingerprint[:16]} is not the public key's")
        if self.not_before is not None and self.not_after is not None and self.not_after < self.not_before:
            raise ValueError("not_after is before not_before")
        return self

    @classmethod
    def of(cls, public_key: Ed25519PublicKey, not_before: datetime | None = None, not_after: datetime | None = None) -> TrustedKey:
        """A valid key for ``public_key`` over the given period."""
        return cls(fingerprint=fingerprint(public_key), public_key=public_key_pem(public_key).decode(), not_before=not_before, not_after=not_after)

    def key(self) -> Ed25519PublicKey:
        """The public key itself."""
        return load_public_key(self.public_key.encode())

    def refusal_at(self, when: datetime) -> str | None:
        """Why this key cannot vouch for something created at ``when``; None when it can."""
        if self.revoked_at is not None:
            return f"key {self.fingerprint[:16]} was revoked at {self.revoked_at:%Y-%m-%d %H:%M:%S} UTC"
        if (self.not_before is not None and when < self.not_before) or (self.not_after is not None and when > self.not_after):
            return f"key {self.fingerprint[:16]} is valid {self.period()}, not at {when:%Y-%m-%d %H:%M:%S} UTC"
        return None

    def period(self) -> str:
        """The validity period in words."""
        start = "since always" if self.not_before is None else f"from {self.not_before:%Y-%m-%d %H:%M:%S} UTC"
        return start + ("" if self.not_after is None else f" until {self.not_after:%Y-%m-%d %H:%M:%S} UTC")


class KeySet(BaseModel):
    """The keys a registry signs with, as of one release of its key-set chain."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = 1
    sequence: int = Field(ge=0, description="0 for the anchor alone; each release adds one.")
    created: AwareDatetime
    keys: tuple[TrustedKey, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> KeySet:
        if len({key.fingerprint for key in self.keys}) != len(self.keys):
            raise ValueError("a key is listed twice")
        return self

    @classmethod
    def anchored(cls, public_key: Ed25519PublicKey) -> KeySet:
        """The set before any release: the anchor key alone, valid since always."""
        return cls(sequence=0, created=_SINCE_ALWAYS, keys=(TrustedKey.of(public_key),))

    def get(self, key_fingerprint: str) -> TrustedKey | None:
        """The key with this fingerprint, if the set holds it."""
        return next((key for key in self.keys if key.fingerprint == key_fingerprint), None)

    def unrevoked(self) -> list[TrustedKey]:
        """The keys not revoked."""
        return [key for key in self.keys if key.revoked_at is None]

    def canonical_bytes(self) -> bytes:
        """The set as it is released and signed."""
        return canonical_json(self.model_dump(mode="json"))


class KeySetRelease(BaseModel):
    """One link of the chain: a key set's exact bytes and the signatures that vouch for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_set: str = Field(description="The KeySet as canonical JSON text, exactly as signed.")
    signatures: dict[Sha256, str] = Field(description="Key fingerprint -> base64 Ed25519 signature of key_set's bytes.")

    @classmethod
    def signed(cls, key_set: KeySet, signers: Sequence[Ed25519PrivateKey]) -> KeySetRelease:
        """``key_set`` signed by each of ``signers``."""
        raw = key_set.canonical_bytes()
        return cls(key_set=raw.decode(), signatures={fingerprint(signer.public_key()): sign(raw, signer).decode() for signer in signers})

    def parsed(self) -> KeySet:
        """The key set it carries, not yet verified; KeySetRefused when it does not parse."""
        try:
            return KeySet.model_validate_json(self.key_set)
        except ValidationError as error:
            raise KeySetRefused(f"a key-set release does not parse: {error.errors()[0]['msg']}") from None

    def signers(self, candidates: KeySet) -> set[str]:
        """The fingerprints of the keys of ``candidates`` whose signature of the set is valid."""
        raw = self.key_set.encode()
        return {key.fingerprint for key in candidates.keys if _signs(key.key(), self.signatures.get(key.fingerprint, ""), raw)}


def follow(trusted: KeySet, release: KeySetRelease) -> KeySet:
    """The key set ``release`` carries, once it proves to be the next one after ``trusted``; KeySetRefused says why not.

    It must be numbered next, keep every trusted key (only revoking it or ending its validity
    sooner), be signed by a key ``trusted`` holds valid and the new set leaves unrevoked, and
    be signed by every key it adds (proof that their holder made the release).
    """
    new = release.parsed()
    where = f"key-set release {new.sequence}"
    if new.sequence != trusted.sequence + 1:
        raise KeySetRefused(f"{where} does not follow release {trusted.sequence}")
    if new.created < trusted.created:
        raise KeySetRefused(f"{where} is dated before release {trusted.sequence}")
    for old in trusted.keys:
        problem = _changed(old, new.get(old.fingerprint))
        if problem:
            raise KeySetRefused(f"{where} {problem}")
    signed = release.signers(new)
    unproven = [key.fingerprint[:16] for key in new.keys if trusted.get(key.fingerprint) is None and key.fingerprint not in signed]
    if unproven:
        raise KeySetRefused(f"{where} adds key {', '.join(unproven)} without its signature")
    refusals = [_refusal_to_vouch(trusted, new, key_fingerprint) for key_fingerprint in sorted(signed)]
    if all(refusals):
        why = "; ".join(refusal for refusal in refusals if refusal) or "it carries no valid signature"
        raise KeySetRefused(f"{where} is not signed by a valid key of release {trusted.sequence}: {why}")
    return new


def follow_chain(trusted: KeySet, releases: Sequence[KeySetRelease]) -> KeySet:
    """The key set at the end of ``releases``, each following the one before from ``trusted``."""
    for release in releases:
        trusted = follow(trusted, release)
    return trusted


def _changed(old: TrustedKey, new: TrustedKey | None) -> str | None:
    """How ``new`` changes ``old`` beyond what a release may: revoke it, or end its validity sooner."""
    if new is None:
        return f"drops key {old.fingerprint[:16]}"
    if (new.public_key, new.not_before) != (old.public_key, old.not_before):
        return f"changes key {old.fingerprint[:16]}"
    if old.revoked_at is not None and new.revoked_at != old.revoked_at:
        return f"un-revokes key {old.fingerprint[:16]}"
    if old.not_after is not None and (new.not_after is None or new.not_after > old.not_after):
        return f"extends the validity of key {old.fingerprint[:16]}"
    return None


def _refusal_to_vouch(trusted: KeySet, new: KeySet, key_fingerprint: str) -> str | None:
    """Why this signer of ``new`` cannot vouch for it; None when ``trusted`` holds it valid at ``new``'s creation and ``new`` keeps it unrevoked."""
    old, kept = trusted.get(key_fingerprint), new.get(key_fingerprint)
    if old is None:
        return f"key {key_fingerprint[:16]} is not in release {trusted.sequence}"
    refusal = old.refusal_at(new.created)
    if refusal is None and kept is not None and kept.revoked_at is not None:
        return f"key {key_fingerprint[:16]} revokes itself"
    return refusal


def _signs(public_key: Ed25519PublicKey, signature: str, data: bytes) -> bool:
    try:
        public_key.verify(base64.b64decode(signature, validate=True), data)
    except (binascii.Error, InvalidSignature, ValueError):
        return False
    return True


Trusted = Ed25519PublicKey | KeySet


def verify_files(
    directory: Path,
    trusted: Trusted,
    *,
    name: str | None = None,
    version: int | None = None,
    only: Collection[str] | None = None,
) -> list[str]:
    """Every way the version in ``directory`` differs from what its signed manifest promises.

    An empty list means: the manifest is signed by the key it names, which ``trusted`` (one
    key, or a key set) holds unrevoked and valid at the manifest's creation; it names ``name``
    and ``version`` when given; and the directory holds exactly its files with their sizes and
    sha256. With ``only`` (what a device downloads of a version), exactly those of its files.
    """
    key_set = trusted if isinstance(trusted, KeySet) else KeySet.anchored(trusted)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return [f"{MANIFEST} is missing"]
    raw = manifest_path.read_bytes()
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        problems = _signature_problems(directory / SIGNATURE, raw, key_set.unrevoked())
        return [*problems, f"{MANIFEST} does not parse: {where + ': ' if where else ''}{first['msg']}"]
    problems = _signer_problems(directory / SIGNATURE, raw, manifest, key_set)
    if name is not None and manifest.name != name:
        problems.append(f"{MANIFEST} is for model '{manifest.name}', not '{name}'")
    if version is not None and manifest.version != version:
        problems.append(f"{MANIFEST} is for version {manifest.version}, not {version}")
    expected = manifest.files
    if only is not None:
        problems += [f"{file}: not in the manifest" for file in sorted(set(only) - expected.keys())]
        expected = {file: entry for file, entry in expected.items() if file in only}
    return problems + _file_problems(directory, expected)


def _signer_problems(path: Path, manifest_bytes: bytes, manifest: Manifest, key_set: KeySet) -> list[str]:
    """Whether the key the manifest names signed it, and may have: in the set, unrevoked, valid at its creation."""
    named = key_set.get(manifest.key_fingerprint)
    if named is None:
        usable = key_set.unrevoked()
        return [
            *_signature_problems(path, manifest_bytes, usable),
            f"{MANIFEST} names signing key {manifest.key_fingerprint[:16]}, not {_trusted_keys(usable)}",
        ]
    problems = _signature_problems(path, manifest_bytes, [named])
    refusal = named.refusal_at(manifest.created)
    if not problems and refusal is not None:
        problems.append(f"{MANIFEST} is signed by a key no longer trusted for it: {refusal}")
    return problems


def _signature_problems(path: Path, manifest_bytes: bytes, keys: Sequence[TrustedKey]) -> list[str]:
    if not path.is_file():
        return [f"{SIGNATURE} is missing"]
    signature = path.read_bytes().strip().decode("ascii", errors="replace")
    if any(_signs(key.key(), signature, manifest_bytes) for key in keys):
        return []
    return [f"{SIGNATURE} is not a valid signature of {MANIFEST} by {_trusted_keys(keys)}"]


def _trusted_keys(keys: Sequence[TrustedKey]) -> str:
    if len(keys) == 1:
        return f"the trusted key {keys[0].fingerprint[:16]}"
    return "any trusted key" + (f" ({', '.join(key.fingerprint[:16] for key in keys)})" if keys else "")


def _file_problems(directory: Path, expected: dict[str, FileEntry]) -> list[str]:
    present = {path.relative_to(directory).as_posix() for path in directory.rglob("*") if path.is_file()} - RESERVED
    problems = [f"{name}: missing" for name in sorted(expected.keys() - present)]
    problems += [f"{name}: not in the manifest" for name in sorted(present - expected.keys())]
    for name in sorted(expected.keys() & present):
        path, entry = directory / name, expected[name]
        if (size := path.stat().st_size) != entry.bytes:
            problems.append(f"{name}: {size} bytes, the manifest says {entry.bytes}")
        elif sha256_file(path) != entry.sha256:
            problems.append(f"{name}: sha256 differs from the manifest")
    return problems
