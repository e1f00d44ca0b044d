"""API key lookups: cached briefly, one lookup for concurrent requests, revocation in this process at once."""

from __future__ import annotations

import asyncio

import pytest

from server.auth import KeyCache, RequestLimiter, hash_key, new_key


async def test_concurrent_requests_share_one_lookup():
    key_id, key, key_hash = new_key()
    calls = []

    async def lookup(h):
        calls.append(h)
        await asyncio.sleep(0.01)
        return {"id": key_id, "org": "acme", "name": "n"} if h == key_hash else None

    cache = KeyCache(lookup, ttl=60)
    got = await asyncio.gather(*[cache.principal(key) for _ in range(20)])
    assert len(calls) == 1 and {p.org for p in got} == {"acme"}
    assert await cache.principal("ak_x_wrong") is None and len(calls) == 2
    cache.forget(key_id)
    await cache.principal(key)
    assert len(calls) == 3


async def test_a_failed_lookup_fails_every_waiter_and_is_retried():
    n = {"calls": 0}

    async def lookup(h):
        n["calls"] += 1
        await asyncio.sleep(0.01)
        if n["calls"] == 1:
            raise OSError("database is locked")
        return None

    cache = KeyCache(lookup, ttl=60)
    results = await asyncio.gather(*[cache.principal("ak_a_b") for _ in range(3)], return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
    assert await cache.principal("ak_a_b") is None and n["calls"] == 2


def test_hash_is_not_the_key():
    _, key, h = new_key()
    assert h == hash_key(key) and key not in h and len(h) == 64


def test_token_bucket_refills():
    t = [0.0]
    lim = RequestLimiter(60, burst=2, clock=lambda: t[0])
    assert [lim.take("k") for _ in range(2)] == [0.0, 0.0]
    wait = lim.take("k")
    assert wait == pytest.approx(1.0)
    t[0] += 1.0
    assert lim.take("k") == 0.0
