"""``/v1/models``: the registry's models and versions, and artifacts served only as the signed manifest lists them."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2
import pytest
from pydantic import SecretStr

from edgelake.api.app import create_app
from edgelake.api.keys import KeyStore
from edgelake.control_db import ControlDb
from edgelake.signing import MANIFEST, SIGNATURE
from edgelake.training import registry
from support import isolated_settings
from tests.api.conftest import Serve, publish_model

if TYPE_CHECKING:
    from tests.api.conftest import Deployment


def test_models_lists_every_model_with_its_versions_and_stages(deployment: Deployment) -> None:
    with deployment.client("device") as client:
        models = client.get("/v1/models").json()
    assert models == [{"name": "fraud", "production": None, "versions": [{"version": 1, "stage": "candidate"}]}]


def test_a_model_shows_each_version_with_its_manifest(deployment: Deployment) -> None:
    with deployment.client("analyst") as client:
        model = client.get("/v1/models/fraud").json()
    (version,) = model["versions"]
    manifest = deployment.model.manifest
    assert (version["version"], version["stage"], version["metrics"], version["lineage"]) == (1, "candidate", {"auprc": 0.8}, {"silver_transactions": 1})
    assert version["files"] == {name: entry.model_dump() for name, entry in manifest.files.items()}
    assert version["key_fingerprint"] == manifest.key_fingerprint


@pytest.mark.parametrize("file", ["model.tflite", "metrics.json", "plots/roc.png"])
def test_an_artifact_streams_with_the_manifest_sha256_and_signature(deployment: Deployment, file: str) -> None:
    path = deployment.model.path / file
    with deployment.client("device") as client:
        response = client.get(f"/v1/models/fraud/1/artifacts/{file}")
    assert response.status_code == 200
    assert response.content == path.read_bytes()
    assert response.headers["x-content-sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert response.headers["x-manifest-signature"] == (deployment.model.path / SIGNATURE).read_text().strip()


def test_the_manifest_comes_exactly_as_signed(deployment: Deployment) -> None:
    with deployment.client("device") as client:
        response = client.get("/v1/models/fraud/1/manifest")
    assert response.content == (deployment.model.path / MANIFEST).read_bytes()
    public_key = registry.registry_public_key(registry.Registry.from_settings(deployment.settings))
    public_key.verify(base64.b64decode(response.headers["x-manifest-signature"]), response.content)  # raises if it does not verify


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/nope",
        "/v1/models/fraud/2/manifest",
        "/v1/models/fraud/2/artifacts/model.tflite",
        "/v1/models/fraud/1/artifacts/missing.bin",
        "/v1/models/fraud/1/artifacts/manifest.sig",  # beside the artifacts, but not one of them
        "/v1/models/fraud/1/artifacts/plots",
        "/v1/models/fraud/1/artifacts/..%2f..%2fregistry.pub",
        "/v1/models/fraud/1/artifacts/plots/..%2F..%2F..%2Fregistry.pub",
        "/v1/models/fraud/1/artifacts/metrics.json%00",  # a NUL byte was a 500
        "/v1/models/fraud/1/artifacts/%00",
        "/v1/models/fraud/1/artifacts/" + "a" * 4096,
    ],
)
def test_unknown_models_versions_and_files_are_404_and_nothing_outside_the_manifest_is_served(deployment: Deployment, path: str) -> None:
    with deployment.client("device") as client:
        response = client.get(path)
    assert response.status_code == 404 and response.headers["content-type"] == "application/problem+json", response.text


@pytest.mark.parametrize("path", ["/v1/models/Bad..Name", "/v1/models/fraud/0/manifest", "/v1/models/fraud/x/manifest"])
def test_malformed_names_and_versions_are_422(deployment: Deployment, path: str) -> None:
    with deployment.client("device") as client:
        response = client.get(path)
    assert response.status_code == 422 and response.json()["errors"]


def test_a_registry_on_object_storage_is_served_by_a_replica_from_its_own_mirror(kafka, object_store, postgres, serve: Serve, tmp_path: Path) -> None:
    shared = {"lake_root": object_store.new_lake(), "control_db_url": SecretStr(postgres.new_database())}
    trainer = isolated_settings(kafka.bootstrap_servers, tmp_path / "trainer").model_copy(update=shared)
    model = publish_model(trainer, tmp_path / "run")  # files in the bucket, the version in PostgreSQL
    replica = trainer.model_copy(update={"data_dir": tmp_path / "replica"})  # another node: nothing of the trainer's on disk
    token = KeyStore(ControlDb.from_settings(replica)).create("edge device", "device")[1]
    with serve(create_app(replica)) as url, httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        listed = client.get("/v1/models").json()
        manifest = client.get("/v1/models/fraud/1/manifest")
        artifact = client.get("/v1/models/fraud/1/artifacts/plots/roc.png")
        missing = client.get("/v1/models/fraud/2/manifest")
    assert listed == [{"name": "fraud", "production": None, "versions": [{"version": 1, "stage": "candidate"}]}]
    assert manifest.content == (model.path / MANIFEST).read_bytes()
    public_key = registry.registry_public_key(registry.Registry.from_settings(replica))
    public_key.verify(base64.b64decode(manifest.headers["x-manifest-signature"]), manifest.content)  # raises if it does not verify
    assert artifact.status_code == 200 and artifact.content == (tmp_path / "run" / "plots" / "roc.png").read_bytes()
    assert artifact.headers["x-content-sha256"] == model.manifest.files["plots/roc.png"].sha256
    assert (tmp_path / "replica" / "registry" / "fraud" / "1" / "plots" / "roc.png").is_file()  # fetched into its mirror
    assert missing.status_code == 404
