"""The key-set chain: which releases a device adopts, and which manifests a key set trusts."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgelake.signing import (
    MANIFEST,
    SIGNATURE,
    FileEntry,
    KeySet,
    KeySetRefused,
    KeySetRelease,
    Manifest,
    TrustedKey,
    fingerprint,
    follow,
    follow_chain,
    sha256_file,
    sign,
    verify_files,
)

ROTATED = datetime(2026, 3, 1, tzinfo=UTC)


class Keys:
    """The anchor key, the key it is rotated to, and the chain a registry releases: bridge, then revocation of the anchor."""

    def __init__(self) -> None:
        self.first, self.second = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        self.anchor = KeySet.anchored(self.first.public_key())
        retired = self.anchor.keys[0].model_copy(update={"not_after": ROTATED})
        added = TrustedKey.of(self.second.public_key(), not_before=ROTATED)
        self.bridge = KeySetRelease.signed(KeySet(sequence=1, created=ROTATED, keys=(retired, added)), [self.first, self.second])
        self.rotated = follow(self.anchor, self.bridge)
        revoked = (retired.model_copy(update={"revoked_at": ROTATED + timedelta(days=1)}), added)
        self.revocation = KeySetRelease.signed(KeySet(sequence=2, created=ROTATED + timedelta(days=1), keys=revoked), [self.second])

    def release(self, sequence: int, keys: tuple[TrustedKey, ...], *signers: Ed25519PrivateKey, days: int = 2) -> KeySetRelease:
        return KeySetRelease.signed(KeySet(sequence=sequence, created=ROTATED + timedelta(days=days), keys=keys), list(signers))


@pytest.fixture
def keys() -> Keys:
    return Keys()


def test_the_bridge_release_signed_by_the_old_and_new_key_is_adopted(keys: Keys) -> None:
    assert [key.fingerprint for key in keys.rotated.keys] == [key.fingerprint for key in (*keys.anchor.keys, keys.rotated.keys[1])]
    assert keys.rotated.sequence == 1 and keys.rotated.keys[0].not_after == ROTATED


def test_a_device_offline_through_rotation_and_revocation_catches_up_in_order(keys: Keys) -> None:
    caught_up = follow_chain(keys.anchor, [keys.bridge, keys.revocation])
    assert caught_up.sequence == 2 and caught_up.keys[0].revoked_at is not None
    with pytest.raises(KeySetRefused, match="release 2 does not follow release 0"):
        follow(keys.anchor, keys.revocation)  # a release skipped


def test_a_release_signed_only_by_the_new_key_is_refused(keys: Keys) -> None:
    only_new = KeySetRelease.signed(keys.bridge.parsed(), [keys.second])
    with pytest.raises(KeySetRefused, match="not signed by a valid key of release 0: key .* is not in release 0"):
        follow(keys.anchor, only_new)


def test_a_release_adding_a_key_without_its_signature_is_refused(keys: Keys) -> None:
    without_possession = KeySetRelease.signed(keys.bridge.parsed(), [keys.first])
    with pytest.raises(KeySetRefused, match="adds key .* without its signature"):
        follow(keys.anchor, without_possession)


def test_a_release_forged_by_a_key_outside_the_trusted_set_is_refused(keys: Keys) -> None:
    intruder = Ed25519PrivateKey.generate()
    forged = keys.release(2, (*keys.rotated.keys, TrustedKey.of(intruder.public_key())), intruder)
    with pytest.raises(KeySetRefused, match="not signed by a valid key of release 1: key .* is not in release 1"):
        follow(keys.rotated, forged)


def test_a_release_signed_by_a_revoked_key_is_refused(keys: Keys) -> None:
    revoked = follow(keys.rotated, keys.revocation)
    intruder = Ed25519PrivateKey.generate()
    forged = keys.release(3, (*revoked.keys, TrustedKey.of(intruder.public_key())), keys.first, intruder)
    with pytest.raises(KeySetRefused, match="was revoked at"):
        follow(revoked, forged)


def test_a_key_cannot_revoke_itself_or_be_un_revoked_dropped_or_extended(keys: Keys) -> None:
    first, second = keys.rotated.keys
    self_revoking = keys.release(2, (first, second.model_copy(update={"revoked_at": ROTATED})), keys.second)
    with pytest.raises(KeySetRefused, match="revokes itself"):
        follow(keys.rotated, self_revoking)
    revoked = follow(keys.rotated, keys.revocation)
    for changed, message in [
        ((first, keys.revocation.parsed().keys[1]), "un-revokes key"),
        ((second,), "drops key"),
        ((revoked.keys[0].model_copy(update={"not_after": None}), second), "extends the validity"),
    ]:
        with pytest.raises(KeySetRefused, match=message):
            follow(revoked, keys.release(3, changed, keys.second, days=3))


def test_a_tampered_release_is_refused(keys: Keys) -> None:
    tampered = keys.bridge.model_copy(update={"key_set": keys.bridge.key_set.replace('"sequence":1', '"sequence":1 ')})
    with pytest.raises(KeySetRefused, match="key-set release 1 adds key .* without its signature"):
        follow(keys.anchor, tampered)


def signed_version(directory: Path, signer: Ed25519PrivateKey, created: datetime) -> Path:
    """A one-file version signed by ``signer``, created at ``created``."""
    directory.mkdir(parents=True)
    (directory / "model.tflite").write_bytes(b"TFL3" * 64)
    entry = FileEntry(sha256=sha256_file(directory / "model.tflite"), bytes=256)
    manifest = Manifest(
        name="vision", version=1, created=created, files={"model.tflite": entry}, metrics={}, lineage={},
        key_fingerprint=fingerprint(signer.public_key()),
    )
    (directory / MANIFEST).write_bytes(manifest.canonical_bytes())
    (directory / SIGNATURE).write_bytes(sign(manifest.canonical_bytes(), signer))
    return directory


def test_a_key_set_trusts_each_key_for_manifests_of_its_period_until_it_is_revoked(keys: Keys, tmp_path: Path) -> None:
    old = signed_version(tmp_path / "old", keys.first, ROTATED - timedelta(days=30))
    new = signed_version(tmp_path / "new", keys.second, ROTATED + timedelta(hours=1))
    late = signed_version(tmp_path / "late", keys.first, ROTATED + timedelta(hours=1))
    assert verify_files(old, keys.rotated) == [] and verify_files(new, keys.rotated) == []
    assert verify_files(old, keys.first.public_key()) == []  # one pinned key still works as before
    assert "is valid since always until 2026-03-01 00:00:00 UTC, not at 2026-03-01 01:00:00 UTC" in verify_files(late, keys.rotated)[0]
    revoked = follow(keys.rotated, keys.revocation)
    assert verify_files(new, revoked) == []
    [problem] = verify_files(old, revoked)
    assert problem.startswith(f"{MANIFEST} is signed by a key no longer trusted for it: key ") and "was revoked at" in problem
    unknown = signed_version(tmp_path / "unknown", Ed25519PrivateKey.generate(), ROTATED)
    assert verify_files(unknown, revoked)[1].startswith(f"{MANIFEST} names signing key")
    shutil.copyfile(old / SIGNATURE, new / SIGNATURE)
    assert verify_files(new, revoked)[0].startswith(f"{SIGNATURE} is not a valid signature of {MANIFEST} by the trusted key")
