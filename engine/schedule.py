"""Booking planning for booking forms: read the requested time, then book it, move it, or escalate.

The contract is deliberately conservative: anything that would need a guess (ambiguous numeric dates,
relative dates, hours without am/pm, several candidate times) is escalated to a human with a reason.
All wall-clock arithmetic happens in the organisation's zone so DST days still start at 9:00 local.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.models import FIRST_YEAR, LAST_YEAR
from engine.ports import Busy

GRID_MINUTES = 15
MAX_SCAN_DAYS = 30

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class WorkHours:
    """An organisation's working day: zone, opening hours, lunch break and business weekdays."""

    timezone: str  # IANA, e.g. "America/New_York"
    start: time
    end: time
    lunch_start: time
    lunch_end: time
    days: frozenset[int]  # 0=Monday … 6=Sunday
    # Days with other opening hours (e.g. Saturday 09:00–13:00): weekday -> (start, end).
    special: tuple[tuple[int, time, time], ...] = ()
    step_minutes: int = GRID_MINUTES  # the grid candidate slots are placed on

    def window(self, weekday: int) -> tuple[time, time]:
        """Opening and closing time on a weekday."""
        for day, start, end in self.special:
            if day == weekday:
                return start, end
        return self.start, self.end

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)  # fail at configuration time, not on the first booking
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.timezone!r}") from None
        if not self.start < self.end:
            raise ValueError("work hours must start before they end")
        if not self.start <= self.lunch_start <= self.lunch_end <= self.end:
            raise ValueError("lunch must lie inside the working hours")


@dataclass(frozen=True)
class BookingOutcome:
    """What to do with a booking request; `reason` is the operator-facing explanation."""

    status: Literal["requested", "moved", "escalate"]
    host: str | None
    start: datetime | None  # aware, in the org's time zone
    end: datetime | None
    duration_minutes: int
    reminders: tuple[datetime, ...]  # all of them, even past ones: the executor skips those
    time_source: Literal["field", "text"] | None
    requested: datetime | None
    reason: str


# ---------------------------------------------------------------- formatting

def _day(d: date) -> str:
    return f"{_DAY_NAMES[d.weekday()]} {d.day} {_MONTH_NAMES[d.month - 1]} {d.year}"


def _hm(t: datetime | time) -> str:
    return f"{t.hour:02d}:{t.minute:02d}"


def _when(dt: datetime) -> str:
    return f"{_day(dt.date())} {_hm(dt)}"


def _minutes(t: time) -> int:
    return t.hour * 60 + t.minute


def plannable(year: int) -> bool:
    """Whether the planner computes with dates of `year`: a day's slots, 400 days of calendar, reminders and
    time-zone conversions all stay far from the ends of what a datetime holds (years 1–9999)."""
    return FIRST_YEAR <= year <= LAST_YEAR


def _out_of_range(what: str) -> str:
    return f"{what} is outside the years {FIRST_YEAR}–{LAST_YEAR} the planner books in; not guessing."


def _attach(wall: datetime, tz: ZoneInfo) -> datetime:
    """Wall time → aware datetime; the UTC round trip moves a wall time skipped by DST onto a real one."""
    return wall.replace(tzinfo=tz).astimezone(UTC).astimezone(tz)


def _to_utc(dt: datetime, tz: ZoneInfo) -> datetime:
    # Busy entries should be aware; a naive one is read as org-local rather than crashing the planner.
    return (dt.replace(tzinfo=tz) if dt.tzinfo is None else dt).astimezone(UTC)


# ---------------------------------------------------------------- reading a date and time from text

_MONTH = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|(?-i:May|MAY)|june?|july?|aug(?:ust)?" \
         r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
_WEEKDAY = r"(?:mon(?:day)?|tue(?:s(?:day)?)?|wed(?:nesday)?|thu(?:r(?:s(?:day)?)?)?|fri(?:day)?" \
           r"|sat(?:urday)?|sun(?:day)?)"
_AMPM = r"[ap]\.?\s?m(?![a-z])\.?"
_I = re.IGNORECASE

