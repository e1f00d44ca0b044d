"""Plan: turn an intent and decision type into concrete actions through the policy's routing table.

Pipelines and assignees come from the org (assignee by role and current load), bookings from the
scheduler (conflict checks against the calendar), notifications from the route. The LLM never adds
actions here: what it proposed is only recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from typing import Any
from zoneinfo import ZoneInfo

from engine.config import DecisionType, Intent, OrgConfig, Policy, Route, User
from engine.loader import OrgBundle
from engine.models import FIRST_YEAR, LAST_YEAR, Action
from engine.ports import Busy, Calendar, LoadSource
from engine.schedule import (
    BookingOutcome,
    WorkHours,
    meeting_hints,
    plan_booking,
    plannable,
    read_new_time,
    split_reschedule,
)
from engine.text import EventText

_NEVER = datetime.min.replace(tzinfo=UTC)
_WEEKDAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}


@dataclass
class Plan:
    """The actions for a decision, the decision type they amount to, and notes for the reasoning."""

    decision_type: DecisionType
    actions: list[Action] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    booking: BookingOutcome | None = None
    escalated: str | None = None


_WORK_HOURS: dict[tuple[int, int], tuple[OrgConfig, WorkHours]] = {}


def work_hours(org: OrgConfig, step_minutes: int = 15) -> WorkHours:
    """The org's opening hours and lunch as the scheduler wants them (made once per loaded configuration: an
    `OrgConfig` is frozen, and a reload makes a new one)."""
    cached = _WORK_HOURS.get((id(org), step_minutes))
    if cached is not None and cached[0] is org:
        return cached[1]
    if len(_WORK_HOURS) >= 256:
        _WORK_HOURS.clear()
    hours = _work_hours(org, step_minutes)
    _WORK_HOURS[(id(org), step_minutes)] = (org, hours)
    return hours


def _work_hours(org: OrgConfig, step_minutes: int) -> WorkHours:
    bh = org.business_hours
    lunch = org.lunch
    return WorkHours(timezone=org.timezone, start=bh.start, end=bh.end,
                     lunch_start=lunch.start if lunch else bh.start, lunch_end=lunch.end if lunch else bh.start,
                     days=frozenset(_WEEKDAYS[d] for d in bh.days),
                     special=tuple((_WEEKDAYS[d], h.start, h.end) for d, h in bh.special.items()),
                     step_minutes=step_minutes)


def pick_assignee(org: OrgConfig, role: str, loads: LoadSource, prefer: list[str]) -> tuple[User | None, str]:
    """The user with `role` and the lowest load relative to capacity; ties go to the pipeline's team,
    then to the lower load, then to the id. Users at or over capacity are skipped."""
    candidates = [u for u in org.users if u.role == role]
    if not candidates:
        return None, f"no user holds role {role}"
    open_ = [u for u in candidates if loads.load(u.id) < u.capacity]
    if not open_:
        return None, f"every {role} is at capacity ({', '.join(f'{u.id} {loads.load(u.id)}/{u.capacity}' for u in candidates)})"
    def last(u: User) -> datetime:
        when = getattr(loads, "last", lambda _uid: None)(u.id)
        return when if when is not None else _NEVER

    # Lowest load relative to capacity; then the pipeline's team; then round-robin (the one who got an intake
    # longest ago, never first); then the id, so that the choice is deterministic.
    best = min(open_, key=lambda u: (loads.load(u.id) / max(u.capacity, 1), u.id not in prefer, last(u), u.id))
    return best, f"{best.id} has the lightest {role} load ({loads.load(best.id)}/{best.capacity})"


def _recipients(org: OrgConfig, route: Route, pipeline_team: list[str], assignee: str | None) -> list[str]:
    out: list[str] = []
    if assignee:
        out.append(assignee)
    out += route.notify.users
    out += [u.id for u in org.users if u.role in route.notify.roles]
    if route.notify.team:
        out += pipeline_team
    return list(dict.fromkeys(out))


def _notify(to: list[str], template: str, priority: int, **extra: Any) -> Action:
    return Action(type=DecisionType.SEND_NOTIFICATION,
                  params={"to": to, "template": template, "priority": priority, "immediate": priority >= 5, **extra})


def escalation_action(policy: Policy, org: OrgConfig, reason: str, priority: int) -> Action:
    """An ESCALATE action to the policy's escalation address and roles."""
    esc = policy.escalation
    to = [u.id for u in org.users if esc and u.role in esc.roles]
    return Action(type=DecisionType.ESCALATE,
                  params={"address": esc.address if esc else None, "to": to, "reason": reason, "priority": priority})


