"""A token bucket per API key: in each server process, or in Redis for one limit across every replica."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio
from redis.exceptions import RedisError

from edgelake.settings import Settings

log = logging.getLogger(__name__)

# Refill, then take a token if there is one; Redis's clock, so replicas' clocks need not agree. The wait returns as text
# because Redis turns a Lua number into an integer.
_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = math.min(burst, (tonumber(state[1]) or burst) + math.max(0, now - (tonumber(state[2]) or now)) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RateLimiter(Protocol):
    """Allows ``burst`` requests at once per key, refilled at ``rate_per_s``."""

    rate_per_s: float
    burst: int

    async def acquire(self, key: str) -> float:
        """Take one token for ``key``: 0 if granted, else the seconds until one is available."""
        ...

    async def aclose(self) -> None:
        """Let go of what it holds."""
        ...


@dataclass
class _Bucket:
    tokens: float
    updated: float


class ProcessRateLimiter:
    """Buckets in this process's memory: each server process (and replica) counts on its own."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        _check(rate_per_s, burst)
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    async def acquire(self, key: str) -> float:
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(key, _Bucket(float(self.burst), now))
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate_per_s)
            bucket.updated = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return 0.0
            return (1 - bucket.tokens) / self.rate_per_s

    async def aclose(self) -> None:
        self._buckets.clear()


class RedisRateLimiter:
    """Buckets in Redis, shared by every replica. While Redis cannot be reached, requests are let through (and logged)."""

    def __init__(self, url: str, rate_per_s: float, burst: int, prefix: str = "edgelake:rate:") -> None:
        _check(rate_per_s, burst)
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.prefix = prefix
        self.unlimited = 0  # requests let through because Redis did not answer
        self._redis = redis.asyncio.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._take = self._redis.register_script(_TAKE)

    async def acquire(self, key: str) -> float:
        try:
            wait = await self._take(keys=[self.prefix + key], args=[self.rate_per_s, self.burst])
        except RedisError as error:
            if not self.unlimited:
                log.warning("rate limits are not enforced while Redis does not answer: %r", error)
            self.unlimited += 1
            return 0.0
        if self.unlimited:
            log.info("rate limits are enforced again after %d requests let through", self.unlimited)
            self.unlimited = 0
        return float(wait)

    async def aclose(self) -> None:
        await self._redis.aclose()


def rate_limiter(settings: Settings, rate_per_s: float, burst: int) -> RateLimiter:
    """The limiter the settings choose (``rate_limits``)."""
    if settings.rate_limits == "redis":
        return RedisRateLimiter(settings.redis_url, rate_per_s, burst, prefix=f"edgelake:{settings.topic_prefix}rate:")
    return ProcessRateLimiter(rate_per_s, burst)


def retry_after(seconds: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def _check(rate_per_s: float, burst: int) -> None:
    if rate_per_s <= 0 or burst < 1:
        raise ValueError(f"the rate must be positive and the burst at least 1, not {rate_per_s} and {burst}")
