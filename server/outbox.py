"""The outbox runner: executes the actions of executed decisions, exactly once in effect.

A decision's actions are recorded in the outbox in the same transaction as the decision (`complete_events`,
approvals). The runner leases due actions, runs each through the executor for its type and records the
outcome: done; a transient failure retried after an exponential backoff with jitter; a permanent failure
(or the last attempt) dead-lettered — the decision becomes FAILED with the reason and the org's escalation
address hears of it. A runner that dies mid-action loses its lease, and the action is tried again with the
same idempotency key: every executor records its effect under that key (intakes, calendar events, in-app
notifications) or sends it along (the automation's `Idempotency-Key`, the e-mail's `Message-ID`), so an
attempt repeated after a crash has no second effect inside Astralis and can be recognised outside it.

The store may be away for a while (a restart, a failover, a full disk): the runner outlives it. Claiming backs off
while it fails; an outcome that cannot be written is written again with a backoff for as long as the action's
lease would last, and past that given up — the lease then runs out and the action runs again under its key.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiohttp

from adapters.secrets import SecretResolver
from adapters.sqlite_store import SQLiteStore
from engine.config import Execution
from engine.loader import OrgBundle
from engine.plan import escalation_action
from engine.ports import ActionDeferred, ActionExecutor, ActionFailed, ActionJob
from server import logs
from server.metrics import Metrics

log = logging.getLogger("astralis.outbox")

T = TypeVar("T")
STORE_BACKOFF_SECONDS = 0.1
"""The first wait after the store failed (claiming, or writing an outcome); doubled at each failure in a row."""
STORE_BACKOFF_MAX_SECONDS = 5.0


def build_executors(store: SQLiteStore, bundles: Callable[[str], OrgBundle | None],
                    session: Callable[[], aiohttp.ClientSession], *, public_url: str = "",
                    secrets: SecretResolver | None = None) -> dict[str, ActionExecutor]:
    """The executor of every action type, wired to the store, the active configs and the HTTP session
    (`public_url`: where workflows call back; `secrets`: resolves each org's secret names, within its prefix)."""
    from adapters.automations import AutomationTrigger
    from adapters.calendar import CalendarManager
    from adapters.notify import NotificationDispatcher
    from adapters.pipelines import PipelineAssigner

    calendar = CalendarManager(store, bundles)
    notify = NotificationDispatcher(store, bundles, session, secrets=secrets)
    executors: dict[str, ActionExecutor] = {
        "ASSIGN_PIPELINE": PipelineAssigner(store, bundles),
        "TRIGGER_AUTOMATION": AutomationTrigger(bundles, session, callback_base=public_url, secrets=secrets),
        "CREATE_EVENT": calendar, "UPDATE_EVENT": calendar, "CANCEL_EVENT": calendar,
        "SEND_NOTIFICATION": notify, "ESCALATE": notify,
    }
    return executors


class OutcomeLost(Exception):
    """An action's outcome the store did not take within the action's lease (logged where it is given up)."""


def backoff_delay(execution: Execution, failures: int, *, rand: Callable[[], float] = random.random,
                  retry_after: float | None = None) -> float:
    """Seconds to wait after the `failures`-th failed attempt: `backoff_seconds * 2**(failures-1)` capped at
    `backoff_max_seconds`, times a random factor in [0.5, 1] (equal jitter). A server's Retry-After is
    honoured when longer (up to the cap)."""
    ceiling = min(execution.backoff_max_seconds, execution.backoff_seconds * 2 ** max(0, failures - 1))
    delay = ceiling * (0.5 + 0.5 * rand())
    if retry_after is not None:
        delay = max(delay, min(retry_after, execution.backoff_max_seconds))
    return delay


class OutboxRunner:
    """Leases due outbox actions and runs them with their executors, `concurrency` at a time."""

    def __init__(self, store: SQLiteStore, executors: Mapping[str, ActionExecutor],
                 bundles: Callable[[str], OrgBundle | None], metrics: Metrics, *, owner: str,
                 concurrency: int = 8, lease_seconds: float = 60.0, poll_seconds: float = 1.0,
                 rand: Callable[[], float] = random.random,
                 on_change: Callable[[], Awaitable[None]] | None = None) -> None:
        self.store = store
        self.executors = dict(executors)
        self.bundles = bundles
        self.metrics = metrics
        self.owner = owner
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self._rand = rand
        self.on_change = on_change
        self._wake = asyncio.Event()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.store_failures = 0
        """Store calls that raised since the runner started (claims, outcomes, lease upkeep): for logs and tests."""

    async def start(self, *, dead_owners: list[str] | None = None) -> None:
        """Take back the actions of runners known dead, then start running."""
        if dead_owners:
            n = await self.store.recover_actions(dead_owners=dead_owners)
            if n:
                log.info("resumed %d actions interrupted by a previous run", n)
        self._tasks.append(asyncio.create_task(self._loop(), name="outbox"))
        self._tasks.append(asyncio.create_task(self._keeper(), name="outbox-keeper"))

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop claiming; let running actions finish for the grace period; give the rest back."""
        self._stopping = True
        self._wake.set()
        running = list(self._inflight.values())
        if running:
            _, pending = await asyncio.wait(running, timeout=grace_seconds)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        released = await self.store.recover_actions(release_owner=self.owner)
        if released:
            log.info("gave %d running actions back to the outbox", released)

    def wake(self) -> None:
        """New actions may be due (a decision was executed or approved)."""
        self._wake.set()

    async def idle(self, within: float = 10.0) -> bool:
        """Wait until nothing is running and nothing in the outbox falls due in the next `within` seconds
        (retries included) — tests and tools; False if that does not happen within them."""
        deadline = time.monotonic() + within
        horizon = datetime.now(UTC) + timedelta(seconds=within)
        while time.monotonic() < deadline:
            depth = await self.store.outbox_depth()
            due = await self.store.next_action_due()
            if not self._inflight and depth["running"] == 0 and (due is None or due > horizon):
                return True
            await asyncio.sleep(0.02)
        return False

    # ---- the loop -----------------------------------------------------------------------------------

    async def _loop(self) -> None:
        claim_failures = 0  # in a row: the wait before claiming again grows while the store is away
        while not self._stopping:
            free = self.concurrency - len(self._inflight)
            jobs: list[ActionJob] = []
            if free > 0:
                try:
                    jobs = await self.store.claim_actions(self.owner, limit=free, lease_seconds=self.lease_seconds)
                    claim_failures = 0
                except Exception as exc:
                    self.store_failures += 1
                    claim_failures += 1
                    delay = self._store_backoff(claim_failures)
                    log.warning("claiming actions failed (%s: %s); retrying in %.2f s", type(exc).__name__, exc, delay)
                    await asyncio.sleep(delay)
                    continue
            if self._stopping:
                if jobs:
                    with contextlib.suppress(Exception):  # else their leases run out: they run again, same keys
                        await self.store.recover_actions(release_owner=self.owner)
                break
            for job in jobs:
                task = asyncio.create_task(self._guarded(job))
                self._inflight[job.key] = task
                task.add_done_callback(functools.partial(self._done, job.key))
            if not jobs or len(jobs) == free:
                self._wake.clear()
                wait = self.poll_seconds
                with contextlib.suppress(Exception):
                    due = await self.store.next_action_due()
                    if due is not None:
                        wait = min(wait, max(0.005, (due - datetime.now(UTC)).total_seconds()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)

    async def _keeper(self) -> None:
        """Renew the leases of running actions; take back actions whose runner's lease expired."""
        period = max(0.2, self.lease_seconds / 3)
        while True:
            await asyncio.sleep(period)
            try:
                await self.store.renew_action_leases(self.owner, list(self._inflight), self.lease_seconds)
                if await self.store.recover_actions():
                    self._wake.set()
            except Exception:
                self.store_failures += 1
                log.exception("outbox lease upkeep failed")

    def _done(self, key: str, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(key, None)
        self._wake.set()  # a slot is free

    def _store_backoff(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th store failure in a row (doubling, capped, equal jitter)."""
        ceiling = min(STORE_BACKOFF_MAX_SECONDS, STORE_BACKOFF_SECONDS * 2 ** max(0, failures - 1))
        return ceiling * (0.5 + 0.5 * self._rand())

    async def _record(self, job: ActionJob, what: str, write: Callable[[], Awaitable[T]]) -> T:
        """Write an action's outcome; while the store fails, write it again after a backoff, for as long as the
        action's lease would last (the keeper renews it meanwhile, when the store answers). Past that, or when
        the runner is stopping, give up (`OutcomeLost`): the lease runs out and the action runs again under its
        key (its executor recognises the key: at least once, as after a crash)."""
        deadline = time.monotonic() + self.lease_seconds
        failures = 0
        while True:
            try:
                return await write()
            except Exception as exc:
                self.store_failures += 1
                failures += 1
                delay = self._store_backoff(failures)
                if self._stopping or time.monotonic() + delay > deadline:
                    log.error("%s attempt %d: writing %s failed %d times (%s: %s); given up, the action runs again "
                              "under its key when its lease runs out", job.type, job.attempt, what, failures,
                              type(exc).__name__, exc)
                    raise OutcomeLost(f"{job.key}: {what} not written") from exc
                log.warning("%s attempt %d: writing %s failed (%s: %s); again in %.2f s", job.type, job.attempt,
                            what, type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)

    async def _guarded(self, job: ActionJob) -> None:
        """Run one action; whatever goes wrong around it is logged here, never left in a task nobody awaits."""
        try:
            await self._run(job)
        except asyncio.CancelledError:
            raise
        except OutcomeLost:
            pass  # logged where it was given up
        except Exception:
            log.exception("%s %s: the runner failed around the action; it runs again under its key when its lease "
                          "runs out", job.type, job.key)

    def _execution(self, org: str) -> Execution:
        bundle = self.bundles(org)
        return bundle.policy.execution if bundle is not None else Execution()

    def _escalation(self, job: ActionJob, error: str) -> dict[str, Any] | None:
        """The failure notice for a dead-lettered action: to the org's escalation address and roles."""
        bundle = self.bundles(job.org)
        if bundle is None:
            return None
        reason = f"action {job.index} ({job.type}) of decision {job.decision_id} failed: {error}"
        params = escalation_action(bundle.policy, bundle.org, reason, 5).params
        if not params.get("address") and not params.get("to"):
            return None
        return {**params, "failed_action": job.key, "failed_type": job.type, "error": error}

    async def _run(self, job: ActionJob) -> None:
        with logs.bind(org=job.org, decision_id=job.decision_id, action=job.key):
            execution = self._execution(job.org)
            if job.attempt > execution.max_attempts:
                # Claimed more often than allowed: earlier attempts died with their runner (a crash loop).
                await self._dead(job, f"gave up after {job.attempt - 1} attempts that never finished "
                                      "(the runner stopped during each)", None)
                return
            executor = self.executors.get(job.type)
            if executor is None:
                await self._dead(job, f"no executor runs {job.type} actions", None)
                return
            t0 = time.perf_counter()
            try:
                result = await asyncio.wait_for(executor.run(job), execution.timeout_seconds)
            except asyncio.CancelledError:
                raise
            except ActionDeferred as d:
                until, reason = d.until, str(d)
                await self._record(job, "its deferral",
                                   lambda: self.store.defer_action(job.key, self.owner, until, reason))
                self.metrics.action_attempt(job.org, job.type, "deferred", None)
                log.info("%s deferred until %s: %s", job.type, until.isoformat(), reason)
            except ActionFailed as f:
                await self._failed(job, execution, str(f), permanent=f.permanent, retry_after=f.retry_after,
                                   seconds=time.perf_counter() - t0)
            except TimeoutError:
                await self._failed(job, execution, f"timed out after {execution.timeout_seconds:g} s",
                                   permanent=False, retry_after=None, seconds=time.perf_counter() - t0)
            except Exception as exc:  # an executor bug or an unexpected error: retried, and logged in full
                log.exception("%s attempt %d raised", job.type, job.attempt)
                await self._failed(job, execution, f"{type(exc).__name__}: {exc}", permanent=False,
                                   retry_after=None, seconds=time.perf_counter() - t0)
            else:
                seconds = time.perf_counter() - t0
                finished = await self._record(job, "its success", lambda: self.store.finish_action(
                    job.key, self.owner, result, duration_ms=seconds * 1000))
                if finished:
                    self.metrics.action_attempt(job.org, job.type, "done", seconds)
                    log.info("%s done (attempt %d, %.0f ms)", job.type, job.attempt, seconds * 1000)
                else:
                    log.warning("%s finished after its lease was lost; the other runner's outcome stands", job.type)

    async def _failed(self, job: ActionJob, execution: Execution, error: str, *, permanent: bool,
                      retry_after: float | None, seconds: float) -> None:
        if permanent or job.attempt >= execution.max_attempts:
            why = error if permanent else f"{error} (attempt {job.attempt} of {execution.max_attempts})"
            await self._dead(job, why, seconds)
            return
        delay = backoff_delay(execution, job.attempt, rand=self._rand, retry_after=retry_after)
        await self._record(job, "its failure", lambda: self.store.retry_action(
            job.key, self.owner, error, delay_seconds=delay, duration_ms=seconds * 1000))
        self.metrics.action_attempt(job.org, job.type, "retry", seconds)
        log.warning("%s attempt %d failed, retry in %.2f s: %s", job.type, job.attempt, delay, error)

    async def _dead(self, job: ActionJob, error: str, seconds: float | None) -> None:
        escalation = self._escalation(job, error)
        decision = await self._record(job, "its dead letter", lambda: self.store.kill_action(
            job.key, self.owner, error, duration_ms=seconds * 1000 if seconds is not None else None,
            escalation=escalation))
        self.metrics.action_attempt(job.org, job.type, "dead", seconds)
        log.error("%s dead-lettered: %s", job.type, error)
        if decision is not None:
            self._wake.set()  # the failure notice is due now
            if self.on_change is not None:
                await self.on_change()  # the live stream has a `failed` entry to show
