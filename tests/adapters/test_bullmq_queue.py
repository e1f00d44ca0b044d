"""The BullMQ adapter against a real Redis: de-duplication, priority order, retries with backoff, permanent
failure of malformed jobs, redelivery of a job whose worker was SIGKILLed, and a clear error when Redis is down.

Each test uses its own queue name and obliterates it afterwards, so concurrent runs do not collide. Outside CI
the Redis tests skip when 127.0.0.1:6379 does not answer; with CI=true they fail instead.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from bullmq import Job, Queue, UnrecoverableError

from adapters.bullmq_queue import (
    DecisionPublisher,
    EventConsumer,
    EventQueue,
    Handler,
    JobInfo,
    QueueUnavailable,
    bullmq_priority,
    decode_event_job_id,
    event_from_job,
    event_job_id,
)
from engine.config import Source
from engine.models import Event

REDIS_URL = os.environ.get("ASTRALIS_TEST_REDIS_URL", "redis://127.0.0.1:6379")
ROOT = Path(__file__).resolve().parents[2]


def redis_reachable(url: str = REDIS_URL) -> bool:
    """Whether something accepts connections at the Redis URL's host and port."""
    parts = urlparse(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=1):
            return True
    except OSError:
        return False


def require_redis() -> None:
    """Skip (or, under CI=true, fail) when Redis is not reachable."""
    if redis_reachable():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but Redis is not reachable at {REDIS_URL}")
    pytest.skip(f"Redis is not reachable at {REDIS_URL} (start redis-server, or set ASTRALIS_TEST_REDIS_URL)")


class Queues:
    """Creates queues, consumers and publishers on one unique queue name and cleans them all up."""

    def __init__(self) -> None:
        self.name = f"astralis-test-{uuid.uuid4().hex[:12]}"
        self.consumers: list[EventConsumer] = []
        self.closables: list[EventQueue | DecisionPublisher | Queue] = []

    def queue(self) -> EventQueue:
        q = EventQueue(REDIS_URL, name=self.name)
        self.closables.append(q)
        return q

    def raw(self) -> Queue:
        """A plain bullmq Queue on the same name, to add jobs the way another producer would."""
        q = Queue(self.name, {"connection": REDIS_URL})
        self.closables.append(q)
        return q

    def consumer(self, handler: Handler, **kw: Any) -> EventConsumer:
        c = EventConsumer(REDIS_URL, handler, name=self.name, **kw)
        self.consumers.append(c)
        c.start()
        return c

    async def cleanup(self) -> None:
        for c in self.consumers:
            await c.close(timeout=5)
        for q in self.closables:
            await q.close()
        wipe = Queue(self.name, {"connection": REDIS_URL})
        try:
            await wipe.obliterate(force=True)
        finally:
            await wipe.close()


@pytest.fixture
async def queues() -> AsyncIterator[Queues]:
    require_redis()
    q = Queues()
    try:
        yield q
    finally:
        await asyncio.wait_for(q.cleanup(), 30)


def event(n: int | str, **kw: Any) -> Event:
    return Event(id=f"evt_{n}", org=kw.pop("org", "acme"), source=kw.pop("source", Source.API),
                 type=kw.pop("type", "email:received"), data=kw.pop("data", {"n": n}), **kw)


