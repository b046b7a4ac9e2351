"""The model registry on an ``s3://`` lake (moto's S3 server): publication made visible by the control plane's database
(PostgreSQL, shared by two nodes), each node reading through a mirror of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgelake.control_db import ControlDb, model_versions
from edgelake.lake.catalog import Lake
from edgelake.signing import MANIFEST, SIGNATURE, KeySet
from edgelake.training import registry
from edgelake.training.registry.layout import RegistryRefused

PER_NODE = 3


def run_files(directory: Path, seed: bytes) -> dict[str, Path]:
    """A training run's files: a .tflite, metrics and a folder."""
    (directory / "saved_model").mkdir(parents=True)
    (directory / "model.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + seed * 4000)
    (directory / "metrics.json").write_text(f'{{"seed": "{seed.decode()}"}}')
    (directory / "saved_model" / "saved_model.pb").write_bytes(b"\x08\x01" + seed * 2000)
    return {"model.tflite": directory / "model.tflite", "metrics.json": directory / "metrics.json", "saved_model": directory / "saved_model"}


def node(lake: str, database: str, directory: Path) -> registry.Registry:
    """One node's view of the registry: its own mirror and database connections."""
    return registry.Registry.of(Lake(lake, registry_mirror=directory / "registry"), ControlDb(database))


@pytest.fixture
def lake(object_store) -> str:
    return object_store.new_lake()


def test_two_nodes_publish_at_once_and_each_reads_every_version_whole_from_its_mirror(lake: str, postgres, tmp_path: Path) -> None:
    database, signer = postgres.new_database(), Ed25519PrivateKey.generate()
    nodes = [node(lake, database, tmp_path / name) for name in ("a", "b")]
    runs = {(n, i): run_files(tmp_path / f"run-{n}-{i}", f"{n}{i}".encode()) for n in range(2) for i in range(PER_NODE)}
    start, published = threading.Barrier(2), {}

    def publisher(n: int) -> None:
        start.wait()
        for i in range(PER_NODE):
            published[n, i] = registry.publish(nodes[n], "fraud", runs[n, i], metrics={"seed": n * 10 + i}, lineage={}, signer=signer)

    threads = [threading.Thread(target=publisher, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    numbers = sorted(version.version for version in published.values())
    assert numbers == list(range(1, 2 * PER_NODE + 1))
    assert all(version.manifest.version == version.version for version in published.values())
    for reader in nodes:
        assert registry.versions(reader, "fraud") == {v: "candidate" for v in numbers}
        assert [registry.verify(reader, "fraud", v) for v in numbers] == [[]] * len(numbers)
    for (n, i), version in published.items():  # the other node's mirror holds what this one published, byte for byte
        fetched = registry.get(nodes[1 - n], "fraud", version.version)
        assert fetched.path == tmp_path / ("b" if n == 0 else "a") / "registry" / "fraud" / str(version.version)
        assert (fetched.path / "model.tflite").read_bytes() == runs[n, i]["model.tflite"].read_bytes()
        assert (fetched.path / "saved_model" / "saved_model.pb").read_bytes() == (runs[n, i]["saved_model"] / "saved_model.pb").read_bytes()
    stored = nodes[0].store.keys("fraud") if nodes[0].store else []
    assert {key.split("/")[1] for key in stored} == {str(v) for v in numbers}
    assert not list((tmp_path / "a" / "registry" / "fraud").glob(".fetching-*"))


def test_a_publisher_killed_after_its_uploads_leaves_no_version_and_the_next_takes_another_number(
    lake: str, postgres, tmp_path: Path
) -> None:
    database = postgres.new_database()
    files = run_files(tmp_path / "run", b"k")
    script = textwrap.dedent(f"""
        from pathlib import Path
        from edgelake.control_db import ControlDb
        from edgelake.lake.catalog import Lake
        from edgelake.training import registry
        files = {{name: Path(path) for name, path in {({name: str(path) for name, path in files.items()})!r}.items()}}
        registry.publish_run(Lake({lake!r}, registry_mirror=Path({str(tmp_path / 'killed')!r})), ControlDb({database!r}),
                             Path({str(tmp_path / 'keys')!r}), "fraud", files, metrics={{}}, lineage={{}})
    """)
    survivor = node(lake, database, tmp_path / "survivor")
    assert survivor.store is not None
    with survivor.db.transaction() as connection:  # the stage book's lock: the publisher uploads everything, then waits here
        survivor.db.lock(connection, "registry:fraud")
        publisher = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
        deadline = time.monotonic() + 60
        while survivor.store.read(f"fraud/1/{SIGNATURE}") is None:
            assert publisher.poll() is None and time.monotonic() < deadline, "the publisher never uploaded its signed manifest"
            time.sleep(0.05)
        publisher.send_signal(signal.SIGKILL)
        publisher.wait(10)

    assert survivor.store.read(f"fraud/1/{MANIFEST}") is not None  # every object is there, signed
    assert registry.models(survivor) == []  # yet no version is
    with pytest.raises(registry.UnknownModel, match="no model 'fraud'"):
        registry.get(survivor, "fraud", 1)

    signer = registry.ensure_signing_key(tmp_path / "keys", Lake(lake, registry_mirror=tmp_path / "survivor" / "registry"))
    again = registry.publish(survivor, "fraud", files, metrics={}, lineage={}, signer=signer)
    assert again.version == again.manifest.version == 2
    assert registry.versions(survivor, "fraud") == {2: "candidate"}
    assert registry.signed_by(survivor, again.manifest.key_fingerprint) == [("fraud", 2)]
    with survivor.db.transaction() as connection:
        rows = connection.execute(sa.select(model_versions.c.version, model_versions.c.published.is_not(None))).all()
    assert sorted(tuple(row) for row in rows) == [(1, False), (2, True)]


def test_a_version_whose_object_differs_from_its_manifest_is_refused_and_never_mirrored(lake: str, object_store, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'control.sqlite'}"
    writer, reader = node(lake, database, tmp_path / "writer"), node(lake, database, tmp_path / "reader")
    signer = Ed25519PrivateKey.generate()
    registry.publish(writer, "fraud", run_files(tmp_path / "run", b"t"), metrics={}, lineage={}, signer=signer)
    bucket, prefix = lake.removeprefix("s3://").split("/", 1)
    object_store.client().put_object(Bucket=bucket, Key=f"{prefix}/models/fraud/1/model.tflite", Body=b"\x1c\x00\x00\x00TFL3 tampered")

    with pytest.raises(RegistryRefused, match="model.tflite does not match its manifest's sha256"):
        registry.get(reader, "fraud", 1)
    assert registry.verify(reader, "fraud", 1) == [f"fraud v1 in {lake}/models: model.tflite does not match its manifest's sha256"]
    assert not (tmp_path / "reader" / "registry" / "fraud" / "1").exists()
    assert not list((tmp_path / "reader" / "registry" / "fraud").glob(".fetching-*"))


def test_key_set_releases_on_object_storage_reach_every_node(lake: str, postgres, tmp_path: Path) -> None:
    database = postgres.new_database()
    trainer_lake = Lake(lake, registry_mirror=tmp_path / "trainer" / "registry")
    trainer, api = registry.Registry.of(trainer_lake, ControlDb(database)), node(lake, database, tmp_path / "api")
    keys = tmp_path / "keys"
    registry.publish(trainer, "fraud", run_files(tmp_path / "run", b"r"), metrics={}, lineage={}, signer=registry.ensure_signing_key(keys, trainer_lake))
    old = registry.current_fingerprint(keys)
    assert registry.key_set_sequence(api) is None and registry.key_set(api).sequence == 0

    rotated = registry.rotate(keys, trainer_lake, trainer.db)
    assert registry.key_set_sequence(api) == 1
    assert registry.key_set(api) == rotated
    resigned = registry.resign(trainer, "fraud", 1, registry.ensure_signing_key(keys, trainer_lake))
    revoked = registry.revoke(keys, trainer_lake, trainer.db, str(old))
    assert [KeySet.model_validate_json(release.key_set).sequence for release in registry.key_releases(api)] == [1, 2]
    assert registry.key_set(api) == revoked
    assert "was revoked at" in registry.verify(api, "fraud", 1)[0]
    assert registry.verify(api, "fraud", resigned.version) == []
    assert (tmp_path / "api" / "registry" / registry.KEY_SETS / "2.json").is_file()  # copied into the API's mirror
