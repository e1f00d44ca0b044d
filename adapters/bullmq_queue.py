"""Events in and decisions out over BullMQ queues on Redis, shared with the host platform's Node workers.

- `EventQueue` adds our events as jobs named `"event"` with data `{"event": <envelope>}`.
- `EventConsumer` runs a BullMQ worker that turns each job into an `Event` and awaits a handler. Besides our own
  `"event"` jobs it takes what the Node platform adds, under any job name: `{"event": <envelope>}`, a bare
  envelope, or a platform payload `{type, data, org?, id?, occurred_at?}` (source `WORKER`).
- `DecisionPublisher` adds decision records as jobs named `"decision"` for Node workers to consume.

Job ids. BullMQ treats a custom job id that already exists as a duplicate and does not add it again, which is
how an event (or decision) queued twice is processed once. BullMQ (Node) refuses custom ids that contain `:` (its
Redis key separator) or that are integers (its own counter's ids), so ids are percent-encoded
(`urllib.parse.quote(..., safe="")`: `:` becomes `%3A`, `%` becomes `%25`, letters, digits and `_.-~` stay) and an
event's job id is `<org>/<encoded event id>`: an org never contains `/`, so the id decodes unambiguously
(`decode_event_job_id`), and the `/` means it is never an integer.

Priority. BullMQ runs the lowest positive priority first (1 is the highest); ours runs 1 (lowest) to 5 (urgent).
An event's BullMQ priority is `6 - priority`: ours 5 → 1, 4 → 2, 3 → 3, 2 → 4, 1 → 5.

Retention. Completed jobs are kept a day (at most 10,000) so re-adding a recently processed event is still
recognised as a duplicate; failed jobs are kept until someone retries or removes them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote, unquote

from bullmq import Job, Queue, UnrecoverableError, Worker
from pydantic import ValidationError
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from engine.config import Source
from engine.models import Event

log = logging.getLogger("astralis.bullmq")

EVENT_JOB = "event"
DECISION_JOB = "decision"
URGENT_PRIORITY = 5  # ours; maps to BullMQ's 1
KEEP_COMPLETED = {"age": 24 * 3600, "count": 10_000}  # the de-duplication window for finished jobs
_CONNECT_TIMEOUT_S = 5.0
_DRAIN_DELAY_S = 1  # an idle worker re-polls this often, so close() returns within about a second


class QueueUnavailable(RuntimeError):
    """Redis (and so the queue) cannot be reached."""


@dataclass(frozen=True)
class JobInfo:
    """Which BullMQ job an event came from: its id, its name, and how many attempts failed before this one."""

    id: str
    name: str
    attempts_made: int


Handler = Callable[[Event, JobInfo], Awaitable[None]]


def bullmq_priority(priority: int) -> int:
    """Our priority (1–5, 5 urgent) as BullMQ's (1 runs first): 5 → 1 … 1 → 5."""
    if not 1 <= priority <= URGENT_PRIORITY:
        raise ValueError(f"priority must be 1–5 (5 urgent), got {priority}")
    return URGENT_PRIORITY + 1 - priority


def encode_id(value: str) -> str:
    """`value` made safe as (part of) a BullMQ custom job id: percent-encoded, so no `:`; reversible by `unquote`."""
    if not value:
        raise ValueError("a job id needs a non-empty value")
    return quote(value, safe="")


def event_job_id(event: Event) -> str:
    """The job id of `event`: `<org>/<encoded id>` (see the module doc)."""
    return f"{event.org}/{encode_id(event.id)}"


def decode_event_job_id(job_id: str) -> tuple[str, str]:
    """The (org, event id) that `event_job_id` encoded into `job_id`."""
    org, sep, encoded = job_id.partition("/")
    if not sep:
        raise ValueError(f"not an event job id: {job_id!r}")
    return org, unquote(encoded)


def decision_job_id(decision_id: str) -> str:
    """The job id of a decision: its id, percent-encoded; integer ids are refused (BullMQ's counter owns them)."""
    if decision_id.isdigit():
        raise ValueError(f"decision id {decision_id!r} is an integer, which BullMQ reserves for its own job ids")
    return encode_id(decision_id)


def _client(redis_url: str) -> aioredis.Redis:
    """A Redis client that gives up on connecting after a few seconds (BullMQ's own retries for ~minutes), on a
    bounded pool that waits for a free connection: a burst of requests shares a few connections instead of
    opening one each (hundreds of connects at once time out)."""
    pool = aioredis.BlockingConnectionPool.from_url(redis_url, decode_responses=True, max_connections=16,
                                                    timeout=_CONNECT_TIMEOUT_S,
                                                    socket_connect_timeout=_CONNECT_TIMEOUT_S)
    return aioredis.Redis(connection_pool=pool)


