"""Limits shared by every worker process through Redis: the per-org decision rate limits and the LLM circuit
breakers.

Each check is one Lua script, so it is atomic however many workers on however many machines run it, and it reads
the time from Redis (`TIME`), so the workers' clocks do not have to agree. N workers together therefore count
exactly what one process would: with `per_minute: 60`, the 61st decision in any 60 s is held, whichever worker
makes it.

When Redis cannot be reached, a check falls back to this process's own counter (`engine.gate.RateLimiter`,
`engine.llm.CircuitBreaker`) and says so in the log once per outage: the service keeps deciding (synchronous
requests still work) and a decision over the local limit is still held, never dropped; the shared count resumes
when Redis is back.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from engine.config import CircuitBreaker as BreakerSettings
from engine.config import RateLimits
from engine.gate import RateLimiter
from engine.llm import CircuitBreaker

log = logging.getLogger("astralis.limits")

# KEYS[1]: the org's sorted set of decision times (µs). ARGV: per_minute, per_hour, a unique member.
# 0: counted; 1: the minute limit is reached; 2: the hour limit is reached.
_RATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 3600000000)
if redis.call('ZCOUNT', KEYS[1], '(' .. (now - 60000000), '+inf') >= tonumber(ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 2 end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], 3600000)
return 0
"""

# KEYS[1]: the breaker's hash {consecutive, opened (ms), trial (ms)}. ARGV: reset ms.
# Returns {allowed 0/1, consecutive}. A trial call that never reports back (its worker died) stops counting as
# "out" after the reset time, so the circuit cannot stay stuck open.
_ALLOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'consecutive', 'opened', 'trial')
local consecutive = tonumber(h[1] or '0') or 0
if not h[2] or h[2] == '' then return {1, consecutive} end
local reset = tonumber(ARGV[1])
if h[3] and h[3] ~= '' and now - tonumber(h[3]) < reset then return {0, consecutive} end
if now - tonumber(h[2]) < reset then return {0, consecutive} end
redis.call('HSET', KEYS[1], 'trial', now)
return {1, consecutive}
"""

# ARGV: failures threshold, key lifetime ms.
_FAILURE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = redis.call('HINCRBY', KEYS[1], 'consecutive', 1)
redis.call('HSET', KEYS[1], 'trial', '')
if n >= tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'opened', now) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return n
"""


def redis_url() -> str | None:
    """The Redis the workers share (`REDIS_URL`), if any."""
    return os.environ.get("REDIS_URL") or None


class _Fallback:
    """Logs the first failure of an outage and the recovery, not every call in between."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.down = False

    def failed(self, exc: Exception) -> None:
        if not self.down:
            self.down = True
            log.warning("Redis unavailable (%s): %s are counted in this process only until it is back", exc, self.what)

    def ok(self) -> None:
        if self.down:
            self.down = False
            log.info("Redis is back: %s are shared by every worker again", self.what)


class RedisRateLimiter:
    """`engine.gate.Limiter` over a Redis sorted set per org: a sliding window of decision times."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "astralis") -> None:
        self._client = client
        self._prefix = prefix
        self._script = client.register_script(_RATE)
        self._local = RateLimiter()
        self._fallback = _Fallback("rate limits")
        self._seq = 0

    async def acquire(self, org: str, limits: RateLimits) -> str | None:
        """Count one decision for `org` across every worker if under both limits (None), else which is hit."""
        self._seq += 1
        member = f"{os.getpid()}:{id(self)}:{self._seq}"
        try:
            hit = int(await self._script(keys=[f"{self._prefix}:rate:{org}"],
                                         args=[limits.per_minute, limits.per_hour, member]))
        except (RedisError, OSError) as exc:
            self._fallback.failed(exc)
            return self._local.check(org, limits)
        self._fallback.ok()
        if hit == 1:
            return f"rate limit of {limits.per_minute} decisions per minute reached"
        if hit == 2:
            return f"rate limit of {limits.per_hour} decisions per hour reached"
        return None


class RedisBreaker:
    """`engine.llm.Breaker` kept in a Redis hash, so that every worker sees the same open circuit: when one
    provider fails for one org, N workers stop calling it together instead of each finding out alone."""

    def __init__(self, client: aioredis.Redis, key: str, settings: BreakerSettings,
                 scripts: tuple[Any, Any]) -> None:
        self._client = client
        self._key = key
        self._settings = settings
        self._allow, self._failure = scripts
        self._local = CircuitBreaker(settings.failures, settings.reset_seconds)
        self._fallback = _Fallback("LLM circuit breakers")
        self.consecutive = 0

    async def allow(self) -> bool:
        """Whether a call may be made now (one trial call among all workers once the reset time has passed)."""
        try:
            allowed, self.consecutive = await self._allow(keys=[self._key],
                                                          args=[int(self._settings.reset_seconds * 1000)])
        except (RedisError, OSError) as exc:
            self._fallback.failed(exc)
            allowed = await self._local.allow()
            self.consecutive = self._local.consecutive
            return allowed
        self._fallback.ok()
        return bool(allowed)

    async def success(self) -> None:
        """A good answer closes the circuit for every worker."""
        self.consecutive = 0
        await self._local.success()
        try:
            await self._client.delete(self._key)
        except (RedisError, OSError) as exc:
            self._fallback.failed(exc)

    async def failure(self) -> None:
        """A failed call counts for every worker; past the threshold the circuit opens for all of them."""
        await self._local.failure()
        lifetime = int(max(self._settings.reset_seconds * 10, 3600) * 1000)
        try:
            self.consecutive = int(await self._failure(keys=[self._key],
                                                       args=[self._settings.failures, lifetime]))
        except (RedisError, OSError) as exc:
            self._fallback.failed(exc)
            self.consecutive = self._local.consecutive


class RedisLimits:
    """One Redis connection pool for the shared limits of a process: `rate_limiter` for the agent and
    `breaker` as the LLM stage's breaker factory."""

    def __init__(self, url: str, *, prefix: str = "astralis", max_connections: int = 16) -> None:
        # A bounded pool that waits for a free connection: a burst of decisions shares a few connections instead
        # of opening one each (hundreds of connects at once time out, and every check would fall back to local).
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=5.0,
                                                        socket_connect_timeout=5.0, socket_timeout=5.0)
        self.client = aioredis.Redis(connection_pool=pool)
        self.prefix = prefix
        self.rate_limiter = RedisRateLimiter(self.client, prefix=prefix)
        self._scripts = (self.client.register_script(_ALLOW), self.client.register_script(_FAILURE))

    def breaker(self, org: str, provider: str, settings: BreakerSettings) -> RedisBreaker:
        """The shared circuit breaker of `org`'s use of `provider` (`engine.llm.BreakerFactory`)."""
        return RedisBreaker(self.client, f"{self.prefix}:breaker:{org}:{provider}", settings, self._scripts)

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()
        await self.client.connection_pool.disconnect()
