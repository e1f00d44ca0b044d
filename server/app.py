"""The aiohttp application factory: one typed AppKey per resource, each opened and closed in its own cleanup
context, in dependency order (store → rulesets → LLM clients → HTTP session → service → background loops)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiohttp import web

from adapters.egress import EgressPolicy
from adapters.egress import session as egress_session
from adapters.secrets import SecretResolver
from adapters.sqlite_store import SQLiteStore
from adapters.stores import open_store
from engine.agent import Agent
from engine.llm import LLMStage
from engine.loader import OrgBundle
from engine.ports import LLMProvider, StaticState
from engine.registry import Registry
from server import logs
from server.auth import KeyCache, Principal, RequestLimiter, bearer, too_many
from server.door import params_middleware
from server.errors import ApiError, Handler, error_middleware
from server.metrics import OPERATOR_TOKEN_ENV, Metrics
from server.outbox import OutboxRunner, build_executors
from server.service import OutboxHandoff, Processing, Service

log = logging.getLogger("astralis.app")


@dataclass
class Settings:
    """Everything `create_app` needs; the defaults are the embedded ones (SQLite file, in-process workers)."""

    db: str = "astralis.db"
    rulesets: Path = Path("rulesets")
    policies: Path = Path("policies")
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    max_body_bytes: int = 1024 * 1024
    requests_per_minute: int = 600
    burst: int | None = None
    webhook_requests_per_minute: int = 1200
    """Webhook deliveries a minute per org and sender address (bursts of a sixth of it); checked before the body
    is read, so a flood costs the service almost nothing and other orgs nothing."""
    key_cache_seconds: float = 1.0
    processing: Processing = field(default_factory=Processing)
    workers: bool = True
    watch: bool = True
    schedules: bool = True
    timers_poll_seconds: float = 1.0
    llm: Literal["policy", "off"] = "policy"
    webhook_tolerance_seconds: int = 300
    public_url: str = ""
    """The service's address as others reach it (automation callbacks, feed links); empty: relative paths."""
    clock: Callable[[], float] = time.time
    """Wall clock for webhook timestamps (tests move it)."""
    redis_url: str | None = None
    """Redis shared by the workers (`REDIS_URL`): rate limits and LLM circuit breakers count across processes."""
    queue: Literal["auto", "inprocess", "bullmq"] = "auto"
    """Where accepted events wait: the inbox claimed by this process's workers, or BullMQ (auto: BullMQ when a
    Redis is configured)."""
    publish_decisions: bool = False
    """Publish every new decision on `<prefix>-decisions` (BullMQ on the Redis) for the platform's Node workers."""
    redis_prefix: str = "astralis"
    """Prefix of this deployment's Redis keys (several deployments, or test runs, can share one Redis)."""
    operator_token: str = field(default_factory=lambda: os.environ.get(OPERATOR_TOKEN_ENV, ""))
    """`ASTRALIS_OPERATOR_TOKEN`: the bearer token of /metrics and the detailed /healthz (empty: /metrics answers
    only direct connections from this host, /healthz only ok or not)."""
    egress_allow: str = ""
    """Addresses and CIDR ranges actions may reach besides public ones (`ASTRALIS_EGRESS_ALLOW` / `--egress-allow`,
    e.g. "10.0.0.0/8,127.0.0.1"); loopback, private and link-local addresses are refused otherwise."""
    listen: tuple[tuple[str, int], ...] = ()
    """The (host, port) pairs this process serves on: actions never connect to them (set by `serve`)."""


SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", SQLiteStore)
REGISTRY = web.AppKey("registry", Registry)
LLM = web.AppKey("llm", dict)
HTTP = web.AppKey("http", aiohttp.ClientSession)
METRICS = web.AppKey("metrics", Metrics)
SERVICE = web.AppKey("service", Service)
KEYS = web.AppKey("keys", KeyCache)
LIMITER = web.AppKey("limiter", RequestLimiter)
WEBHOOK_LIMITER = web.AppKey("webhook_limiter", RequestLimiter)
CONFIG_LOCKS = web.AppKey("config_locks", dict)
CONFIG_SYNC = web.AppKey("config_sync", object)
"""The `server.config_sync.ConfigSync` of this process, present only with a Redis."""

PRINCIPAL = web.RequestKey("principal", Principal)
"""request[PRINCIPAL]: the `Principal` of the API key on /api/agent/* and /api/stream."""


