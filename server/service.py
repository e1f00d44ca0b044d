"""The durable processing path: inbox (group commit) → workers with leases → agent → one decision per event.

Delivery semantics: at-least-once processing, exactly one stored decision per event. An event is acknowledged
only after the transaction that put it in the inbox has committed (with `synchronous=FULL`, after the WAL
fsync). Many requests arriving while a commit is in flight share the next commit (group commit), so the
acknowledgement rate is not capped at one fsync per event. Workers lease events; a lease is renewed while the
event is being decided and expires if the process dies, so a restarted (or another) process takes the event
again. `complete_event` refuses a second decision for an event, so a decision made twice (a lease that expired
under a slow LLM call) is stored once. An event that keeps failing is dead-lettered with its error after
`max_attempts` claims — a crash counts as a failed attempt, so a poison event cannot crash-loop the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from adapters.bullmq_queue import QueueUnavailable
from adapters.sqlite_store import Accepted, Claimed, InboxItem, SQLiteStore
from adapters.stores import unavailable
from engine.agent import Agent, UnknownOrg
from engine.models import Decision, Event, new_id
from server import logs
from server.metrics import Metrics
from server.outbox import OutboxRunner

log = logging.getLogger("astralis.worker")

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Batches concurrent writes into one transaction: while one commit is in flight, new items wait for the
    next one. `write(items)` returns one result per item, in order.

    A failure stays with the item that caused it: when a batch's write raises, the batch is written again in
    halves, down to single items, so every other item is stored and answered as if it had come alone and only
    the bad one's waiter gets the exception (one bad row among n costs about 2·log2(n) extra transactions).
    `split(exc)` False keeps a failure whole, for errors no item causes (the store is unreachable): every
    waiter of the batch learns at once that nothing was written, instead of n retries against a dead store.
    """

    def __init__(self, write: Callable[[list[T]], Awaitable[Sequence[R]]], *, max_batch: int = 256,
                 split: Callable[[Exception], bool] | None = None) -> None:
        self._write = write
        self._max = max_batch
        self._split = split or (lambda exc: True)
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Write `item` with the next batch; return its result once the batch has committed."""
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return await asyncio.shield(fut)

    async def _run(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._max], self._pending[self._max:]
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._write([item for item, _ in batch])
        except Exception as exc:
            if len(batch) > 1 and self._split(exc):
                # The transaction rolled back: nothing of the batch was written. Find the item at fault.
                log.warning("a batch of %d writes failed (%s: %s); writing it again in parts", len(batch),
                            type(exc).__name__, exc)
                half = len(batch) // 2
                await self._commit(batch[:half])
                await self._commit(batch[half:])
                return
            for _, fut in batch:  # every waiter of the batch learns that nothing was written
                if not fut.done():
                    fut.set_exception(exc)
        else:
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)

    @property
    def busy(self) -> bool:
        """True while a batch is being written or waiting to be."""
        return bool(self._pending) or (self._task is not None and not self._task.done())

    async def drain(self) -> None:
        """Wait until every submitted item has been written."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)


def _not_outage(exc: Exception) -> bool:
    """Whether a failed batch write may be the fault of one of its items (not an unreachable store)."""
    return not unavailable(exc)


class OutboxHandoff:
    """The agent's executor in the service: executing a decision means recording its actions in the outbox,
    which `complete_event` does in the same transaction as the decision (the action runners read from there)."""

    async def execute(self, decision: Decision) -> None:
        """Mark the decision's actions as handed to the outbox."""
        decision.trace["execution"] = "actions recorded in the outbox, keyed by their idempotency keys"


@dataclass
class Processing:
    """Tunables of the worker side."""

    workers: int = 16
    action_workers: int = 8
    """Outbox actions run at once by this process."""
    lease_seconds: float = 30.0
    max_attempts: int = 5
    retry_base_seconds: float = 1.0
    poll_seconds: float = 0.5
    shutdown_grace_seconds: float = 10.0
    stream_retention_seconds: float = 7 * 24 * 3600
    """How long live-stream entries stay available for Last-Event-ID resumes."""


