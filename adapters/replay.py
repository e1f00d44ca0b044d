"""Replays from the service's own log: the events an org received in a time window, the LLM answers recorded
with their original decisions, and the org's loads and calendars as they stood at a point in time.

Everything here reads the service's SQLite file and never writes it. A database at rest (no `-wal` file: no
process has it open) is read as `immutable`, which creates no `-wal`/`-shm` next to it either, and the read is
checked afterwards (same size, mtime and inode, still no `-wal`) and redone `mode=ro` if a writer appeared
meanwhile. A database in use is read `mode=ro`: SQLite then only updates its readers' marks in the shared-memory
index (`-shm`), which holds no data; the database file and its `-wal` are left byte for byte as they were.

`ReplayProvider` answers the LLM stage with those recordings, so a replay makes no network call. It finds the
recording by the event being decided (`ReplayProvider.event(id)`, set by `replay_decisions`): the prompt carries
no event id, and it changes whenever a candidate ruleset changes the resolution ("Why you are asked", the rules'
scores) or the prompt template, so matching the prompt would lose exactly the replays an operator runs to try an
edit. Without an event, it falls back to the exact prompt, then to the event's data block inside the prompt.
"""

from __future__ import annotations

import contextlib
import gc
import json
import sqlite3
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from itertools import count
from pathlib import Path
from typing import Any

from adapters.sqlite_base import _bound, _parse_iso
from engine.agent import Agent
from engine.llm import LLMStage
from engine.models import Decision, Event, LLMTrace
from engine.ports import Busy, LLMError, LLMReply, LLMRequest, StaticState


class ReplayError(Exception):
    """The service database cannot be replayed (missing, not a database, not an Astralis log)."""


# --------------------------------------------------------------------------- read-only access

def _uri(path: Path, params: str) -> str:
    return f"file:{urllib.parse.quote(str(path.resolve()))}?{params}"