def principal(request: web.Request) -> Principal:
    """The authenticated caller of an API-key route."""
    return request[PRINCIPAL]


# ---- resources, each in its own cleanup context ---------------------------------------------------------

async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = await open_store(settings.db, synchronous=settings.synchronous)
    app[STORE] = store
    app[KEYS] = KeyCache(store.api_key_by_hash, ttl=settings.key_cache_seconds)
    yield
    await store.close()


def report_org(metrics: Metrics, registry: Registry, org: str) -> None:
    """Publish whether `org` has an active revision and how many errors its last load had."""
    state = registry.state(org)
    metrics.set_org_status(org, state is not None and state.active is not None, len(state.errors) if state else 0)


async def load_registry(settings: Settings, metrics: Metrics) -> Registry:
    """Every org under the rulesets folder, loaded off the event loop; each finding logged."""
    registry = Registry(settings.rulesets, settings.policies)
    findings = await asyncio.to_thread(registry.load_all)  # one org's failure is its own (Registry.reload)
    for org, errs in findings.items():
        for e in errs:
            (log.error if e.severity == "error" else log.info)("%s", e, extra={"org": org})
        report_org(metrics, registry, org)
    log.info("rulesets loaded: %s", ", ".join(registry.orgs) or "none")
    for org in registry.orgs:
        compiled = registry.get(org)
        env = compiled.bundle.org.webhook_secret_env if compiled is not None else None
        if env and not os.environ.get(env):
            log.warning("%s is not set: the signed webhooks of org %s (email, form, booking, n8n) answer 401 until "
                        "it is", env, org, extra={"org": org})
    broken = [o for o in registry.known if (st := registry.state(o)) is not None and not st.ok]
    if broken:
        log.error("orgs not loaded, their files are broken (their errors are above; fixing a file reloads it): %s",
                  ", ".join(broken))
    return registry


async def _registry_ctx(app: web.Application) -> AsyncIterator[None]:
    app[REGISTRY] = await load_registry(app[SETTINGS], app[METRICS])
    yield


class Providers(dict[str, "LLMProvider | None"]):
    """LLM providers by name, made on first use when their API key is set: an org whose policy switches to
    another provider on a hot reload gets it without a restart. Empty for good with mode "off"."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def get(self, name: str, default: LLMProvider | None = None) -> LLMProvider | None:  # type: ignore[override]
        """The provider called `name`, made now if needed; None when it cannot be (no key, mode off)."""
        if name not in self:
            self[name] = self._make(name)
        return super().get(name) or default

    def _make(self, name: str) -> LLMProvider | None:
        if self.mode != "policy" or name == "none":
            return None
        env = f"{name.upper()}_API_KEY"
        if not os.environ.get(env):
            log.warning("a policy uses %s but %s is not set: ambiguous events go to the fallback rules", name, env)
            return None
        from adapters.llm import make_provider

        logs.register_secret(os.environ[env])
        return make_provider(name)


def make_providers(registry: Registry, mode: str) -> Providers:
    """The LLM providers, those the loaded policies name made now (so a missing key is reported at start)."""
    providers = Providers(mode)
    for name in sorted({c.bundle.policy.llm.provider for o in registry.orgs if (c := registry.get(o))}):
        providers.get(name)
    return providers


async def close_providers(providers: dict[str, LLMProvider | None]) -> None:
    """Close the providers' HTTP clients."""
    for p in providers.values():
        close = getattr(p, "aclose", None)
        if close is not None:
            await close()


async def _llm_ctx(app: web.Application) -> AsyncIterator[None]:
    providers = make_providers(app[REGISTRY], app[SETTINGS].llm)
    app[LLM] = providers
    yield
    await close_providers(providers)


async def open_http(settings: Settings) -> aiohttp.ClientSession:
    """The HTTP session of the action executors: every connection checked against the egress policy (the
    operator's allow-list; never this service's own addresses)."""
    policy = EgressPolicy.from_text(settings.egress_allow, listen=settings.listen, public_url=settings.public_url)
    await policy.learn()
    return egress_session(policy, timeout=aiohttp.ClientTimeout(total=30))


async def _http_ctx(app: web.Application) -> AsyncIterator[None]:
    session = await open_http(app[SETTINGS])
    app[HTTP] = session
    yield
    await session.close()