def process_owner() -> str:
    """This process's lease-owner name: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{new_id('w')[2:10]}"


def owner_is_dead(owner: str) -> bool:
    """True when `owner` was a process on this host that no longer runs (its leases can be taken at once)."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Service:
    """Accepts events durably, decides them with the agent (inline or by workers) and records the result."""

    def __init__(self, store: SQLiteStore, agent: Agent, metrics: Metrics, *,
                 processing: Processing | None = None) -> None:
        self.store = store
        self.agent = agent
        self.metrics = metrics
        self.cfg = processing or Processing()
        self.owner = process_owner()
        # A batch that fails is written again in parts, so one bad row fails its own request only; an
        # unreachable store fails the whole batch at once.
        self._accept: GroupCommit[InboxItem, Accepted] = GroupCommit(store.accept_events, split=_not_outage)
        self._complete: GroupCommit[Decision, tuple[Decision, bool]] = GroupCommit(store.complete_events,
                                                                                  split=_not_outage)
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._inflight: dict[tuple[str, str], asyncio.Task[Any]] = {}
        self._sync: set[tuple[str, str]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._slots = asyncio.Semaphore(self.cfg.workers)
        self.outbox: OutboxRunner | None = None
        """Runs the actions of executed decisions (started with the workers)."""
        self.queue: Any = None
        """The BullMQ queue (`server.queue.BullMQBackend`) when the service runs on Redis; else events are
        claimed from the inbox by this process's own dispatcher."""

    # ---- lifecycle -------------------------------------------------------------------------------------

    async def start(self, *, workers: bool = True) -> None:
        """Recover events left by dead processes, then start the worker loop and the lease keeper."""
        owners = await self.store.lease_owners()
        recovered = await self.store.recover_events(dead_owners=[o for o in owners if owner_is_dead(o)],
                                                    max_attempts=self.cfg.max_attempts)
        if recovered:
            log.info("recovered %d unfinished events from a previous run", recovered)
        self._tasks.append(asyncio.create_task(self._keeper(), name="lease-keeper"))
        if not workers:
            return
        # Every deciding process runs the outbox, whichever queue feeds it: a decision's actions are only
        # recorded in the outbox with it, and nothing else executes them.
        if self.outbox is not None:
            action_owners = await self.store.action_owners()
            await self.outbox.start(dead_owners=[o for o in action_owners if owner_is_dead(o)])
        if self.queue is not None:
            await self.queue.start(self)
        else:
            self._tasks.append(asyncio.create_task(self._dispatch(), name="dispatcher"))

    async def stop(self) -> None:
        """Stop claiming; let in-flight events finish for the grace period; give the rest back to the queue."""
        self._stopping = True
        self._wake.set()
        if self.queue is not None:  # no new jobs; running ones finish within the grace period
            await self.queue.stop(self.cfg.shutdown_grace_seconds)
        inflight = list(self._inflight.values())
        if inflight:
            _, pending = await asyncio.wait(inflight, timeout=self.cfg.shutdown_grace_seconds)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # Writes already handed to a group commit finish (shielded from the cancelled waiters) before the
        # leases are released and the store closes.
        await self._accept.drain()
        await self._complete.drain()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        released = await self.store.release_events(self.owner)
        if released:
            log.info("gave %d unfinished events back to the queue", released)
        if self.outbox is not None:
            await self.outbox.stop(self.cfg.shutdown_grace_seconds)

    # ---- accepting ------------------------------------------------------------------------------------

    async def accept(self, event: Event, *, channel: str, priority: int = 3, lease: bool = False,
                     signature: str | None = None, enqueue: bool = True) -> Accepted:
        """Durably accept one event (group commit). With `lease`, it is accepted already claimed by this
        process for synchronous processing (crash: the lease expires and a worker takes it). With a BullMQ
        queue, a waiting event (new, or a repeat still waiting) is then queued: `QueueUnavailable` when Redis is
        away — the event is in the inbox all the same, and the sweeper queues it once Redis is back."""
        item = InboxItem(event, priority=priority, channel=channel,
                         lease_owner=self.owner if lease else None, lease_seconds=self.cfg.lease_seconds,
                         signature=signature)
        acc = await self._accept.submit(item)
        if acc.new:
            self.metrics.event_received(event.org, str(event.source), channel)
            if not lease:
                self._wake.set()
        else:
            self.metrics.event_duplicate(event.org, channel)
        if self.queue is not None and enqueue and not lease and acc.status in ("accepted", "new"):
            await self.queue.enqueue(event, priority)
        return acc

    async def emit(self, event: Event, *, channel: str = "internal") -> Accepted:
        """An event the service itself causes (schedules, timers, the agent's own actions): queued like any.
        With Redis away it waits in the inbox for the sweeper."""
        try:
            return await self.accept(event, channel=channel)
        except QueueUnavailable as exc:
            log.warning("event %s is in the inbox; queued once Redis is back: %s", event.id, exc)
            return Accepted(event.org, event.id, True, "accepted", None)

    def wake(self) -> None:
        """Tell the workers that new events may be ready (e.g. timers fired)."""
        self._wake.set()

    # ---- deciding -------------------------------------------------------------------------------------

    async def decide_now(self, event: Event) -> Decision | None:
        """Decide an event accepted with `lease=True`, here and now; None if it failed (it is retried by the
        workers, or dead-lettered)."""
        key = (event.org, event.id)
        self._sync.add(key)
        task = asyncio.current_task()
        assert task is not None
        self._inflight[key] = task
        try:
            return await self._decide(Claimed(event, 1, None), mode="sync")
        finally:
            self._inflight.pop(key, None)
            self._sync.discard(key)

    def claimed(self, event: Event, channel: str) -> Claimed:
        """An event this process accepted already leased to itself (`accept(..., lease=True)`)."""
        return Claimed(event, 1, channel)

    async def decide_claimed(self, claimed: Claimed) -> Decision | None:
        """Decide an event this process has leased (a queue job's), renewing its lease meanwhile; None if it
        failed (recorded in the inbox: retried or dead-lettered)."""
        key = (claimed.event.org, claimed.event.id)
        task = asyncio.current_task()
        assert task is not None
        self._inflight[key] = task
        try:
            return await self._decide(claimed, mode="queue")
        finally:
            self._inflight.pop(key, None)

    async def _decide(self, claimed: Claimed, *, mode: str) -> Decision | None:
        event = claimed.event
        decision_id = new_id("dec")
        t0 = time.perf_counter()
        with logs.bind(org=event.org, event_id=event.id, decision_id=decision_id):
            try:
                decision = await self.agent.process(event, decision_id=decision_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                permanent = isinstance(exc, UnknownOrg)
                status = await self.store.fail_event(
                    event.org, event.id, self.owner, f"{type(exc).__name__}: {exc}",
                    max_attempts=1 if permanent else self.cfg.max_attempts,
                    retry_in=self.cfg.retry_base_seconds * 2 ** (claimed.attempts - 1))
                if status == "dead":
                    self.metrics.event_dead_lettered(event.org)
                    log.error("event dead-lettered after %d attempts: %s", claimed.attempts, exc,
                              exc_info=not permanent)
                else:
                    log.warning("deciding failed (attempt %d), will retry: %s", claimed.attempts, exc, exc_info=True)
                return None
            stored, new = await self._complete.submit(decision)
            seconds = time.perf_counter() - t0
            if new:
                self.metrics.observe_decision(stored, mode, seconds)
                log.info("decided %s %s -> %s (%s, %.0f ms)", event.type, stored.intent, stored.status,
                         stored.decided_by, seconds * 1000)
                await self.notify(actions=stored.status == "EXECUTED" and bool(stored.actions))
            else:
                log.info("event was already decided as %s; this decision is discarded", stored.id)
            return stored

    async def _dispatch(self) -> None:
        """Claim ready events while there is capacity; each is decided in its own task."""
        while not self._stopping:
            busy = sum(1 for k in self._inflight if k not in self._sync)
            # Intake first: while acknowledgements are being committed (a burst), decide one event at a time,
            # so that senders are acknowledged promptly; the backlog is durable and drains after the burst.
            cap = 1 if self._accept.busy else self.cfg.workers
            free = cap - busy
            claimed: list[Claimed] = []
            if free > 0:
                try:
                    claimed = await self.store.claim_events(self.owner, limit=free,
                                                            lease_seconds=self.cfg.lease_seconds)
                except Exception:
                    log.exception("claiming events failed; retrying")
            if self._stopping:
                # stop() began during the claim and has already listed the tasks it waits for: a task started
                # now would outlive it (and the store). These events go back to the queue with the rest.
                break
            for c in claimed:
                key = (c.event.org, c.event.id)
                task = asyncio.create_task(self._run_claimed(c))
                self._inflight[key] = task
                task.add_done_callback(lambda _t, k=key: (self._inflight.pop(k, None), self._wake.set()))
            if not claimed or len(claimed) == free:
                # Nothing ready, or every slot taken: wait for new events or a free slot (or poll).
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.cfg.poll_seconds)

    async def _run_claimed(self, claimed: Claimed) -> None:
        try:
            await self._decide(claimed, mode="queue")
        except asyncio.CancelledError:
            raise
        except Exception:  # a store failure: the lease expires and the event is decided again
            log.exception("recording the decision of %s failed; the event stays in the inbox", claimed.event.id)

    async def _keeper(self) -> None:
        """Renew this process's leases and take back expired ones (another process died), periodically."""
        period = max(0.2, self.cfg.lease_seconds / 3)
        pruned_at = 0.0
        while True:
            await asyncio.sleep(period)
            try:
                await self.store.renew_leases(self.owner, list(self._inflight), self.cfg.lease_seconds)
                if await self.store.recover_events(max_attempts=self.cfg.max_attempts):
                    self._wake.set()
                if time.monotonic() - pruned_at > 3600:
                    pruned_at = time.monotonic()
                    cutoff = datetime.now(UTC) - timedelta(seconds=self.cfg.stream_retention_seconds)
                    await self.store.prune_stream(cutoff)
            except Exception:
                log.exception("lease upkeep failed")

    # ---- approvals and the live stream ----------------------------------------------------------------

    async def notify(self, *, actions: bool = True) -> None:
        """Wake the live-stream readers (something was recorded) and, when it may have put `actions` in the
        outbox, the outbox runner."""
        if actions and self.outbox is not None:
            self.outbox.wake()
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_change(self, seconds: float) -> None:
        """Until `notify` is called, or `seconds` (other processes write too: readers poll)."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), seconds)
