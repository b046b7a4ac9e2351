"""``edgelake serve``: the API under uvicorn."""

from __future__ import annotations

from typing import Optional
from urllib.parse import urlparse

import typer

from edgelake.settings import Settings


def serve(
    ctx: typer.Context,
    host: Optional[str] = typer.Option(None, "--host", help="Interface to listen on; default the host of the api_url setting."),
    port: Optional[int] = typer.Option(None, "--port", min=0, max=65535, help="Port; default the port of the api_url setting."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes (metrics and rate limits are per worker)."),
) -> None:
    """Serve the SQL, catalog and model-registry API (settings come from the environment in every worker)."""
    import uvicorn

    settings: Settings = ctx.obj
    url = urlparse(settings.api_url)
    uvicorn.run(
        "api.app:app_from_env", factory=True, workers=workers,
        host=host or url.hostname or "127.0.0.1", port=port if port is not None else url.port or 8000,
        log_level=settings.log_level.lower(),
    )  # fmt: skip
