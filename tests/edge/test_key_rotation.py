"""Signing-key rotation and revocation with real agent processes, a real API server and real TFLite models.

A device enrolled under the first key follows a rotation without re-enrollment or reinstall,
refuses a version signed by a revoked key and a forged key-set release, and a device that was
offline through rotation and revocation catches up by walking the chain when it starts again.
"""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgelake.control_db import model_versions

from edgelake.edge.state import CREDENTIALS, adopted_key_set
from edgelake.signing import MANIFEST, SIGNATURE, KeySet, KeySetRelease, Manifest, TrustedKey, canonical_json, fingerprint, sign
from edgelake.training.registry.stages import stage_book
from tests.edge.conftest import VISION, AgentProcess, Cloud, main_python, start_agent, wait_for
from edgelake.training import registry


def trusted_sequence(agent: AgentProcess) -> int:
    adopted = adopted_key_set(agent.state_dir)
    return 0 if adopted is None else adopted.sequence


def running_the_first_version(cloud: Cloud, vision_run, name: str, directory: Path) -> tuple[int, Ed25519PrivateKey, AgentProcess]:
    """A first version published (signed by the registry's first key) and active on a new agent: its number, that key, the agent."""
    first = cloud.publish(vision_run.files, vision_run.extra)
    old_key = registry.ensure_signing_key(key_dir(cloud), cloud.lake)
    agent = start_agent(main_python(), cloud, name, directory, "--fps", "20", "--heartbeat-s", "0.3")
    try:
        wait_for(lambda: agent.active() == first, f"v{first} active", agent=agent)
    except BaseException:
        agent.kill()
        raise
    return first, old_key, agent


def key_dir(cloud: Cloud) -> Path:
    return cloud.settings.data_dir / registry.KEYS_DIR


def forge_production(cloud: Cloud, copy_of: int, signer: Ed25519PrivateKey, created_like: int) -> int:
    """A new version copied from ``copy_of``, signed by ``signer`` and dated like ``created_like``, put in production behind
    the registry's back (an attacker holding the key and write access to the lake and the control plane); its number."""
    version = max(registry.versions(cloud.models, VISION)) + 1
    target = cloud.version_dir(version)
    target.mkdir()
    source = registry.get(cloud.models, VISION, copy_of).manifest
    for file in source.files:
        (target / file).parent.mkdir(parents=True, exist_ok=True)
        (target / file).write_bytes((cloud.version_dir(copy_of) / file).read_bytes())
    created = registry.get(cloud.models, VISION, created_like).manifest.created
    manifest = Manifest.model_validate({**source.model_dump(), "version": version, "created": created, "key_fingerprint": fingerprint(signer.public_key())})
    (target / MANIFEST).write_bytes(manifest.canonical_bytes())
    (target / SIGNATURE).write_bytes(sign(manifest.canonical_bytes(), signer))
    with cloud.models.db.transaction() as connection:  # and write access to the control plane
        connection.execute(sa.insert(model_versions).values(model=VISION, version=version, reserved=created, published=created))
    with stage_book(cloud.models, VISION) as book:
        book.move(version, "production", actor="intruder", reason="forged")
    return version


def test_a_device_follows_a_rotation_and_refuses_what_the_revoked_key_signs(cloud: Cloud, vision_run, tmp_path: Path) -> None:
    files, extra = vision_run.files, vision_run.extra
    first, old_key, agent = running_the_first_version(cloud, vision_run, "rotating", tmp_path / "device")
    try:
        credentials = (agent.state_dir / CREDENTIALS).read_bytes()

        registry.rotate(key_dir(cloud), cloud.lake, cloud.models.db)
        second = cloud.publish(files, extra)
        assert registry.get(cloud.models, VISION, second).manifest.key_fingerprint != fingerprint(old_key.public_key())
        wait_for(lambda: agent.active() == second, f"v{second}, signed by the new key, active", agent=agent)
        assert trusted_sequence(agent) == 1
        assert (agent.state_dir / CREDENTIALS).read_bytes() == credentials  # no re-enrollment
        assert agent.process.poll() is None  # the same process: no reinstall, no restart

        registry.revoke(key_dir(cloud), cloud.lake, cloud.models.db, fingerprint(old_key.public_key()))
        wait_for(lambda: trusted_sequence(agent) == 2, "the revocation adopted", agent=agent)
        forged = forge_production(cloud, second, old_key, created_like=first)  # dated while the old key was valid
        wait_for(lambda: str(forged) in agent.installed().get("refused", {}), f"v{forged}, signed by the revoked key, refused", agent=agent)
        assert "was revoked at" in agent.installed()["refused"][str(forged)]
        assert agent.active() == second
        assert "was revoked at" in registry.verify(cloud.models, VISION, forged)[0]  # and `edgelake models verify` says so

        intruder = Ed25519PrivateKey.generate()
        trusted = registry.key_set(cloud.models)
        forged_keys = KeySet(sequence=3, created=trusted.created, keys=(*trusted.keys, TrustedKey.of(intruder.public_key())))
        release = KeySetRelease.signed(forged_keys, [old_key, intruder])  # the revoked key vouching for the intruder's
        (cloud.root / registry.KEY_SETS / "3.json").write_bytes(canonical_json(release.model_dump(mode="json")))
        log = agent.state_dir / "agent.log"
        wait_for(lambda: "key-set release refused" in log.read_text(), "the forged key-set release refused", agent=agent)
        assert "key-set release 3 is not signed by a valid key of release 2" in log.read_text()
        assert trusted_sequence(agent) == 2 and agent.active() == second
    finally:
        agent.kill()


def test_a_device_offline_through_rotation_and_revocation_catches_up(cloud: Cloud, vision_run, tmp_path: Path) -> None:
    files, extra = vision_run.files, vision_run.extra
    first, old_key, agent = running_the_first_version(cloud, vision_run, "offline", tmp_path / "device")
    agent.kill()
    credentials = (agent.state_dir / CREDENTIALS).read_bytes()

    registry.rotate(key_dir(cloud), cloud.lake, cloud.models.db)
    second = cloud.publish(files, extra)
    registry.revoke(key_dir(cloud), cloud.lake, cloud.models.db, fingerprint(old_key.public_key()))

    again = start_agent(main_python(), cloud, "offline", agent.state_dir, "--fps", "20", "--heartbeat-s", "0.3")
    try:
        wait_for(lambda: again.active() == second, f"v{second}, signed by the new key, active after catching up", agent=again)
        assert trusted_sequence(again) == 2
        assert "was revoked at" in again.installed()["refused"][str(first)]  # the installed old version is refused now
        assert (again.state_dir / CREDENTIALS).read_bytes() == credentials
        events = [json.loads(line) for line in (again.state_dir / "agent.log").read_text().splitlines() if line.startswith("{")]
        assert sum(event.get("msg", "").startswith("keys_adopted") for event in events) == 2
    finally:
        again.kill()
