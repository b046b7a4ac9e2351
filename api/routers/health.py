"""Liveness, readiness and metrics: open to anyone, for orchestrators and scrapers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pyarrow import fs
from pydantic import BaseModel, Field

from edgelake.api.problems import Problem, documented
from edgelake.api.scoring import Scorer
from edgelake.settings import Settings

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


class Lake(BaseModel):
    reachable: bool = Field(description="The lake root answers as a directory (otherwise /readyz answers 503).")


class FraudModel(BaseModel):
    loaded: bool = Field(description="A verified production fraud model is served.")
    version: int | None = Field(description="Its registry version; null when none is loaded.")
    detail: str | None = Field(description="Why none is loaded; null when one is.")
    shadow_version: int | None = Field(None, description="The canary version scoring in shadow beside it; null when none is.")


class Readiness(BaseModel):
    status: Literal["ready", "degraded"] = Field(description="degraded: the lake is reachable but no fraud model is loaded.")
    lake: Lake
    fraud_model: FraudModel


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: the lake root is reachable; the fraud model's state is reported, and required on request",
    description="200 when the lake root is reachable, `status` `degraded` when no fraud model can be served (scoring then answers 503 "
    "by itself, while SQL, the catalog and the registry work). Scoring replicas' orchestrators pass `?require=fraud_model` "
    "to get 503 without a model.",
    responses=documented(503, "The lake root cannot be reached, or no fraud model is loaded and `require=fraud_model` was given."),
)
def readyz(request: Request, require: Annotated[list[Literal["fraud_model"]], Query()] = []) -> Readiness:  # noqa: B006 (FastAPI builds a new list per request)
    settings: Settings = request.app.state.settings
    try:
        filesystem, path = fs.FileSystem.from_uri(_uri(settings.lake_root))
        info = filesystem.get_file_info(path)
    except (OSError, ValueError) as error:
        raise Problem(503, f"the lake root {settings.lake_root} cannot be reached: {error}", kind="not-ready") from None
    if info.type != fs.FileType.Directory:
        raise Problem(503, f"the lake root {settings.lake_root} is not a directory", kind="not-ready")
    scorer: Scorer = request.app.state.scorer
    model = scorer.status()
    if not model.loaded and "fraud_model" in require:
        raise Problem(503, f"no fraud model is loaded: {model.detail}", kind="not-ready")
    return Readiness(
        status="ready" if model.loaded else "degraded",
        lake=Lake(reachable=True),
        fraud_model=FraudModel(loaded=model.loaded, version=model.version, detail=model.detail, shadow_version=model.shadow_version),
    )


@router.get("/metrics", summary="Prometheus metrics of this server process", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


def _uri(lake_root: str) -> str:
    """A URI pyarrow accepts: local paths become absolute ``file://`` ones."""
    if "://" in lake_root:
        return lake_root
    return Path(lake_root).resolve().as_uri()
