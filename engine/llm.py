"""The LLM stage, consulted only for ambiguous events: prompt → provider → strict JSON → validated
classification; retries with backoff and a circuit breaker from the policy; fallback keyword rules
when the provider is off, down, or answers garbage.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from string import Template
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.config import Capabilities, DecisionType, Fallback, Intent, LLMSettings, OrgConfig
from engine.config import CircuitBreaker as BreakerSettings
from engine.gate import CAPABILITY_OF
from engine.models import LLMTrace
from engine.ports import LLMError, LLMProvider, LLMRequest
from engine.resolve import Resolution
from engine.text import EventText, keyword_set

INTENT_GUIDE = {
    "SALES_INQUIRY": "someone who may buy: prices, quotes, demos, plans, hiring the business",
    "SUPPORT_REQUEST": "an existing customer with something broken or a how-to question",
    "BILLING_QUESTION": "invoices, charges, refunds, payments, receipts",
    "PARTNERSHIP": "resellers, affiliates, agencies or vendors proposing to work together",
    "PROJECT": "a concrete piece of work to scope or start: a website, an app, a redesign",
    "SCHEDULING": "setting up, moving or cancelling a meeting or booking",
    "SPAM": "unsolicited pitches, scams, newsletters, auto-replies, out-of-office, bounces",
    "OTHER": "anything else: job applications, thanks, general questions",
}


class ProposedAction(BaseModel):
    """An action the model suggests; validated against the org before it is recorded."""

    model_config = ConfigDict(extra="ignore")
    type: DecisionType
    params: dict[str, Any] = Field(default_factory=dict)


class Classification(BaseModel):
    """The model's answer, after strict validation. Unknown keys are ignored; a bad intent rejects it."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    intent: Intent
    confidence: float = Field(ge=0.0, le=1.0)
    reasoning: str = Field(default="", max_length=2000)
    priority: int | None = Field(default=None, ge=1, le=5)
    urgency: str | None = None
    entities: dict[str, Any] | None = None
    actions: list[dict[str, Any]] | None = None
    requires_approval: bool | None = Field(default=None, alias="requiresApproval")

    def effective_priority(self) -> int | None:
        """The priority, or one derived from a textual urgency ("urgent" → 5, "low" → 1)."""
        if self.priority is not None:
            return self.priority
        u = (self.urgency or "").lower()
        return 5 if u in ("urgent", "high", "critical", "emergency") else 1 if u == "low" else 3 if u else None


# --------------------------------------------------------------------------- prompts

@functools.cache
def _template(name: str) -> Template:
    return Template(resources.files("engine.prompts").joinpath(f"{name}.txt").read_text(encoding="utf-8"))


_SYSTEM_PROMPTS: dict[int, tuple[OrgConfig, str]] = {}


def system_prompt(org: OrgConfig) -> str:
    """The system prompt: who the org is, its pipelines and team, the allowed intents and the format. Built
    once per loaded configuration (an `OrgConfig` is not changed once loaded; a reload makes a new one)."""
    cached = _SYSTEM_PROMPTS.get(id(org))
    if cached is not None and cached[0] is org:
        return cached[1]
    prompt = _system_prompt(org)
    if len(_SYSTEM_PROMPTS) >= 256:
        _SYSTEM_PROMPTS.clear()
    _SYSTEM_PROMPTS[id(org)] = (org, prompt)
    return prompt


def _system_prompt(org: OrgConfig) -> str:
    pipelines = "\n".join(f"- {p.id}: {p.name} (stages: {', '.join(p.stages)}; team: {', '.join(p.team) or '-'})"
                          for p in org.pipelines)
    team = "\n".join(f"- {u.id}: {u.name}, {u.role}" + (", takes bookings" if u.takes_bookings else "")
                     for u in org.users)
    intents = "\n".join(f"- {k}: {v}" for k, v in INTENT_GUIDE.items())
    return _template("system").substitute(org_name=org.name, pipelines=pipelines, team=team, intents=intents)


def _fence(text: str) -> str:
    # The data block's end marker must not be forgeable from inside the data.
    return text.replace("EVENT DATA>>>", "EVENT DATA>>\u200b>").replace("<<<EVENT DATA", "<<\u200b<EVENT DATA")


