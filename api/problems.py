"""RFC 9457 problem details: the one shape of every error the API answers."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:edgelake:problem:"
MAX_ERRORS_LISTED = 100  # a 422's ``errors``: enough to fix a request, bounded whatever its size

log = logging.getLogger(__name__)


class ProblemDetail(BaseModel):
    """An error as RFC 9457 describes it; ``errors`` lists what failed validation (422 only)."""

    type: str = Field("about:blank", description="URI naming the kind of problem; about:blank for a plain HTTP status.")
    title: str = Field(description="Short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str | None = Field(None, description="What went wrong this time.")
    instance: str | None = Field(None, description="The path of the request that failed.")
    errors: list[dict[str, Any]] | None = Field(None, description="Validation errors, as pydantic reports them.")


class Problem(Exception):
    """Raised anywhere in a request to answer it with a problem; ``kind`` names a specific problem type."""

    def __init__(
        self, status: int, detail: str, *, kind: str | None = None, title: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = TYPE_PREFIX + kind if kind else "about:blank"
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers or {}


def documented(status: int, description: str | None = None) -> dict[int | str, dict[str, Any]]:
    """An OpenAPI ``responses`` entry: ``status`` answers a problem+json body."""
    return {status: {"model": ProblemDetail, "content": {MEDIA_TYPE: {}}, "description": description or HTTPStatus(status).phrase}}


# Documented on every /v1 route so the OpenAPI contract names the error shape.
PROBLEM_RESPONSES = {
    **documented(401, "No API key, or one unknown or revoked."),
    **documented(403, "The key's role may not use this route."),
    **documented(422, "The request is malformed; `errors` lists each problem."),
    **documented(429, "The key is over its rate limit; see Retry-After."),
}


def problem_response(
    request: Request, status: int, detail: str | None, *, type_: str = "about:blank", title: str | None = None,
    headers: dict[str, str] | None = None, errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    """A problem+json response to ``request``; its detail is kept as ``request.state.problem`` for the audit log."""
    request.state.problem = detail or ""
    body = ProblemDetail(
        type=type_, title=title or HTTPStatus(status).phrase, status=status, detail=detail, instance=request.url.path, errors=errors
    )
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers, media_type=MEDIA_TYPE)


def _listed(error: dict[str, Any]) -> dict[str, Any]:
    """A validation error as a 422 lists it: where, what kind, why; never the input, which can be huge or not JSON (NaN)."""
    loc = [part if isinstance(part, int) else str(part) for part in error.get("loc", ())]
    return {"type": str(error.get("type", "value_error")), "loc": loc, "msg": str(error.get("msg", ""))}


def install_problem_handlers(app: FastAPI) -> None:
    """Answer raised Problems, HTTP errors (404, 405 …), validation errors, a control-plane database that does not answer
    (503) and anything unexpected as problem+json."""

    async def on_problem(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, Problem)
        return problem_response(request, error.status, error.detail, type_=error.type, title=error.title, headers=error.headers)

    async def on_http(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        return problem_response(request, error.status_code, error.detail, headers=dict(error.headers or {}))

    async def on_invalid(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        found = error.errors()
        count = len(found)
        detail = f"the request has {count} invalid field{'' if count == 1 else 's'}"
        if count > MAX_ERRORS_LISTED:
            detail += f"; the first {MAX_ERRORS_LISTED} are listed"
        errors = [_listed(e) for e in found[:MAX_ERRORS_LISTED]]
        return problem_response(request, 422, detail, type_=TYPE_PREFIX + "invalid-request", errors=errors)

    async def on_store_unavailable(request: Request, error: Exception) -> JSONResponse:
        log.warning("the control plane's database did not answer on %s %s: %s", request.method, request.url.path, error)
        detail = "the control plane's database is unavailable or busy; try again"
        return problem_response(request, 503, detail, type_=TYPE_PREFIX + "control-plane-unavailable", headers={"Retry-After": "1"})

    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(request, 500, "an unexpected error occurred; it has been logged")

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(OperationalError, on_store_unavailable)
    app.add_exception_handler(Exception, on_unexpected)
