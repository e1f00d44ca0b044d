"""Configuration models: an org (`org.yaml`), its rulesets (`*.yaml`) and its policy.

These pydantic models are the single source of truth: the JSON Schemas under `schemas/` are
generated from them (`astralis schema`), and the loader validates YAML against both.
"""

from __future__ import annotations

from datetime import datetime, time
from enum import StrEnum
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.patterns import UserRegex, compile_regex

ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
Id = Annotated[str, Field(pattern=ID_PATTERN, min_length=1, max_length=64)]
Role = Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9_]*$", description="ADMIN, OPERATOR, PM, SALES, or an org's own")]
Confidence = Annotated[float, Field(ge=0.0, le=1.0)]
Priority = Annotated[int, Field(ge=1, le=5)]


class Intent(StrEnum):
    """What an event is about (DESIGN §5)."""

    SALES_INQUIRY = "SALES_INQUIRY"
    SUPPORT_REQUEST = "SUPPORT_REQUEST"
    BILLING_QUESTION = "BILLING_QUESTION"
    PARTNERSHIP = "PARTNERSHIP"
    PROJECT = "PROJECT"
    SCHEDULING = "SCHEDULING"
    SPAM = "SPAM"
    OTHER = "OTHER"


class DecisionType(StrEnum):
    """The kind of decision, which also selects its thresholds (DESIGN §5)."""

    ASSIGN_PIPELINE = "ASSIGN_PIPELINE"
    CREATE_EVENT = "CREATE_EVENT"
    UPDATE_EVENT = "UPDATE_EVENT"
    CANCEL_EVENT = "CANCEL_EVENT"
    SEND_NOTIFICATION = "SEND_NOTIFICATION"
    TRIGGER_AUTOMATION = "TRIGGER_AUTOMATION"
    ESCALATE = "ESCALATE"
    NO_ACTION = "NO_ACTION"


class Source(StrEnum):
    """The channel an event came in through (DESIGN §4)."""

    EMAIL = "EMAIL"
    WEBHOOK = "WEBHOOK"
    DB_TRIGGER = "DB_TRIGGER"
    WORKER = "WORKER"
    API = "API"
    SCHEDULE = "SCHEDULE"


def _known_zone(v: str) -> str:
    """`v` if it names an IANA time zone, else a ValueError naming it."""
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"'{v}' is not a known IANA time zone") from None
    return v


class Strict(BaseModel):
    """Base for config models: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- org.yaml

class Hours(Strict):
    """A daily window in the org's local time."""

    start: time
    end: time

    @model_validator(mode="after")
    def _ordered(self) -> Hours:
        if self.end <= self.start:
            raise ValueError(f"end {self.end} must be after start {self.start}")
        return self


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri")


class BusinessHours(Hours):
    """Opening hours and the weekdays they apply to."""

    days: list[Weekday] = Field(default_factory=lambda: list(_WEEKDAYS), min_length=1)
    special: dict[Weekday, Hours] = Field(
        default_factory=dict, description="Other opening hours on some days, e.g. sat: {start: '09:00', end: '13:00'}.")

    @model_validator(mode="after")
    def _special_days_open(self) -> BusinessHours:
        closed = [d for d in self.special if d not in self.days]
        if closed:
            raise ValueError(f"special hours given for {', '.join(closed)}, which is not among the business days")
        return self


class Pipeline(Strict):
    """A pipeline intakes are assigned to, with its stages and its team (user ids)."""

    id: Id
    name: str
    stages: list[Id] = Field(min_length=1, description="The first stage is where new intakes land.")
    team: list[Id] = Field(default_factory=list)
    closed: list[Id] | None = Field(
        default=None,
        description="Stages where an intake is finished and no longer counts toward its assignee's load "
                    "(default: the last stage).")

    @property
    def closed_stages(self) -> list[str]:
        """The stages where intakes are finished (`closed`, else the last stage)."""
        return list(self.closed) if self.closed is not None else [self.stages[-1]]


