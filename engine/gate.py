"""Gate: thresholds per decision type, capabilities, and rate limits decide what may run."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from engine.config import Capabilities, DecisionType, Policy, RateLimits
from engine.models import Action, Status

CAPABILITY_OF: dict[DecisionType, str] = {
    DecisionType.ASSIGN_PIPELINE: "assign_pipelines",
    DecisionType.CREATE_EVENT: "create_events",
    DecisionType.UPDATE_EVENT: "create_events",
    DecisionType.CANCEL_EVENT: "create_events",
    DecisionType.SEND_NOTIFICATION: "send_notifications",
    DecisionType.TRIGGER_AUTOMATION: "trigger_automations",
    DecisionType.ESCALATE: "escalate",
}


@dataclass
class GateResult:
    """The status a decision gets, the actions allowed, and what was held back and why."""

    status: Status
    outcome: str  # auto_execute | requires_approval | reject | rate_limited
    reason: str
    actions: list[Action]
    blocked: list[dict[str, object]] = field(default_factory=list)


def split_by_capability(actions: list[Action], caps: Capabilities) -> tuple[list[Action], list[dict[str, object]]]:
    """Allowed actions, and the blocked ones each with the capability that blocked it."""
    allowed: list[Action] = []
    blocked: list[dict[str, object]] = []
    for a in actions:
        cap = CAPABILITY_OF.get(a.type)
        if cap and not getattr(caps, cap):
            blocked.append({"action": a.model_dump(mode="json"), "reason": f"capability {cap} is disabled"})
        else:
            allowed.append(a)
    return allowed, blocked


class Limiter(Protocol):
    """Counts decisions against an org's rate limits: this process's (`RateLimiter`) or every worker's
    together (`adapters.redis_limits.RedisRateLimiter`)."""

    async def acquire(self, org: str, limits: RateLimits) -> str | None:
        """Count one decision for `org` if under both limits (None), else say which limit is hit."""
        ...


class RateLimiter:
    """Sliding-window counts of decisions per org, per minute and per hour, in this process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}

    def check(self, org: str, limits: RateLimits) -> str | None:
        """Count one decision for `org` if under both limits (None), else say which limit is hit."""
        now = self._clock()
        q = self._seen.setdefault(org, deque())
        while q and now - q[0] >= 3600:
            q.popleft()
        last_minute = sum(1 for t in q if now - t < 60)
        if last_minute >= limits.per_minute:
            return f"rate limit of {limits.per_minute} decisions per minute reached"
        if len(q) >= limits.per_hour:
            return f"rate limit of {limits.per_hour} decisions per hour reached"
        q.append(now)
        return None

    async def acquire(self, org: str, limits: RateLimits) -> str | None:
        """`check`, as the agent calls every `Limiter`."""
        return self.check(org, limits)


def gate(policy: Policy, decision_type: DecisionType, confidence: float, actions: list[Action], *,
         llm_wants_approval: bool = False, escalation: Action | None = None,
         rate_limited: str | None = None) -> GateResult:
    """Apply the decision type's thresholds and the org's capabilities.

    ≥ auto_execute → EXECUTED; between the thresholds → REQUIRES_APPROVAL; under require_approval →
    REJECTED, its actions replaced by the escalation. Over a rate limit → PENDING (held, never dropped).
    """
    t = policy.threshold(decision_type)
    allowed, blocked = split_by_capability(actions, policy.capabilities)
    if rate_limited:
        return GateResult("PENDING", "rate_limited", f"held: {rate_limited}", allowed, blocked)
    if confidence >= t.auto_execute:
        if llm_wants_approval:
            return GateResult("REQUIRES_APPROVAL", "requires_approval",
                              f"confidence {confidence:.2f} clears auto-execute {t.auto_execute:.2f}, but the LLM "
                              "asked for human approval", allowed, blocked)
        if blocked and not allowed:
            return GateResult("REQUIRES_APPROVAL", "requires_approval",
                              "every planned action is blocked by a disabled capability; a person must act",
                              allowed, blocked)
        return GateResult("EXECUTED", "auto_execute",
                          f"confidence {confidence:.2f} ≥ auto-execute {t.auto_execute:.2f} for {decision_type}",
                          allowed, blocked)
    if confidence >= t.require_approval:
        return GateResult("REQUIRES_APPROVAL", "requires_approval",
                          f"confidence {confidence:.2f} is between require-approval {t.require_approval:.2f} and "
                          f"auto-execute {t.auto_execute:.2f} for {decision_type}", allowed, blocked)
    rejected: list[dict[str, object]] = [{"action": a.model_dump(mode="json"), "reason": "decision rejected: confidence too low"}
                for a in allowed]
    esc = [escalation] if escalation is not None and policy.capabilities.escalate else []
    return GateResult("REJECTED", "reject",
                      f"confidence {confidence:.2f} < require-approval {t.require_approval:.2f} for {decision_type}; "
                      "rejected and escalated", esc, blocked + rejected)