def make_plan(bundle: OrgBundle, intent: Intent, decision_type: DecisionType | None, priority: int,
              event: dict[str, Any], text: EventText, calendar: Calendar, loads: LoadSource,
              now: datetime, pipeline_override: str | None = None) -> Plan:
    """The actions for one decision (nothing is executed here). A rule's `then.pipeline` overrides the
    routing table's pipeline for its intent."""
    org, policy = bundle.org, bundle.policy
    route = policy.routing.get(intent) or Route(decision_type=DecisionType.ESCALATE)
    if pipeline_override:
        route = route.model_copy(update={"pipeline": pipeline_override, "stage": None})
    dtype = decision_type or route.decision_type
    data = event.get("data") or {}

    if dtype == DecisionType.NO_ACTION:
        return Plan(dtype, notes=[f"{intent} needs no action"])

    if dtype == DecisionType.ESCALATE:
        reason = f"{intent} is escalated to a person"
        return Plan(dtype, [escalation_action(policy, org, reason, priority)], [reason], escalated=reason)

    if dtype in (DecisionType.CREATE_EVENT, DecisionType.UPDATE_EVENT, DecisionType.CANCEL_EVENT) and not plannable(
            now.year):
        # An event stored before the door refused such dates (engine.models.FIRST_YEAR..LAST_YEAR): no date
        # arithmetic with it, a person picks the time.
        reason = (f"the event's time {now.isoformat()} is outside the years {FIRST_YEAR}-{LAST_YEAR} the planner "
                  "works in; a person must pick the time")
        return Plan(DecisionType.ESCALATE, [escalation_action(policy, org, reason, priority)], [reason],
                    escalated=reason)

    if dtype == DecisionType.CREATE_EVENT:
        return _booking(bundle, route, priority, event, text, calendar, now)

    if dtype in (DecisionType.UPDATE_EVENT, DecisionType.CANCEL_EVENT):
        return _change_event(bundle, dtype, priority, event, text, calendar, now)

    if dtype == DecisionType.SEND_NOTIFICATION and route.pipeline is None:
        to = [str(data[k]) for k in ("host", "assignee", "user") if isinstance(data.get(k), str) and org.user(data[k])]
        if not to:
            to = [u.id for u in org.users if u.role in route.notify.roles] or [
                u.id for u in org.users if policy.escalation and u.role in policy.escalation.roles]
        template = str(event.get("type", "notice")).replace(":", "_")
        return Plan(dtype, [_notify(to, template, priority)], [f"notify {', '.join(to) or 'nobody'}"])

    if dtype == DecisionType.TRIGGER_AUTOMATION:
        actions = [Action(type=DecisionType.TRIGGER_AUTOMATION, params={"workflow": w}) for w in route.automations]
        return Plan(dtype, actions, [f"trigger {', '.join(route.automations) or 'no workflow'}"])

    # ASSIGN_PIPELINE (and SEND_NOTIFICATION routes that name a pipeline)
    notes: list[str] = []
    pipeline = org.pipeline(route.pipeline) if route.pipeline else None
    if pipeline is None:
        reason = f"the routing table has no pipeline for {intent}"
        return Plan(DecisionType.ESCALATE, [escalation_action(policy, org, reason, priority)], [reason], escalated=reason)
    assignee: str | None = route.assignee
    if assignee is None and route.assignee_role:
        user, why = pick_assignee(org, route.assignee_role, loads, pipeline.team)
        assignee = user.id if user else None
        notes.append(why)
    actions = []
    if dtype == DecisionType.ASSIGN_PIPELINE:
        actions.append(Action(type=DecisionType.ASSIGN_PIPELINE, params={
            "pipeline": pipeline.id, "stage": route.stage or pipeline.stages[0], "assignee": assignee,
            "priority": priority}))
    to = _recipients(org, route, pipeline.team, assignee)
    if to:
        actions.append(_notify(to, route.notify.template, priority))
    actions += [Action(type=DecisionType.TRIGGER_AUTOMATION, params={"workflow": w}) for w in route.automations]
    notes.insert(0, f"route to {pipeline.id}" + (f", assign {assignee}" if assignee else ", unassigned"))
    return Plan(dtype, actions, notes)


