"""Booking planning: reading the requested time, accepting, moving and escalating (engine/schedule.py)."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from engine.ports import Busy
from engine.schedule import BookingOutcome, WorkHours, parse_exact_datetime, plan_booking

NY = ZoneInfo("America/New_York")
HOURS = WorkHours(timezone="America/New_York", start=time(9), end=time(17), lunch_start=time(12),
                  lunch_end=time(13), days=frozenset(range(5)))
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=NY)  # a Tuesday, a week before the usual requested day


def ny(y: int, mo: int, d: int, h: int, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=NY)


def dec8(h: int, mi: int = 0) -> datetime:
    """Tuesday 8 December 2026, the default requested day."""
    return ny(2026, 12, 8, h, mi)


def busy(start: datetime, end: datetime, title: str = "", host: str = "u-sam") -> Busy:
    return Busy(host=host, start=start, end=end, title=title)


def plan(requested_start: str | None = None, **kw: Any) -> BookingOutcome:
    args: dict[str, Any] = {"duration_minutes": None, "text": "", "host": "u-sam", "hours": HOURS,
                            "busy": [], "now": NOW}
    args.update(kw)
    return plan_booking(requested_start=requested_start, **args)


# ---------------------------------------------------------------- accept or move (rules 5–7)

SLOT_CASES = [
    # id, requested start, busy entries, expected status, expected start
    ("free slot accepted", "2026-12-08T14:00", [], "requested", dec8(14)),
    ("back-to-back with busy is fine", "2026-12-08T10:00",
     [busy(dec8(9, 30), dec8(10)), busy(dec8(10, 30), dec8(11))], "requested", dec8(10)),
    ("other host's busy ignored", "2026-12-08T10:00", [busy(dec8(10), dec8(11), host="u-kim")],
     "requested", dec8(10)),
    ("last slot of the day ends at 17:00", "2026-12-08T16:30", [], "requested", dec8(16, 30)),
    ("conflict moved forward", "2026-12-08T10:00", [busy(dec8(9), dec8(10, 30))], "moved", dec8(10, 30)),
    ("conflict moved backward", "2026-12-08T10:00", [busy(dec8(10), dec8(11))], "moved", dec8(9, 30)),
    ("nearest is later", "2026-12-08T10:15", [busy(dec8(10), dec8(10, 30), "Client call")],
     "moved", dec8(10, 30)),
    ("tie goes to the earlier slot", "2026-12-08T10:15", [busy(dec8(10), dec8(11))], "moved", dec8(9, 30)),
    ("lunch, nearer before", "2026-12-08T12:00", [], "moved", dec8(11, 30)),
    ("lunch, nearer after", "2026-12-08T12:30", [], "moved", dec8(13)),
    ("slot running into lunch", "2026-12-08T11:45", [], "moved", dec8(11, 30)),
    ("before 9", "2026-12-08T08:00", [], "moved", dec8(9)),
    ("after 17", "2026-12-08T17:30", [], "moved", dec8(16, 30)),
    ("ending past 17", "2026-12-08T16:45", [], "moved", dec8(16, 30)),
    ("weekend goes to Monday 9:00", "2026-12-12T10:00", [], "moved", ny(2026, 12, 14, 9)),
    ("weekend, Monday 9:00 busy", "2026-12-12T10:00", [busy(ny(2026, 12, 14, 9), ny(2026, 12, 14, 9, 45))],
     "moved", ny(2026, 12, 14, 9, 45)),
    ("full day goes to next business day", "2026-12-08T10:00", [busy(dec8(9), dec8(17))],
     "moved", ny(2026, 12, 9, 9)),
    ("full day, next day's 9:00 busy", "2026-12-08T10:00",
     [busy(dec8(9), dec8(17)), busy(ny(2026, 12, 9, 9), ny(2026, 12, 9, 10))], "moved", ny(2026, 12, 9, 10)),
    ("full Friday goes to Monday", "2026-12-11T10:00", [busy(ny(2026, 12, 11, 9), ny(2026, 12, 11, 17))],
     "moved", ny(2026, 12, 14, 9)),
    ("two full days skipped", "2026-12-08T10:00", [busy(dec8(9), ny(2026, 12, 9, 17))],
     "moved", ny(2026, 12, 10, 9)),
]


@pytest.mark.parametrize(("requested", "entries", "status", "start"),
                         [c[1:] for c in SLOT_CASES], ids=[c[0] for c in SLOT_CASES])
def test_slot_accepted_or_moved(requested: str, entries: list[Busy], status: str, start: datetime) -> None:
    out = plan(requested, busy=entries)
    assert (out.status, out.start) == (status, start), out.reason
    assert out.end == start + timedelta(minutes=30)
    assert out.host == "u-sam" and out.time_source == "field"
    assert out.start is not None and out.start.utcoffset() == timedelta(hours=-5)


def test_moved_reason_names_the_conflict() -> None:
    out = plan("2026-12-08T10:15", busy=[busy(dec8(10), dec8(10, 30), "Client call")])
    assert out.reason == ("Requested Tue 8 Dec 2026 10:15–10:45 (no UTC offset given, read as "
                          "America/New_York local time): u-sam is busy 10:00–10:30 (Client call); "
                          "moved to 10:30, the nearest free slot the same day.")


@pytest.mark.parametrize(("requested", "expected"), [
    ("2026-12-08T12:00", "the slot overlaps the lunch break 12:00–13:00; moved to 11:30"),
    ("2026-12-08T08:00", "the slot starts before working hours (09:00–17:00); moved to 09:00"),
    ("2026-12-08T16:45", "the slot would end at 17:15, after working hours end at 17:00; moved to 16:30"),
    ("2026-12-12T10:00", "Sat 12 Dec 2026 is not a business day; moved to Mon 14 Dec 2026 09:00, "
                         "the first free slot on the next business day."),
])
def test_reasons_say_what_was_wrong(requested: str, expected: str) -> None:
    assert expected in plan(requested).reason


def test_full_day_reason() -> None:
    out = plan("2026-12-08T10:00", busy=[busy(dec8(9), dec8(17), "Offsite")])
    assert "u-sam is busy 09:00–17:00 (Offsite); no free slot is left that day; moved to Wed 9 Dec 2026 " \
           "09:00, the first free slot on the next business day." in out.reason


def test_past_candidates_do_not_count() -> None:
    # 10:00 would win the tie, but it has already started at 10:20.
    out = plan("2026-12-08T10:30", busy=[busy(dec8(10, 30), dec8(11))], now=dec8(10, 20))
    assert (out.status, out.start) == ("moved", dec8(11))


def test_no_slot_within_30_days_escalates() -> None:
    out = plan("2026-12-08T10:00", busy=[busy(dec8(9), ny(2027, 1, 31, 17), "Sabbatical")])
    assert out.status == "escalate" and out.start is None and out.reminders == ()
    assert out.requested == dec8(10)
    assert "no free slot in the 30 days after Tue 8 Dec 2026" in out.reason


def test_accepted_reason() -> None:
    out = plan("2026-12-08T14:00:00-05:00")
    assert out.reason == ("Requested Tue 8 Dec 2026 14:00–14:30 (given as 2026-12-08T14:00:00-05:00) "
                          "is free for u-sam; booked as requested.")


# ---------------------------------------------------------------- the requested_start field (rule 1)

@pytest.mark.parametrize(("value", "expected"), [
    ("2026-12-08T15:00:00Z", dec8(10)),
    ("2026-12-08T15:00:00z", dec8(10)),
    ("2026-12-08T16:00:00+01:00", dec8(10)),
    ("2026-12-08T10:00:00-05:00", dec8(10)),
    ("2026-12-08T10:00", dec8(10)),
    ("2026-12-08 10:00:00", dec8(10)),
    ("  2026-12-08T10:00  ", dec8(10)),
])
def test_field_values(value: str, expected: datetime) -> None:
    out = plan(value)
    assert (out.status, out.requested, out.start) == ("requested", expected, expected)
    assert out.time_source == "field"
    assert out.start is not None and out.start.tzinfo == NY


def test_naive_field_is_read_as_org_local() -> None:
    assert "no UTC offset given, read as America/New_York local time" in plan("2026-12-08T10:00").reason


def test_offset_field_reason_keeps_the_given_value() -> None:
    assert "(given as 2026-12-08T15:00:00Z)" in plan("2026-12-08T15:00:00Z").reason


@pytest.mark.parametrize("value", [
    "next week sometime", "2026-13-45T10:00", "2026-12-08", "2026-12-08T25:00", "12/08/2026 10:00",
    "2026-12-08T10", "tomorrow",
])
def test_bad_field_values_escalate(value: str) -> None:
    out = plan(value, text="December 8, 2026 at 10am")  # the text is NOT used when the field is present
    assert out.status == "escalate" and out.requested is None and out.time_source is None
    assert f"“{value}”" in out.reason


# ---------------------------------------------------------------- text (rules 2–3)

TEXT_CASES = [
    ("Can we do 2026-12-08 10:00?", dec8(10)),
    ("2026-12-08T14:30", dec8(14, 30)),
    ("December 8, 2026 at 10am", dec8(10)),
    ("Tuesday, December 8 at 2:30 pm", dec8(14, 30)),
    ("8 December 2026 14:00", dec8(14)),
    ("Dec 8th at 3pm", dec8(15)),
    ("Dec. 8 at 10:30 a.m.", dec8(10, 30)),
    ("dec 8 at 10 am please", dec8(10)),
    ("on the 8th of December at 11 am", dec8(11)),
    ("December 8 at noon", dec8(12)),
    ("10am on Tuesday, December 8", dec8(10)),
    ("Tue Dec 8 2026 @ 9:30am", dec8(9, 30)),
    ("2026-12-08 at 2:00 pm", dec8(14)),
    ("2026-12-08T15:00:00Z", dec8(10)),
    ("from 10am to 11am on December 8, 2026", dec8(10)),
    ("2026-12-08 10:00-11:00", dec8(10)),
    ("Dec 8 from 10:00 to 11:30", dec8(10)),
    ("December 8 at 10am (that is 2026-12-08 10:00)", dec8(10)),
    ("We may bring 2 people. Dec 8 at 9am", dec8(9)),
    ("December 8, 2026 at 10am EST", dec8(10)),
    ("Dec 8 at 10am ET", dec8(10)),
]


@pytest.mark.parametrize(("text", "expected"), TEXT_CASES, ids=[c[0] for c in TEXT_CASES])
def test_text_formats(text: str, expected: datetime) -> None:
    got = parse_exact_datetime(text, NY, NOW)
    assert got == expected
    assert isinstance(got, datetime) and got.tzinfo == NY


@pytest.mark.parametrize(("text", "reference", "expected"), [
    ("Dec 8th at 3pm", ny(2026, 12, 8, 16), dec8(15)),  # same day still counts ("on or after")
    ("Dec 8th at 3pm", ny(2026, 12, 9, 9), ny(2027, 12, 8, 15)),
    ("Feb 29 at 10am", NOW, ny(2028, 2, 29, 10)),
])
def test_dates_without_a_year_take_the_next_occurrence(text: str, reference: datetime,
                                                      expected: datetime) -> None:
    assert parse_exact_datetime(text, NY, reference) == expected


AMBIGUOUS_CASES = [
    ("10/12/2026 at 10am", "“10/12/2026”"),
    ("10.12.2026 14:00", "“10.12.2026”"),
    ("on 12/08? at 3pm", "“12/08”"),
    ("12/8 at 10am", "“12/8”"),
    ("13/12/2026 10:00", "“13/12/2026”"),  # one reading is impossible; still not read
    ("2026/12/08 10:00", "“2026/12/08”"),
    ("tomorrow at 3pm", "“tomorrow” is relative"),
    ("next Tuesday at 10am", "“next Tuesday” is relative"),
    ("Tuesday at 2pm", "no calendar date"),
    ("this afternoon", "relative time (“this afternoon”)"),
    ("December 8, 2026 at 3", "“at 3” without am/pm"),
    ("2026-12-08 at 10", "“at 10” without am/pm"),
    ("at 3 o'clock on December 8, 2026", "“at 3 o'clock” without am/pm"),
    ("December 8 at midnight", "“midnight”"),
    ("December 8, 2026", "gives a date (Tue 8 Dec 2026) but no time"),
    ("2026-12-08 10:00 or 2026-12-09 14:00", "more than one date and time (Tue 8 Dec 2026 10:00, Wed 9 Dec"),
    ("Dec 8 at 10am or 2pm", "but also mentions 14:00"),
    ("I'm out Dec 7. 10am on Dec 8 works.", "but also mentions Mon 7 Dec 2026"),
    ("Monday, December 8, 2026 at 10am", "says Monday for Tue 8 Dec 2026, which is a Tuesday"),
    ("Let's chat soon", "no exact date and time"),
    ("", "no exact date and time"),
    ("February 30, 2027 at 10am", "“February 30, 2027”, which is not a valid date"),
    ("2026-13-45 10:00", "not a valid date"),
    ("2026-12-08 at 25:00", "not a valid time"),
    ("December 8 2026. Best after 10am", "not together"),
    ("December 8, 2026 at 10am PST", "gives the time in “PST”, not the organisation's zone (EST)"),
    ("2026-12-08 15:00 UTC", "“UTC”"),
    ("Dec 8 at 3pm EDT", "“EDT”"),  # New York is on EST in December
]


@pytest.mark.parametrize(("text", "fragment"), AMBIGUOUS_CASES,
                         ids=[c[0] or "empty" for c in AMBIGUOUS_CASES])
def test_ambiguous_text_is_not_read(text: str, fragment: str) -> None:
    got = parse_exact_datetime(text, NY, NOW)
    assert isinstance(got, str) and fragment in got, got


def test_weekday_checked_against_the_resolved_year() -> None:
    # Without a year, 8 Dec resolves to 2027 after 8 Dec 2026 has passed, and that is a Wednesday.
    got = parse_exact_datetime("Tuesday, December 8 at 2pm", NY, ny(2026, 12, 9, 9))
    assert got == ("The message says Tuesday for Wed 8 Dec 2027, which is a Wednesday; "
                   "not guessing which one is meant.")


def test_text_used_when_field_missing() -> None:
    for field in (None, "", "   "):
        out = plan(field, text="Intro call, Tuesday, December 8 at 2:30 pm")
        assert (out.status, out.start, out.time_source, out.requested) == ("requested", dec8(14, 30), "text",
                                                                           dec8(14, 30))
        assert "(from the message: “Tuesday, December 8 at 2:30 pm”)" in out.reason


def test_text_without_exact_time_escalates() -> None:
    out = plan(None, text="Could we meet next week?")
    assert (out.status, out.requested, out.time_source, out.start) == ("escalate", None, None, None)
    assert out.reason == "The message only gives a relative time (“next week”), no exact date and time."


# ---------------------------------------------------------------- past, host, duration (rule 4)

def test_past_time_escalates() -> None:
    out = plan("2026-11-30T10:00")
    assert out.status == "escalate" and out.requested == ny(2026, 11, 30, 10) and out.time_source == "field"
    assert "Mon 30 Nov 2026 10:00 is in the past (now Tue 1 Dec 2026 09:00)" in out.reason


@pytest.mark.parametrize("host", [None, ""])
def test_missing_host_escalates(host: str | None) -> None:
    out = plan("2026-12-08T10:00", host=host)
    assert (out.status, out.host, out.start) == ("escalate", None, None)
    assert out.reason == "No host is given, so there is no calendar to book on."


@pytest.mark.parametrize(("given", "expected"), [(None, 30), (60, 60), (1, 1), (240, 240)])
def test_durations(given: int | None, expected: int) -> None:
    out = plan("2026-12-08T13:00", duration_minutes=given)
    assert (out.status, out.duration_minutes, out.end) == ("requested", expected,
                                                           dec8(13) + timedelta(minutes=expected))


@pytest.mark.parametrize(("given", "fragment"), [
    (0, "A duration of 0 minutes makes no sense (it must be 1–480 minutes"),
    (-15, "A duration of -15 minutes makes no sense"),
    (481, "A duration of 481 minutes makes no sense"),
    (300, "A 300-minute meeting cannot fit in the working day without crossing the lunch break"),
])
def test_bad_durations_escalate(given: int, fragment: str) -> None:
    out = plan("2026-12-08T10:00", duration_minutes=given)
    assert out.status == "escalate" and out.start is None and fragment in out.reason


def test_several_problems_are_all_reported() -> None:
    out = plan("2026-12-08T10:00", host=None, duration_minutes=0)
    assert out.reason.startswith("No host is given") and "A duration of 0 minutes" in out.reason


def test_longer_meeting_moved_on_the_grid() -> None:
    # 90 minutes at 11:00 would cross lunch; nearest free grid starts are 10:30 (30 min) and 13:00 (120 min).
    out = plan("2026-12-08T11:00", duration_minutes=90)
    assert (out.status, out.start, out.end) == ("moved", dec8(10, 30), dec8(12))


# ---------------------------------------------------------------- reminders (rule 8)

def test_default_reminders() -> None:
    out = plan("2026-12-08T14:00")
    assert out.reminders == (ny(2026, 12, 7, 14), dec8(13))


def test_reminders_keep_order_and_past_ones() -> None:
    out = plan("2026-12-08T10:00", now=dec8(8, 30), reminder_offsets_minutes=(60, 1440, 15))
    assert out.reminders == (dec8(9), ny(2026, 12, 7, 10), dec8(9, 45))  # the 24 h one is already past


# ---------------------------------------------------------------- DST (rule 9)

@pytest.mark.parametrize(("requested", "entries", "start", "utc_offset_hours"), [
    ("2026-10-31T10:00", [], ny(2026, 11, 2, 9), -5),  # weekend across the Nov 1 change → Mon 9:00 EST
    ("2026-10-31T10:00", [busy(ny(2026, 11, 2, 9), ny(2026, 11, 2, 9, 30))], ny(2026, 11, 2, 9, 30), -5),
    ("2026-11-02T09:00", [], ny(2026, 11, 2, 9), -5),
    ("2026-10-30T09:00", [], ny(2026, 10, 30, 9), -4),
    ("2027-03-13T10:00", [], ny(2027, 3, 15, 9), -4),  # weekend across the Mar 14 change → Mon 9:00 EDT
    ("2027-03-12T16:45", [], ny(2027, 3, 12, 16, 30), -5),
])
def test_dst(requested: str, entries: list[Busy], start: datetime, utc_offset_hours: int) -> None:
    out = plan(requested, busy=entries, now=ny(2026, 10, 1, 9))
    assert out.start == start and out.start is not None
    assert out.start.utcoffset() == timedelta(hours=utc_offset_hours)
    assert out.start.hour == start.hour and out.start.minute == start.minute


def test_busy_entry_in_utc_blocks_the_local_slot_on_a_dst_monday() -> None:
    # 14:00 UTC is 9:00 EST on Mon 2 Nov 2026 (it would be 10:00 in EDT a week earlier).
    entry = Busy("u-sam", datetime.fromisoformat("2026-11-02T14:00:00+00:00"),
                 datetime.fromisoformat("2026-11-02T15:00:00+00:00"), "Standup")
    out = plan("2026-11-02T09:00", busy=[entry], now=ny(2026, 10, 1, 9))
    assert (out.status, out.start) == ("moved", ny(2026, 11, 2, 10))


def test_reminders_are_elapsed_time_across_dst() -> None:
    out = plan("2026-11-02T09:00", now=ny(2026, 10, 1, 9), reminder_offsets_minutes=(1440, 2880))
    # 48 h before 9:00 EST Monday is 10:00 EDT Saturday: one clock hour was repeated on Sunday.
    assert out.reminders == (ny(2026, 11, 1, 9), ny(2026, 10, 31, 10))
    assert [r.utcoffset() for r in out.reminders] == [timedelta(hours=-5), timedelta(hours=-4)]


# ---------------------------------------------------------------- configuration

@pytest.mark.parametrize("changes", [
    {"start": time(17), "end": time(9)},
    {"lunch_start": time(8), "lunch_end": time(9)},
    {"timezone": "Mars/Olympus_Mons"},
])
def test_invalid_work_hours_rejected(changes: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"timezone": "America/New_York", "start": time(9), "end": time(17),
                              "lunch_start": time(12), "lunch_end": time(13), "days": frozenset(range(5))}
    fields.update(changes)
    with pytest.raises(ValueError, match=r"time zone|lunch|start before"):
        WorkHours(**fields)


def test_naive_now_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        plan("2026-12-08T10:00", now=datetime(2026, 12, 1, 9))


# ---------------------------------------------------------------- buffers around busy entries

def test_a_buffer_keeps_time_free_around_busy_entries() -> None:
    entries = [busy(dec8(10), dec8(11), "Client call")]
    assert plan("2026-12-08T11:00", busy=entries).status == "requested"  # back-to-back without a buffer
    out = plan("2026-12-08T11:00", busy=entries, buffer_minutes=15)
    assert out.status == "moved" and out.start == dec8(11, 15)
    assert "u-sam is busy 10:00–11:00 (Client call), and 15 minutes are kept free around every event" in out.reason
    before = plan("2026-12-08T09:30", busy=entries, buffer_minutes=15)
    assert before.status == "moved" and before.start == dec8(9, 15)  # ends 9:45, 15 minutes before 10:00


def test_a_buffer_applies_on_both_sides_when_scanning() -> None:
    # 9:00–16:30 busy but for 13:00–13:45: with a 15-minute buffer no 30-minute slot fits that day
    entries = [busy(dec8(9), dec8(13)), busy(dec8(13, 45), dec8(17))]
    assert plan("2026-12-08T13:00", busy=entries).start == dec8(13)
    out = plan("2026-12-08T13:00", busy=entries, buffer_minutes=15)
    assert out.status == "moved" and out.start == ny(2026, 12, 9, 9)


# ---------------------------------------------------------------- moving a meeting: which one, and to when

ORIGINAL = dec8(10)  # a Tuesday meeting


@pytest.mark.parametrize(("text", "old", "new"), [
    ("can we move Tuesday's call to 3pm?", "Tuesday", "3pm"),
    ("Hi, could we push our Thursday meeting to Friday at 10am? Thanks", "Thursday", "Friday at 10am"),
    ("Can we reschedule for Dec 10 at 2pm", "", "Dec 10 at 2pm"),
    ("can we do 3pm instead?", "", "3pm"),
    ("I need to move our meeting", "I need to move our meeting", None),
])
def test_a_move_request_splits_into_which_meeting_and_when(text: str, old: str, new: str | None) -> None:
    from engine.schedule import split_reschedule

    identifying, when = split_reschedule(text)
    assert when == new
    assert old in identifying and (new is None or new not in identifying)


@pytest.mark.parametrize(("new_text", "expected"), [
    ("3pm", dec8(15)),                          # a time alone: the same day
    ("Dec 9 at 2pm", ny(2026, 12, 9, 14)),      # an exact date and time
    ("Wednesday", ny(2026, 12, 9, 10)),         # a weekday: nearest to the meeting, same time of day
    ("Monday at 11am", ny(2026, 12, 7, 11)),    # a weekday and a time
    ("Friday at 10am", ny(2026, 12, 11, 10)),
])
def test_the_new_time_of_a_moved_meeting(new_text: str, expected: datetime) -> None:
    from engine.schedule import read_new_time

    got = read_new_time(new_text, NY, NOW, ORIGINAL)
    assert not isinstance(got, str), got
    assert got[0] == expected


@pytest.mark.parametrize(("new_text", "why"), [
    ("tomorrow at 3pm", "“tomorrow”, which is relative"),
    ("3", "“3” without am/pm"),
    ("at 3", "without am/pm"),
    ("next week", "relative"),
    ("Monday or Tuesday", "more than one new time"),
    ("10/12 at 3pm", "all-numeric"),
    ("whenever suits", "does not say when"),
])
def test_an_unreadable_new_time_says_why(new_text: str, why: str) -> None:
    from engine.schedule import read_new_time

    got = read_new_time(new_text, NY, NOW, ORIGINAL)
    assert isinstance(got, str) and why in got, got


def test_a_weekday_that_falls_today_or_earlier_moves_a_week_on() -> None:
    from engine.schedule import read_new_time

    got = read_new_time("Tuesday", NY, NOW, ny(2026, 12, 2, 10))  # Wednesday's meeting to "Tuesday" (= today)
    assert not isinstance(got, str) and got[0] == ny(2026, 12, 8, 10)


def test_meeting_hints_name_days_dates_and_times() -> None:
    from engine.schedule import meeting_hints

    hints = meeting_hints("our call on Thursday at 2pm, or was it Dec 17?", NY, NOW)
    assert hints.weekdays == {3} and hints.dates == {ny(2026, 12, 17, 0).date()} and hints.clocks == {time(14)}
    assert hints.fits(ny(2026, 12, 17, 14)) and not hints.fits(ny(2026, 12, 10, 14))
    assert not meeting_hints("can we move our call", NY, NOW)


def test_the_quick_slot_check_agrees_with_the_reasons_on_every_grid_slot():
    """`_free` checks a slot without writing reasons: it must agree with `not _slot_issues` (and `now`)."""
    import random

    from engine.schedule import _attach, _free, _slot_issues

    rng = random.Random(7)
    tz = ZoneInfo(HOURS.timezone)
    hours = WorkHours(timezone="America/New_York", start=time(9), end=time(17), lunch_start=time(12),
                      lunch_end=time(13), days=frozenset(range(6)), special=((5, time(9), time(13)),))
    base = datetime(2026, 3, 6, tzinfo=tz)  # around a DST change
    busy = [Busy(host="h", start=base + timedelta(hours=rng.randrange(0, 24 * 5 * 4) / 4),
                 end=base + timedelta(hours=rng.randrange(1, 9) / 4), title="x") for _ in range(40)]
    busy = [Busy(host=b.host, start=b.start, end=b.start + (b.end - base), title=b.title) for b in busy]
    now = base + timedelta(days=1, hours=10)
    checked = disagreements = 0
    for day in range(6):
        for minutes in (15, 30, 60, 120):
            for m in range(0, 24 * 60, 15):
                wall = datetime(2026, 3, 6 + day) + timedelta(minutes=m)
                for pad in (0, 10):
                    slow = (_attach(wall, tz) >= now
                            and not _slot_issues(wall, minutes, hours, tz, busy, pad))
                    checked += 1
                    disagreements += _free(wall, minutes, hours, tz, busy, now, pad) != slow
    assert checked > 4000 and disagreements == 0
