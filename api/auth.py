"""Who is calling: the API key of a request, its role and its rate limit, as route dependencies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from edgelake.api.keys import ApiKey, KeyStore, Role
from edgelake.api.problems import Problem
from edgelake.api.ratelimit import RateLimiter, retry_after

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer elk_…`, a key from `edgelake keys create`.")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="The same key in an `X-API-Key` header.")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="edgelake"'}


def require(*roles: Role) -> Callable[..., Awaitable[ApiKey]]:
    """A dependency that admits keys holding one of ``roles`` (admin is always admitted) within their rate limit."""

    async def caller(  # async: a plain function would cost every request a thread-pool handoff
        request: Request,
        bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
        header_key: str | None = Depends(_api_key),
    ) -> ApiKey:
        token = bearer.credentials if bearer is not None else header_key
        if not token:
            raise Problem(401, "an API key is required: send `Authorization: Bearer <key>`", kind="unauthenticated", headers=_CHALLENGE)
        keys: KeyStore = request.app.state.keys
        key = keys.authenticate(token)
        request.state.api_key = key  # who is asking, for the audit log, refused or not
        if key is None:
            raise Problem(401, "the API key is unknown or revoked", kind="unauthenticated", headers=_CHALLENGE)
        if key.role != "admin" and key.role not in roles:
            raise Problem(403, f"this route needs the role {' or '.join(roles)}; key {key.id} is {key.role}", kind="forbidden")
        limiter: RateLimiter = request.app.state.limiter
        wait = await limiter.acquire(key.id)
        if wait:
            raise Problem(
                429, f"key {key.id} is over its rate limit of {limiter.rate_per_s:g} requests/s (burst {limiter.burst})",
                kind="rate-limited", headers={"Retry-After": retry_after(wait)},
            )
        return key

    return caller