# Numeric dates with slashes or dots: month/day order is unknowable, so they are never read.
_SLASH_DATE = re.compile(r"(?<![\w/])\d{1,4}/\d{1,2}(?:/\d{1,4})?(?![\w/])")
_DOT_DATE = re.compile(r"(?<![\w.])\d{1,4}\.\d{1,2}\.\d{1,4}(?!\w|\.\d)")
# An offset is only read in the machine form with "T"; "2026-12-08 10:00-11:00" is a range, not UTC-11.
_ISO_DT = re.compile(
    r"(?<![\w-])(?P<d>\d{4}-\d{2}-\d{2})(?:[Tt](?P<t1>\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)(?P<off>[Zz]|[+-]\d{2}:?\d{2})?"
    r"|\s+(?:at\s+)?(?P<t2>\d{1,2}:\d{2}(?::\d{2})?))(?![\d:])(?!\s*" + _AMPM + ")")
_ISO_DATE = re.compile(r"(?<![\w-])(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})(?![\w-])")
_DAY_NO = r"(?P<d>\d{1,2})(?:st|nd|rd|th)?(?![\d:])"
_YEAR = r"(?:(?:,\s*|\s+)(?P<y>\d{4})(?![\d:]))?"
_MONTH_FIRST = re.compile(r"\b(?P<m>" + _MONTH + r")\b\.?\s+" + _DAY_NO + r"(?!\s*" + _AMPM + ")" + _YEAR, _I)
_DAY_FIRST = re.compile(
    r"(?<![\w:./-])(?:the\s+)?" + _DAY_NO + r"\s+(?:of\s+)?(?P<m>" + _MONTH + r")\b\.?" + _YEAR, _I)
_WEEKDAY_PREFIX = re.compile(r"\b(?P<w>" + _WEEKDAY + r")\.?,?\s+$", _I)
_TIME_12 = re.compile(r"(?<![\d:.])(?P<h>\d{1,2})(?::(?P<m>\d{2}))?\s*(?P<ap>[ap])\.?\s?m(?![a-z])\.?", _I)
_TIME_24 = re.compile(r"(?<![\d:.])(?P<h>\d{1,2}):(?P<m>\d{2})(?::\d{2})?(?![\d:])", _I)
_NOON = re.compile(r"\b(?:12\s*)?(?:noon|midday)\b", _I)
_BARE_HOUR = re.compile(
    r"(?:\bat|@)\s*\d{1,2}(?![\d:/.]|\s*" + _AMPM
    + r"|\s*noon\b|\s*(?:st|nd|rd|th)\b|\s+(?:of\s+)?" + _MONTH + r"\b)"
    r"(?:\s*o'?\s?clock)?|\b\d{1,2}\s*o'?\s?clock\b|\bmidnight\b", _I)
_RELATIVE = re.compile(
    r"\b(?:today|tonight|tomorrow|yesterday|(?:this|next|coming)\s+(?:morning|afternoon|evening|week(?:end)?"
    r"|month|" + _WEEKDAY + r")|in\s+(?:a|an|\d+)\s+(?:days?|weeks?|hours?)"
    r"|(?:mon|tues|wednes|thurs|fri|satur|sun)day)\b",
    _I)
# Glue allowed between a date and its time, a time and its date, and the two ends of a time range.
_DATE_TO_TIME = re.compile(r"\s*,?\s*(?:(?:at|from|starting(?:\s+at)?)\s+|@\s*)?", _I)
_TIME_TO_DATE = re.compile(r"\s*,?\s*(?:on\s+)?", _I)
_RANGE = re.compile(r"\s*(?:-|–|—|to|until|till|through)\s*", _I)
# A zone written after a time ("10am PST") would silently shift the meeting if ignored.
_ZONE = re.compile(r"\s*\(?(?P<z>(?:UTC|GMT)(?:\s?[+-]\d{1,2}(?::?\d{2})?)?|[ECMP][SD]?T|AK[SD]T|HST|BST"
                   r"|IST|JST|CES?T|EES?T|WES?T|AE[SD]T)(?![\w+-])")


@dataclass
class _Mention:
    """One date, time or full date-time found in the text, with its span."""

    start: int
    end: int
    day: date | None = None
    clock: time | None = None
    moment: datetime | None = None
    range_start: _Mention | None = None  # set when this time ends a range ("10am to 11am")


class _Unreadable(Exception):
    """A mention that looks like a date or time but is not a valid one; the message says why."""


