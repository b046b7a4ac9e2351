"""``/v1/models``: the signed model registry, its versions, stages and artifacts for devices to download;
``/v1/registry/keys``: the chain of key-set releases that says which keys sign them.

Only files the version's manifest lists are served, each with the sha256 the signed manifest
pins and the manifest's signature, so a device can verify what it got against the key set
it trusts, which it extends by verifying each newer release against the one before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path as PathParam, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from edgelake.api.auth import require
from edgelake.api.problems import PROBLEM_RESPONSES, Problem, documented
from edgelake.device_api import MAX_VERSION, KeyReleases
from edgelake import signing
from edgelake.signing import MANIFEST, SIGNATURE, FileEntry
from edgelake.training import registry
from edgelake.training.registry import Stage

router = APIRouter(
    prefix="/v1/models", tags=["models"], dependencies=[Depends(require("analyst", "device"))],
    responses={**PROBLEM_RESPONSES, **documented(404, "No such model, version or file.")},
)

keys_router = APIRouter(
    prefix="/v1/registry", tags=["models"], dependencies=[Depends(require("analyst", "device"))], responses=PROBLEM_RESPONSES
)

ModelName = Annotated[str, PathParam(pattern=signing.ModelName.__metadata__[0].pattern, description="The model's registry name.")]
Version = Annotated[int, PathParam(ge=1, description="A published version number.")]
SIGNATURE_HEADER = "X-Manifest-Signature"
SHA256_HEADER = "X-Content-SHA256"


class VersionSummary(BaseModel):
    version: int
    stage: Stage


class ModelSummary(BaseModel):
    name: str
    production: int | None = Field(description="The version in production, if any.")
    versions: list[VersionSummary]


class VersionDetail(BaseModel):
    """One version as its signed manifest describes it."""

    version: int
    stage: Stage
    created: datetime
    metrics: dict[str, float]
    lineage: dict[str, int]
    feature_version: str | None
    extra: dict[str, Any]
    files: dict[str, FileEntry]
    key_fingerprint: str


class ModelDetail(BaseModel):
    name: str
    production: int | None
    versions: list[VersionDetail]


@router.get("", summary="Every model with its versions and their stages")
def list_models(request: Request) -> list[ModelSummary]:
    models = registry_of(request)
    summaries = []
    for name in registry.models(models):
        stages = registry.versions(models, name)
        production = registry.current(models, name)
        summaries.append(ModelSummary(name=name, production=production, versions=[VersionSummary(version=v, stage=s) for v, s in stages.items()]))
    return summaries


@router.get("/{name}", summary="One model's versions with stage, metrics, lineage and files")
def get_model(request: Request, name: ModelName) -> ModelDetail:
    models = registry_of(request)
    with unknown_model_is_404():
        stages = registry.versions(models, name)
        details = []
        for version, stage in stages.items():
            manifest = registry.manifest(models, name, version)
            details.append(
                VersionDetail(
                    version=version, stage=stage, created=manifest.created, metrics=manifest.metrics, lineage=manifest.lineage,
                    feature_version=manifest.feature_version, extra=manifest.extra, files=manifest.files, key_fingerprint=manifest.key_fingerprint,
                )
            )
        return ModelDetail(name=name, production=registry.current(models, name), versions=details)


@router.get(
    "/{name}/{version}/manifest",
    summary="A version's manifest.json, exactly as signed",
    response_class=Response,
    responses={200: {"content": {"application/json": {}}, "headers": {SIGNATURE_HEADER: {"description": "base64 Ed25519 signature of the body."}}}},
)
def get_manifest(request: Request, name: ModelName, version: Version) -> Response:
    model = _version(request, name, version)
    return Response(
        (model.path / MANIFEST).read_bytes(), media_type="application/json", headers={SIGNATURE_HEADER: _signature(model.path)}
    )


@router.get(
    "/{name}/{version}/artifacts/{file:path}",
    summary="One artifact the manifest lists",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "headers": {
                SHA256_HEADER: {"description": "The file's sha256 as the signed manifest pins it."},
                SIGNATURE_HEADER: {"description": "base64 Ed25519 signature of the version's manifest.json."},
            },
        }
    },
)
def get_artifact(request: Request, name: ModelName, version: Version, file: str) -> FileResponse:
    model = _version(request, name, version)
    unknown = Problem(404, f"{name} v{version} has no artifact '{file[:200]}'", kind="unknown-artifact", title="Unknown artifact")
    # Only names the signed manifest lists (never touching the file system for others: a NUL byte, a 4 KB name),
    # and never a path that leaves the version directory (a symlink).
    entry = model.manifest.files.get(file)
    if entry is None:
        raise unknown
    path = (model.path / file).resolve()
    if not path.is_relative_to(model.path.resolve()) or not path.is_file():
        raise unknown
    return FileResponse(
        path, media_type="application/octet-stream", filename=Path(file).name,
        headers={SHA256_HEADER: entry.sha256, SIGNATURE_HEADER: _signature(model.path)},
    )


@keys_router.get("/keys", summary="The key-set releases after a sequence number, oldest first; verify each against the one before")
def key_releases(
    request: Request, after: int = Query(0, ge=0, le=MAX_VERSION, description="The release the caller trusts already; 0: the anchor key alone.")
) -> KeyReleases:
    return KeyReleases(releases=registry.key_releases(registry_of(request), after))


def registry_of(request: Request) -> registry.Registry:
    """The model registry of the app's lake."""
    models: registry.Registry = request.app.state.model_registry
    return models


def _version(request: Request, name: str, version: int) -> registry.ModelVersion:
    with unknown_model_is_404():
        return registry.get(registry_of(request), name, version)


@contextmanager
def unknown_model_is_404() -> Iterator[None]:
    """Turn the registry's UnknownModel into a 404 problem."""
    try:
        yield
    except registry.UnknownModel as error:
        raise Problem(404, str(error), kind="unknown-model", title="Unknown model or version") from None


def _signature(version_dir: Path) -> str:
    return (version_dir / SIGNATURE).read_text().strip()