def user_prompt(org: OrgConfig, event: dict[str, Any], text: EventText, resolution: Resolution) -> str:
    """The task prompt for one event; its text sits in a clearly delimited, untrusted data block."""
    etype = str(event.get("type", ""))
    kind = ("scheduling" if etype.startswith("booking:") or (resolution.candidate and
            resolution.candidate.intent == Intent.SCHEDULING)
            else "notification" if etype.split(":")[0] in ("reminder", "automation", "pipeline") else "intake")
    data = event.get("data") or {}
    extra = {k: v for k, v in data.items()
             if k not in ("text", "message", "description", "purpose", "subject", "title", "html", "body")
             and isinstance(v, str | int | float | bool) and len(str(v)) < 200}
    fields = ("Other fields (also untrusted data): " + json.dumps(extra, ensure_ascii=False)) if extra else ""
    scores = ", ".join(f"{k}: {v:.2f}" for k, v in resolution.scores.items()) or "none"
    return _template(kind).substitute(
        event_type=etype, source=event.get("source", ""), reason=resolution.reason, scores=scores,
        text=_fence(text.for_llm or "(no text)"), fields=_fence(fields), org_name=org.name, timezone=org.timezone)


# --------------------------------------------------------------------------- parsing and validation

_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_reply(text: str) -> dict[str, Any]:
    """The reply as a JSON object (a ```json fence is tolerated); ValueError when it is not one."""
    m = _FENCE.match(text)
    body = m.group(1) if m else text
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the reply is not JSON ({exc.msg} at char {exc.pos}): {text[:120]!r}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"the reply is JSON but not an object: {text[:120]!r}")
    return obj


def validate_actions(actions: list[dict[str, Any]], org: OrgConfig,
                     capabilities: Capabilities | None = None) -> tuple[list[ProposedAction], list[str]]:
    """Keep the proposed actions that name only this org's pipelines, stages and users, and that the
    org's capabilities allow; say why the others are rejected."""
    ok: list[ProposedAction] = []
    rejected: list[str] = []
    for raw in actions:
        try:
            action = ProposedAction.model_validate(raw)
        except ValidationError:
            rejected.append(f"action {json.dumps(raw)[:160]} is not a known action type")
            continue
        p = action.params
        problems = []
        cap = CAPABILITY_OF.get(action.type)
        if capabilities is not None and cap and not getattr(capabilities, cap):
            problems.append(f"capability {cap} is disabled")
        pipeline = org.pipeline(str(p["pipeline"])) if "pipeline" in p else None
        if "pipeline" in p and pipeline is None:
            problems.append(f"unknown pipeline '{p['pipeline']}'")
        elif pipeline is not None and "stage" in p and str(p["stage"]) not in pipeline.stages:
            problems.append(f"unknown stage '{p['stage']}' of pipeline '{pipeline.id}'")
        for key in ("assignee", "host", "user"):
            if key in p and org.user(str(p[key])) is None:
                problems.append(f"unknown user '{p[key]}'")
        to = p.get("to")
        for uid in [to] if isinstance(to, str) else to if isinstance(to, list) else []:
            if org.user(str(uid)) is None:
                problems.append(f"unknown user '{uid}'")
        if problems:
            rejected.append(f"action {action.type} rejected: {', '.join(problems)}")
        else:
            ok.append(action)
    return ok, rejected


# --------------------------------------------------------------------------- circuit breaker

class Breaker(Protocol):
    """A circuit breaker for one org's use of one provider: this process's (`CircuitBreaker`) or shared by every
    worker (`adapters.redis_limits.RedisBreaker`)."""

    consecutive: int
    """Consecutive failures, as last seen."""

    async def allow(self) -> bool:
        """Whether a call may be made now."""
        ...

    async def success(self) -> None:
        """Record a good answer."""
        ...

    async def failure(self) -> None:
        """Record a failed call."""
        ...


BreakerFactory = Callable[[str, str, BreakerSettings], Breaker]
"""(org, provider name, the policy's circuit_breaker settings) → the breaker to use."""