class User(Strict):
    """A person in the org: who can be assigned, notified, or booked."""

    id: Id
    name: str
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    role: Role
    capacity: int = Field(default=10, ge=0, description="Open items this user can hold before being skipped.")
    takes_bookings: bool = False


class OrgConfig(Strict):
    """`rulesets/<org>/org.yaml`: who the org is, its pipelines and its people."""

    org: Id = Field(description="The org id used in events and URLs.")
    name: str
    timezone: str = Field(description="IANA time zone, e.g. America/New_York.")
    business_hours: BusinessHours
    lunch: Hours | None = None
    webhook_secret_env: str | None = Field(
        default=None, pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="The secret that signs this org's inbound webhooks: an environment variable under the org's own "
                    "prefix, e.g. ACME_WEBHOOK_SECRET for org acme (several values comma-separated during a rotation).")
    pipelines: list[Pipeline] = Field(min_length=1)
    users: list[User] = Field(min_length=1)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        return _known_zone(v)

    def pipeline(self, pipeline_id: str) -> Pipeline | None:
        """The pipeline with this id, if any."""
        return next((p for p in self.pipelines if p.id == pipeline_id), None)

    def user(self, user_id: str) -> User | None:
        """The user with this id, if any."""
        return next((u for u in self.users if u.id == user_id), None)

    @property
    def roles(self) -> set[str]:
        """Every role some user holds."""
        return {u.role for u in self.users}


# --------------------------------------------------------------------------- rulesets

Scalar = str | int | float | bool
OPERATORS = ("equals", "not_equals", "in_", "gt", "gte", "lt", "lte", "exists", "matches")


class FieldCondition(Strict):
    """A test on one event field, addressed by a dotted path such as `data.category`.

    Exactly one operator is given.
    """

    field: str = Field(pattern=r"^(data|source|type)(\.[A-Za-z0-9_]+)*$")
    equals: Scalar | None = None
    not_equals: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None
    exists: bool | None = None
    matches: str | None = Field(default=None, description=(
        "RE2 regular expression (case-insensitive; no lookaround or backreferences) searched in the field's text."))

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_operator(self) -> FieldCondition:
        ops = [k for k in OPERATORS
               if getattr(self, k) is not None]
        if len(ops) != 1:
            names = ", ".join(o.rstrip("_") for o in ops) or "none"
            raise ValueError(
                f"field condition on '{self.field}' needs exactly one of equals, not_equals, in, gt, gte, "
                f"lt, lte, exists, matches (got {names})")
        return self

    @property
    def operator(self) -> str:
        """The one operator this condition uses."""
        for k in OPERATORS:
            if getattr(self, k) is not None:
                return k.rstrip("_")
        raise AssertionError("validated to have one operator")

    @property
    def value(self) -> Any:
        """The operand of the operator."""
        return getattr(self, self.operator if self.operator != "in" else "in_")


TextScope = Literal["all", "subject", "body", "full"]


class TextCondition(Strict):
    """Tests on the event's text: `all` is subject and body without quoted replies and signature;
    `full` adds both (for spam footers); `subject` and `body` are what they say.

    Keywords and phrases match whole words, case-insensitively, and tolerate inner whitespace
    and punctuation ("set up" matches "set-up"). A keyword preceded by a negation ("not urgent",
    "no rush on this", "isn't urgent") does not count unless `count_negated` is true.
    """

    any: list[str] = Field(default_factory=list, description="At least one of these keywords/phrases.")
    all: list[str] = Field(default_factory=list, description="Every one of these keywords/phrases.")
    none: list[str] = Field(default_factory=list, description="None of these keywords/phrases.")
    regex: list[str] = Field(default_factory=list, description=(
        "RE2 regular expressions (search, case-insensitive; no lookaround or backreferences); any may match."))
    scope: TextScope = "all"
    include_quoted: bool = Field(default=False, description="Also search quoted reply text ('> ...', 'On ... wrote:').")
    count_negated: bool = False

    @model_validator(mode="after")
    def _not_empty(self) -> TextCondition:
        if not (self.any or self.all or self.none or self.regex):
            raise ValueError("text condition needs at least one of any, all, none, regex")
        return self


