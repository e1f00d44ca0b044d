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
    """A calendar entry that blocks a host's time."""

    host: str
    start: datetime
    end: datetime
    title: str = ""


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
    """Calendar and loads given up front (the simulator's `--state FILE`, tests)."""

    calendar: list[Busy] = field(default_factory=list)
    loads: dict[str, int] = field(default_factory=dict)

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
                 end=datetime.fromisoformat(c["end"]), title=str(c.get("title", "")))
            for c in data.get("calendar", [])
        ]
        loads = {str(k): int(v) for k, v in (data.get("loads") or {}).items()}
        return cls(calendar=calendar, loads=loads)


@runtime_checkable
class DecisionStore(Protocol):
    """Where decisions are recorded. `save_decision` also updates the org agent's counters."""

    async def save_decision(self, decision: Any) -> None:
        """Insert or replace a decision (an `engine.models.Decision`) with its whole trace."""
        ...