@dataclass
class CircuitBreaker:
    """Opens after N consecutive failures; after `reset_seconds` lets one trial call through."""

    failures: int
    reset_seconds: float
    clock: Callable[[], float] = time.monotonic
    consecutive: int = 0
    opened_at: float | None = None
    trial: bool = False  # half-open: one trial call is out

    async def allow(self) -> bool:
        """Whether a call may be made now: always when closed; when open, one trial after the reset time."""
        if self.opened_at is None:
            return True
        if self.trial or self.clock() - self.opened_at < self.reset_seconds:
            return False
        self.trial = True
        return True

    async def success(self) -> None:
        """Record a good answer: the circuit closes."""
        self.consecutive = 0
        self.opened_at = None
        self.trial = False

    async def failure(self) -> None:
        """Record a failed call: past the threshold the circuit opens (again)."""
        self.consecutive += 1
        self.trial = False
        if self.consecutive >= self.failures:
            self.opened_at = self.clock()


# --------------------------------------------------------------------------- the stage

@dataclass
class LLMResult:
    """What the stage produced: a valid classification, or None with the failure recorded in `trace`."""

    classification: Classification | None
    trace: LLMTrace | None
    failure: str | None
    accepted_actions: list[ProposedAction] = field(default_factory=list)


class LLMStage:
    """Consults a provider for ambiguous events. Owns retries (SDK retries are off) and one breaker
    per org and provider."""

    def __init__(self, provider: LLMProvider | Mapping[str, LLMProvider | None] | None, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic, rng: Callable[[], float] = random.random,
                 breakers: BreakerFactory | None = None) -> None:
        """`provider`: one provider for every org, or providers by name ("openai", "anthropic") so that each
        org's policy picks its own (a service serving several orgs). `breakers`: where the circuit breakers
        live (default: in this process)."""
        self._by_name: Mapping[str, LLMProvider | None] | None = None
        if isinstance(provider, Mapping):
            self._by_name = provider
            provider = None
        self.provider: LLMProvider | None = provider
        self._sleep = sleep
        self._clock = clock
        self._rng = rng
        self._breakers: dict[str, Breaker] = {}
        self._make_breaker = breakers

    def provider_for(self, settings: LLMSettings) -> LLMProvider | None:
        """The provider an org's LLM settings select (None: no LLM)."""
        if settings.provider == "none":
            return None
        if self._by_name is not None:
            return self._by_name.get(settings.provider)
        return self.provider

    def breaker(self, org: str, settings: LLMSettings) -> Breaker:
        """The circuit breaker for an org's use of its provider."""
        provider = self.provider_for(settings)
        name = provider.name if provider else "none"
        key = f"{org}/{name}"
        if key not in self._breakers:
            cb = settings.circuit_breaker
            self._breakers[key] = (self._make_breaker(org, name, cb) if self._make_breaker is not None
                                   else CircuitBreaker(cb.failures, cb.reset_seconds, self._clock))
        return self._breakers[key]

    def _backoff(self, settings: LLMSettings, attempt: int, retry_after: float | None) -> float:
        # Full jitter keeps many workers from retrying in step; Retry-After is honoured up to the cap.
        base = min(settings.backoff_max_seconds, settings.backoff_seconds * (2 ** attempt))
        delay = base * (0.5 + 0.5 * self._rng())
        if retry_after is not None:
            delay = max(delay, min(retry_after, settings.backoff_max_seconds))
        return delay

    async def classify(self, org: OrgConfig, settings: LLMSettings, event: dict[str, Any], text: EventText,
                       resolution: Resolution, capabilities: Capabilities | None = None) -> LLMResult:
        """Ask the model; return its validated classification or why there is none."""
        provider = self.provider_for(settings)
        if provider is None:
            why = ("provider: none" if settings.provider == "none" or self._by_name is None
                   else f"{settings.provider} is not set up in this process: no API key")
            return LLMResult(None, None, f"no LLM provider is configured ({why})")
        breaker = self.breaker(org.org, settings)
        system = system_prompt(org)
        user = user_prompt(org, event, text, resolution)
        trace = LLMTrace(provider=provider.name, model=settings.model, prompt=user)
        if not await breaker.allow():
            trace.error = (f"circuit open after {breaker.consecutive} consecutive failures; "
                           f"not calling {provider.name} for {settings.circuit_breaker.reset_seconds:.0f} s")
            return LLMResult(None, trace, trace.error)
        request = LLMRequest(system=system, user=user, model=settings.model, temperature=settings.temperature,
                             max_tokens=settings.max_tokens, timeout_seconds=settings.timeout_seconds)
        errors: list[str] = []
        for attempt in range(settings.retries + 1):
            trace.attempts = attempt + 1
            retry_after: float | None = None
            try:
                async with asyncio.timeout(settings.timeout_seconds + 5):  # a backstop: providers time out first
                    reply = await provider.complete(request)
            except (LLMError, TimeoutError) as exc:
                err = exc if isinstance(exc, LLMError) else LLMError("timeout", "no answer in time")
                errors.append(f"attempt {attempt + 1}: {err.kind}: {err}")
                await breaker.failure()
                if not err.retryable or not await breaker.allow():
                    break
                retry_after = err.retry_after
            else:
                trace.model = reply.model or settings.model
                trace.response = reply.text
                trace.input_tokens += reply.input_tokens
                trace.output_tokens += reply.output_tokens
                trace.latency_ms = round(trace.latency_ms + reply.latency_ms, 1)
                try:
                    obj = parse_reply(reply.text)
                    classification = Classification.model_validate(obj)
                except ValueError as exc:  # ValidationError is a ValueError
                    msg = _short_validation(exc)
                    errors.append(f"attempt {attempt + 1}: invalid answer: {msg}")
                    trace.rejected.append(msg)
                    await breaker.failure()
                    if not await breaker.allow():
                        break
                else:
                    await breaker.success()
                    accepted, rejected = validate_actions(classification.actions or [], org, capabilities)
                    trace.rejected.extend(rejected)
                    trace.error = "; ".join(errors) or None
                    return LLMResult(classification, trace, None, accepted)
            if attempt < settings.retries:
                await self._sleep(self._backoff(settings, attempt, retry_after))
        trace.error = "; ".join(errors)
        return LLMResult(None, trace, trace.error)