def open_limits(settings: Settings) -> Any:
    """The shared limits (`adapters.redis_limits.RedisLimits`) when a Redis is configured, else None (each
    process counts its own)."""
    if not settings.redis_url:
        return None
    from adapters.redis_limits import RedisLimits

    return RedisLimits(settings.redis_url, prefix=settings.redis_prefix)


def where(url: str) -> str:
    """A store or Redis URL as it may be logged: scheme, host, port, database and schema, never a user name or
    password (a file path is shown as it is)."""
    from urllib.parse import urlsplit

    if "://" not in url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    query = "&".join(q for q in parts.query.split("&") if q.startswith("schema="))
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def queue_kind(settings: Settings) -> Literal["inprocess", "bullmq"]:
    """The queue the settings select (`auto`: BullMQ when a Redis is configured)."""
    if settings.queue != "auto":
        return settings.queue
    return "bullmq" if settings.redis_url else "inprocess"


def describe(settings: Settings, *, deciding: bool, outbox: bool = True) -> str:
    """The start-up line of a service or worker process: which queue, store and Redis (prefix) it uses, and how
    many event and action runners it has (`outbox`: whether it has an outbox runner)."""
    queue = queue_kind(settings)
    redis = (f"Redis {where(settings.redis_url)} with prefix {settings.redis_prefix!r}" if settings.redis_url
             else "no Redis")
    runners = (f"{settings.processing.workers} event runners, "
               f"{settings.processing.action_workers if outbox else 0} action runners"
               if deciding else "no event or action runners (accepting only: `astralis worker` decides)")
    return f"queue {queue}, store {where(settings.db)}, {redis}; {runners}"


def make_queue(settings: Settings) -> Any:
    """The BullMQ queue (`server.queue.BullMQBackend`) when the settings ask for one, else None."""
    if queue_kind(settings) == "inprocess":
        return None
    if not settings.redis_url:
        raise ValueError("--queue bullmq needs a Redis: --redis-url or REDIS_URL")
    from server.queue import BullMQBackend

    p = settings.processing
    return BullMQBackend(settings.redis_url, prefix=settings.redis_prefix, concurrency=p.workers,
                         attempts=p.max_attempts, backoff_seconds=p.retry_base_seconds,
                         lock_ms=int(p.lease_seconds * 1000))


def make_agent(registry: Registry, providers: dict[str, Any], store: SQLiteStore, limits: Any) -> Agent:
    """The deciding agent of a service or worker process: actions to the outbox, live state from the store, and
    rate limits and circuit breakers in Redis when `limits` is set."""
    stage = LLMStage(providers, breakers=limits.breaker if limits is not None else None)
    return Agent(registry.get, stage, state=StaticState(), executor=OutboxHandoff(), state_source=store,
                 rate_limiter=limits.rate_limiter if limits is not None else None)


async def _service_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    registry = app[REGISTRY]
    limits = open_limits(settings)
    agent = make_agent(registry, app[LLM], app[STORE], limits)
    service = Service(app[STORE], agent, app[METRICS], processing=settings.processing)
    service.queue = make_queue(settings)
    service.outbox = make_outbox(settings, service, registry, app[STORE], app[METRICS], lambda: app[HTTP])
    app[SERVICE] = service
    await service.start(workers=settings.workers)
    log.info("service %s: %s", service.owner,
             describe(settings, deciding=settings.workers, outbox=service.outbox is not None))
    yield
    await service.stop()
    if service.queue is not None:
        await service.queue.close()
    if limits is not None:
        await limits.close()


def bundles_of(registry: Registry) -> Callable[[str], OrgBundle | None]:
    """org id → its active configuration (None when it has none loaded)."""
    def bundle(org: str) -> OrgBundle | None:
        compiled = registry.get(org)
        return compiled.bundle if compiled is not None else None
    return bundle


def make_outbox(settings: Settings, service: Service, registry: Registry, store: SQLiteStore, metrics: Metrics,
                session: Callable[[], aiohttp.ClientSession]) -> OutboxRunner:
    """The outbox runner of this process (it shares the service's lease-owner name and lease length, `--lease`)."""
    bundles = bundles_of(registry)
    secrets = SecretResolver(os.environ, lambda: registry.known)  # names under each org's own prefix only
    return OutboxRunner(store, build_executors(store, bundles, session, public_url=settings.public_url,
                                               secrets=secrets), bundles,
                        metrics, owner=service.owner, concurrency=settings.processing.action_workers,
                        lease_seconds=settings.processing.lease_seconds, on_change=service.notify)


