"""The calendar executor: CREATE_EVENT, UPDATE_EVENT and CANCEL_EVENT actions of the outbox.

The plan chose a slot from a snapshot of the calendar; another booking may have taken it since. The store
checks the slot again inside its write transaction and, when it is taken, calls back into the scheduler's own
rules (`engine.schedule.plan_booking`: business hours, lunch, grid, buffers, the nearest free slot that day,
else the next business day) with the host's events as they are at that moment. When nothing fits, the action
fails permanently: the outbox marks the decision FAILED and escalates it.

Idempotent under the action key: a booking's event id is derived from the key and the key is stored on the row;
moving an event where it already is, or cancelling a cancelled one, changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from adapters.sqlite_calendar import CalendarEvent, Change, Replan
from engine.config import DecisionType, OrgConfig, Policy
from engine.loader import OrgBundle
from engine.plan import work_hours
from engine.ports import ActionFailed, ActionJob, Busy
from engine.schedule import plan_booking

log = logging.getLogger("astralis.calendar")

TYPES = (str(DecisionType.CREATE_EVENT), str(DecisionType.UPDATE_EVENT), str(DecisionType.CANCEL_EVENT))


class CalendarStore(Protocol):
    """What the executor needs of the store (`adapters.sqlite_calendar.CalendarTables`)."""

    async def book_event(self, org: str, **kw: Any) -> tuple[CalendarEvent | None, Change]:
        """Book with a commit-time conflict check."""
        ...

    async def update_event(self, org: str, event_id: str, **kw: Any) -> tuple[CalendarEvent | None, Change]:
        """Move with a commit-time conflict check."""
        ...

    async def cancel_event(self, org: str, event_id: str, action_key: str) -> tuple[CalendarEvent | None, Change]:
        """Cancel."""
        ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _time(params: dict[str, Any], name: str, job: ActionJob) -> datetime:
    raw = params.get(name)
    try:
        value = datetime.fromisoformat(str(raw))
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise ActionFailed(f"{job.type} {job.key}: params.{name} is not an ISO-8601 time with an offset: {raw!r}",
                           permanent=True)
    return value


def _requested(job: ActionJob, fallback: datetime, now: datetime) -> str:
    """The start first asked for (before the plan moved it, when it did): replanning aims as near it as it can.
    The planned start when that request has passed meanwhile."""
    trace = getattr(job.decision, "trace", None) or {}
    booking = trace.get("booking") if isinstance(trace, dict) else None
    raw = booking.get("requested") if isinstance(booking, dict) else None
    if isinstance(raw, str):
        try:
            asked = datetime.fromisoformat(raw)
            if asked.tzinfo is not None and asked >= now:
                return raw
        except ValueError:
            pass
    return fallback.isoformat()


class CalendarManager:
    """Runs CREATE_EVENT / UPDATE_EVENT / CANCEL_EVENT (an `engine.ports.ActionExecutor`)."""

    types = TYPES

    def __init__(self, store: CalendarStore, bundles: Callable[[str], OrgBundle | None], *,
                 clock: Callable[[], datetime] = _utc_now) -> None:
        """`bundles(org)` gives the org's active configuration (None when it is not loaded)."""
        self.store = store
        self.bundles = bundles
        self.clock = clock

    async def run(self, job: ActionJob) -> dict[str, Any]:
        """Do the calendar action of `job`; the result names the event (`event_id`, `host`, `start`, `end`,
        `status` booked|moved|updated|cancelled, `reason` when moved)."""
        bundle = self.bundles(job.org)
        if bundle is None:
            # Transient: the org's configuration may be fixed and reloaded; the outbox retries with backoff.
            raise ActionFailed(f"{job.type} {job.key}: org {job.org!r} has no configuration loaded")
        if job.type == DecisionType.CREATE_EVENT:
            return await self._create(job, bundle)
        if job.type == DecisionType.UPDATE_EVENT:
            return await self._update(job, bundle)
        if job.type == DecisionType.CANCEL_EVENT:
            return await self._cancel(job, bundle)
        raise ActionFailed(f"{job.key}: the calendar executor does not run {job.type} actions", permanent=True)

    def _replan(self, org: OrgConfig, policy: Policy, host: str, requested: str, minutes: int) -> Replan:
        """The scheduler's rules, given the host's events at commit time (pure: it runs inside the store's
        transaction)."""
        now = self.clock()
        hours = work_hours(org, policy.scheduling.slot_step_minutes)

        def replan(busy: list[Busy]) -> tuple[datetime, datetime, str] | str:
            outcome = plan_booking(
                requested_start=requested, duration_minutes=minutes, text="", host=host, hours=hours, busy=busy,
                now=now, default_duration=policy.scheduling.default_duration_minutes,
                reminder_offsets_minutes=tuple(policy.scheduling.reminders_minutes_before),
                buffer_minutes=policy.scheduling.buffer_minutes)
            if outcome.status == "escalate" or outcome.start is None or outcome.end is None:
                return f"the slot was taken meanwhile and no other fits: {outcome.reason}"
            return outcome.start, outcome.end, f"the slot was taken meanwhile: {outcome.reason}"

        return replan

    def _result(self, org: OrgConfig, event: CalendarEvent, status: str, change: Change) -> dict[str, Any]:
        tz = ZoneInfo(org.timezone)
        out: dict[str, Any] = {"event_id": event.id, "host": event.host, "title": event.title,
                               "start": event.start.astimezone(tz).isoformat(),
                               "end": event.end.astimezone(tz).isoformat(), "status": status,
                               "sequence": event.sequence, "moved": change.outcome == "moved"}
        if change.reason:
            out["reason"] = change.reason
        if change.outcome == "unchanged":
            out["unchanged"] = True
        return out

    def _host(self, org: OrgConfig, job: ActionJob) -> str:
        host = job.params.get("host")
        user = org.user(host) if isinstance(host, str) else None
        if user is None:
            raise ActionFailed(f"{job.type} {job.key}: host {host!r} is not a user of {org.org}", permanent=True)
        return user.id

    async def _create(self, job: ActionJob, bundle: OrgBundle) -> dict[str, Any]:
        org, policy, params = bundle.org, bundle.policy, job.params
        host = self._host(org, job)
        start, end = _time(params, "start", job), _time(params, "end", job)
        if end <= start:
            raise ActionFailed(f"CREATE_EVENT {job.key}: end {end.isoformat()} is not after start", permanent=True)
        minutes = round((end - start).total_seconds() / 60)
        attendee = params.get("attendee") if isinstance(params.get("attendee"), dict) else {}
        attendees = [{k: str(attendee[k]) for k in ("name", "email") if attendee.get(k)}] if attendee.get("email") else []
        event, change = await self.store.book_event(
            job.org, host=host, title=str(params.get("title") or "Meeting"), start=start, end=end,
            attendees=attendees, decision_id=job.decision_id, action_key=job.key,
            buffer_minutes=policy.scheduling.buffer_minutes,
            replan=self._replan(org, policy, host, _requested(job, start, self.clock()), minutes),
            reminders=list(policy.scheduling.reminders_minutes_before), now=self.clock())
        if event is None:
            raise ActionFailed(f"cannot book {host} at {start.isoformat()}: {change.reason}", permanent=True)
        log.info("booked %s for %s at %s (%s)", event.id, host, event.start.isoformat(), change.outcome,
                 extra={"org": job.org})
        return self._result(org, event, "moved" if change.outcome == "moved" else "booked", change)

    async def _update(self, job: ActionJob, bundle: OrgBundle) -> dict[str, Any]:
        org, policy, params = bundle.org, bundle.policy, job.params
        event_id = params.get("event_id")
        if not isinstance(event_id, str) or not event_id:
            raise ActionFailed(f"UPDATE_EVENT {job.key}: params.event_id is missing", permanent=True)
        start, end = _time(params, "start", job), _time(params, "end", job)
        if end <= start:
            raise ActionFailed(f"UPDATE_EVENT {job.key}: end {end.isoformat()} is not after start", permanent=True)
        host = self._host(org, job)
        minutes = round((end - start).total_seconds() / 60)
        event, change = await self.store.update_event(
            job.org, event_id, start=start, end=end, action_key=job.key,
            buffer_minutes=policy.scheduling.buffer_minutes,
            replan=self._replan(org, policy, host, _requested(job, start, self.clock()), minutes),
            reminders=list(policy.scheduling.reminders_minutes_before), now=self.clock())
        if event is None or change.outcome == "conflict":
            raise ActionFailed(f"cannot move event {event_id} to {start.isoformat()}: {change.reason}", permanent=True)
        return self._result(org, event, "updated", change)

    async def _cancel(self, job: ActionJob, bundle: OrgBundle) -> dict[str, Any]:
        event_id = job.params.get("event_id")
        if not isinstance(event_id, str) or not event_id:
            raise ActionFailed(f"CANCEL_EVENT {job.key}: params.event_id is missing", permanent=True)
        event, change = await self.store.cancel_event(job.org, event_id, job.key)
        if event is None:
            raise ActionFailed(f"cannot cancel event {event_id}: {change.reason}", permanent=True)
        return self._result(bundle.org, event, "cancelled", change)