def _resolve(y: str | None, month: int, day: int, ref: date, raw: str) -> date:
    """A stated date; without a year, its next occurrence on or after `ref` (Feb 29 may skip years)."""
    try:
        if y is not None:
            return date(int(y), month, day)
        for year in range(ref.year, ref.year + 9):
            try:
                candidate = date(year, month, day)
            except ValueError:
                continue
            if candidate >= ref:
                return candidate
    except ValueError:
        pass
    raise _Unreadable(f"The message mentions “{raw}”, which is not a valid date.")


def _clock(hour: int, minute: int, ampm: str | None, raw: str) -> time:
    if ampm is not None:
        if not 1 <= hour <= 12:
            raise _Unreadable(f"The message mentions “{raw}”, which is not a valid time.")
        hour = hour % 12 + (12 if ampm.lower() == "p" else 0)
    if hour > 23 or minute > 59:
        raise _Unreadable(f"The message mentions “{raw}”, which is not a valid time.")
    return time(hour, minute)


def _mentions(text: str, tz: ZoneInfo, ref: date) -> list[_Mention]:
    """All dates and times in `text`, earlier patterns winning where spans overlap. Raises `_Unreadable`."""
    found: list[_Mention] = []

    def add(mention: _Mention) -> None:
        if all(mention.end <= o.start or o.end <= mention.start for o in found):
            found.append(mention)

    def dated(m: re.Match[str], day: date) -> _Mention:
        if not plannable(day.year):
            raise _Unreadable(_out_of_range(f"The message mentions “{m.group(0).strip()}”, which"))
        # A weekday written just before the date must agree with it; "Monday, 8 Dec 2026" is not guessed.
        prefix = _WEEKDAY_PREFIX.search(text, 0, m.start())
        if prefix is not None:
            said = [n.lower()[:3] for n in _DAY_NAMES].index(prefix["w"].lower()[:3])
            if said != day.weekday():
                raise _Unreadable(f"The message says {_FULL_DAY_NAMES[said]} for {_day(day)}, which is a "
                                  f"{_FULL_DAY_NAMES[day.weekday()]}; not guessing which one is meant.")
        return _Mention(prefix.start() if prefix else m.start(), m.end(), day=day)

    for m in _ISO_DT.finditer(text):
        raw = m.group(0)
        hh, mm = (m["t1"] or m["t2"]).split(":")[:2]
        clock = _clock(int(hh), int(mm), None, raw)
        try:
            day = date.fromisoformat(m["d"])
            stated = datetime.fromisoformat(f"{m['d']}T{m['t1']}{m['off'].upper()}") if m["off"] else None
        except ValueError:
            raise _Unreadable(f"The message mentions “{raw}”, which is not a valid date and time.") from None
        mention = dated(m, day)  # refuses a day outside the planner's years before any conversion
        moment = stated.astimezone(tz) if stated else _attach(datetime.combine(day, clock), tz)
        mention.moment = moment
        add(mention)
    for m in _ISO_DATE.finditer(text):
        try:
            add(dated(m, date(int(m["y"]), int(m["m"]), int(m["d"]))))
        except ValueError:
            raise _Unreadable(f"The message mentions “{m.group(0)}”, which is not a valid date.") from None
    for pattern in (_MONTH_FIRST, _DAY_FIRST):
        for m in pattern.finditer(text):
            month = [n.lower() for n in _MONTH_NAMES].index(m["m"].lower()[:3]) + 1
            add(dated(m, _resolve(m["y"], month, int(m["d"]), ref, m.group(0).strip())))
    for m in _TIME_12.finditer(text):
        add(_Mention(m.start(), m.end(), clock=_clock(int(m["h"]), int(m["m"] or 0), m["ap"], m.group(0))))
    for m in _TIME_24.finditer(text):
        add(_Mention(m.start(), m.end(), clock=_clock(int(m["h"]), int(m["m"]), None, m.group(0))))
    for m in _NOON.finditer(text):
        add(_Mention(m.start(), m.end(), clock=time(12, 0)))
    return sorted(found, key=lambda x: x.start)


def _glued(pattern: re.Pattern[str], text: str, left: _Mention, right: _Mention) -> bool:
    return pattern.fullmatch(text, left.end, right.start) is not None