def _short_validation(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "reply"
            got = e.get("input")
            parts.append(f"{loc}: {e['msg']}" + (f" (got {got!r})" if isinstance(got, str | int | float) else ""))
        return "; ".join(parts)
    return str(exc)


# --------------------------------------------------------------------------- fallback

@dataclass(frozen=True)
class FallbackDecision:
    """The fallback's conclusion and the words that led to it."""

    intent: Intent
    confidence: float
    reason: str


def fallback(settings: Fallback, text: EventText, resolution: Resolution) -> FallbackDecision:
    """Decide without the LLM. When the rules conflicted, their stronger intent stands (with the
    fallback's confidence, so a person approves it). Otherwise the fallback rule with the most distinct
    keyword hits wins; a tie goes to the rules' own best guess, then to the earlier rule; no hit → the
    rules' guess, else the default.
    """
    guess = resolution.candidate
    if resolution.ambiguous == "conflict" and guess is not None:
        return FallbackDecision(guess.intent, min(guess.confidence, settings.default_confidence + 0.15),
                                f"kept the rules' stronger intent {guess.intent}")
    scope = text.scope("all", include_quoted=False)
    best: list[tuple[int, int, Any, list[str]]] = []
    for order, rule in enumerate(settings.rules):
        hits = keyword_set(tuple(rule.keywords)).hits(scope, count_negated=False)
        if hits:
            best.append((len(hits), -order, rule, hits))
    if best:
        top = max(b[0] for b in best)
        tied = [b for b in best if b[0] == top]
        chosen = next((b for b in tied if guess and b[2].intent == guess.intent), None) or max(tied, key=lambda b: b[1])
        _, _, rule, hits = chosen
        return FallbackDecision(rule.intent, rule.confidence,
                                f"fallback keywords {', '.join(repr(h) for h in hits)} point to {rule.intent}")
    if guess is not None:
        return FallbackDecision(guess.intent, min(guess.confidence, settings.default_confidence + 0.1),
                                f"no fallback keyword matched; kept the rules' best guess {guess.intent}")
    return FallbackDecision(settings.default_intent, settings.default_confidence,
                            f"no fallback keyword matched; defaulted to {settings.default_intent}")