def config_sync(settings: Settings, service: Service, registry: Registry, store: SQLiteStore,
                metrics: Metrics) -> Any:
    """The Redis notices that carry configuration updates to the workers on other machines
    (`server.config_sync.ConfigSync`), when a Redis is configured; else None."""
    if not settings.redis_url:
        return None
    from server.config_sync import ConfigSync

    async def reloaded(org: str, errors: list[Any]) -> None:
        report_org(metrics, registry, org)

    return ConfigSync(settings.redis_url, registry, store, prefix=settings.redis_prefix, origin=service.owner,
                      on_reload=reloaded)


def background(settings: Settings, service: Service, registry: Registry, store: SQLiteStore,
               metrics: Metrics, sync: Any = None) -> list[asyncio.Task[None]]:
    """Timers (reminder:due), SCHEDULE events from the policies' cron entries, the config file watcher, and the
    other workers' configuration notices (`sync`)."""
    from server.scheduler import CronScheduler
    from server.watcher import ConfigWatcher

    tasks = [asyncio.create_task(_timers(store, service, metrics, settings.timers_poll_seconds), name="timers")]
    if settings.schedules:
        def orgs() -> dict[str, Any]:
            return {o: c for o in registry.orgs if (c := registry.get(o)) is not None}

        cron = CronScheduler(orgs, lambda e: service.emit(e, channel="schedule"))
        tasks.append(asyncio.create_task(cron.run(), name="cron"))
    if settings.watch:
        async def reloaded(org: str, errors: list[Any]) -> None:
            report_org(metrics, registry, org)

        watcher = ConfigWatcher(registry, on_reload=reloaded)
        tasks.append(asyncio.create_task(watcher.run(), name="config-watcher"))
    if sync is not None:
        tasks.append(asyncio.create_task(sync.run(), name="config-sync"))
    if settings.publish_decisions and settings.workers:
        if not settings.redis_url:
            raise ValueError("--publish-decisions needs a Redis: --redis-url or REDIS_URL")
        from server.queue import DecisionFeed

        feed = DecisionFeed(settings.redis_url, store, lambda: registry.orgs, prefix=settings.redis_prefix)
        tasks.append(asyncio.create_task(feed.run(), name="decision-feed"))
    return tasks


async def _loops_ctx(app: web.Application) -> AsyncIterator[None]:
    sync = config_sync(app[SETTINGS], app[SERVICE], app[REGISTRY], app[STORE], app[METRICS])
    if sync is not None:
        app[CONFIG_SYNC] = sync
    tasks = background(app[SETTINGS], app[SERVICE], app[REGISTRY], app[STORE], app[METRICS], sync)
    listening: list[Any] = []
    if hasattr(app[STORE], "listen_db_triggers"):  # PostgreSQL: stream wake-ups and row changes by NOTIFY
        from server.pg_events import subscribe

        listening = await subscribe(app[STORE], app[SERVICE], app[REGISTRY])
    yield
    for callback in listening:
        await app[STORE].unlisten(callback)  # type: ignore[attr-defined]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if sync is not None:
        await sync.close()


async def _timers(store: SQLiteStore, service: Service, metrics: Metrics, every: float) -> None:
    while True:
        try:
            fired = await store.fire_due_timers(datetime.now(UTC))
            for e in fired:
                metrics.event_received(e.org, str(e.source), "timer")
            if fired:
                service.wake()
        except Exception:
            log.exception("firing timers failed; retrying")
        await asyncio.sleep(every)


# ---- middlewares ----------------------------------------------------------------------------------------