def _read_text(text: str, tz: ZoneInfo, reference: datetime) -> tuple[datetime, str] | str:
    """The one exact date-time in `text` with the words it came from, or why there is none."""
    for pattern in (_SLASH_DATE, _DOT_DATE):
        if m := pattern.search(text):
            return (f"The message gives the date “{m.group(0)}” in an all-numeric form whose day/month "
                    "order is ambiguous; not guessing.")
    ref = (reference.astimezone(tz) if reference.tzinfo else reference).date()
    try:
        found = _mentions(text, tz, ref)
    except _Unreadable as exc:
        return str(exc)
    spans = [(f.start, f.end) for f in found]
    for m in _BARE_HOUR.finditer(text):
        if all(m.end() <= s or e <= m.start() for s, e in spans):
            if m.group(0).lower() == "midnight":
                return "The message says “midnight”, which leaves the day unclear; not guessing."
            return (f"The message says “{m.group(0).strip()}” without am/pm or a 24-hour time; "
                    "not guessing the hour.")

    # A time directly after another time, joined by "to"/"–", is a range end: it is not a second request.
    timed = [f for f in found if f.clock is not None or f.moment is not None]
    for first, second in itertools.pairwise(timed):
        if second.clock is not None and _glued(_RANGE, text, first, second):
            second.range_start = first
    pairs: list[tuple[datetime, _Mention, _Mention]] = []
    used: set[int] = set()
    for i, f in enumerate(found):
        if f.moment is not None:
            pairs.append((f.moment, f, f))
            used.add(id(f))
            continue
        if f.day is None or id(f) in used:
            continue
        nxt = found[i + 1] if i + 1 < len(found) else None
        prev = found[i - 1] if i > 0 else None
        t: _Mention | None = None
        if nxt and nxt.clock is not None and id(nxt) not in used and _glued(_DATE_TO_TIME, text, f, nxt):
            t = nxt
        elif (prev and prev.clock is not None and id(prev) not in used
              and _glued(_TIME_TO_DATE, text, prev, f)):
            # In "10am to 11am on Dec 8" the date belongs to the range, which starts at 10am.
            t = prev.range_start if prev.range_start and prev.range_start.clock is not None else prev
        if t is not None and t.clock is not None:
            used.update({id(f), id(t)})
            pairs.append((_attach(datetime.combine(f.day, t.clock), tz), min(f, t, key=lambda x: x.start),
                          max(f, t, key=lambda x: x.end)))

    moments = list(dict.fromkeys(p[0] for p in pairs))
    if len(moments) > 1:
        listed = ", ".join(_when(x) for x in moments)
        return f"The message gives more than one date and time ({listed}); not guessing which one is meant."
    loose_days = [f.day for f in found if f.day is not None and id(f) not in used]
    loose_times = [f.clock for f in found
                   if f.clock is not None and id(f) not in used and f.range_start is None]
    if moments:
        chosen = moments[0]
        extra = [_day(d) for d in loose_days if d != chosen.date()]
        extra += [_hm(c) for c in loose_times if c != chosen.time()]
        if extra:
            return (f"The message gives {_when(chosen)} but also mentions {', '.join(extra)}; "
                    "not guessing which one is meant.")
        own = chosen.tzname() or ""
        for f in timed:
            zone = _ZONE.match(text, f.end)
            if zone and zone["z"] not in (own, own[:1] + own[-1:]):  # "ET" is fine for EST/EDT
                return (f"The message gives the time in “{zone['z']}”, not the organisation's zone ({own}); "
                        "not converting it.")
        first, last = pairs[0][1], pairs[0][2]
        return chosen, text[first.start:last.end].strip()
    relative = _RELATIVE.search(text)
    hint = f" (“{relative.group(0)}” is relative)" if relative else ""
    if loose_days and loose_times:
        return ("The message mentions a date and a time but not together as one exact date and time; "
                "not guessing.")
    if loose_days:
        return f"The message gives a date ({_day(loose_days[0])}) but no time."
    if loose_times:
        return f"The message gives a time ({_hm(loose_times[0])}) but no calendar date{hint}."
    if relative:
        return f"The message only gives a relative time (“{relative.group(0)}”), no exact date and time."
    return "The message has no exact date and time."


def parse_exact_datetime(text: str, tz: ZoneInfo, reference: datetime) -> datetime | str:
    """Find an exact date+time stated in free text; return it (aware, org tz) or a string saying why not."""
    found = _read_text(text, tz, reference)
    return found if isinstance(found, str) else found[0]


# ---------------------------------------------------------------- reading the form field

_FIELD = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:[Zz]|[+-]\d{2}:?\d{2})?")