def _booking(bundle: OrgBundle, route: Route, priority: int, event: dict[str, Any], text: EventText,
             calendar: Calendar, now: datetime) -> Plan:
    org, policy = bundle.org, bundle.policy
    data = event.get("data") or {}
    host = data.get("host") if isinstance(data.get("host"), str) else None
    user = org.user(host) if host else None
    hours = work_hours(org, policy.scheduling.slot_step_minutes)
    tz = ZoneInfo(org.timezone)
    busy = []
    if user is not None:
        local = now.astimezone(tz)
        day_start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        busy = calendar.busy(user.id, day_start, day_start + timedelta(days=400))
    duration = data.get("duration_minutes")
    outcome = plan_booking(
        requested_start=data.get("requested_start") if isinstance(data.get("requested_start"), str) else None,
        duration_minutes=duration if isinstance(duration, int) and not isinstance(duration, bool) else None,
        text="\n".join(x for x in (text.subject, text.body) if x),
        host=host if user is not None else None,
        hours=hours, busy=busy, now=now,
        default_duration=policy.scheduling.default_duration_minutes,
        reminder_offsets_minutes=tuple(policy.scheduling.reminders_minutes_before),
        buffer_minutes=policy.scheduling.buffer_minutes)
    if host and user is None:
        reason = f"the booking names host '{host}', who is not a user of {org.org}; a person must pick the host"
        return Plan(DecisionType.ESCALATE, [escalation_action(policy, org, reason, priority)], [reason],
                    booking=outcome, escalated=reason)
    if user is not None and not user.takes_bookings:
        reason = f"{host} does not take bookings; a person must pick the host"
        return Plan(DecisionType.ESCALATE, [escalation_action(policy, org, reason, priority)], [reason],
                    booking=outcome, escalated=reason)
    if outcome.status == "escalate":
        return Plan(DecisionType.ESCALATE, [escalation_action(policy, org, outcome.reason, priority)],
                    [outcome.reason], booking=outcome, escalated=outcome.reason)
    assert outcome.start is not None and outcome.end is not None and outcome.host is not None
    title = str(data.get("purpose") or data.get("subject") or "Meeting")[:120]
    attendee = {k: data[k] for k in ("name", "email") if isinstance(data.get(k), str)}
    actions = [
        Action(type=DecisionType.CREATE_EVENT, params={
            "host": outcome.host, "start": outcome.start.isoformat(), "end": outcome.end.isoformat(),
            "duration_minutes": outcome.duration_minutes, "title": title, "attendee": attendee,
            "reminders": [r.isoformat() for r in outcome.reminders], "moved": outcome.status == "moved"}),
        # The host hears of it, with the invitation attached (the time actually booked: the executor may
        # have had to move it if the slot was taken meanwhile).
        _notify([outcome.host], route.notify.template, priority, start=outcome.start.isoformat(), attach_ics=True),
    ]
    if attendee.get("email") and policy.notifications.email is not None:
        actions.append(_notify([], "booking_confirmation_guest", priority, start=outcome.start.isoformat(),
                               to_email=[attendee["email"]], attach_ics=True))
    return Plan(DecisionType.CREATE_EVENT, actions, [outcome.reason], booking=outcome)


UPDATED_TEMPLATE = "booking_updated"
CANCELLED_TEMPLATE = "booking_cancelled"
_LOOKAHEAD = timedelta(days=400)


def sender_address(data: dict[str, Any]) -> str | None:
    """The e-mail address of whoever sent the event (`from`, possibly `Name <addr>`, else a form's `email`),
    lower-cased; None when there is none."""
    for key in ("from", "email"):
        raw = data.get(key)
        if isinstance(raw, str):
            addr = parseaddr(raw)[1].strip().lower()
            if "@" in addr:
                return addr
    return None


def _when(dt: datetime) -> str:
    return dt.strftime("%a %d %b %Y %H:%M").replace(" 0", " ")


def find_meeting(org: OrgConfig, calendar: Calendar, sender: str, text: str, now: datetime) -> tuple[Busy | None, str]:
    """The one upcoming event on a booking host's calendar that `sender` attends and `text` describes (its
    weekday, date or time narrow the choice: "Tuesday's call"), or None and what is missing."""
    tz = ZoneInfo(org.timezone)
    hosts = [u for u in org.users if u.takes_bookings]
    mine = [b for u in hosts for b in calendar.busy(u.id, now, now + _LOOKAHEAD)
            if b.id and b.end > now and sender in {a.lower() for a in b.attendees}]
    mine.sort(key=lambda b: (b.start, b.host, b.id))
    if not mine:
        return None, (f"no upcoming event with {sender} as an attendee is on the calendar of "
                      f"{', '.join(u.id for u in hosts) or 'any host'}; a person must find the meeting")
    hints = meeting_hints(text, tz, now)
    fitting = [b for b in mine if hints.fits(b.start.astimezone(tz))]
    listed = "; ".join(f"{b.title or 'event'} with {b.host} on {_when(b.start.astimezone(tz))}" for b in mine[:5])
    if not fitting:
        return None, (f"none of the upcoming events of {sender} is on {hints.describe()} ({listed}); "
                      "a person must find the meeting")
    if len(fitting) > 1:
        said = f" on {hints.describe()}" if hints else ""
        which = "; ".join(f"{b.title or 'event'} with {b.host} on {_when(b.start.astimezone(tz))}" for b in fitting[:5])
        return None, (f"{len(fitting)} upcoming events of {sender}{said} could be meant ({which}); "
                      "the message does not say which, so a person must pick")
    return fitting[0], f"the event is {fitting[0].title or fitting[0].id} with {fitting[0].host}"


