"""Prometheus metrics for the service, each `Metrics` on its own private registry.

Counters and histograms are updated where things happen (events received, decisions made, HTTP
requests). The gauges that describe state held elsewhere (inbox depth, ruleset status) are plain
`Gauge`s: the store is async and a scrape is sync, so `render()` first awaits an optional `refresh`
coroutine (which calls `set_inbox_depth`) and then serialises. That is simpler than a custom
collector calling back into the app, and just as fresh.

Label values are bounded on purpose: HTTP requests are labelled by the route's canonical pattern
(`/api/agent/decisions/{id}`), never the raw path, and unknown methods collapse to "other".

The metrics name every org, so they are the operator's (`operator_request`): `/metrics` answers the operator token
(`ASTRALIS_OPERATOR_TOKEN`, sent as `Authorization: Bearer <token>`), or, when none is configured, only a direct
connection from this host (a loopback peer, without proxy headers); anyone else gets 401/403.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from engine.models import Decision
from server.auth import bearer
from server.errors import ApiError

log = logging.getLogger("astralis.metrics")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# LLM calls are slow compared with everything else: seconds, up to the policy's timeouts.
_LLM_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, float("inf"))


OPERATOR_TOKEN_ENV = "ASTRALIS_OPERATOR_TOKEN"
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Real-IP")
"""A request carrying one of these came through a proxy: its loopback peer says nothing of the real client."""


def direct_loopback(request: web.Request) -> bool:
    """True when the peer is this host (127.0.0.0/8, ::1) and no proxy header says it forwards someone else."""
    try:
        peer = ipaddress.ip_address((request.remote or "").split("%")[0])
    except ValueError:
        return False
    return peer.is_loopback and not any(h in request.headers for h in PROXY_HEADERS)


def operator_request(request: web.Request, token: str, *, loopback_without_token: bool = False) -> bool:
    """Whether the request is the operator's: it carries `token` as `Authorization: Bearer`. A request with
    another bearer token is refused (401), so a misconfigured monitor is noticed rather than served the public
    view. With no token configured and `loopback_without_token`, a direct connection from this host counts."""
    sent = bearer(request)
    if sent is not None:
        if token and hmac.compare_digest(sent.encode(), token.encode()):
            return True
        raise ApiError(401, "unauthorized", f"invalid operator token: send the value of {OPERATOR_TOKEN_ENV} as "
                       "Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"})
    return not token and loopback_without_token and direct_loopback(request)


def require_operator(request: web.Request, token: str) -> None:
    """401/403 unless the request is the operator's (see `operator_request`, loopback allowed without a token)."""
    if operator_request(request, token, loopback_without_token=True):
        return
    if token:
        raise ApiError(401, "unauthorized", f"{request.path} is for the operator: send the value of "
                       f"{OPERATOR_TOKEN_ENV} as Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"})
    raise ApiError(403, "forbidden", f"{request.path} answers only connections from this host while "
                   f"{OPERATOR_TOKEN_ENV} is not set; set it to reach {request.path} from elsewhere")


