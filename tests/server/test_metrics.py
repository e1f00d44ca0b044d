"""Metrics: counters and histograms read back from the exposition text, private registries, gauges
refreshed at scrape time, and the HTTP middleware labelling by route pattern."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from engine.models import Decision, LLMTrace
from server.metrics import Metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def _samples(metrics: Metrics, refresh: Callable[[], Awaitable[None]] | None = None) -> Samples:
    """Every sample of a scrape, keyed by sample name and label set."""
    body, _ = await metrics.render(refresh)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def _get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _decision(*, llm: LLMTrace | None = None, status: str = "EXECUTED", decided_by: str = "rules") -> Decision:
    return Decision(event_id="evt_1", org="acme", input={"source": "EMAIL", "type": "email:received"},
                    intent="SALES_INQUIRY", priority=3, decision_type="ASSIGN_PIPELINE", confidence=0.9,
                    decided_by=decided_by, reasoning="matched acme/sales", status=status, llm=llm)


async def test_event_counters_read_back() -> None:
    m = Metrics()
    m.event_received("acme", "EMAIL", "webhook_email")
    m.event_received("acme", "EMAIL", "webhook_email")
    m.event_received("acme", "API", "api")
    m.event_duplicate("acme", "webhook_email")
    m.event_dead_lettered("brightsmile")
    s = await _samples(m)
    assert _get(s, "astralis_events_received_total", org="acme", source="EMAIL", channel="webhook_email") == 2
    assert _get(s, "astralis_events_received_total", org="acme", source="API", channel="api") == 1
    assert _get(s, "astralis_events_duplicate_total", org="acme", channel="webhook_email") == 1
    assert _get(s, "astralis_events_dead_lettered_total", org="brightsmile") == 1


async def test_decision_without_llm_counts_no_llm_call() -> None:
    m = Metrics()
    m.observe_decision(_decision(), "sync", 0.012)
    s = await _samples(m)
    assert _get(s, "astralis_decisions_total", org="acme", source="EMAIL", status="EXECUTED", decided_by="rules") == 1
    assert _get(s, "astralis_decision_seconds_count", mode="sync") == 1
    assert _get(s, "astralis_decision_seconds_sum", mode="sync") == pytest.approx(0.012)
    assert not [k for k in s if k[0].startswith("astralis_llm_")]


async def test_decision_with_llm_counts_calls_tokens_and_latency() -> None:
    m = Metrics()
    ok = LLMTrace(provider="openai", model="gpt", prompt="p", input_tokens=120, output_tokens=30, latency_ms=250)
    failed = LLMTrace(provider="openai", model="gpt", prompt="p", latency_ms=20000, error="timeout")
    m.observe_decision(_decision(llm=ok, decided_by="llm"), "queue", 0.3)
    m.observe_decision(_decision(llm=failed, decided_by="fallback", status="REQUIRES_APPROVAL"), "queue", 20.1)
    s = await _samples(m)
    assert _get(s, "astralis_llm_calls_total", org="acme", provider="openai", outcome="ok") == 1
    assert _get(s, "astralis_llm_calls_total", org="acme", provider="openai", outcome="error") == 1
    assert _get(s, "astralis_llm_tokens_total", org="acme", provider="openai", direction="input") == 120
    assert _get(s, "astralis_llm_tokens_total", org="acme", provider="openai", direction="output") == 30
    assert _get(s, "astralis_llm_latency_seconds_count", provider="openai") == 2
    assert _get(s, "astralis_llm_latency_seconds_sum", provider="openai") == pytest.approx(20.25)
    assert _get(s, "astralis_decisions_total", org="acme", source="EMAIL", status="REQUIRES_APPROVAL",
                decided_by="fallback") == 1
    assert _get(s, "astralis_decision_seconds_count", mode="queue") == 2


async def test_two_instances_do_not_share_values() -> None:
    a, b = Metrics(), Metrics()
    a.event_received("acme", "EMAIL", "api")
    assert _get(await _samples(a), "astralis_events_received_total", org="acme", source="EMAIL", channel="api") == 1
    assert _get(await _samples(b), "astralis_events_received_total", org="acme", source="EMAIL", channel="api") is None


async def test_render_refreshes_gauges_first() -> None:
    m = Metrics()
    depth = {"accepted": 3, "processing": 1, "dead": 0}

    async def refresh() -> None:
        m.set_inbox_depth(depth)

    m.set_org_status("acme", True, 0)
    m.set_org_status("broken", False, 2)
    assert (await m.render())[1] == CONTENT_TYPE_LATEST
    s = await _samples(m, refresh)
    assert _get(s, "astralis_inbox_events", status="accepted") == 3
    assert _get(s, "astralis_inbox_events", status="dead") == 0
    assert _get(s, "astralis_ruleset_loaded", org="acme") == 1
    assert _get(s, "astralis_ruleset_loaded", org="broken") == 0
    assert _get(s, "astralis_ruleset_errors", org="broken") == 2

    depth = {"accepted": 1}  # statuses that empty out disappear instead of going stale
    s = await _samples(m, refresh)
    assert _get(s, "astralis_inbox_events", status="accepted") == 1
    assert _get(s, "astralis_inbox_events", status="processing") is None

    m.forget_org("broken")
    assert _get(await _samples(m), "astralis_ruleset_loaded", org="broken") is None


async def test_failing_refresh_still_serves_counters(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()
    m.set_inbox_depth({"accepted": 5})
    m.event_received("acme", "EMAIL", "api")

    async def refresh() -> None:
        raise RuntimeError("database is locked")

    with caplog.at_level(logging.ERROR, logger="astralis.metrics"):
        s = await _samples(m, refresh)
    assert _get(s, "astralis_events_received_total", org="acme", source="EMAIL", channel="api") == 1
    assert _get(s, "astralis_inbox_events", status="accepted") is None  # absent, not stale
    assert _get(s, "astralis_metrics_refresh_errors_total") == 1
    assert "metrics refresh failed" in caplog.text


# -- the HTTP middleware ------------------------------------------------------------------------


@pytest.fixture
def metrics_client(aiohttp_client):
    """A test client for an app with the metrics middleware and a few routes; returns (client, metrics)."""

    async def make():
        metrics = Metrics()

        async def item(request: web.Request) -> web.Response:
            return web.json_response({"id": request.match_info["id"]})

        async def boom(request: web.Request) -> web.Response:
            raise RuntimeError("handler bug")

        async def forbidden(request: web.Request) -> web.Response:
            raise web.HTTPForbidden()

        async def scrape(request: web.Request) -> web.Response:
            body, content_type = await metrics.render()
            return web.Response(body=body, headers={"Content-Type": content_type})

        app = web.Application(middlewares=[metrics.http_middleware()])
        app.router.add_get("/items/{id}", item)
        app.router.add_get("/boom", boom)
        app.router.add_get("/forbidden", forbidden)
        app.router.add_get("/metrics", scrape)
        return await aiohttp_client(app), metrics

    return make


async def test_middleware_labels_by_route_pattern(metrics_client) -> None:
    client, metrics = await metrics_client()
    for item_id in ("1", "2", "abc"):
        assert (await client.get(f"/items/{item_id}")).status == 200
    s = await _samples(metrics)
    assert _get(s, "astralis_http_requests_total", method="GET", route="/items/{id}", status="200") == 3
    assert _get(s, "astralis_http_request_seconds_count", method="GET", route="/items/{id}") == 3
    assert not [k for k in s if ("route", "/items/1") in k[1]]


async def test_middleware_counts_unmatched_errors_and_http_exceptions(metrics_client, caplog) -> None:
    client, metrics = await metrics_client()
    assert (await client.get("/no/such/thing")).status == 404
    assert (await client.get("/forbidden")).status == 403
    with caplog.at_level(logging.CRITICAL, logger="aiohttp.server"):  # aiohttp logs the handler bug
        assert (await client.get("/boom")).status == 500
    assert (await client.delete("/items/1")).status == 405
    s = await _samples(metrics)
    assert _get(s, "astralis_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert _get(s, "astralis_http_requests_total", method="GET", route="/forbidden", status="403") == 1
    assert _get(s, "astralis_http_requests_total", method="GET", route="/boom", status="500") == 1
    assert _get(s, "astralis_http_requests_total", method="DELETE", route="unmatched", status="405") == 1


async def test_metrics_endpoint_serves_exposition_text(metrics_client) -> None:
    client, _ = await metrics_client()
    await client.get("/items/7")
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert 'astralis_http_requests_total{method="GET",route="/items/{id}",status="200"} 1.0' in await response.text()
