"""The event envelope that comes in and the decision record that goes out (DESIGN §4, §5)."""

from __future__ import annotations

import math
import os
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from engine.config import DecisionType, Intent, Source

Status = Literal["PENDING", "EXECUTED", "FAILED", "REJECTED", "REQUIRES_APPROVAL"]
DecidedBy = Literal["rules", "model", "llm", "fallback"]


def new_id(prefix: str) -> str:
    """A random, sortable-enough id with a readable prefix (dec_…, evt_…)."""
    return f"{prefix}_{os.urandom(10).hex()}"


def utcnow() -> datetime:
    """Now, timezone-aware (UTC)."""
    return datetime.now(UTC)


# ---- input at the door ------------------------------------------------------------------------------------
# What a sender or tenant may put in an event, beyond its shape. Checked when an event comes in (validation
# context `DOOR`), not when a stored one is read back: an event stored before a limit existed must still load.

DOOR: dict[str, Any] = {"door": True}
"""Validation context of events coming in from outside: `Event.model_validate(fields, context=DOOR)`."""
MAX_DEPTH = 64
"""Deepest nesting of objects and arrays in an event (or a request body)."""
MAX_INT_DIGITS = 4300
"""Longest integer, in decimal digits (Python's own limit for converting text to int)."""
FIRST_YEAR, LAST_YEAR = 1970, 2200
"""The years `occurred_at` may fall in: the planner's dates (reminders, a day's slots, 400 days ahead) stay
far from the ends of what a datetime can hold."""
IDENTIFIER_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f]*$"
"""An id or other identifier-like field: no control characters (C0, DEL, C1). As a JSON Schema `pattern`."""
_CONTROL = re.compile(r"[\u0000-\u001f\u007f-\u009f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_INT_LIMIT = 10**MAX_INT_DIGITS
DEPTH_PROBLEM = "nested more than {} levels deep"
"""What `json_problem` says of a value nested too deep (formatted with the limit)."""


def identifier_problem(value: str) -> str | None:
    """Why `value` cannot be an id (a control character or a lone surrogate, named by its code point), or None."""
    if bad := _CONTROL.search(value):
        return f"contains the control character U+{ord(bad.group()):04X} at position {bad.start()}"
    if bad := _SURROGATE.search(value):
        return f"contains a lone surrogate U+{ord(bad.group()):04X} at position {bad.start()}"
    return None


def json_problem(value: Any, *, max_depth: int = MAX_DEPTH) -> tuple[str, str] | None:
    """The first part of `value` that is not plain, storable JSON, as (path, why), or None. Refused: nesting
    deeper than `max_depth`, numbers that are not finite or have more than MAX_INT_DIGITS digits, strings and
    keys with lone surrogates (no UTF-8 for them), and anything that is not a JSON type (an object may say why
    in its `problem` attribute). Iterative: a deep value cannot exhaust the stack."""
    if _plain(value, max_depth):  # the common case, in one quick pass; the paths only when something is wrong
        return None
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        v, path, depth = stack.pop()
        if isinstance(v, str):
            if bad := _SURROGATE.search(v):
                return path, f"contains a lone surrogate U+{ord(bad.group()):04X}, which is not text"
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, int):
            if abs(v) >= _INT_LIMIT:
                return path, f"an integer of more than {MAX_INT_DIGITS} digits"
        elif isinstance(v, float):
            if not math.isfinite(v):
                return path, f"{v} is not a JSON number"
        elif isinstance(v, (dict, list)):
            if depth >= max_depth:
                return path, DEPTH_PROBLEM.format(max_depth)
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for k, child in items:
                if isinstance(k, str) and (bad := _SURROGATE.search(k)):
                    return path, f"a key contains a lone surrogate U+{ord(bad.group()):04X}, which is not text"
                stack.append((child, f"{path}.{k}" if path else str(k), depth + 1))
        else:
            return path, getattr(v, "problem", f"a {type(v).__name__} is not a JSON value")
    return None


def _text(v: str) -> bool:
    """No lone surrogate (`isascii` is O(1); a non-ASCII string is encoded once, in C)."""
    if v.isascii():
        return True
    try:
        v.encode()
    except UnicodeEncodeError:
        return False
    return True


def _plain(value: Any, max_depth: int) -> bool:
    """Whether `json_problem` finds nothing, level by level and without paths (about 60 ns a value)."""
    level = [value]
    depth = 0
    while level:
        containers: list[Any] = []
        for v in level:
            t = type(v)
            if t is dict:
                if depth >= max_depth or not all(type(k) is str and _text(k) for k in v):
                    return False
                children = v.values()
            elif t is list:
                if depth >= max_depth:
                    return False
                children = v
            else:
                children = (v,)
            for x in children:
                tx = type(x)
                if tx is str:
                    if not _text(x):
                        return False
                elif tx is dict or tx is list:
                    containers.append(x)
                elif tx is int:
                    if not -_INT_LIMIT < x < _INT_LIMIT:
                        return False
                elif tx is float:
                    if x - x != 0:  # inf - inf and nan - nan are nan
                        return False
                elif not (tx is bool or x is None):
                    return False
        level = containers
        depth += 1
    return True


def _door(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and bool(info.context.get("door"))


class Event(BaseModel):
    """An event as received from any channel. `id` is the idempotency key. Validated with `context=DOOR`, it
    is also held to the limits on what comes in from outside (ids, nesting, numbers, dates)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: new_id("evt"), min_length=1, max_length=200)
    org: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)
    source: Source
    type: str = Field(pattern=r"^[a-z_]+:[a-z_]+$", max_length=64)
    data: dict[str, Any] = Field(default_factory=dict)
    occurred_at: datetime | None = None

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, v: datetime | None, info: ValidationInfo) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("occurred_at needs a UTC offset, e.g. 2026-12-08T10:00:00-05:00")
        if v is not None and _door(info) and not FIRST_YEAR <= v.year <= LAST_YEAR:
            raise ValueError(f"occurred_at must fall in the years {FIRST_YEAR}-{LAST_YEAR}, not {v.isoformat()}")
        return v

    @field_validator("id")
    @classmethod
    def _identifier(cls, v: str, info: ValidationInfo) -> str:
        if _door(info) and (problem := identifier_problem(v)):
            raise ValueError(f"an event id {problem}")
        return v

    @field_validator("data")
    @classmethod
    def _plain_json(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if _door(info) and (problem := json_problem(v, max_depth=MAX_DEPTH - 1)):
            path, why = problem
            raise ValueError(f"data{'.' + path if path else ''}: {why}")
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
    model_version: str | None = Field(
        default=None, exclude_if=lambda v: v is None,
        description="The org model consulted (its content hash, `m-…`); absent when learning is off.")
