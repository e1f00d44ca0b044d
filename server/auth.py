"""API keys (per org, stored hashed) and per-key request rate limits.

A key reads `ak_<id>_<secret>`: the id names the key in logs and for revocation, the secret is 32 random bytes.
Keys carry 256 bits of entropy, so a plain SHA-256 of the whole key is what is stored (a slow password hash
protects guessable secrets; these are not). Lookups are cached for `ttl` seconds per process, so a key revoked
from another process (the CLI) stops working within that time; revocation in this process is immediate.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from server.errors import ApiError

PREFIX = "ak_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id and name, and the org it is scoped to."""

    key_id: str
    org: str
    name: str


def new_key() -> tuple[str, str, str]:
    """A new key: (key id, the key to hand out once, its hash to store)."""
    key_id = secrets.token_hex(6)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return key_id, key, hash_key(key)


def hash_key(key: str) -> str:
    """What is stored for a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(request: web.Request) -> str | None:
    """The key in `Authorization: Bearer KEY`, if any."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class KeyCache:
    """Key hash → principal, cached briefly (misses too, so a flood of bad keys does not hit the database)."""

    def __init__(self, lookup: Callable[[str], Any], *, ttl: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[float, Principal | None]] = {}
        self._loading: dict[str, asyncio.Future[Principal | None]] = {}

    async def principal(self, key: str) -> Principal | None:
        """The principal of an active key, or None. Concurrent requests with the same key share one lookup."""
        return await self.principal_by_hash(hash_key(key))

    async def principal_by_hash(self, h: str) -> Principal | None:
        """As `principal`, from the key's stored hash (a dashboard session carries the hash, never the key)."""
        hit = self._entries.get(h)
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        loading = self._loading.get(h)
        if loading is not None:
            return await asyncio.shield(loading)
        fut: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._loading[h] = fut
        try:
            row = await self._lookup(h)
            p = Principal(row["id"], row["org"], row["name"]) if row else None
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[h] = (self._clock() + self._ttl, p)
            fut.set_result(p)
            return p
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: a lookup nobody else waited for must not warn
            raise
        finally:
            del self._loading[h]

    def forget(self, key_id: str) -> None:
        """Drop a (revoked) key from the cache now."""
        for h, (_, p) in list(self._entries.items()):
            if p is not None and p.key_id == key_id:
                del self._entries[h]


class RequestLimiter:
    """A token bucket per key: `per_minute` requests a minute on average, bursts up to `burst`."""

    def __init__(self, per_minute: int, burst: int | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute must be at least 1, not {per_minute}")
        self.rate = per_minute / 60.0
        self.burst = float(burst if burst is not None else max(1, per_minute // 6))
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    MAX_BUCKETS = 10_000
    """Buckets kept before the full ones are dropped: keyed by sender address (webhooks), they would otherwise
    grow with every address that ever sent one request."""

    def take(self, key_id: str) -> float:
        """0.0 if the request may go ahead; else the seconds to wait before the next one will."""
        now = self._clock()
        if len(self._buckets) >= self.MAX_BUCKETS and key_id not in self._buckets:
            # A bucket refilled to its burst is the same as no bucket: forget those.
            self._buckets = {k: (t, last) for k, (t, last) in self._buckets.items()
                             if t + (now - last) * self.rate < self.burst}
        tokens, last = self._buckets.get(key_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key_id] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key_id] = (tokens, now)
        return (1.0 - tokens) / self.rate


def too_many(wait: float, what: str = "requests for this API key") -> ApiError:
    """The 429 answer, with Retry-After in whole seconds (rounded up)."""
    seconds = max(1, math.ceil(wait))
    return ApiError(429, "rate_limited", f"too many {what}; retry in {seconds} s",
                    {"retry_after": seconds}, headers={"Retry-After": str(seconds)})
