"""Issue 13, finding 4 (one org stalls all), the volume side: a body dense with JSON values and a flood of large
webhook deliveries cost the service a few milliseconds each, not the event loop's time.

The C JSON parser holds the loop for the whole parse (0.1–0.3 s for 1 MiB of `[]`), so a body with more values
than `MAX_VALUES` is refused on its bytes before it is parsed (413 `too_many_values`, naming the limit). Webhook
deliveries are counted per org and sender address before the body is read, so a flood is answered 429 at almost
no cost and leaves another sender's deliveries alone."""

# ruff: noqa: F811  (the service fixtures are imported from tests/server/conftest.py, then named as arguments)
from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from server.app import STORE
from server.door import MAX_VALUES, load_json, value_count_problem
from server.errors import ApiError
from server.signing import sign
from tests.server.conftest import SECRET, auth, config_dirs, make_client, make_settings, service_env  # noqa: F401

SALES = {"source": "EMAIL", "type": "email:received",
         "data": {"from": "jo@shop.example", "subject": "Pricing for the pro plan", "text": "How much is it?"}}

DENSE = {
    "brackets": b"[" + b"[]," * 349_000 + b"[]]",
    "objects": b"{\"data\": [" + b"{}," * 349_000 + b"{}]}",
    "integers": b"{\"data\": [" + b"1," * 500_000 + b"1]}",
    "short strings": json.dumps({"data": ["a"] * 200_000}).encode(),
    "keys": json.dumps({"data": {f"k{i}": 1 for i in range(70_000)}}).encode(),
}


@pytest.fixture
def store_url(tmp_path: Any) -> str:
    """One store: a SQLite file (nothing here reaches the store)."""
    return str(tmp_path / "astralis.db")


@pytest.mark.parametrize("name", list(DENSE))
def test_a_body_dense_with_values_is_refused_on_its_bytes_in_milliseconds(name: str) -> None:
    raw = DENSE[name]
    best = min(_timed(lambda: value_count_problem(raw)) for _ in range(3))
    assert value_count_problem(raw) is not None and value_count_problem(raw)[0] == "too_many_values"  # type: ignore[index]
    with pytest.raises(ApiError) as err:
        load_json(raw)
    assert err.value.status == 413 and err.value.code == "too_many_values"
    assert json.loads(err.value.text or "")["error"]["details"] == {"field": "body", "limit": MAX_VALUES}
    # Parsing these takes 50–300 ms; the count reads the bytes a few times (generous bound for a loaded machine).
    assert best < 0.05, f"{name}: {best * 1000:.1f} ms"


@pytest.mark.parametrize("text", [
    "Hello, we would like a quote, please. [urgent] {asap} " * 19_000,  # ~1 MiB of prose with brackets and commas
    'He said \\"no, never\\", [twice], {thrice}. ' * 20_000,
])
def test_commas_and_brackets_inside_text_do_not_count(text: str) -> None:
    raw = json.dumps({"type": "email:received", "source": "EMAIL", "data": {"text": text}}).encode()
    assert len(raw) > 500_000
    assert value_count_problem(raw) is None
    assert load_json(raw)["data"]["text"] == text


def test_a_body_at_the_limit_is_parsed() -> None:
    raw = json.dumps({"data": {"rows": [[i, "x"] for i in range(MAX_VALUES // 4)]}}).encode()
    assert value_count_problem(raw) is None
    assert len(load_json(raw)["data"]["rows"]) == MAX_VALUES // 4


async def test_the_api_and_the_webhooks_answer_413_naming_the_limit(make_client: Callable[..., Any]) -> None:
    client, key_for = await make_client()
    key = await key_for("acme")
    raw = DENSE["integers"]
    r = await client.post("/api/agent/process", data=raw, headers={**auth(key), "Content-Type": "application/json"})
    assert r.status == 413, await r.text()
    assert (await r.json())["error"]["code"] == "too_many_values"
    headers = {"Content-Type": "application/json",
               "X-Astralis-Signature": sign(SECRET, raw, int(datetime.now(UTC).timestamp()))}
    r = await client.post("/api/webhooks/acme/form", data=raw, headers=headers)
    assert r.status == 413, await r.text()
    assert (await r.json())["error"]["details"]["limit"] == MAX_VALUES
    # Nothing of it was stored.
    rows, _ = await client.app[STORE].list_events("acme", limit=10)
    assert rows == []


async def test_a_flood_of_webhook_deliveries_is_429_before_the_body_is_read(make_client: Callable[..., Any]) -> None:
    client, _ = await make_client(webhook_requests_per_minute=60)  # bursts of 10
    raw = b"x" * 900_000  # neither signed nor JSON: a flood answered 401 until the bucket is empty
    statuses = []
    for _ in range(15):
        r = await client.post("/api/webhooks/acme/form", data=raw, headers={"Content-Type": "application/json"})
        statuses.append(r.status)
        if r.status == 429:
            assert int(r.headers["Retry-After"]) >= 1
            err = (await r.json())["error"]
            assert err["code"] == "rate_limited" and "webhook" in err["message"]
    assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}, statuses
    # Another org's webhook (another bucket) still takes its deliveries.
    body = json.dumps(SALES["data"]).encode()
    r = await client.post("/api/webhooks/brightsmile/form", data=body, headers={"Content-Type": "application/json"})
    assert r.status == 401  # counted apart: refused for its signature (brightsmile's secret is not set), not 429


def _timed(f: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def test_the_webhook_buckets_do_not_grow_with_every_sender_address() -> None:
    from server.auth import RequestLimiter

    now = [0.0]
    limiter = RequestLimiter(60, clock=lambda: now[0])  # bursts of 10, one token a second
    for i in range(RequestLimiter.MAX_BUCKETS - 1):
        assert limiter.take(f"acme\0 10.0.{i // 256}.{i % 256}") == 0.0
    now[0] = 55.0
    for _ in range(10):
        limiter.take("acme\0flood")  # emptied at 55 s: at 60 s it holds 5 of its 10 tokens
    now[0] = 60.0
    assert limiter.take("acme\0new") == 0.0  # one bucket too many: the refilled ones are forgotten
    assert set(limiter._buckets) == {"acme\0flood", "acme\0new"}
    for _ in range(5):
        assert limiter.take("acme\0flood") == 0.0
    assert limiter.take("acme\0flood") > 0  # the flooding sender is still limited