class When(Strict):
    """A rule's conditions; all given parts must hold."""

    type: list[str] | str | None = Field(default=None, description="Event type(s), e.g. email:received.")
    source: list[Source] | Source | None = None
    fields: list[FieldCondition] = Field(default_factory=list)
    text: TextCondition | None = None

    def types(self) -> list[str]:
        """The event types as a list (empty = any)."""
        return [self.type] if isinstance(self.type, str) else list(self.type or [])

    def sources(self) -> list[str]:
        """The sources as a list (empty = any)."""
        if self.source is None:
            return []
        return [str(self.source)] if isinstance(self.source, Source) else [str(s) for s in self.source]


class Then(Strict):
    """What a rule concludes when it matches."""

    intent: Intent | None = None
    confidence: Confidence = 0.8
    priority: Priority | None = None
    decision_type: DecisionType | None = None
    set: dict[str, Scalar] = Field(default_factory=dict, description="Fields recorded on the decision's trace.")
    pipeline: Id | None = Field(default=None, description="Route to this pipeline instead of the routing table's.")
    consult_llm: bool = Field(default=False, description="Always hand this event to the LLM.")
    urgent: bool = Field(default=False, description="Raise priority to the policy's urgent priority.")

    @model_validator(mode="after")
    def _says_something(self) -> Then:
        if self.intent is None and not self.consult_llm and not self.urgent and self.priority is None:
            raise ValueError("a rule's `then` needs an intent, a priority, urgent: true, or consult_llm: true")
        return self


class Rule(Strict):
    """One rule: conditions, a conclusion, and a salience (higher wins ties)."""

    id: Id
    description: str = ""
    salience: int = Field(default=0, ge=-1000, le=1000)
    enabled: bool = True
    when: When
    then: Then


class Ruleset(Strict):
    """`rulesets/<org>/<name>.yaml`: a named group of rules."""

    ruleset: Id = Field(description="The ruleset's name; rule ids are reported as ruleset/rule.")
    description: str = ""
    rules: list[Rule] = Field(min_length=1)


# --------------------------------------------------------------------------- policies

class CircuitBreaker(Strict):
    """Stop calling a failing provider for a while."""

    failures: int = Field(default=5, ge=1, description="Consecutive failures that open the circuit.")
    reset_seconds: float = Field(default=60.0, gt=0)


class Price(Strict):
    """What one model costs, in USD per million tokens (for the simulator's cost estimates)."""

    input_per_million: float = Field(ge=0.0)
    output_per_million: float = Field(ge=0.0)


class LLMSettings(Strict):
    """Which model to consult for ambiguous events, and how patiently."""

    provider: Literal["openai", "anthropic", "none"] = "none"
    model: str = "gpt-4o-mini"
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(default=600, ge=16, le=8192)
    timeout_seconds: float = Field(default=20.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10)
    backoff_seconds: float = Field(default=0.5, ge=0)
    backoff_max_seconds: float = Field(default=8.0, ge=0)
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    prices: dict[str, Price] = Field(
        default_factory=dict, description="USD per million tokens by model name; `astralis simulate` estimates "
        "the LLM cost of a ruleset change with it. A model missing here is counted in tokens, not dollars.")


class Ambiguity(Strict):
    """When the rules' answer is not good enough and the LLM is consulted."""

    consult_below: Confidence = Field(default=0.7, description="Top confidence under this is ambiguous.")
    margin: Confidence = Field(default=0.1, description="Two intents within this margin are a conflict.")


class Threshold(Strict):
    """Confidence cut-offs for one decision type."""

    auto_execute: Confidence
    require_approval: Confidence

    @model_validator(mode="after")
    def _ordered(self) -> Threshold:
        if self.require_approval > self.auto_execute:
            raise ValueError(
                f"require_approval {self.require_approval} is above auto_execute {self.auto_execute}")
        return self


class Notify(Strict):
    """Who hears about a routed intake."""

    users: list[Id] = Field(default_factory=list)
    roles: list[Role] = Field(default_factory=list)
    team: bool = Field(default=False, description="The pipeline's team.")
    template: str = "new_intake"


