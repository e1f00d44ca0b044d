"""The event envelope that comes in and the decision record that goes out (DESIGN §4, §5)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.config import DecisionType, Intent, Source

Status = Literal["PENDING", "EXECUTED", "FAILED", "REJECTED", "REQUIRES_APPROVAL"]
DecidedBy = Literal["rules", "llm", "fallback"]


def new_id(prefix: str) -> str:
    """A random, sortable-enough id with a readable prefix (dec_…, evt_…)."""
    return f"{prefix}_{os.urandom(10).hex()}"


def utcnow() -> datetime:
    """Now, timezone-aware (UTC)."""
    return datetime.now(UTC)


class Event(BaseModel):
    """An event as received from any channel. `id` is the idempotency key."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: new_id("evt"), min_length=1, max_length=200)
    org: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)
    source: Source
    type: str = Field(pattern=r"^[a-z_]+:[a-z_]+$", max_length=64)
    data: dict[str, Any] = Field(default_factory=dict)
    occurred_at: datetime | None = None

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("occurred_at needs a UTC offset, e.g. 2026-12-08T10:00:00-05:00")
        return v

    def envelope(self) -> dict[str, Any]:
        """The event as plain JSON data (what the rules' field paths address)."""
        return self.model_dump(mode="json")


class Action(BaseModel):
    """One thing the agent will do; `idempotency_key` is decision id + action index."""

    type: DecisionType
    params: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = None


class LLMTrace(BaseModel):
    """What the LLM was asked and answered, and at what cost (DESIGN §5 `llm`)."""

    provider: str
    model: str
    prompt: str
    response: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float = 0.0
    attempts: int = 0
    error: str | None = None
    rejected: list[str] = Field(default_factory=list)


class Decision(BaseModel):
    """The decision record: what was decided for one event, why, and what it led to."""

    id: str = Field(default_factory=lambda: new_id("dec"))
    event_id: str
    org: str
    input: dict[str, str]
    intent: Intent
    priority: int
    decision_type: DecisionType
    confidence: float
    decided_by: DecidedBy
    matched_rules: list[str] = Field(default_factory=list)
    reasoning: str
    actions: list[Action] = Field(default_factory=list)
    status: Status
    llm: LLMTrace | None = None
    execution_ms: float = 0.0
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    executed_at: datetime | None = None
    # Beyond the contract: the ruleset revision, whether it was a dry run, and the full trace.
    revision: str = ""
    dry_run: bool = False
    trace: dict[str, Any] = Field(default_factory=dict)