async def wait_until(check: Callable[[], Any], within: float = 15.0) -> None:
    """Poll `check` (sync or async) until truthy, failing after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within}s")
        await asyncio.sleep(0.05)


# ---- without Redis ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_id", ["evt_1", "a:b:c", "100%", "50%3A", "x/y", "123", "é ü 😀", "%"])
def test_job_id_is_reversible_and_never_has_a_colon_or_is_an_integer(event_id: str) -> None:
    e = Event(id=event_id, org="acme.eu-1", source=Source.API, type="email:received")
    job_id = event_job_id(e)
    assert ":" not in job_id
    assert not job_id.isdigit()
    assert decode_event_job_id(job_id) == ("acme.eu-1", event_id)


def test_priority_mapping_puts_urgent_first() -> None:
    assert [bullmq_priority(p) for p in (5, 4, 3, 2, 1)] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="1–5"):
        bullmq_priority(6)


def test_job_shapes_become_events() -> None:
    ours = event(1)
    assert event_from_job("j", "event", {"event": ours.envelope()}, queue="q", default_org=None) == ours
    assert event_from_job("j", "anything", ours.envelope(), queue="q", default_org=None) == ours

    platform = event_from_job("42", "intake", {"type": "intake:created", "data": {"k": 1}}, queue="q",
                              default_org="acme")
    assert (platform.id, platform.org, platform.source, platform.type, platform.data) == (
        "q:42", "acme", Source.WORKER, "intake:created", {"k": 1})
    with_id = event_from_job("42", "intake", {"type": "intake:created", "org": "beta", "id": "p_1"}, queue="q",
                             default_org="acme")
    assert (with_id.id, with_id.org) == ("p_1", "beta")


@pytest.mark.parametrize(("data", "field"), [
    ({"type": "intake:created"}, "'org'"),
    ({"org": "acme", "data": {}}, "'type'"),
    ({"type": "Not A Type", "org": "acme"}, "'type'"),
    ({"event": {"org": "acme", "source": "NOPE", "type": "email:received"}}, "'source'"),
    ({"event": "evt_1"}, "'event'"),
    (["not", "an", "object"], "JSON object"),
])
def test_malformed_jobs_name_the_field(data: Any, field: str) -> None:
    with pytest.raises(UnrecoverableError, match=field):
        event_from_job("7", "intake", data, queue="q", default_org=None)


# ---- against Redis --------------------------------------------------------------------------------------------


async def test_adding_the_same_event_twice_queues_it_once(queues: Queues) -> None:
    q = queues.queue()
    e = event("dup:1")
    first = await q.add(e, priority=3, attempts=1, backoff_seconds=1)
    second = await q.add(e, priority=5, attempts=1, backoff_seconds=1)
    assert first == second == "acme/evt_dup%3A1"
    assert (await q.counts())["waiting"] == 1

    got: list[tuple[Event, JobInfo]] = []

    async def handler(ev: Event, info: JobInfo) -> None:
        got.append((ev, info))

    queues.consumer(handler)
    await wait_until(lambda: got)
    await wait_until(lambda: _completed(q, 1))
    assert got == [(e, JobInfo(id=first, name="event", attempts_made=0))]
    # Completed jobs are kept for the de-duplication window: adding it again changes nothing.
    await q.add(e, priority=3, attempts=1, backoff_seconds=1)
    assert await q.counts() == {"waiting": 0, "active": 0, "delayed": 0, "failed": 0, "completed": 1}


async def _completed(q: EventQueue, n: int) -> bool:
    return (await q.counts())["completed"] == n


async def test_urgent_events_are_consumed_first(queues: Queues) -> None:
    q = queues.queue()
    for p in (1, 3, 5, 2, 4):
        await q.add(event(f"p{p}"), priority=p, attempts=1, backoff_seconds=1)
    order: list[str] = []

    async def handler(ev: Event, info: JobInfo) -> None:
        order.append(ev.id)

    queues.consumer(handler, concurrency=1)
    await wait_until(lambda: len(order) == 5)
    assert order == ["evt_p5", "evt_p4", "evt_p3", "evt_p2", "evt_p1"]


async def test_a_failing_handler_is_retried_with_backoff_then_kept_failed(queues: Queues) -> None:
    q = queues.queue()
    job_id = await q.add(event("flaky"), priority=3, attempts=3, backoff_seconds=1)
    attempts: list[tuple[int, float]] = []

    async def handler(ev: Event, info: JobInfo) -> None:
        attempts.append((info.attempts_made, time.monotonic()))
        raise RuntimeError(f"downstream said no (attempt {info.attempts_made + 1})")

    queues.consumer(handler)
    await wait_until(lambda: _failed(q, 1), within=20)
    assert [a for a, _ in attempts] == [0, 1, 2]
    # Backoff 1 s then 2 s (whole seconds: the Python worker rounds up; no sub-second assertions).
    assert attempts[2][1] - attempts[0][1] >= 2.5
    job = await Job.fromId(queues.raw(), job_id)
    assert job is not None
    # bullmq-py stores the final reason JSON-encoded ('"…"'), so match the text rather than the whole string.
    assert "downstream said no (attempt 3)" in (job.failedReason or "")
    assert job.attemptsMade == 3


async def test_ensure_runs_a_finished_job_again_for_an_event_that_still_waits(queues: Queues) -> None:
    q = queues.queue()
    await q.add(event("held"), priority=3, attempts=1, backoff_seconds=1)
    calls: list[str] = []

    async def handler(ev: Event, info: JobInfo) -> None:
        calls.append(ev.id)
        if len(calls) == 1:
            raise RuntimeError("another worker holds it")

    queues.consumer(handler)
    await wait_until(lambda: _failed(q, 1), within=20)  # one attempt only: failed for good
    await q.add(event("held"), priority=3, attempts=1, backoff_seconds=1)  # a plain add is a duplicate: no-op
    await asyncio.sleep(1.5)
    assert calls == ["evt_held"]
    await q.ensure(event("held"), priority=3, attempts=1, backoff_seconds=1)  # the sweeper's way
    await wait_until(lambda: _completed(q, 1), within=20)
    assert calls == ["evt_held", "evt_held"]
    # A completed job for an event still waiting (the sweeper only asks for those) is run again too.
    await q.ensure(event("held"), priority=3, attempts=1, backoff_seconds=1)
    await wait_until(lambda: len(calls) == 3, within=10)


async def _completed(q: EventQueue, n: int) -> bool:
    return (await q.counts())["completed"] == n


async def _failed(q: EventQueue, n: int) -> bool:
    return (await q.counts())["failed"] == n


async def test_a_malformed_job_fails_at_once_naming_the_field(queues: Queues) -> None:
    raw = queues.raw()
    job = await raw.add("intake", {"type": "intake:created", "data": {}}, {"attempts": 5, "backoff": 1000})
    called: list[Event] = []

    async def handler(ev: Event, info: JobInfo) -> None:
        called.append(ev)

    queues.consumer(handler)  # no default org
    q = queues.queue()
    await wait_until(lambda: _failed(q, 1))
    failed = await Job.fromId(raw, job.id)
    assert failed is not None
    assert failed.attemptsMade == 1
    assert "field 'org' is missing" in (failed.failedReason or "")
    assert called == []


_KILLABLE_WORKER = """
import asyncio, sys
from adapters.bullmq_queue import EventConsumer