class Route(Strict):
    """What an intent turns into: a pipeline and assignee, notifications, automations."""

    decision_type: DecisionType = DecisionType.ASSIGN_PIPELINE
    pipeline: Id | None = None
    stage: Id | None = Field(default=None, description="Defaults to the pipeline's first stage.")
    assignee_role: Role | None = None
    assignee: Id | None = None
    notify: Notify = Notify()
    automations: list[str] = Field(default_factory=list, description="Named n8n workflows to trigger.")
    priority: Priority | None = Field(default=None, description="Priority for this intent, overriding normal.")


class Urgency(Strict):
    """Words that make an event urgent, and the priorities used."""

    keywords: list[str] = Field(default_factory=list)
    priority: Priority = 5
    normal_priority: Priority = 3


class Scheduling(Strict):
    """How bookings are placed on hosts' calendars."""

    default_duration_minutes: int = Field(default=30, ge=5, le=480)
    reminders_minutes_before: list[int] = Field(default_factory=lambda: [1440, 60])
    slot_step_minutes: int = Field(default=15, ge=5, le=60)
    buffer_minutes: int = Field(default=0, ge=0, le=120,
                                description="Free time kept before and after every event on a host's calendar.")


class RateLimits(Strict):
    """Decisions per org; over the limit they are held as PENDING, never dropped."""

    per_minute: int = Field(default=120, ge=1)
    per_hour: int = Field(default=3000, ge=1)


class Capabilities(Strict):
    """Which kinds of action the agent may take for this org."""

    assign_pipelines: bool = True
    create_events: bool = True
    send_notifications: bool = True
    trigger_automations: bool = True
    escalate: bool = True


class FallbackRule(Strict):
    """A keyword rule used when the LLM is off, down, or answers garbage."""

    keywords: list[str] = Field(min_length=1)
    intent: Intent
    confidence: Confidence = 0.5


class Fallback(Strict):
    """What decides when the LLM cannot."""

    rules: list[FallbackRule] = Field(default_factory=list)
    default_intent: Intent = Intent.OTHER
    default_confidence: Confidence = 0.4


class Escalation(Strict):
    """Where escalations go."""

    address: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    roles: list[Role] = Field(default_factory=list)


class Execution(Strict):
    """How the outbox runs actions: attempts and exponential backoff (with jitter) for transient failures.

    The delay before attempt n+1 is `min(backoff_max_seconds, backoff_seconds * 2**(n-1))`, multiplied by a
    random factor in [0.5, 1] ("equal jitter"), so that retries of many actions do not arrive together.
    """

    max_attempts: int = Field(default=5, ge=1, le=50, description="Attempts before an action is dead-lettered.")
    backoff_seconds: float = Field(default=2.0, gt=0, le=3600)
    backoff_max_seconds: float = Field(default=300.0, gt=0, le=86400)
    timeout_seconds: float = Field(default=30.0, gt=0, le=600, description="The longest one attempt may take.")


class Automation(Strict):
    """A named n8n workflow (its Webhook node's URL). Only these URLs are ever called."""

    url: str = Field(pattern=r"^https?://[^\s]+$", description="The workflow's webhook URL, e.g. https://n8n.example/webhook/new-lead.")
    auth_header: str = Field(default="Authorization", pattern=r"^[A-Za-z0-9-]+$",
                             description="The header that carries the secret named by `auth_env`.")
    auth_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$",
                                 description="The secret sent in the header: an environment variable under the org's own "
                                             "prefix (<ORG>_..., e.g. ACME_N8N_TOKEN), set by the operator; never stored in YAML.")
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)


class Template(Strict):
    """A notification: subject and text body, Jinja2 (sandboxed) over the decision, event and action."""

    subject: str = Field(min_length=1, max_length=300)
    body: str = Field(min_length=1)