def _read_field(value: str, tz: ZoneInfo) -> tuple[datetime, str] | str:
    """The field's ISO-8601 value in org time plus a note on how it was read, or why it is unusable."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return f"The requested start “{value}” has a date but no time; not guessing the time."
    stated: datetime | None = None
    if _FIELD.fullmatch(value):
        try:
            stated = datetime.fromisoformat(value.upper())
        except ValueError:
            stated = None
    if stated is None:
        return f"The requested start “{value}” is not a valid ISO-8601 date and time; not guessing."
    if not plannable(stated.year):
        return _out_of_range(f"The requested start “{value}”")
    if stated.tzinfo is None:
        return _attach(stated, tz), f"no UTC offset given, read as {tz.key} local time"
    return stated.astimezone(tz), f"given as {value}"


# ---------------------------------------------------------------- slots

def _slot_issues(wall: datetime, minutes: int, hours: WorkHours, tz: ZoneInfo, busy: list[Busy],
                 buffer_minutes: int = 0) -> list[str]:
    """Why the slot starting at local wall time `wall` cannot be used (rule 5); empty means it is free.
    `buffer_minutes` of free time must separate the slot from every busy entry."""
    issues: list[str] = []
    end = wall + timedelta(minutes=minutes)
    open_, close = hours.window(wall.weekday())
    opening = f"{_hm(open_)}–{_hm(close)}"
    if wall.weekday() not in hours.days:
        issues.append(f"{_day(wall.date())} is not a business day")
    elif wall.time() < open_:
        issues.append(f"the slot starts before working hours ({opening})")
    elif wall.time() >= close:
        issues.append(f"the slot is after working hours ({opening})")
    elif end > datetime.combine(wall.date(), close):
        issues.append(f"the slot would end at {_hm(end)}, after working hours end at {_hm(close)}")
    if (wall.weekday() in hours.days and wall.time() < hours.lunch_end
            and datetime.combine(wall.date(), hours.lunch_start) < end):
        issues.append(f"the slot overlaps the lunch break {_hm(hours.lunch_start)}–{_hm(hours.lunch_end)}")
    start_utc, end_utc = _attach(wall, tz).astimezone(UTC), _attach(end, tz).astimezone(UTC)
    pad = timedelta(minutes=buffer_minutes)
    for b in busy:
        if _to_utc(b.start, tz) - pad < end_utc and start_utc < _to_utc(b.end, tz) + pad:
            b_start, b_end = _to_utc(b.start, tz).astimezone(tz), _to_utc(b.end, tz).astimezone(tz)
            span = f"{_hm(b_start)}–{_hm(b_end)}" if b_start.date() == b_end.date() == wall.date() \
                else f"{_when(b_start)}–{_when(b_end)}"
            issue = f"{b.host} is busy {span}" + (f" ({b.title})" if b.title else "")
            if not (_to_utc(b.start, tz) < end_utc and start_utc < _to_utc(b.end, tz)):
                issue += f", and {buffer_minutes} minutes are kept free around every event"
            issues.append(issue)
    return issues


def _around(busy: list[Busy], day: date, tz: ZoneInfo) -> list[Busy]:
    """The entries that can touch a slot on `day` (local), buffers included: those overlapping the day and the
    days either side. Checking a day's grid against these instead of a whole calendar keeps planning cheap when
    a host's calendar is long."""
    lo = datetime.combine(day - timedelta(days=1), time()).replace(tzinfo=tz).astimezone(UTC)
    hi = datetime.combine(day + timedelta(days=2), time()).replace(tzinfo=tz).astimezone(UTC)
    return [b for b in busy if _to_utc(b.start, tz) < hi and _to_utc(b.end, tz) > lo]


