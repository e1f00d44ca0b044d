"""`astralis worker`: the deciding side without HTTP, for a front (`astralis serve --workers 0`) that only
accepts. Both share the SQLite file (WAL); workers in any number of processes lease events from the same
inbox, so deciding scales and restarts independently of accepting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from adapters.stores import open_store
from server.app import (
    Settings,
    background,
    close_providers,
    config_sync,
    describe,
    load_registry,
    make_agent,
    make_outbox,
    make_providers,
    make_queue,
    open_http,
    open_limits,
)
from server.metrics import Metrics
from server.service import Service

log = logging.getLogger("astralis.worker")


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Decide queued events until SIGTERM/SIGINT (or `stop` is set); then finish or give back in-flight ones."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    store = await open_store(settings.db, synchronous=settings.synchronous)
    try:
        metrics = Metrics()
        registry = await load_registry(settings, metrics)
        providers = make_providers(registry, settings.llm)
        limits = open_limits(settings)
        service = Service(store, make_agent(registry, providers, store, limits), metrics,
                          processing=settings.processing)
        service.queue = make_queue(settings)
        session = await open_http(settings)  # egress-guarded: the operator's allow-list, never the service itself
        service.outbox = make_outbox(settings, service, registry, store, metrics, lambda: session)
        await service.start(workers=True)
        sync = config_sync(settings, service, registry, store, metrics)
        tasks = background(settings, service, registry, store, metrics, sync)
        log.info("worker %s: %s", service.owner, describe(settings, deciding=True, outbox=service.outbox is not None))
        log.info("worker %s deciding for: %s", service.owner, ", ".join(registry.orgs) or "no orgs")
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await service.stop()
        if service.queue is not None:
            await service.queue.close()
        await session.close()
        await close_providers(providers)
        if limits is not None:
            await limits.close()
        if sync is not None:
            await sync.close()
    finally:
        await store.close()