class EmailSettings(Strict):
    """The SMTP server that sends this org's email notifications."""

    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    from_address: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", alias="from")
    username_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$",
                                     description="SMTP login: an environment variable under the org's own prefix (<ORG>_...).")
    password_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$",
                                     description="SMTP password: an environment variable under the org's own prefix (<ORG>_...).")
    starttls: bool = False
    use_tls: bool = False
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)


class NotifyWebhook(Strict):
    """An outbound webhook that receives every notification, signed like our inbound webhooks."""

    url: str = Field(pattern=r"^https?://[^\s]+$")
    secret_env: str = Field(pattern=r"^[A-Z_][A-Z0-9_]*$",
                            description="The signing secret: an environment variable under the org's own prefix (<ORG>_...).")
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)


Channel = Literal["in_app", "email", "webhook"]


class Notifications(Strict):
    """How notifications reach people: channels, SMTP, the outbound webhook, templates, and timing."""

    channels: list[Channel] = Field(default_factory=lambda: list[Channel](["in_app"]),
                                    description="Channels every notification to a user goes through.")
    email: EmailSettings | None = None
    webhook: NotifyWebhook | None = None
    templates: dict[str, Template] = Field(default_factory=dict,
                                           description="Overrides and additions to the built-in templates.")
    delay_minutes: int = Field(default=0, ge=0, le=1440,
                               description="Non-urgent notifications wait this long; priority 5 goes at once.")
    business_hours_only: bool = Field(default=False,
                                      description="Non-urgent notifications wait for the org's business hours.")

    @model_validator(mode="after")
    def _channels_configured(self) -> Notifications:
        if "email" in self.channels and self.email is None:
            raise ValueError("channel 'email' needs notifications.email (the SMTP server)")
        if "webhook" in self.channels and self.webhook is None:
            raise ValueError("channel 'webhook' needs notifications.webhook (url and secret_env)")
        return self


SCHEDULE_DATA_KEYS = ("schedule", "fired_at")


class Schedule(Strict):
    """An event the service raises itself on a cron schedule (source SCHEDULE), e.g. a weekday digest.

    The cron expression is read in `timezone` (the org's when absent), so `0 8 * * mon-fri` fires at
    08:00 local time on both sides of a DST change.
    """

    id: Id = Field(description="Names the schedule in event ids (sched_<id>_<UTC time>) and in the event's data.")
    cron: str = Field(description="Five-field cron expression: minute hour day-of-month month day-of-week, "
                                  "e.g. '0 8 * * mon-fri'.")
    type: str = Field(default="schedule:tick", pattern=r"^[a-z_]+:[a-z_]+$", description="The event type raised.")
    data: dict[str, Any] = Field(
        default_factory=dict,
        description="The event's data; `schedule` (this id) and `fired_at` (ISO-8601) are added to it.")
    timezone: str | None = Field(default=None, description="IANA time zone the cron is read in; default: the org's.")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, v: str) -> str:
        # imported here, not at the top: ~30 ms that only policies with schedules should pay
        from croniter import CroniterBadDateError, croniter

        fields = v.split()
        if len(fields) != 5:
            raise ValueError(f"cron '{v}' has {len(fields)} field{'s' if len(fields) != 1 else ''}, expected 5: "
                             "minute hour day-of-month month day-of-week, e.g. '0 8 * * mon-fri'")
        try:
            croniter(v, datetime(2000, 1, 1)).get_next(datetime)
        except CroniterBadDateError:
            raise ValueError(f"cron '{v}' never fires (no such date)") from None
        except (ValueError, KeyError) as exc:  # croniter's errors are ValueErrors; a few bad names raise KeyError
            # croniter repeats the expression in its messages ("[61 * * * *] is not acceptable, out of range")
            detail = str(exc).replace(f"[{v}]", "").replace(v, "").strip(" ,:")
            detail = detail.removeprefix("is not acceptable").removeprefix("is ").strip(" ,:")
            raise ValueError(f"cron '{v}' is not a valid cron expression" + (f" ({detail})" if detail else "")) from None
        return v

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str | None) -> str | None:
        return None if v is None else _known_zone(v)

    @field_validator("data")
    @classmethod
    def _no_reserved_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        taken = [k for k in SCHEDULE_DATA_KEYS if k in v]
        if taken:
            raise ValueError(f"data key(s) {', '.join(taken)} are set by the scheduler itself; rename them")
        return v


