"""A cap on request bodies: ``Content-Length`` past it is refused before anything is read, a body
sent without one is refused as soon as it passes the cap."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgelake.api.problems import MEDIA_TYPE, ProblemDetail


class BodyLimitMiddleware:
    """Answers 413 (problem+json) to any request whose body is larger than ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _refuse(scope, receive, send, self._detail(f"{int(declared):,} bytes"))
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # raised inside the route (FastAPI passes HTTP errors on): answered as problem+json
                    raise HTTPException(413, self._detail("more"))
            return message

        await self.app(scope, counted, send)

    def _detail(self, size: str) -> str:
        return f"the request body has {size}; this server reads at most {self.max_bytes:,} (EDGELAKE_API_MAX_BODY_BYTES)"


async def _refuse(scope: Scope, receive: Receive, send: Send, detail: str) -> None:
    problem = ProblemDetail(
        type="urn:edgelake:problem:body-too-large", title="Request body too large", status=413, detail=detail, instance=scope["path"]
    )
    response = JSONResponse(problem.model_dump(exclude_none=True), status_code=413, media_type=MEDIA_TYPE, headers={"Connection": "close"})
    await response(scope, receive, send)
