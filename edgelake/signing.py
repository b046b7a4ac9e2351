"""Signed model manifests: the contract between the registry, the API and edge devices.

A published model version is a directory holding its artifacts, ``manifest.json`` (canonical
JSON naming every artifact with its sha256 and size) and ``manifest.sig`` (base64 of the
Ed25519 signature of the manifest's exact bytes). Public keys travel as PEM
(SubjectPublicKeyInfo). This module is light on purpose: an edge device verifies a
downloaded version with :func:`verify_files` and needs only pydantic and cryptography.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
RESERVED = frozenset({MANIFEST, SIGNATURE})

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
ModelName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
# A relative POSIX path whose parts are plain names: no '..', no hidden files, no absolute paths.
ArtifactName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$")]

_CHUNK = 1 << 20


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


def verify_files(
    directory: Path,
    public_key: Ed25519PublicKey,
    *,
    name: str | None = None,
    version: int | None = None,
    only: Collection[str] | None = None,
) -> list[str]:
    """Every way the version in ``directory`` differs from what its signed manifest promises.

    An empty list means: the manifest is signed by ``public_key``, it names ``name`` and
    ``version`` when given, and the directory holds exactly its files with their sizes and sha256.
    With ``only`` (what a device downloads of a version), exactly those of its files.
    """
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return [f"{MANIFEST} is missing"]
    raw = manifest_path.read_bytes()
    problems = _signature_problems(directory / SIGNATURE, raw, public_key)
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return [*problems, f"{MANIFEST} does not parse: {where + ': ' if where else ''}{first['msg']}"]
    if manifest.key_fingerprint != fingerprint(public_key):
        problems.append(f"{MANIFEST} names signing key {manifest.key_fingerprint[:16]}, not the trusted key {fingerprint(public_key)[:16]}")
    if name is not None and manifest.name != name:
        problems.append(f"{MANIFEST} is for model '{manifest.name}', not '{name}'")
    if version is not None and manifest.version != version:
        problems.append(f"{MANIFEST} is for version {manifest.version}, not {version}")
    expected = manifest.files
    if only is not None:
        problems += [f"{file}: not in the manifest" for file in sorted(set(only) - expected.keys())]
        expected = {file: entry for file, entry in expected.items() if file in only}
    return problems + _file_problems(directory, expected)


def _signature_problems(path: Path, manifest_bytes: bytes, public_key: Ed25519PublicKey) -> list[str]:
    if not path.is_file():
        return [f"{SIGNATURE} is missing"]
    try:
        signature = base64.b64decode(path.read_bytes().strip(), validate=True)
        public_key.verify(signature, manifest_bytes)
    except (binascii.Error, InvalidSignature):
        return [f"{SIGNATURE} is not a valid signature of {MANIFEST} by the trusted key {fingerprint(public_key)[:16]}"]
    return []


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