def _change_event(bundle: OrgBundle, dtype: DecisionType, priority: int, event: dict[str, Any], text: EventText,
                  calendar: Calendar, now: datetime) -> Plan:
    """UPDATE_EVENT / CANCEL_EVENT from a message: find the sender's meeting, and for a move read the new time
    and check it like a booking (business hours, lunch, the host's other events, buffers)."""
    org, policy = bundle.org, bundle.policy
    data = event.get("data") or {}
    tz = ZoneInfo(org.timezone)
    words = "\n".join(x for x in (text.subject, text.body) if x)

    def escalate(reason: str, booking: BookingOutcome | None = None) -> Plan:
        return Plan(DecisionType.ESCALATE, [escalation_action(policy, org, reason, priority)], [reason],
                    booking=booking, escalated=reason)

    what = "move" if dtype == DecisionType.UPDATE_EVENT else "cancel"
    sender = sender_address(data)
    if sender is None:
        return escalate(f"the request to {what} a meeting has no sender address, so the meeting cannot be found")
    identifying, new_text = split_reschedule(words) if dtype == DecisionType.UPDATE_EVENT else (words, None)
    found, why = find_meeting(org, calendar, sender, identifying, now)
    if found is None:
        return escalate(f"Cannot {what} the meeting: {why}.")
    host = found.host
    start_local = found.start.astimezone(tz)
    guest_mail = policy.notifications.email is not None

    if dtype == DecisionType.CANCEL_EVENT:
        note = f"cancel {found.title or found.id} with {host} on {_when(start_local)} at the request of {sender}"
        actions = [
            Action(type=DecisionType.CANCEL_EVENT, params={
                "event_id": found.id, "host": host, "start": start_local.isoformat(), "title": found.title}),
            _notify([host], CANCELLED_TEMPLATE, priority, start=start_local.isoformat(), attach_ics=True),
        ]
        if guest_mail:
            actions.append(_notify([], f"{CANCELLED_TEMPLATE}_guest", priority, start=start_local.isoformat(),
                                   to_email=[sender], attach_ics=True))
        return Plan(DecisionType.CANCEL_EVENT, actions, [note])

    if new_text is None:
        return escalate(f"Cannot move {found.title or 'the meeting'} on {_when(start_local)}: the message does not "
                        "say when to move it to.")
    new = read_new_time(new_text, tz, now, start_local)
    if isinstance(new, str):
        return escalate(f"Cannot move {found.title or 'the meeting'} on {_when(start_local)}: {new}")
    duration = max(1, round((found.end - found.start).total_seconds() / 60))
    hours = work_hours(org, policy.scheduling.slot_step_minutes)
    others = [b for b in calendar.busy(host, now, now + _LOOKAHEAD) if b.id != found.id]
    outcome = plan_booking(
        requested_start=new[0].isoformat(), duration_minutes=duration, text="", host=host, hours=hours,
        busy=others, now=now, default_duration=policy.scheduling.default_duration_minutes,
        reminder_offsets_minutes=tuple(policy.scheduling.reminders_minutes_before),
        buffer_minutes=policy.scheduling.buffer_minutes)
    if outcome.status == "escalate" or outcome.start is None or outcome.end is None:
        return escalate(f"Cannot move {found.title or 'the meeting'} on {_when(start_local)} to “{new[1]}”: "
                        f"{outcome.reason}", outcome)
    note = (f"move {found.title or found.id} with {host} from {_when(start_local)} to "
            f"{_when(outcome.start)} at the request of {sender} (“{new[1]}”)")
    actions = [
        Action(type=DecisionType.UPDATE_EVENT, params={
            "event_id": found.id, "host": host, "start": outcome.start.isoformat(), "end": outcome.end.isoformat(),
            "duration_minutes": duration, "title": found.title, "previous_start": start_local.isoformat(),
            "moved": outcome.status == "moved"}),
        _notify([host], UPDATED_TEMPLATE, priority, start=outcome.start.isoformat(), attach_ics=True),
    ]
    if guest_mail:
        actions.append(_notify([], f"{UPDATED_TEMPLATE}_guest", priority, start=outcome.start.isoformat(),
                               to_email=[sender], attach_ics=True))
    return Plan(DecisionType.UPDATE_EVENT, actions, [note, outcome.reason], booking=outcome)