async def _ping(client: aioredis.Redis, redis_url: str) -> None:
    """Raise `QueueUnavailable` unless Redis answers."""
    try:
        await cast(Awaitable[bool], client.ping())  # redis-py types it as sync-or-async
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(f"Redis at {redis_url} is unreachable: {exc}") from exc


class EventQueue:
    """Adds events to the BullMQ queue `name` (jobs named `"event"`, data `{"event": envelope}`)."""

    def __init__(self, redis_url: str, *, name: str = "astralis-events", prefix: str = "bull") -> None:
        self.redis_url = redis_url
        self.name = name
        self.prefix = prefix
        self._client = _client(redis_url)
        self._queue = Queue(name, {"connection": self._client, "prefix": prefix})

    async def add(self, event: Event, *, priority: int, attempts: int, backoff_seconds: float) -> str:
        """Queue `event` and return its job id. The same event (org + id) added again is not queued twice.

        `priority` is ours (5 urgent, mapped as in the module doc); `attempts` counts the first try; retries wait
        `backoff_seconds`, doubling each time (the Python worker rounds the wait up to whole seconds)."""
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        job_id = event_job_id(event)
        try:
            await self._queue.add(EVENT_JOB, {"event": event.envelope()}, {
                "jobId": job_id,
                "priority": bullmq_priority(priority),
                "attempts": attempts,
                "backoff": {"type": "exponential", "delay": round(backoff_seconds * 1000)},
                "removeOnComplete": KEEP_COMPLETED,
                "removeOnFail": False,
            })
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"could not add event {event.id} to {self.name} at {self.redis_url}: {exc}") from exc
        return job_id

    async def ensure(self, event: Event, *, priority: int, attempts: int, backoff_seconds: float) -> str:
        """`add`, and if the event's job already exists but is finished (failed after its last attempt, or
        completed while the event still waits to be decided), run it again: for an event that the inbox says is
        still waiting, a finished job must not stand in the way of its decision."""
        job_id = await self.add(event, priority=priority, attempts=attempts, backoff_seconds=backoff_seconds)
        try:
            state = await self._queue.getJobState(job_id)
            if state in ("failed", "completed"):
                job = await Job.fromId(self._queue, job_id)
                if job is not None:
                    await job.retry(state)
                    log.info("job %s was %s while its event waits: run again", job_id, state)
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"could not check job {job_id} on {self.name}: {exc}") from exc
        return job_id

    async def ping(self) -> None:
        """Raise `QueueUnavailable` unless Redis answers."""
        await _ping(self._client, self.redis_url)

    async def counts(self) -> dict[str, int]:
        """Jobs per state: waiting (including prioritized and paused), active, delayed, failed, completed."""
        raw = await self._queue.getJobCounts("waiting", "paused", "prioritized", "active", "delayed", "failed",
                                             "completed")
        return {
            "waiting": raw["waiting"] + raw["paused"] + raw["prioritized"],
            **{state: raw[state] for state in ("active", "delayed", "failed", "completed")},
        }

    async def close(self) -> None:
        """Close the connection."""
        await self._queue.close()
        await self._client.connection_pool.disconnect()  # the client does not own a pool it was given


def _field_errors(exc: ValidationError) -> str:
    """Pydantic's errors as `field 'a.b': message; …`."""
    return "; ".join(f"field '{'.'.join(str(p) for p in e['loc'])}': {e['msg']}" for e in exc.errors())


def event_from_job(job_id: str, name: str, data: Any, *, queue: str, default_org: str | None) -> Event:
    """The `Event` a job carries, whichever producer added it (see the module doc for the three shapes).

    A platform payload becomes an event with source `WORKER`, its org from the payload or `default_org`, and
    (when it has no `id`) the id `<queue>:<job id>`, so a redelivered job keeps its event id.
    Raises `UnrecoverableError` naming the offending field: a malformed job will not get better by retrying."""
    where = f"job {job_id} ({name!r})"
    if not isinstance(data, Mapping):
        raise UnrecoverableError(f"{where}: data must be a JSON object, got {type(data).__name__}")
    try:
        if "event" in data:
            if not isinstance(data["event"], Mapping):
                raise UnrecoverableError(f"{where}: field 'event' must be an event envelope (a JSON object)")
            return Event.model_validate(data["event"])
        if "source" in data:
            return Event.model_validate(data)
        if "type" not in data:
            raise UnrecoverableError(f"{where}: field 'type' is missing (expected {{event}}, an event envelope, "
                                     "or a platform payload {type, data, org?, id?})")
        org = data.get("org") or default_org
        if org is None:
            raise UnrecoverableError(f"{where}: field 'org' is missing and the consumer has no default org")
        return Event.model_validate({
            "id": data.get("id") or f"{queue}:{job_id}",
            "org": org,
            "source": Source.WORKER,
            "type": data["type"],
            "data": data.get("data", {}),
            "occurred_at": data.get("occurred_at"),
        })
    except ValidationError as exc:
        raise UnrecoverableError(f"{where}: {_field_errors(exc)}") from exc


