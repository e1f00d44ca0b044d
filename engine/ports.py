"""The small protocols through which the engine talks to the outside world.

`engine/` never imports from `adapters/` or `server/`: adapters implement these ports and the
CLI / server wire them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

LLMErrorKind = Literal["timeout", "rate_limited", "server", "connection", "bad_request", "auth", "config"]


@dataclass(frozen=True)
class LLMRequest:
    """One completion request: a system prompt, a user message, and the policy's model settings."""

    system: str
    user: str
    model: str
    temperature: float = 0.0
    max_tokens: int = 800
    timeout_seconds: float = 20.0


@dataclass(frozen=True)
class LLMReply:
    """What a provider answered: the raw text (expected to be JSON) and its cost and latency."""

    provider: str
    model: str
    text: str
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float = 0.0


class LLMError(Exception):
    """A provider call failed. `kind` tells whether a retry can help (see `retryable`)."""

    def __init__(self, kind: LLMErrorKind, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind: LLMErrorKind = kind
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Timeouts, rate limits, 5xx and connection failures are transient; the rest are not."""
        return self.kind in ("timeout", "rate_limited", "server", "connection")


@runtime_checkable
class LLMProvider(Protocol):
    """A chat model behind an SDK. Makes exactly one attempt per call: the engine owns retries."""

    name: str

    async def complete(self, request: LLMRequest) -> LLMReply:
        """Send one request; raise `LLMError` on any failure."""
        ...


@dataclass(frozen=True)
class Busy:
    """A calendar entry that blocks a host's time (`id` and `attendees`, e-mail addresses, when it is one of
    ours: what UPDATE_EVENT and CANCEL_EVENT look for)."""

    host: str
    start: datetime
    end: datetime
    title: str = ""
    id: str = ""
    attendees: tuple[str, ...] = ()


@runtime_checkable
class Calendar(Protocol):
    """Read access to hosts' calendars, for conflict checks while planning."""

    def busy(self, host: str, day_start: datetime, day_end: datetime) -> list[Busy]:
        """Entries of `host` overlapping [day_start, day_end)."""
        ...


@runtime_checkable
class LoadSource(Protocol):
    """Current open work per user, for assignment by load."""

    def load(self, user_id: str) -> int:
        """How many open items `user_id` holds now."""
        ...


@dataclass
class StaticState:
    """Calendar and loads given up front (the simulator's `--state FILE`, tests), or read from the store at
    the moment of a decision (`StateSource`). `last_assigned` (user → when they last got an intake) breaks
    ties between equally loaded users round-robin."""

    calendar: list[Busy] = field(default_factory=list)
    loads: dict[str, int] = field(default_factory=dict)
    last_assigned: dict[str, datetime] = field(default_factory=dict)

    def last(self, user_id: str) -> datetime | None:
        """When `user_id` was last given an intake (None: never, or unknown)."""
        return self.last_assigned.get(user_id)

    def busy(self, host: str, day_start: datetime, day_end: datetime) -> list[Busy]:
        """Entries of `host` overlapping [day_start, day_end)."""
        return [b for b in self.calendar if b.host == host and b.start < day_end and b.end > day_start]

    def load(self, user_id: str) -> int:
        """Open items of `user_id` (0 when unknown)."""
        return self.loads.get(user_id, 0)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StaticState:
        """Build from `{"calendar": [{"host","start","end","title"}], "loads": {"user": n}}`."""
        calendar = [
            Busy(host=str(c["host"]), start=datetime.fromisoformat(c["start"]),
                 end=datetime.fromisoformat(c["end"]), title=str(c.get("title", "")), id=str(c.get("id", "")),
                 attendees=tuple(str(a) for a in c.get("attendees", ())))
            for c in data.get("calendar", [])
        ]
        loads = {str(k): int(v) for k, v in (data.get("loads") or {}).items()}
        last = {str(k): datetime.fromisoformat(v) for k, v in (data.get("last_assigned") or {}).items()}
        return cls(calendar=calendar, loads=loads, last_assigned=last)


@runtime_checkable
class StateSource(Protocol):
    """The calendar and loads of an org as they are now (the store's intakes and calendar events)."""

    async def snapshot(self, org: str, now: datetime) -> StaticState:
        """Open intakes per user, when each was last assigned, and the hosts' calendars from `now` on."""
        ...


# --------------------------------------------------------------------------- action executors

@dataclass(frozen=True)
class ActionJob:
    """One outbox action handed to its executor. `key` (decision id + action index) is the idempotency key:
    every attempt of the same action carries the same key, and every effect is recorded under it."""

    key: str
    org: str
    decision_id: str
    index: int
    type: str
    params: dict[str, Any]
    attempt: int
    decision: Any  # the engine.models.Decision the action belongs to (its reasoning and trace)
    event: dict[str, Any] | None = None  # the envelope of the event that was decided (None if pruned)


class ActionFailed(Exception):
    """An action attempt failed. `permanent` failures are not retried (a 4xx other than 408/429, a
    configuration error, a slot that is taken with no other free one)."""

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None,
                 result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after
        self.result = result


class ActionDeferred(Exception):
    """Not yet: run this action again at `until` (e.g. a non-urgent notification outside business hours).
    Not a failure: no attempt is counted."""

    def __init__(self, until: datetime, reason: str) -> None:
        super().__init__(reason)
        self.until = until


@runtime_checkable
class ActionExecutor(Protocol):
    """Runs one kind of action. Must be idempotent under `job.key`: running the same job twice (a crash
    after the effect, before it was marked done) has one effect."""

    async def run(self, job: ActionJob) -> dict[str, Any]:
        """Do it; return what was done (recorded on the outbox row); raise `ActionFailed` on failure."""
        ...


@runtime_checkable
class DecisionStore(Protocol):
    """Where decisions are recorded. `save_decision` also updates the org agent's counters."""

    async def save_decision(self, decision: Any) -> None:
        """Insert or replace a decision (an `engine.models.Decision`) with its whole trace."""
        ...
