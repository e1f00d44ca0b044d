"""Request and response bodies of the HTTP API (pydantic): validation of what comes in, and the OpenAPI
components of what goes out."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.json_schema import JsonDict

from engine.config import Source
from engine.corrections import Correction
from engine.models import FIRST_YEAR, IDENTIFIER_PATTERN, LAST_YEAR, Decision, identifier_problem

Name = Field(default=None, max_length=200)


def _identifier(v: str) -> str:
    """An id or a name: no control characters (the message names the first one and where it is)."""
    if problem := identifier_problem(v):
        raise ValueError(problem)
    return v


Identifier = Annotated[str, AfterValidator(_identifier)]
"""A string naming something (an id, a user, a stage): control characters are refused at the door."""
_NAMED: JsonDict = {"pattern": IDENTIFIER_PATTERN}
OCCURRED_PATTERN = (r"^(19[7-9][0-9]|2[01][0-9]{2}|2200)-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
                    r"[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")
"""An RFC 3339 date-time in the years the door accepts (engine.models.FIRST_YEAR..LAST_YEAR)."""
_OCCURRED: JsonDict = {"pattern": OCCURRED_PATTERN,
             "description": f"When it happened (RFC 3339, with a UTC offset), in the years {FIRST_YEAR}-{LAST_YEAR}."}


def _integral(v: Any) -> Any:
    """159.0 as 159: JSON (and JSON Schema) count it an integer; the API validates bodies strictly otherwise."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


class EventIn(BaseModel):
    """An event envelope as posted to the API (DESIGN §4); `org` is the API key's and may be left out."""

    model_config = ConfigDict(extra="forbid")

    id: Identifier | None = Field(default=None, min_length=1, max_length=200, json_schema_extra=_NAMED,
                                  description="The idempotency key; generated when absent.")
    org: str | None = Field(default=None, max_length=64)
    source: Source = Source.API
    type: str = Field(pattern=r"^[a-z_]+:[a-z_]+$", max_length=64)
    data: dict[str, Any] = Field(default_factory=dict, description="Any JSON object, nested at most 63 levels "
                                 "deep, with integers of at most 4300 digits.")
    occurred_at: datetime | None = Field(default=None, json_schema_extra=_OCCURRED)


class Review(BaseModel):
    """Who approves a decision, and optionally why."""

    model_config = ConfigDict(extra="forbid")

    by: Identifier | None = Field(default=None, min_length=1, max_length=200, json_schema_extra=_NAMED,
                                  description="Who decided; defaults to the API key's name.")
    note: str | None = Field(default=None, max_length=2000)


class CorrectionIn(Correction):
    """What a decision should have been: the intent, and optionally priority, pipeline and assignee; who and why."""

    by: Identifier | None = Field(default=None, min_length=1, max_length=200, json_schema_extra=_NAMED,
                                  description="Who corrects; defaults to the API key's name.")


class Rejection(BaseModel):
    """Who rejects a decision, and why (required)."""

    model_config = ConfigDict(extra="forbid")

    by: Identifier | None = Field(default=None, min_length=1, max_length=200, json_schema_extra=_NAMED,
                                  description="Who decided; defaults to the API key's name.")
    reason: str = Field(min_length=1, max_length=2000)


class ConfigUpdate(BaseModel):
    """New texts for some of the org's files; validated together, applied all or nothing."""

    model_config = ConfigDict(extra="forbid")

    files: dict[str, str] = Field(default_factory=dict, description="Ruleset folder file name → YAML text.")
    policy: str | None = Field(default=None, description="The org's policy file (policies/<org>.yaml) as YAML text.")
    delete: list[str] = Field(default_factory=list, max_length=100, description="Rule files to remove.")


class Rollback(BaseModel):
    """Make a saved revision the active configuration again."""

    model_config = ConfigDict(extra="forbid")

    revision: Identifier = Field(min_length=1, max_length=200, json_schema_extra=_NAMED,
                                 description="A revision from GET /api/agent/config/history.")


class DbTrigger(BaseModel):
    """A row change reported by the host platform's database (trigger, CDC, ORM hook)."""

    model_config = ConfigDict(extra="forbid")

    id: Identifier | None = Field(default=None, min_length=1, max_length=200, json_schema_extra=_NAMED,
                                  description="Idempotency key, e.g. the change's LSN or outbox id.")
    table: str = Field(pattern=r"^[a-z_][a-z0-9_]*$", max_length=64)
    operation: Literal["INSERT", "UPDATE", "DELETE"]
    type: str | None = Field(default=None, pattern=r"^[a-z_]+:[a-z_]+$", max_length=64,
                             description="Event type; defaults to <table>:<inserted|updated|deleted>.")
    row: dict[str, Any] = Field(default_factory=dict)
    old_row: dict[str, Any] | None = None
    occurred_at: datetime | None = Field(default=None, json_schema_extra=_OCCURRED)


class SimulateRequest(BaseModel):
    """A dry run: events (given, or the org's latest from the inbox), against the active or a proposed config."""

    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] | None = Field(default=None, max_length=1000)
    past: Annotated[int | None, BeforeValidator(_integral)] = Field(
        default=None, ge=1, le=1000,
        description="Use the org's latest N inbox events (received in [since, until) when given), each decided with "
                    "the LLM answer recorded when it was first decided.")
    since: datetime | None = Field(default=None, description="With past: only events received from this time on.")
    until: datetime | None = Field(default=None, description="With past: only events received before this time.")
    config: ConfigUpdate | None = Field(default=None, description="Try proposed files without changing anything.")


class AcceptedOut(BaseModel):
    """An event accepted for processing (202), or a duplicate delivery of one."""

    event_id: str
    status: str = Field(description="accepted | processing | decided | dead")
    duplicate: bool
    decision_id: str | None = None
    mode: str


class EventSummary(BaseModel):
    """An event as a person reads it to decide without opening it."""

    sender: str
    subject: str
    snippet: str = Field(description="The first lines of the new text (quoted replies and signature left out).")


class DecisionPage(BaseModel):
    """One page of decisions, newest first."""

    decisions: list[Decision]
    next_cursor: str | None
    events: dict[str, EventSummary] | None = None
    """With `include=event`: each decision's event (by event id) as a person reads it."""


class ErrorOut(BaseModel):
    """Every error: a stable code, a message naming what is wrong and where, and details."""

    class Body(BaseModel):
        code: str
        message: str
        details: Any = None

    error: Body


class IntakeMove(BaseModel):
    """Move an intake to another stage (and optionally another assignee)."""

    model_config = ConfigDict(extra="forbid")

    stage: Identifier = Field(min_length=1, max_length=64, json_schema_extra=_NAMED,
                              description="A stage of the intake's pipeline.")
    assignee: Identifier | None = Field(default=None, max_length=64, json_schema_extra=_NAMED,
                                        description="A user id of the org; omit to keep the current assignee, "
                                                    "null to unassign.")
    note: str | None = Field(default=None, max_length=2000)
    by: Identifier | None = Field(default=None, max_length=200, json_schema_extra=_NAMED,
                                  description="Who moves it (default: the API key's name).")
