"""Who the device is and which keys it trusts: its credentials, the enrollment that makes them, and the catch-up
with the registry's key-set releases."""

from __future__ import annotations

import logging
import platform
import threading
from datetime import UTC, datetime
from pathlib import Path

from edgelake.edge.client import CloudClient, CloudRefused, CloudUnreachable
from edgelake.edge.options import AgentOptions
from edgelake.edge.state import Credentials, load_credentials, save_credentials, save_trusted_keys
from edgelake.edge.updates import Report
from edgelake.device_api import AgentEvent, EnrollRequest
from edgelake.errors import UserError
from edgelake.retry import retrying
from edgelake.signing import KeySet, KeySetRefused, follow, load_public_key, public_key_pem

logger = logging.getLogger(__name__)


class NotEnrolled(UserError):
    """The device has no credentials and no usable enrollment token."""


def enrolled(options: AgentOptions, directory: Path, stop: threading.Event, record: Report) -> Credentials:
    """The credentials kept in ``directory`` (pinning ``--registry-key`` now if they pinned none), else those of a new enrollment.

    Enrolling waits out an API that cannot be reached, backing off up to 30 s, until ``stop`` is set.
    """
    credentials = load_credentials(directory)
    pinned = _pinned_out_of_band(options.registry_key)
    if credentials is None:
        credentials = _enroll(options, directory, pinned, stop, record)
    elif pinned is not None and credentials.registry_public_key is None:
        credentials = credentials.model_copy(update={"registry_public_key": pinned})
        save_credentials(directory, credentials)
    return credentials


def _enroll(options: AgentOptions, directory: Path, pinned: str | None, stop: threading.Event, record: Report) -> Credentials:
    if not options.enrollment_token:
        raise NotEnrolled(f"{directory} holds no credentials: give an enrollment token (--enrollment-token or EDGELAKE_EDGE_ENROLLMENT_TOKEN)")
    hardware = {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version()}
    request = EnrollRequest(enrollment_token=options.enrollment_token, device_name=options.device_name, hardware=hardware)
    client = CloudClient(options.api_url)
    try:
        enrollment = retrying(lambda: client.enroll(request), "enrollment", retry_on=CloudUnreachable, logger=logger, max_s=30.0, stop=stop)
    except CloudRefused as refused:
        raise NotEnrolled(f"the API refused the enrollment: {refused}") from None
    finally:
        client.close()
    key = enrollment.registry_public_key
    if pinned is not None and key is not None and public_key_pem(load_public_key(key.encode())) != pinned.encode():
        raise NotEnrolled("the registry key the API handed out differs from the one given with --registry-key; refusing to pin it")
    credentials = Credentials(
        api_url=options.api_url, device_id=enrollment.device_id, device_name=options.device_name,
        device_token=enrollment.device_token, registry_public_key=pinned or key,
    )
    save_credentials(directory, credentials)
    record(AgentEvent(kind="enrolled", time=datetime.now(UTC), detail=enrollment.device_id))
    logger.info("enrolled as %s", enrollment.device_id)
    return credentials


def _pinned_out_of_band(registry_key: Path | None) -> str | None:
    if registry_key is None:
        return None
    try:
        return public_key_pem(load_public_key(registry_key.read_bytes())).decode()
    except (OSError, ValueError) as error:
        raise UserError(f"--registry-key {registry_key}: not a readable PEM public key ({error})") from None


class TrustedKeys:
    """The key set the device trusts, kept in ``directory`` and brought up to the registry's newest release."""

    def __init__(self, directory: Path, trusted: KeySet, record: Report) -> None:
        self.directory = directory
        self.trusted = trusted
        self._record = record
        self._refusal: str | None = None  # the last release refused, reported once

    def catch_up(self, newest: int | None, client: CloudClient) -> KeySet | None:
        """Adopt, in order, each release up to ``newest`` that follows the set trusted so far; the set adopted, None if none was."""
        trusted = self.trusted
        if newest is None or newest <= trusted.sequence:
            return None
        try:
            releases = client.fetch_key_releases(trusted.sequence)
        except (CloudUnreachable, CloudRefused) as error:
            logger.info("key-set releases not fetched yet: %s", error)
            return None
        adopted = trusted
        for release in releases:
            try:
                adopted = follow(adopted, release)
            except KeySetRefused as refused:
                self._refuse(str(refused))
                break
            save_trusted_keys(self.directory, release)
            self._record(AgentEvent(kind="keys_adopted", time=datetime.now(UTC), detail=f"key-set release {adopted.sequence}"))
        if adopted is trusted:
            return None
        self.trusted = adopted
        return adopted

    def _refuse(self, reason: str) -> None:
        if reason == self._refusal:
            return
        self._refusal = reason
        logger.warning("key-set release refused: %s", reason)
        self._record(AgentEvent(kind="keys_refused", time=datetime.now(UTC), detail=reason[:2000]))
