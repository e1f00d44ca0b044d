"""iCalendar output (adapters/ics.py), parsed back with icalendar."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from icalendar import Calendar

from adapters.ics import event_ics, feed_ics
from adapters.sqlite_calendar import CalendarEvent
from engine.loader import OrgBundle, load_org

ROOT = Path(__file__).resolve().parents[2]
NY = ZoneInfo("America/New_York")


@pytest.fixture(scope="module")
def acme() -> OrgBundle:
    return load_org(ROOT / "rulesets" / "acme", ROOT / "policies")


def event(**kw: object) -> CalendarEvent:
    base: dict[str, object] = dict(
        org="acme", id="cev_0123", host="u-sam", title="Intro call",
        start=datetime(2026, 12, 8, 19, 0, tzinfo=UTC), end=datetime(2026, 12, 8, 19, 30, tzinfo=UTC),
        attendees=[{"name": "Ada Lovelace", "email": "ada@example.com"}], sequence=2, decision_id="dec_42",
        created_at=datetime(2026, 12, 1, 12, tzinfo=UTC), updated_at=datetime(2026, 12, 2, 12, tzinfo=UTC))
    base.update(kw)
    return CalendarEvent(**base)  # type: ignore[arg-type]


def test_an_invitation_reads_back(acme: OrgBundle) -> None:
    cal = Calendar.from_ical(event_ics(event(), org=acme.org, method="REQUEST"))
    assert str(cal["method"]) == "REQUEST" and str(cal["version"]) == "2.0" and "Astralis" in str(cal["prodid"])
    [ev] = cal.walk("VEVENT")
    assert str(ev["uid"]) == "cev_0123@astralis"
    assert ev["dtstart"].dt == datetime(2026, 12, 8, 14, 0, tzinfo=NY)  # shown in the org's zone
    assert ev["dtstart"].params["TZID"] == "America/New_York"
    assert ev["dtend"].dt == datetime(2026, 12, 8, 14, 30, tzinfo=NY)
    assert [tz["tzid"] for tz in cal.walk("VTIMEZONE")] == ["America/New_York"]
    assert ev["dtstamp"].dt == datetime(2026, 12, 2, 12, tzinfo=UTC)
    assert str(ev["summary"]) == "Intro call" and int(ev["sequence"]) == 2 and str(ev["status"]) == "CONFIRMED"
    assert str(ev["organizer"]) == "mailto:sam@acme.example" and ev["organizer"].params["CN"] == "Sam Carter"
    assert str(ev["attendee"]) == "mailto:ada@example.com" and ev["attendee"].params["CN"] == "Ada Lovelace"
    assert ev["attendee"].params["RSVP"] == "TRUE"
    assert str(ev["x-astralis-decision"]) == "dec_42"


def test_a_cancellation_reads_back(acme: OrgBundle) -> None:
    cal = Calendar.from_ical(event_ics(event(status="cancelled", sequence=3), org=acme.org, method="CANCEL"))
    assert str(cal["method"]) == "CANCEL"
    [ev] = cal.walk("VEVENT")
    assert str(ev["status"]) == "CANCELLED" and int(ev["sequence"]) == 3 and str(ev["uid"]) == "cev_0123@astralis"


def test_only_request_and_cancel_are_methods_of_an_invitation(acme: OrgBundle) -> None:
    with pytest.raises(ValueError, match="REQUEST or CANCEL"):
        event_ics(event(), org=acme.org, method="PUBLISH")  # type: ignore[arg-type]


def test_the_feed_lists_every_event_and_marks_the_agents(acme: OrgBundle) -> None:
    user = acme.org.user("u-sam")
    assert user is not None
    mine = event(id="cev_1", attendees=[{"email": "bo@example.com"}, {"name": "no address"}])
    outside = event(id="cev_2", decision_id=None, title="Dentist", start=datetime(2026, 12, 9, 15, tzinfo=UTC),
                    end=datetime(2026, 12, 9, 16, tzinfo=UTC))
    cal = Calendar.from_ical(feed_ics([mine, outside], org=acme.org, user=user))
    assert str(cal["x-wr-calname"]) == "Sam Carter (Acme Studio)" and str(cal["prodid"]).startswith("-//Astralis")
    events = {str(e["uid"]): e for e in cal.walk("VEVENT")}
    assert set(events) == {"cev_1@astralis", "cev_2@astralis"}
    agent = events["cev_1@astralis"]
    assert agent["categories"].cats == ["Astralis"] and "dec_42" in str(agent["description"])
    assert str(agent["attendee"]) == "mailto:bo@example.com"  # an attendee without an address is left out
    assert "categories" not in events["cev_2@astralis"] and "x-astralis-decision" not in events["cev_2@astralis"]


def test_an_empty_feed_is_still_a_calendar(acme: OrgBundle) -> None:
    user = acme.org.user("u-lee")
    assert user is not None
    cal = Calendar.from_ical(feed_ics([], org=acme.org, user=user))
    assert cal.walk("VEVENT") == [] and str(cal["x-wr-calname"]) == "Lee Park (Acme Studio)"
