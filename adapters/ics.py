"""iCalendar (RFC 5545) for calendar events: one event as an invitation or cancellation (RFC 5546 METHOD
REQUEST / CANCEL, attached to notification e-mails), and a host's whole calendar as a subscribable feed.

Times are written in the org's time zone (TZID) with its VTIMEZONE, so a calendar app shows a 10:00 meeting at
10:00 local on both sides of a DST change. The UID is stable (`<event id>@astralis`) and SEQUENCE rises with
every change, which is how calendar apps tell an update of an invitation from a new one.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from icalendar import Calendar, Event, vCalAddress, vText

from adapters.sqlite_calendar import CalendarEvent
from engine.config import OrgConfig, User

PRODID = "-//Astralis//Orchestrator//EN"
CATEGORY = "Astralis"
DECISION_PROPERTY = "X-ASTRALIS-DECISION"
Method = Literal["REQUEST", "CANCEL", "PUBLISH"]


def uid(event: CalendarEvent) -> str:
    """The event's iCalendar UID: stable across updates and cancellation."""
    return f"{event.id}@astralis"


def _address(email: str, name: str | None, **params: str) -> vCalAddress:
    addr = vCalAddress(f"mailto:{email}")
    if name:
        addr.params["CN"] = vText(name)
    for k, v in params.items():
        addr.params[k] = vText(v)
    return addr


def _vevent(event: CalendarEvent, org: OrgConfig, *, cancelled: bool, feed: bool = False) -> Event:
    tz = ZoneInfo(org.timezone)
    ev = Event()
    ev.add("uid", uid(event))
    ev.add("dtstamp", (event.updated_at or datetime.now(UTC)).astimezone(UTC))
    ev.add("dtstart", event.start.astimezone(tz))
    ev.add("dtend", event.end.astimezone(tz))
    ev.add("summary", event.title)
    ev.add("sequence", event.sequence)
    ev.add("status", "CANCELLED" if cancelled or event.status == "cancelled" else "CONFIRMED")
    if event.created_at is not None:
        ev.add("created", event.created_at.astimezone(UTC))
    if event.updated_at is not None:
        ev.add("last-modified", event.updated_at.astimezone(UTC))
    host: User | None = org.user(event.host)
    if host is not None:
        ev.add("organizer", _address(host.email, host.name))
    for a in event.attendees:
        email = str(a.get("email") or "").strip()
        if email:
            ev.add("attendee", _address(email, str(a.get("name") or "") or None, ROLE="REQ-PARTICIPANT",
                                        PARTSTAT="NEEDS-ACTION", RSVP="TRUE"), encode=False)
    if event.decision_id:
        # Marks what the agent booked, so a person scanning the calendar (or a script) can tell.
        ev.add("categories", [CATEGORY])
        ev.add(DECISION_PROPERTY, event.decision_id)
        if feed:
            ev.add("description", f"Booked by Astralis (decision {event.decision_id}).")
    return ev


def _calendar(org: OrgConfig, method: Method | None) -> Calendar:
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    if method:
        cal.add("method", method)
    return cal


def _timezones(cal: Calendar, events: list[CalendarEvent]) -> None:
    """The VTIMEZONE of the TZIDs used, covering the events' dates with a year to spare on either side (the
    default 1970–2038 range writes every transition since 1970, and none after 2038)."""
    if not events:
        return
    first = min(e.start for e in events).date() - timedelta(days=366)
    last = max(e.end for e in events).date() + timedelta(days=366)
    cal.add_missing_timezones(first_date=max(first, date(1900, 1, 1)), last_date=min(last, date(9000, 1, 1)))


def event_ics(event: CalendarEvent, *, org: OrgConfig, method: Literal["REQUEST", "CANCEL"]) -> bytes:
    """One event as an invitation (REQUEST: new or changed) or a cancellation (CANCEL, STATUS:CANCELLED)."""
    if method not in ("REQUEST", "CANCEL"):
        raise ValueError(f"method must be REQUEST or CANCEL, not {method!r}")
    cal = _calendar(org, method)
    cal.add_component(_vevent(event, org, cancelled=method == "CANCEL"))
    _timezones(cal, [event])
    return bytes(cal.to_ical())


def feed_ics(events: Iterable[CalendarEvent], *, org: OrgConfig, user: User) -> bytes:
    """`user`'s calendar as a feed for calendar apps to subscribe to: every event given, those the agent booked
    marked with CATEGORIES:Astralis and their decision id."""
    cal = _calendar(org, "PUBLISH")
    cal.add("x-wr-calname", f"{user.name} ({org.name})")
    cal.add("x-wr-timezone", org.timezone)
    listed = list(events)
    for event in listed:
        cal.add_component(_vevent(event, org, cancelled=False, feed=True))
    _timezones(cal, listed)
    return bytes(cal.to_ical())
