"""Liveness, readiness and metrics: open to anyone, for orchestrators and scrapers."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pyarrow import fs
from pydantic import BaseModel

from api.problems import Problem, documented
from edgelake.settings import Settings

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: the lake root is reachable",
    responses=documented(503, "The lake root cannot be reached."),
)
def readyz(request: Request) -> Health:
    settings: Settings = request.app.state.settings
    try:
        filesystem, path = fs.FileSystem.from_uri(_uri(settings.lake_root))
        info = filesystem.get_file_info(path)
    except (OSError, ValueError) as error:
        raise Problem(503, f"the lake root {settings.lake_root} cannot be reached: {error}", kind="not-ready") from None
    if info.type != fs.FileType.Directory:
        raise Problem(503, f"the lake root {settings.lake_root} is not a directory", kind="not-ready")
    return Health(status="ready")


@router.get("/metrics", summary="Prometheus metrics of this server process", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


def _uri(lake_root: str) -> str:
    """A URI pyarrow accepts: local paths become absolute ``file://`` ones."""
    if "://" in lake_root:
        return lake_root
    return Path(lake_root).resolve().as_uri()
