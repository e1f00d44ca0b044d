"""The BullMQ queue of the service (`--queue bullmq`, the default when a Redis is configured).

The inbox stays the record of what was accepted: an event is written there first (group commit), exactly as with
the in-process queue, and then added to BullMQ as a job whose id is the event's (`adapters.bullmq_queue`), with
its priority (urgent first), and the attempts and backoff of the service. Worker processes on any machine consume
the jobs (`EventConsumer`, `--workers` at a time): each job claims its event in the store
(`claim_event`), decides it and records the decision in one transaction, as the in-process workers do. So:

- an event queued twice is one job, and an event decided twice (a job redelivered after its worker died) is
  recorded once (`complete_events` refuses a second decision; the outbox's idempotency keys hold across
  processes);
- a job for an event another live worker holds fails this attempt and is retried with backoff; one for an event
  already decided or dead-lettered completes at once;
- a job added by the host platform's Node workers (any job name; source `WORKER`) is accepted into the inbox by
  the worker that takes it, then decided the same way;
- nothing accepted waits on Redis: events that reached the inbox without a job (written while Redis was away,
  a timer, a schedule, a pipeline move) are found by the sweeper (`waiting_events`) and queued; an event still
  waiting whose job has finished (failed after its attempts while another worker held it, say) gets its job
  run again (`EventQueue.ensure`).

Decisions can also be published for Node workers (`DecisionFeed`: queue `<prefix>-decisions`). The feed follows
each org's stream (the store's record of new decisions) from a cursor kept in the store, so a decision made
while Redis was away is published once it is back; every deciding process runs it, and the decision id as job
id keeps each decision one job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from adapters.bullmq_queue import DecisionPublisher, EventConsumer, EventQueue, JobInfo, QueueUnavailable
from engine.models import Event

if TYPE_CHECKING:
    from server.service import Service

log = logging.getLogger("astralis.queue")

__all__ = ["BullMQBackend", "EventBusy", "QueueUnavailable"]


class EventBusy(RuntimeError):
    """The job's event is being decided by another live worker: this attempt fails and BullMQ retries later."""