class EventConsumer:
    """A BullMQ worker on queue `name` that hands each job's event to `handler`.

    A handler exception fails the attempt: BullMQ retries it with the job's backoff and keeps it failed after
    its last attempt. A malformed job fails at once, for good. A job whose worker died (its lock expired) is
    found by another worker's stalled check (within about `lock_duration_ms` + 2 × `stalled_interval_ms`) and run
    again, keeping its job id and so its event id.
    """

    def __init__(self, redis_url: str, handler: Handler, *, name: str = "astralis-events", prefix: str = "bull",
                 concurrency: int = 8, lock_duration_ms: int = 30_000, stalled_interval_ms: int = 30_000,
                 default_org: str | None = None) -> None:
        self.redis_url = redis_url
        self.handler = handler
        self.name = name
        self.prefix = prefix
        self.concurrency = concurrency
        self.lock_duration_ms = lock_duration_ms
        self.stalled_interval_ms = stalled_interval_ms
        self.default_org = default_org
        self._worker: Worker | None = None

    def start(self) -> None:
        """Start consuming. Must be called inside a running event loop (BullMQ's worker schedules itself on it)."""
        asyncio.get_running_loop()  # a clear RuntimeError here rather than an obscure one inside bullmq
        if self._worker is not None:
            raise RuntimeError("the consumer is already started")
        self._worker = Worker(self.name, self._process, {
            "connection": self.redis_url,
            "prefix": self.prefix,
            "concurrency": self.concurrency,
            "lockDuration": self.lock_duration_ms,
            "stalledInterval": self.stalled_interval_ms,
            "drainDelay": _DRAIN_DELAY_S,
        })
        self._worker.on("error", lambda err, *_: log.warning("bullmq worker on %s: %s", self.name, err))
        self._worker.on("failed", self._on_failed)

    def _on_failed(self, job: Job, err: Exception) -> None:
        """Log a failed attempt (BullMQ has already retried or kept the job)."""
        log.warning("job %s (%s) on %s failed (attempt %s): %s", job.id, job.name, self.name, job.attemptsMade, err)

    async def _process(self, job: Job, token: str) -> None:
        """BullMQ's processor: parse the job and await the handler."""
        event = event_from_job(str(job.id), job.name, job.data, queue=self.name, default_org=self.default_org)
        await self.handler(event, JobInfo(id=str(job.id), name=job.name, attempts_made=job.attemptsMade))

    async def close(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - past it we force-close, not just cancel
        """Stop taking jobs, let running handlers finish for up to `timeout` seconds, then cancel them.

        A cancelled job stays active until its lock expires and another worker's stalled check re-runs it."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        try:
            await asyncio.wait_for(worker.close(), timeout)
        except TimeoutError:
            log.warning("bullmq worker on %s did not finish within %ss; cancelling its jobs", self.name, timeout)
            await asyncio.wait_for(worker.close(force=True), _CONNECT_TIMEOUT_S)


class DecisionPublisher:
    """Adds decision records to the BullMQ queue `name` for the platform's Node workers (jobs named `"decision"`,
    data = the record's JSON dict, job id = the decision id, so a decision published twice is queued once)."""

    def __init__(self, redis_url: str, *, name: str = "astralis-decisions", prefix: str = "bull",
                 attempts: int = 5, backoff_seconds: float = 1.0) -> None:
        self.redis_url = redis_url
        self.name = name
        self._client = _client(redis_url)
        self._queue = Queue(name, {"connection": self._client, "prefix": prefix})
        self._opts: dict[str, Any] = {
            "attempts": attempts,
            "backoff": {"type": "exponential", "delay": round(backoff_seconds * 1000)},
            "removeOnComplete": KEEP_COMPLETED,
            "removeOnFail": False,
        }

    async def publish(self, decision: Mapping[str, Any]) -> str:
        """Queue `decision` (a decision record as JSON data, e.g. `Decision.model_dump(mode="json")`); returns the
        job id."""
        decision_id = decision.get("id")
        if not isinstance(decision_id, str) or not decision_id:
            raise ValueError("a decision record needs a string 'id'")
        job_id = decision_job_id(decision_id)
        try:
            await self._queue.add(DECISION_JOB, dict(decision), {**self._opts, "jobId": job_id})
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"could not publish decision {decision_id} to {self.name}: {exc}") from exc
        return job_id

    async def ping(self) -> None:
        """Raise `QueueUnavailable` unless Redis answers."""
        await _ping(self._client, self.redis_url)

    async def close(self) -> None:
        """Close the connection."""
        await self._queue.close()
        await self._client.connection_pool.disconnect()  # the client does not own a pool it was given