async def main() -> None:
    async def handler(event, info):
        print("started", event.id, flush=True)
        await asyncio.sleep(600)

    consumer = EventConsumer(sys.argv[1], handler, name=sys.argv[2], concurrency=1,
                             lock_duration_ms=1000, stalled_interval_ms=1000)
    consumer.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_job_whose_worker_is_killed_is_redelivered_to_another(queues: Queues) -> None:
    q = queues.queue()
    e = event("stall")
    job_id = await q.add(e, priority=3, attempts=1, backoff_seconds=1)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLABLE_WORKER, REDIS_URL, queues.name, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.decode().split() == ["started", e.id]
        assert (await q.counts())["active"] == 1
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL

    got: list[tuple[Event, JobInfo]] = []

    async def handler(ev: Event, info: JobInfo) -> None:
        got.append((ev, info))

    queues.consumer(handler, lock_duration_ms=1000, stalled_interval_ms=1000)
    await wait_until(lambda: got, within=20)
    assert [(ev, info.id) for ev, info in got] == [(e, job_id)]
    await wait_until(lambda: _completed(q, 1))


async def test_decisions_published_twice_are_queued_once(queues: Queues) -> None:
    pub = DecisionPublisher(REDIS_URL, name=queues.name)
    queues.closables.append(pub)
    record = {"id": "dec_abc", "event_id": "evt_1", "intent": "SALES_INQUIRY"}
    assert await pub.publish(record) == "dec_abc"
    assert await pub.publish(record) == "dec_abc"
    raw = queues.raw()
    assert await raw.getJobCountByTypes("waiting") == 1
    job = await Job.fromId(raw, "dec_abc")
    assert job is not None
    assert (job.name, job.data) == ("decision", record)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_redis_raises_queue_unavailable() -> None:
    url = f"redis://127.0.0.1:{_closed_port()}"
    q = EventQueue(url, name="astralis-unreachable")
    try:
        started = time.monotonic()
        with pytest.raises(QueueUnavailable, match="unreachable"):
            await q.ping()
        with pytest.raises(QueueUnavailable, match="could not add event"):
            await q.add(event(1), priority=3, attempts=1, backoff_seconds=1)
        assert time.monotonic() - started < 30
    finally:
        await q.close()
