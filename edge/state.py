"""What a device keeps between runs: its credentials, the registry key it pinned at enrollment and the key set it trusts now."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict

from edgelake.errors import UserError
from edgelake.files import replace_durably
from edgelake.signing import KeySet, KeySetRelease, load_public_key

CREDENTIALS = "credentials.json"
TRUSTED_KEYS = "trusted_keys.json"


class Credentials(BaseModel):
    """The device's identity, its API key and the pinned registry key (PEM)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_url: str
    device_id: str
    device_name: str
    device_token: str
    registry_public_key: str | None

    def pinned_key(self) -> Ed25519PublicKey:
        """The registry key every model must be signed by; UserError when none was pinned."""
        if self.registry_public_key is None:
            raise UserError(
                "no registry key is pinned: the registry had published nothing at enrollment; "
                "pin one with --registry-key (the registry's registry.pub)"
            )
        return load_public_key(self.registry_public_key.encode())


def state_dir(path: Path) -> Path:
    """``path`` created, readable by its owner only."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def load_credentials(directory: Path) -> Credentials | None:
    """The credentials stored in ``directory``, or None before enrollment."""
    path = directory / CREDENTIALS
    return Credentials.model_validate_json(path.read_bytes()) if path.is_file() else None


def save_credentials(directory: Path, credentials: Credentials) -> None:
    """Store the credentials atomically, mode 0600."""
    replace_durably(state_dir(directory) / CREDENTIALS, credentials.model_dump_json(indent=2).encode(), mode=0o600)


def adopted_key_set(directory: Path) -> KeySet | None:
    """The key-set release the device adopted last; None before any."""
    path = directory / TRUSTED_KEYS
    return KeySetRelease.model_validate_json(path.read_bytes()).parsed() if path.is_file() else None


def load_trusted_keys(directory: Path, credentials: Credentials) -> KeySet:
    """The key set the device adopted last; before any, the pinned key alone."""
    return adopted_key_set(directory) or KeySet.anchored(credentials.pinned_key())


def save_trusted_keys(directory: Path, release: KeySetRelease) -> None:
    """Keep ``release`` (already verified) as the key set to trust, atomically."""
    replace_durably(state_dir(directory) / TRUSTED_KEYS, release.model_dump_json().encode(), mode=0o600)