class BullMQBackend:
    """The service's queue on BullMQ: enqueue accepted events, consume them in this process (when it decides),
    sweep the inbox for events without a job, and publish decisions."""

    def __init__(self, redis_url: str, *, prefix: str = "astralis", concurrency: int = 16, attempts: int = 5,
                 backoff_seconds: float = 1.0, lock_ms: int = 30_000, sweep_seconds: float = 2.0) -> None:
        self.redis_url = redis_url
        self.events_name = f"{prefix}-events"
        self.queue = EventQueue(redis_url, name=self.events_name)
        self.concurrency = concurrency
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.lock_ms = lock_ms
        self.sweep_seconds = sweep_seconds
        self.consumer: EventConsumer | None = None
        self._service: Service | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def enqueue(self, event: Event, priority: int) -> None:
        """Add the event's job (a no-op when it exists). Raises `QueueUnavailable` when Redis is away."""
        await self.queue.add(event, priority=priority, attempts=self.attempts, backoff_seconds=self.backoff_seconds)

    async def start(self, service: Service) -> None:
        """Consume jobs and sweep the inbox, deciding with `service`."""
        self._service = service
        self.consumer = EventConsumer(self.redis_url, self._on_job, name=self.events_name,
                                      concurrency=self.concurrency, lock_duration_ms=self.lock_ms,
                                      stalled_interval_ms=self.lock_ms)
        self.consumer.start()
        self._sweeper = asyncio.create_task(self._sweep(), name="queue-sweeper")

    async def stop(self, grace_seconds: float) -> None:
        """Stop taking jobs; let running ones finish within the grace period (the rest are redelivered)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.consumer is not None:
            await self.consumer.close(grace_seconds)

    async def close(self) -> None:
        """Close the connections (after `stop`)."""
        await self.queue.close()

    async def _on_job(self, event: Event, job: JobInfo) -> None:
        service = self._service
        assert service is not None
        store = service.store
        claimed, status = await store.claim_event(event.org, event.id, service.owner,
                                                  lease_seconds=service.cfg.lease_seconds)
        if status == "missing":  # added straight to the queue (the Node platform): into the inbox first
            acc = await service.accept(event, channel="bullmq", lease=True, enqueue=False)
            if acc.new:
                claimed, status = service.claimed(event, "bullmq"), "claimed"
            else:
                claimed, status = await store.claim_event(event.org, event.id, service.owner,
                                                          lease_seconds=service.cfg.lease_seconds)
        if status in ("decided", "dead"):
            return
        if claimed is None:
            raise EventBusy(f"event {event.id} of {event.org} is {status} by another worker; retried later")
        decision = await service.decide_claimed(claimed)
        if decision is None:
            info = await store.event_info(event.org, event.id)
            if info is not None and info["status"] == "dead":
                return  # dead-lettered in the inbox, with its error; BullMQ has nothing more to do
            raise RuntimeError(f"deciding event {event.id} failed; it is retried")

    async def _sweep(self) -> None:
        """Queue every waiting inbox event that is older than a sweep period (its own job, if it has one, makes
        this a no-op)."""
        while True:
            await asyncio.sleep(self.sweep_seconds)
            service = self._service
            assert service is not None
            try:
                cutoff = datetime.now(UTC) - timedelta(seconds=self.sweep_seconds)
                waiting = await service.store.waiting_events(received_before=cutoff)
                for event, priority in waiting:
                    await self.queue.ensure(event, priority=priority, attempts=self.attempts,
                                            backoff_seconds=self.backoff_seconds)
            except QueueUnavailable as exc:
                log.warning("queue sweep: %s", exc)
            except Exception:
                log.exception("queue sweep failed; retrying")

    async def depth(self) -> dict[str, Any]:
        """Jobs per state (for health and metrics)."""
        return await self.queue.counts()


class DecisionFeed:
    """Publishes every new decision on `<prefix>-decisions` (job `"decision"`, the record as data, the decision id
    as job id), following each org's stream from a cursor in the store (`settings`), at least once and — the job
    id deduplicates — as one job per decision. Starts from the stream's head the first time (what was decided
    before the feed was turned on is not published)."""

    def __init__(self, redis_url: str, store: Any, orgs: Any, *, prefix: str = "astralis",
                 every_seconds: float = 0.5) -> None:
        self.publisher = DecisionPublisher(redis_url, name=f"{prefix}-decisions")
        self.store = store
        self.orgs = orgs
        self.every_seconds = every_seconds
        self._key = f"decision_feed:{prefix}:"
        self._down = False

    async def run(self) -> None:
        """Publish until cancelled."""
        try:
            while True:
                for org in list(self.orgs()):
                    try:
                        await self._org(org)
                    except QueueUnavailable as exc:
                        if not self._down:
                            log.warning("decisions not published while Redis is away (they will be): %s", exc)
                        self._down = True
                        break
                    except Exception:
                        log.exception("publishing the decisions of %s failed; retrying", org)
                else:
                    if self._down:
                        log.info("Redis is back: publishing decisions again")
                    self._down = False
                await asyncio.sleep(self.every_seconds)
        finally:
            await self.publisher.close()

    async def _org(self, org: str) -> None:
        key = self._key + org
        cursor = await self.store.get_setting(key)
        if cursor is None:
            await self.store.set_setting(key, str(await self.store.stream_head(org)))
            return
        last = int(cursor)
        while True:
            entries = await self.store.stream_after(org, last, limit=200)
            if not entries:
                return
            for seq, _kind, payload in entries:
                if payload.get("new"):
                    await self.publisher.publish(payload["decision"])
                last = seq
            await self.store.set_setting(key, str(last))