@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """API-key routes: a valid, unrevoked key → its principal; then the key's request rate limit."""
    path = request.path
    if not (path.startswith("/api/agent/") or path == "/api/stream"):
        return await handler(request)
    key = bearer(request)
    if key is None:
        # The dashboard's pages call the API with their session cookie (server/dashboard); a state-changing call
        # must carry the dashboard's header too, which another site's page cannot send, and must not come from
        # another site by the browser's own account (Origin, Sec-Fetch-Site).
        from server.dashboard import CSRF_HEADER, cross_site, session_principal

        session = await session_principal(request)
        if session is None:
            raise ApiError(401, "unauthorized", "missing API key: send Authorization: Bearer <key>",
                           headers={"WWW-Authenticate": "Bearer"})
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            if request.headers.get(CSRF_HEADER) != "1":
                raise ApiError(403, "forbidden", f"a dashboard session's {request.method} needs the header "
                               f"{CSRF_HEADER}: 1")
            if (why := cross_site(request)) is not None:
                raise ApiError(403, "forbidden", f"a dashboard session's cross-site {request.method} is refused: "
                               f"{why}")
        p: Principal | None = session
    else:
        p = await request.app[KEYS].principal(key)
    if p is None:
        raise ApiError(401, "unauthorized", "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    wait = request.app[LIMITER].take(p.key_id)
    if wait > 0:
        raise too_many(wait)
    request[PRINCIPAL] = p
    with logs.bind(org=p.org, request_id=request.headers.get("X-Request-Id")):
        return await handler(request)


# ---- the factory ----------------------------------------------------------------------------------------

def create_app(settings: Settings | None = None) -> web.Application:
    """The service as an aiohttp application (resources open on startup, close on cleanup)."""
    from server import (
        api,
        api_calendar,
        api_corrections,
        api_intakes,
        api_notifications,
        dashboard,
        openapi,
        stream,
        webhooks,
    )

    settings = settings or Settings()
    metrics = Metrics()
    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[error_middleware, metrics.http_middleware(), auth_middleware,
                                       params_middleware])
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[LIMITER] = RequestLimiter(settings.requests_per_minute, settings.burst)
    app[WEBHOOK_LIMITER] = RequestLimiter(settings.webhook_requests_per_minute)
    app[CONFIG_LOCKS] = {}
    for ctx in (_store_ctx, _registry_ctx, _llm_ctx, _http_ctx, _service_ctx, _loops_ctx):
        app.cleanup_ctx.append(ctx)
    api.setup(app)
    api_intakes.setup(app)
    api_notifications.setup(app)
    api_calendar.setup(app)
    api_corrections.setup(app)
    webhooks.setup(app)
    stream.setup(app)
    openapi.setup(app)
    dashboard.setup(app)
    return app


def new_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """The event loop to serve on: uvloop (libuv; much less overhead per request and per thread hand-off to
    SQLite) when installed and not refused with kind="asyncio", else the standard one."""
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(settings: Settings, host: str, port: int, *, loop: str = "auto") -> int:
    """Serve until SIGINT/SIGTERM; in-flight events finish or go back to the queue on the way out. Returns the
    exit code: 0 after a signal, 1 when the service could not start (the reason is logged)."""
    event_loop = new_loop(loop)
    log.info("serving on http://%s:%d (event loop: %s, database: %s)", host, port,
             type(event_loop).__module__.split(".")[0], where(settings.db))
    with asyncio.Runner(loop_factory=lambda: event_loop) as runner:
        return runner.run(serve(settings, host, port))


async def serve(settings: Settings, host: str, port: int, stop: asyncio.Event | None = None) -> int:
    """The body of `run`: start the app, serve until SIGTERM/SIGINT (or `stop`), then shut down in order.

    Whatever happens during start-up — a signal while the rulesets load, a store that cannot be opened — the
    resources opened so far are closed and the call returns, so the process always exits: a store's worker
    thread left open would keep the interpreter alive after a failed start, deaf to SIGTERM."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    settings = dataclasses.replace(settings, listen=(*settings.listen, (host, port)))  # actions never call us
    runner = web.AppRunner(create_app(settings), handle_signals=False, access_log=None,
                           shutdown_timeout=settings.processing.shutdown_grace_seconds)
    try:
        starting = asyncio.create_task(runner.setup(), name="startup")
        stopping = asyncio.create_task(stop.wait(), name="stop-signal")
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            log.info("stopped during start-up")
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
            return 0
        stopping.cancel()
        if (exc := starting.exception()) is not None:
            log.error("the service could not start: %s: %s", type(exc).__name__, exc, exc_info=exc)
            return 1
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as err:  # the port is taken, or the address is not this host's
            log.error("cannot listen on %s:%d: %s (choose another --port or $ASTRALIS_PORT)", host, port,
                      err.strerror or err)
            return 1
        await stop.wait()
        log.info("stopping (signal received)")
        return 0
    finally:
        await runner.cleanup()
        log.info("stopped")
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