def _stat(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def read_only(db_path: Path, query: Any) -> Any:
    """`query(connection)` on the database at `db_path`, opened read-only; ReplayError when it is missing or
    unreadable. Never creates the file (nor, for a database at rest, its `-wal`/`-shm`)."""
    db_path = Path(db_path).expanduser()
    if not db_path.is_file():
        raise ReplayError(f"{db_path}: no such database (a replay reads the service's SQLite file; "
                          f"it never creates one)")
    wal = _sidecar(db_path, "-wal")
    at_rest = not wal.exists()
    before = _stat(db_path) if at_rest else None
    for params in (("immutable=1", "mode=ro") if at_rest else ("mode=ro",)):
        try:
            conn = sqlite3.connect(_uri(db_path, params), uri=True)
        except sqlite3.Error as exc:
            raise ReplayError(f"{db_path}: cannot open read-only: {exc}") from None
        try:
            conn.row_factory = sqlite3.Row
            result = query(conn)
        except sqlite3.DatabaseError as exc:
            raise ReplayError(f"{db_path}: cannot read the service log: {exc}") from None
        finally:
            conn.close()
        if params != "immutable=1" or (not wal.exists() and _stat(db_path) == before):
            return result
        # A writer opened the file while we read it as immutable: read it again, properly locked.
    return result  # pragma: no cover - the loop always returns


# --------------------------------------------------------------------------- the replay

@dataclass(repr=False)
class Replay:
    """An org's logged events in arrival order, the LLM trace of each one's original decision (None: the LLM
    was not consulted), the original decisions, and the events that have no decision (not decided yet, dead)."""

    events: list[Event] = field(default_factory=list)
    recorded: dict[str, LLMTrace | None] = field(default_factory=dict)
    decisions: dict[str, Decision] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        # A replay holds up to millions of models: the default repr would print every one (asyncio, for one,
        # reprs a task's result).
        with_llm = sum(t is not None for t in self.recorded.values())
        return (f"Replay(events={len(self.events)}, decisions={len(self.decisions)}, "
                f"recorded_llm={with_llm}, missing={len(self.missing)})")


_EVENTS_SQL = """
SELECT e.id, e.envelope,
       COALESCE(d.record, (SELECT d2.record FROM decisions d2 WHERE d2.org = e.org AND d2.event_id = e.id
                           ORDER BY d2.created_at DESC, d2.rowid DESC LIMIT 1)) AS record
FROM events e LEFT JOIN decisions d ON d.id = e.decision_id
WHERE e.org = ? AND e.received_at >= ? AND e.received_at < ?
ORDER BY e.received_at, e.rowid
"""


_TRACES_SQL = f"""
SELECT id, envelope, record IS NOT NULL, json_extract(record, '$.llm') FROM ({_EVENTS_SQL})
"""


def load_replay(db_path: Path, org: str, since: datetime | None, until: datetime | None, *,
                originals: bool = True) -> Replay:
    """`org`'s events received in [since, until) (None: unbounded; timezone-aware), in arrival order, with
    their original decisions and recorded LLM traces, read from the service database without writing it.
    `originals=False` leaves `Replay.decisions` empty and reads only the LLM trace of each decision (SQLite
    cuts it out of the record): what a replay needs, at a third of the cost."""
    lo = _bound(since, "since") if since is not None else ""
    hi = _bound(until, "until") if until is not None else "\uffff"

    def query(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in conn.execute(_EVENTS_SQL if originals else _TRACES_SQL, (org, lo, hi))]

    rows = read_only(Path(db_path), query)
    replay = Replay()
    with _no_gc():
        if originals:
            for event_id, envelope, record in rows:
                _add(replay, db_path, event_id, envelope, record)
        else:
            for event_id, envelope, decided, trace in rows:
                _add_trace(replay, db_path, event_id, envelope, bool(decided), trace)
    return replay


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic garbage collector off while a bulk of acyclic models is built: with it on, each full collection
    walks every model built so far (measured: 100,000 logged events load in 17 s with it, 5 s without)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _add(replay: Replay, db_path: Path, event_id: str, envelope: str, record: str | None) -> None:
    try:
        event = Event.model_validate_json(envelope)
    except ValueError as exc:
        raise ReplayError(f"{db_path}: event {event_id!r}: invalid envelope: {exc}") from None
    replay.events.append(event)
    if record is None:
        replay.missing.append(event.id)
        replay.recorded[event.id] = None
        return
    try:
        decision = Decision.model_validate_json(record)
    except ValueError as exc:
        raise ReplayError(f"{db_path}: decision for event {event_id!r}: invalid record: {exc}") from None
    replay.decisions[event.id] = decision
    replay.recorded[event.id] = decision.llm


def _add_trace(replay: Replay, db_path: Path, event_id: str, envelope: str, decided: bool, trace: str | None) -> None:
    try:
        event = Event.model_validate_json(envelope)
    except ValueError as exc:
        raise ReplayError(f"{db_path}: event {event_id!r}: invalid envelope: {exc}") from None
    replay.events.append(event)
    if not decided:
        replay.missing.append(event.id)
    try:
        replay.recorded[event.id] = LLMTrace.model_validate_json(trace) if trace is not None else None
    except ValueError as exc:
        raise ReplayError(f"{db_path}: decision for event {event_id!r}: invalid LLM trace: {exc}") from None


# --------------------------------------------------------------------------- recorded LLM answers

_CURRENT: ContextVar[str | None] = ContextVar("astralis_replay_event", default=None)
_DATA_START, _DATA_END = "<<<EVENT DATA", "EVENT DATA>>>"


def _data_key(prompt: str) -> str | None:
    """The part of a user prompt that depends on the event alone: its fenced text and its other fields."""
    start = prompt.find(_DATA_START)
    end = prompt.find(_DATA_END, start + 1)
    return prompt[start:].strip() if start >= 0 and end > start else None


class ReplayProvider:
    """An `engine.ports.LLMProvider` that answers each event with the answer recorded for it, and raises
    `LLMError("config", ...)` naming the event when there is none (the engine then uses its fallback rules and
    says why in the decision). No network."""

    name = "replay"

    def __init__(self, recorded: Mapping[str, LLMTrace | None]) -> None:
        """`recorded`: event id → the LLM trace of its original decision (`Replay.recorded`)."""
        self.recorded = dict(recorded)
        self.calls = 0
        self.answered = 0
        self._by_prompt: dict[str, list[str]] = {}
        self._by_data: dict[str, list[str]] = {}
        for event_id, trace in self.recorded.items():
            if trace is None:
                continue
            self._by_prompt.setdefault(trace.prompt, []).append(event_id)
            key = _data_key(trace.prompt)
            if key is not None:
                self._by_data.setdefault(key, []).append(event_id)
        self._cursor: dict[str, int] = {}

    @contextlib.contextmanager
    def event(self, event_id: str) -> Iterator[None]:
        """Within this block, requests are answered with `event_id`'s recording."""
        token = _CURRENT.set(event_id)
        try:
            yield
        finally:
            _CURRENT.reset(token)

    def _match(self, user: str) -> str | None:
        """Without a current event: the recording of the same prompt, else of the same event data. Equal
        prompts (the same message received twice) are served in arrival order, then the last one again."""
        for index, key in ((self._by_prompt, user), (self._by_data, _data_key(user))):
            ids = index.get(key) if key is not None else None
            if ids:
                slot = f"{id(index)}:{key}"
                i = self._cursor.get(slot, 0)
                self._cursor[slot] = i + 1
                return ids[min(i, len(ids) - 1)]
        return None

    async def complete(self, request: LLMRequest) -> LLMReply:
        """The recorded answer, with its recorded tokens and latency."""
        self.calls += 1
        event_id = _CURRENT.get()
        if event_id is None:
            event_id = self._match(request.user)
            if event_id is None:
                raise LLMError("config", f"no recorded LLM answer for this prompt (none of the "
                                         f"{len(self._by_prompt)} recorded prompts or their event data match it)")
        trace = self.recorded.get(event_id)
        if trace is None:
            why = ("the original decision did not consult the LLM" if event_id in self.recorded
                   else "the log has no decision for it")
            raise LLMError("config", f"no recorded LLM answer for event {event_id} ({why})")
        if trace.response is None:
            raise LLMError("config", f"no recorded LLM answer for event {event_id} (the original call failed: "
                                     f"{(trace.error or 'no answer').replace('; ', ', ')[:120]})")
        self.answered += 1
        return LLMReply(provider=self.name, model=trace.model, text=trace.response,
                        input_tokens=trace.input_tokens, output_tokens=trace.output_tokens,
                        latency_ms=trace.latency_ms)


async def _no_sleep(_: float) -> None:
    return None


def replay_stage(provider: ReplayProvider) -> LLMStage:
    """An LLM stage for replays: `provider` stands in for every provider a policy may name; no backoff sleeps
    (recordings answer at once); and the circuit breaker lets every event through (its clock leaps ahead at
    each look), so a run of events without recordings cannot silence the recordings that follow."""
    ticks = count()
    return LLMStage({"openai": provider, "anthropic": provider}, sleep=_no_sleep,
                    clock=lambda: next(ticks) * 1e9)


FREEZE_EVERY = 2000
"""In long replays, the decisions made so far are moved out of the cyclic GC's sight every this many events."""


async def replay_decisions(agent: Agent, events: Iterable[Event], provider: ReplayProvider, *,
                           tick: Callable[[], None] | None = None) -> list[Decision]:
    """Decide every event in a dry run, each answered by its own recording (`ReplayProvider.event`).

    The decisions are kept (for the report), and every full collection of the cyclic GC would walk all of them:
    per event, a replay of 100,000 events cost 40% more at its end than at its start. Past `FREEZE_EVERY`
    events, what exists is frozen (`gc.freeze`) every `FREEZE_EVERY` events and unfrozen at the end."""
    out: list[Decision] = []
    events = list(events)
    froze = len(events) > FREEZE_EVERY
    if froze:
        gc.freeze()  # the loaded log itself (events, original decisions) is not garbage either
    try:
        for i, e in enumerate(events, start=1):
            token = _CURRENT.set(e.id)  # as `provider.event(e.id)`, without a context manager per event
            try:
                out.append(await agent.process(e, dry_run=True))
            finally:
                _CURRENT.reset(token)
            if tick is not None:
                tick()
            if i % FREEZE_EVERY == 0:
                gc.freeze()
                froze = True
    finally:
        if froze:
            gc.unfreeze()
    return out


# --------------------------------------------------------------------------- state at a point in time

def _intake_at(row: sqlite3.Row, at: str, closed_stages: Mapping[str, Collection[str]] | None,
               known_closed: set[tuple[str, str]]) -> tuple[str | None, bool, list[tuple[str, str]]]:
    """(assignee, open, [(user, when given it)]) of an intake as it stood at `at`, from its history."""
    pipeline, stage, assignee = row["pipeline"], row["stage"], row["assignee"]
    closed = bool(row["closed"])
    given: list[tuple[str, str]] = []
    history = [h for h in json.loads(row["history"]) if isinstance(h, dict) and str(h.get("at", "")) < at]
    if history:
        for h in history:
            if h.get("what") == "assigned":
                pipeline = h.get("pipeline", pipeline)
            new = h.get("assignee")
            if new and (h.get("what") == "assigned" or new != h.get("from_assignee")):
                given.append((new, h["at"]))
            stage, assignee = h.get("stage", stage), new
        if closed_stages is not None:
            closed = stage in closed_stages.get(pipeline, ())
        elif (pipeline, stage) != (row["pipeline"], row["stage"]):
            closed = (pipeline, stage) in known_closed
    return assignee, not closed, given


def state_at(db_path: Path, org: str, at: datetime, *,
             closed_stages: Mapping[str, Collection[str]] | None = None) -> StaticState:
    """`org`'s loads and calendars as they stood at `at` (timezone-aware), read-only: open intakes per
    assignee (created before `at`, in an open stage at `at` per their history), when each user was last given
    one, and the calendar events created before `at` and not cancelled by then (a cancelled event's
    `updated_at` is its cancel time). `closed_stages` (pipeline → stages, `Pipeline.closed_stages`) says which
    stages are finished; without it, a stage is closed if some intake in it is marked closed now.
    Times of events moved after `at` are their current times: the log keeps no earlier ones."""
    t = _bound(at, "at")

    def query(conn: sqlite3.Connection) -> tuple[list[sqlite3.Row], list[sqlite3.Row], set[tuple[str, str]]]:
        intakes = list(conn.execute(
            "SELECT pipeline, stage, assignee, closed, history FROM intakes WHERE org = ? AND created_at < ?",
            (org, t)))
        calendar = list(conn.execute(
            "SELECT id, host, title, start_at, end_at, attendees FROM calendar_events WHERE org = ? "
            "AND created_at < ? AND (status != 'cancelled' OR updated_at >= ?) ORDER BY start_at, id", (org, t, t)))
        known = {(r[0], r[1]) for r in conn.execute(
            "SELECT DISTINCT pipeline, stage FROM intakes WHERE org = ? AND closed = 1", (org,))}
        return intakes, calendar, known

    intakes, calendar, known_closed = read_only(Path(db_path), query)
    loads: dict[str, int] = {}
    last_assigned: dict[str, datetime] = {}
    for row in intakes:
        assignee, is_open, given = _intake_at(row, t, closed_stages, known_closed)
        if assignee and is_open:
            loads[assignee] = loads.get(assignee, 0) + 1
        for user, stamp in given:
            when = _parse_iso(stamp)
            if user not in last_assigned or when > last_assigned[user]:
                last_assigned[user] = when
    busy = [Busy(host=r["host"], start=_parse_iso(r["start_at"]), end=_parse_iso(r["end_at"]), title=r["title"],
                 id=r["id"], attendees=tuple(a.get("email", "") if isinstance(a, dict) else str(a)
                                             for a in json.loads(r["attendees"])))
            for r in calendar]
    return StaticState(calendar=busy, loads=loads, last_assigned=last_assigned)