class Learning(Strict):
    """The org's own model (`astralis train`), between the rules and the LLM: when it decides, when it sends
    an event to the LLM, and what it learns from."""

    enabled: bool = Field(default=False, description="Consult the org model after the rules (off: decisions as "
                          "without a model, exactly).")
    min_confidence: Confidence = Field(
        default=0.8, description="An event the rules find ambiguous is decided by the model when its calibrated "
        "confidence is at least this; below it, the LLM is asked.")
    disagree: Confidence = Field(
        default=0.97, description="When the rules decided but the model gives another intent with at least this "
        "confidence, the LLM is asked (with no LLM, the rules' decision stands).")
    fallback_confidence: Confidence = Field(
        default=0.5, description="With the LLM off or down, the model decides when at least this confident, "
        "before the fallback keyword rules.")
    min_words: int = Field(default=4, ge=0, le=1000, description="An event with fewer words than this is never "
                           "decided by the model (too little to go on, whatever its confidence).")
    distill_llm: bool = Field(default=False, description="Learn from the LLM's answers (never about a text from "
                              "which instruction-like passages were removed).")
    distill_min_confidence: Confidence = Field(default=0.9, description="The least LLM confidence learned from.")
    retrain_after: int = Field(default=50, ge=1, le=100_000,
                               description="New labels (approvals, corrections) after which the service retrains.")

    @model_validator(mode="after")
    def _ordered(self) -> Learning:
        if self.fallback_confidence > self.min_confidence:
            raise ValueError(f"fallback_confidence {self.fallback_confidence} is above min_confidence "
                             f"{self.min_confidence}")
        return self


def _default_thresholds() -> dict[DecisionType | Literal["default"], Threshold]:
    return {"default": Threshold(auto_execute=0.85, require_approval=0.6)}


class Policy(Strict):
    """`policies/<org>.yaml` (after `extends` is merged): how the agent decides and acts."""

    extends: str | None = Field(default=None, description="Another policy to inherit from, e.g. default.")
    llm: LLMSettings = LLMSettings()
    ambiguity: Ambiguity = Ambiguity()
    thresholds: dict[DecisionType | Literal["default"], Threshold] = Field(default_factory=_default_thresholds)
    routing: dict[Intent, Route] = Field(default_factory=dict)
    urgency: Urgency = Urgency()
    scheduling: Scheduling = Scheduling()
    rate_limits: RateLimits = RateLimits()
    capabilities: Capabilities = Capabilities()
    fallback: Fallback = Fallback()
    escalation: Escalation | None = None
    execution: Execution = Execution()
    automations: dict[Id, Automation] = Field(default_factory=dict, description="Named n8n workflows.")
    notifications: Notifications = Notifications()
    learning: Learning = Learning()
    schedules: list[Schedule] = Field(
        default_factory=list,
        description="Events raised on a cron schedule. An org policy's list replaces an inherited one.")

    @field_validator("schedules")
    @classmethod
    def _unique_schedule_ids(cls, v: list[Schedule]) -> list[Schedule]:
        first: dict[str, int] = {}
        for i, sched in enumerate(v):
            if sched.id in first:
                raise ValueError(f"schedule id '{sched.id}' is defined twice (schedules[{first[sched.id]}] and schedules[{i}])")
            first[sched.id] = i
        return v

    def threshold(self, decision_type: DecisionType) -> Threshold:
        """The thresholds for a decision type, else the default ones."""
        return self.thresholds.get(decision_type) or self.thresholds.get("default") or Threshold(
            auto_execute=0.85, require_approval=0.6)


def compile_user_regex(pattern: str) -> UserRegex:
    """Compile a rule's regular expression the way the matcher uses it: RE2 (linear time), case-insensitive
    search; `engine.patterns.RegexError` (a ValueError) when RE2 refuses it."""
    return compile_regex(pattern)