def _grid(day: date, minutes: int, hours: WorkHours) -> Iterator[datetime]:
    """Candidate wall-clock starts on the grid (15 minutes by default) that keep the slot inside working hours."""
    open_, close = hours.window(day.weekday())
    for m in range(_minutes(open_), _minutes(close) - minutes + 1, hours.step_minutes):
        yield datetime.combine(day, time(m // 60, m % 60))


def _free(wall: datetime, minutes: int, hours: WorkHours, tz: ZoneInfo, busy: list[Busy],
          now: datetime, buffer_minutes: int = 0) -> bool:
    """Whether a candidate slot satisfies rule 5 (with the buffer around busy entries) and has not started:
    `not _slot_issues(...)`, without writing the reasons (a day's grid is checked slot by slot)."""
    if wall.weekday() not in hours.days:
        return False
    open_, close = hours.window(wall.weekday())
    end = wall + timedelta(minutes=minutes)
    at = wall.time()
    if at < open_ or at >= close or end > datetime.combine(wall.date(), close):
        return False
    if at < hours.lunch_end and datetime.combine(wall.date(), hours.lunch_start) < end:
        return False
    start = _attach(wall, tz)
    if start < now:
        return False
    start_utc, end_utc = start.astimezone(UTC), _attach(end, tz).astimezone(UTC)
    pad = timedelta(minutes=buffer_minutes)
    return not any(_to_utc(b.start, tz) - pad < end_utc and start_utc < _to_utc(b.end, tz) + pad for b in busy)


# ---------------------------------------------------------------- planning

def plan_booking(*, requested_start: str | None, duration_minutes: int | None, text: str, host: str | None,
                 hours: WorkHours, busy: list[Busy], now: datetime,
                 default_duration: int = 30,
                 reminder_offsets_minutes: tuple[int, ...] = (1440, 60),
                 buffer_minutes: int = 0) -> BookingOutcome:
    """Decide a booking form's slot: keep the requested time, move it to the nearest free slot, or escalate.

    Reminders are `start - offset` for every offset, in the order given, measured in elapsed time; past ones
    are kept on purpose because the executor skips them. `buffer_minutes` of free time are kept between the
    slot and every busy entry of the host (the policy's `scheduling.buffer_minutes`).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    tz = ZoneInfo(hours.timezone)
    if not plannable(now.year):  # an event stored before the door refused such dates
        return BookingOutcome(status="escalate", host=host or None, start=None, end=None,
                              duration_minutes=duration_minutes or default_duration, reminders=(), time_source=None,
                              requested=None, reason=_out_of_range(f"The event's time {now.isoformat()}"))
    now = now.astimezone(tz)
    problems: list[str] = []

    requested: datetime | None = None
    source: Literal["field", "text"] | None = None
    note = ""
    field = (requested_start or "").strip()
    got = _read_field(field, tz) if field else _read_text(text or "", tz, now)
    if isinstance(got, str):
        problems.append(got)
    else:
        requested, source = got[0], "field" if field else "text"
        note = got[1] if field else f"from the message: “{got[1]}”"
        if requested < now:
            problems.append(f"The requested time {_when(requested)} is in the past (now {_when(now)}).")

    if not host:
        problems.append("No host is given, so there is no calendar to book on.")

    day_length = _minutes(hours.end) - _minutes(hours.start)
    duration = default_duration if duration_minutes is None else duration_minutes
    longest = max(_minutes(hours.lunch_start) - _minutes(hours.start),
                  _minutes(hours.end) - _minutes(hours.lunch_end))
    if isinstance(duration, bool) or not isinstance(duration, int) or not 0 < duration <= day_length:
        problems.append(f"A duration of {duration!r} minutes makes no sense "
                        f"(it must be 1–{day_length} minutes, the length of the business day).")
        if isinstance(duration, bool) or not isinstance(duration, int):
            duration = default_duration
    elif duration > longest:
        # Lunch splits the day, so such a meeting could never be placed; say so instead of scanning 30 days.
        problems.append(f"A {duration}-minute meeting cannot fit in the working day without crossing "
                        f"the lunch break (the longest stretch is {longest} minutes).")

    def outcome(status: Literal["requested", "moved", "escalate"], reason: str,
                start: datetime | None = None) -> BookingOutcome:
        end = _attach(start.replace(tzinfo=None) + timedelta(minutes=duration), tz) if start else None
        reminders = tuple((start.astimezone(UTC) - timedelta(minutes=o)).astimezone(tz)
                          for o in reminder_offsets_minutes) if start else ()
        return BookingOutcome(status=status, host=host or None, start=start, end=end,
                              duration_minutes=duration, reminders=reminders, time_source=source,
                              requested=requested, reason=reason)

    if problems or requested is None or not host:
        return outcome("escalate", " ".join(problems))

    own_busy = [b for b in busy if b.host == host]
    wall = requested.replace(tzinfo=None)
    label = f"Requested {_when(requested)}–{_hm(wall + timedelta(minutes=duration))} ({note})"
    issues = _slot_issues(wall, duration, hours, tz, _around(own_busy, wall.date(), tz), buffer_minutes)
    if not issues:
        return outcome("requested", f"{label} is free for {host}; booked as requested.", requested)
    why = f"{label}: {' and '.join(issues)}"
    if wall.weekday() in hours.days:
        that_day = _around(own_busy, wall.date(), tz)
        # Nearest first; of two equally near candidates the earlier one (the sort is stable, the grid runs forward).
        by_distance = sorted(_grid(wall.date(), duration, hours), key=lambda c: abs((c - wall).total_seconds()))
        best = next((c for c in by_distance if _free(c, duration, hours, tz, that_day, now, buffer_minutes)), None)
        if best is not None:
            return outcome("moved", f"{why}; moved to {_hm(best)}, the nearest free slot the same day.",
                           _attach(best, tz))
        why += "; no free slot is left that day"

    business_days_seen = 0
    for offset in range(1, MAX_SCAN_DAYS + 1):
        day = wall.date() + timedelta(days=offset)
        if day.weekday() not in hours.days:
            continue
        business_days_seen += 1
        that_day = _around(own_busy, day, tz)
        for candidate in _grid(day, duration, hours):
            if _free(candidate, duration, hours, tz, that_day, now, buffer_minutes):
                which = "the next business day" if business_days_seen == 1 else "the first day with room"
                reason = f"{why}; moved to {_when(candidate)}, the first free slot on {which}."
                return outcome("moved", reason, _attach(candidate, tz))
    return outcome("escalate", f"{why}; {host} has no free slot in the {MAX_SCAN_DAYS} days after "
                               f"{_day(wall.date())}, so a person needs to pick a time.")


# ---------------------------------------------------------------- moving a meeting: which one, and to when

_WEEKDAY_WORD = re.compile(r"\b(?P<w>monday|tuesday|wednesday|thursday|friday|saturday|sunday|mon|tues?|weds?"
                           r"|thu(?:rs?)?|fri)\b", _I)
_MOVE_VERB = (r"\b(?:mov(?:e|es|ed|ing)|push(?:ed|ing)?|re-?schedul(?:e|ed|ing)|shift(?:ed|ing)?|bump(?:ed|ing)?"
              r"|chang(?:e|ed|ing)|postpon(?:e|ed|ing)|switch(?:ed|ing)?|rearrang(?:e|ed|ing)|delay(?:ed|ing)?)\b")
# "move Tuesday's call to 3pm", "reschedule it for Friday at 10am": what follows the marker is the new time.
_MOVE_TO = re.compile(_MOVE_VERB + r"[^?!\n]{0,80}?\b(?:to|till|until)\s+(?!be\b|have\b|make\b|do\b|get\b|meet\b)"
                      r"|\bre-?schedul(?:e|ed|ing)\s+(?:(?:it|this|that)\s+)?for\s+", _I)
# "can we do 3pm instead?"
_INSTEAD = re.compile(r"\b(?:do|make it|how about|what about)\s+(?P<new>[^?!\n]{1,60}?)\s+instead\b", _I)
_SENTENCE_END = re.compile(r"[?!\n]|\.(?:\s|$)")
_LONE_NUMBER = re.compile(r"(?<![\w:.])\d{1,2}(?![\w:.])")


@dataclass(frozen=True)
class MeetingHints:
    """What a message says about which meeting it means: dates, weekdays (0=Monday) and clock times."""

    dates: frozenset[date]
    weekdays: frozenset[int]
    clocks: frozenset[time]

    def __bool__(self) -> bool:
        return bool(self.dates or self.weekdays or self.clocks)

    def describe(self) -> str:
        """The hints in words, e.g. "Tuesday, 15:00"."""
        parts = [_day(d) for d in sorted(self.dates)] + [_FULL_DAY_NAMES[w] for w in sorted(self.weekdays)]
        return ", ".join(parts + [_hm(c) for c in sorted(self.clocks)])

    def fits(self, start: datetime) -> bool:
        """Whether a meeting starting at `start` (org-local) agrees with every kind of hint given."""
        return ((not self.dates or start.date() in self.dates)
                and (not self.weekdays or start.weekday() in self.weekdays)
                and (not self.clocks or start.time().replace(second=0, microsecond=0) in self.clocks))


def _weekdays(text: str) -> set[int]:
    return {[n.lower()[:3] for n in _DAY_NAMES].index(m["w"].lower()[:3]) for m in _WEEKDAY_WORD.finditer(text)}


def meeting_hints(text: str, tz: ZoneInfo, reference: datetime) -> MeetingHints:
    """The dates, weekdays and times `text` names ("Tuesday's call", "our meeting on Dec 8 at 10am"), to pick
    the meeting it is about among someone's upcoming ones. Unreadable mentions are left out."""
    ref = reference.astimezone(tz).date()
    try:
        found = _mentions(text, tz, ref)
    except _Unreadable:
        found = []
    dates = {f.moment.date() if f.moment else f.day for f in found if f.moment is not None or f.day is not None}
    clocks = {f.moment.time() if f.moment else f.clock for f in found
              if f.moment is not None or (f.clock is not None and f.range_start is None)}
    return MeetingHints(frozenset(d for d in dates if d is not None), frozenset(_weekdays(text)),
                        frozenset(c.replace(second=0, microsecond=0) for c in clocks if c is not None))


def split_reschedule(text: str) -> tuple[str, str | None]:
    """A request to move a meeting, split into the words that identify the meeting and those that give the new
    time: "can we move Tuesday's call to 3pm" → ("can we move Tuesday's call ", "3pm"). None: no new time is
    named in a form this reads."""
    m = _MOVE_TO.search(text)
    if m is not None:
        rest = text[m.end():]
        end = _SENTENCE_END.search(rest)
        new = rest[:end.start()] if end else rest
        return text[:m.end()] + rest[len(new):], new.strip()
    m = _INSTEAD.search(text)
    if m is not None:
        return text[:m.start("new")] + text[m.end("new"):], m["new"].strip()
    return text, None


def read_new_time(new_text: str, tz: ZoneInfo, reference: datetime,
                  original: datetime) -> tuple[datetime, str] | str:
    """When a meeting that starts at `original` should move to, read from `new_text` (the part of a message after
    "move … to"): an exact date and time; a time alone ("3pm": the same day); a weekday ("Monday": its next
    occurrence after today, at the same time of day; "Monday at 10am"). Returns the new start (org time) and
    the words it came from, or why it cannot be read (relative words other than a weekday are not guessed)."""
    got = _read_text(new_text, tz, reference)
    if not isinstance(got, str):
        return got
    if _SLASH_DATE.search(new_text) or _DOT_DATE.search(new_text):
        return got
    ref = reference.astimezone(tz).date()
    try:
        found = _mentions(new_text, tz, ref)
    except _Unreadable as exc:
        return str(exc)
    if any(f.day is not None or f.moment is not None for f in found):
        return got  # a stated date that did not make one exact time: _read_text says why
    spans = [(f.start, f.end) for f in found]
    for m in _BARE_HOUR.finditer(new_text):
        if all(m.end() <= s or e <= m.start() for s, e in spans):
            return got
    for m in _RELATIVE.finditer(new_text):
        if not _WEEKDAY_WORD.fullmatch(m.group(0)):
            return f"The message asks to move the meeting to “{m.group(0)}”, which is relative; not guessing."
    clocks = list(dict.fromkeys(f.clock for f in found if f.clock is not None and f.range_start is None))
    days = sorted(_weekdays(new_text))
    if len(clocks) > 1 or len(days) > 1:
        said = ", ".join([_FULL_DAY_NAMES[d] for d in days] + [_hm(c) for c in clocks])
        return f"The message names more than one new time ({said}); not guessing which one is meant."
    if not clocks and not days:
        number = _LONE_NUMBER.search(new_text)
        if number is not None:
            return (f"The message says “{number.group(0)}” without am/pm or a 24-hour time; "
                    "not guessing the hour.")
        return "The message does not say when the meeting should move to."
    local = original.astimezone(tz)
    day = local.date()
    if days:
        # The named weekday nearest to the meeting's own day ("Friday's call to Monday": the Monday after;
        # "Thursday's meeting to Wednesday": the day before), but never today or earlier.
        forward = (days[0] - day.weekday()) % 7
        offset = forward if forward <= 3 else forward - 7
        day = day + timedelta(days=offset)
        while day <= ref:
            day += timedelta(days=7)
    clock = clocks[0] if clocks else local.time().replace(second=0, microsecond=0)
    return _attach(datetime.combine(day, clock), tz), new_text.strip()