def route_label(request: web.Request) -> str:
    """The canonical pattern of the route that matched (`/items/{id}`), or "unmatched"."""
    route = getattr(request.match_info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "unmatched"


class Metrics:
    """The service's Prometheus metrics on a private `CollectorRegistry` (one per app, so tests don't collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._events = Counter("astralis_events_received", "Events accepted into the inbox.",
                               ["org", "source", "channel"], registry=r)
        self._duplicates = Counter("astralis_events_duplicate", "Events refused as duplicates of a stored id.",
                                   ["org", "channel"], registry=r)
        self._dead = Counter("astralis_events_dead_lettered", "Events that exhausted their retries.",
                             ["org"], registry=r)
        self._decisions = Counter("astralis_decisions", "Decisions recorded.",
                                  ["org", "source", "status", "decided_by"], registry=r)
        self._decision_seconds = Histogram("astralis_decision_seconds", "Time to decide one event.",
                                           ["mode"], registry=r)
        self._llm_calls = Counter("astralis_llm_calls", "LLM consultations, by outcome (ok or error).",
                                  ["org", "provider", "outcome"], registry=r)
        self._llm_tokens = Counter("astralis_llm_tokens", "LLM tokens, by direction (input or output).",
                                   ["org", "provider", "direction"], registry=r)
        self._llm_latency = Histogram("astralis_llm_latency_seconds", "LLM latency per consultation.",
                                      ["provider"], buckets=_LLM_BUCKETS, registry=r)
        self._inbox = Gauge("astralis_inbox_events", "Inbox events by status, as of the last scrape.",
                            ["status"], registry=r)
        self._ruleset_loaded = Gauge("astralis_ruleset_loaded", "1 if the org has a good ruleset revision loaded.",
                                     ["org"], registry=r)
        self._ruleset_errors = Gauge("astralis_ruleset_errors", "Problems found in the org's latest ruleset files.",
                                     ["org"], registry=r)
        self._actions = Counter("astralis_actions", "Outbox action attempts, by type and outcome "
                                "(done, retry, dead, deferred).", ["org", "type", "outcome"], registry=r)
        self._action_seconds = Histogram("astralis_action_seconds", "Time of one action attempt.", ["type"],
                                         registry=r)
        self._outbox = Gauge("astralis_outbox_actions", "Outbox actions by status, as of the last scrape.",
                             ["status"], registry=r)
        self._refresh_errors = Counter("astralis_metrics_refresh_errors", "Scrapes whose gauge refresh failed.",
                                       registry=r)
        self._http_requests = Counter("astralis_http_requests", "HTTP requests, by route pattern and status.",
                                      ["method", "route", "status"], registry=r)
        self._http_seconds = Histogram("astralis_http_request_seconds", "HTTP request handling time.",
                                       ["method", "route"], registry=r)

    # -- events and decisions ------------------------------------------------------------------

    def event_received(self, org: str, source: str, channel: str) -> None:
        """Count an event accepted on `channel` (api, webhook_email, db_trigger, schedule, ...)."""
        self._events.labels(org=org, source=source, channel=channel).inc()

    def event_duplicate(self, org: str, channel: str) -> None:
        """Count an event refused because its id (idempotency key) was already stored."""
        self._duplicates.labels(org=org, channel=channel).inc()

    def event_dead_lettered(self, org: str) -> None:
        """Count an event moved to the dead letters after its last retry."""
        self._dead.labels(org=org).inc()

    def observe_decision(self, decision: Decision, mode: str, seconds: float) -> None:
        """Record one decision (mode: sync, queue, dry_run) and its LLM call, if any."""
        source = decision.input.get("source", "unknown")
        self._decisions.labels(org=decision.org, source=source, status=decision.status,
                               decided_by=decision.decided_by).inc()
        self._decision_seconds.labels(mode=mode).observe(max(0.0, seconds))
        llm = decision.llm
        if llm is None:
            return
        outcome = "ok" if llm.error is None else "error"
        self._llm_calls.labels(org=decision.org, provider=llm.provider, outcome=outcome).inc()
        self._llm_tokens.labels(org=decision.org, provider=llm.provider, direction="input").inc(max(0, llm.input_tokens))
        self._llm_tokens.labels(org=decision.org, provider=llm.provider, direction="output").inc(max(0, llm.output_tokens))
        self._llm_latency.labels(provider=llm.provider).observe(max(0.0, llm.latency_ms) / 1000.0)

    # -- gauges --------------------------------------------------------------------------------

    def set_inbox_depth(self, counts: Mapping[str, int]) -> None:
        """Replace the inbox gauge with `counts` by status; a status absent from `counts` disappears."""
        self._inbox.clear()
        for status, n in counts.items():
            self._inbox.labels(status=status).set(n)

    def action_attempt(self, org: str, action_type: str, outcome: str, seconds: float | None) -> None:
        """Count one attempt of an outbox action (done, retry, dead, deferred) and time it."""
        self._actions.labels(org=org, type=action_type, outcome=outcome).inc()
        if seconds is not None:
            self._action_seconds.labels(type=action_type).observe(max(0.0, seconds))

    def set_outbox_depth(self, counts: Mapping[str, int]) -> None:
        """Replace the outbox gauge with `counts` by status."""
        self._outbox.clear()
        for status, n in counts.items():
            self._outbox.labels(status=status).set(n)

    def set_org_status(self, org: str, loaded: bool, errors: int) -> None:
        """Record whether `org` has a good revision loaded and how many problems its files have."""
        self._ruleset_loaded.labels(org=org).set(1 if loaded else 0)
        self._ruleset_errors.labels(org=org).set(errors)

    def forget_org(self, org: str) -> None:
        """Drop `org`'s ruleset gauges (its folder was removed)."""
        for gauge in (self._ruleset_loaded, self._ruleset_errors):
            gauge.remove(org)  # a no-op for an org never set

    async def render(self, refresh: Callable[[], Awaitable[None]] | None = None) -> tuple[bytes, str]:
        """The exposition text and its content type, after awaiting `refresh` (which sets the gauges).

        A failing refresh is logged and counted, and the inbox gauge is left out of this scrape (absent
        rather than stale); the counters are still served.
        """
        if refresh is not None:
            try:
                await refresh()
            except Exception:
                log.exception("metrics refresh failed; inbox gauges left out of this scrape")
                self._refresh_errors.inc()
                self._inbox.clear()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # -- HTTP ----------------------------------------------------------------------------------

    def http_middleware(self) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
        """An aiohttp middleware counting and timing requests by method, route pattern and status."""

        @web.middleware
        async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            method = request.method if request.method in _METHODS else "other"
            route = route_label(request)
            started = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                # A cancelled request (client gone) is counted as a 500 too: it used the server's time.
                self._http_requests.labels(method=method, route=route, status=str(status)).inc()
                self._http_seconds.labels(method=method, route=route).observe(time.perf_counter() - started)

        return metrics_middleware
