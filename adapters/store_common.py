"""What the SQLite and PostgreSQL stores share: everything that is not SQL or driver calls.

`adapters/sqlite_*.py` and `adapters/pg_*.py` answer the same store port with the same values. The Python around
their SQL — time stamps, validation, what a row reads as, what to write, payloads, error messages — lives here,
once, so that the two stay the same by construction; each adapter keeps only its dialect and its driver.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from engine.corrections import label_of
from engine.models import Decision, Event
from engine.ports import ActionJob

T = TypeVar("T")

MAX_PAGE = 500
"""Upper bound of `list_decisions(limit=...)`."""

# ---- time stamps ---------------------------------------------------------------------------------------


def _iso(dt: datetime) -> str:
    """Fixed-width UTC ISO-8601 (sorts as text). A naive datetime is taken to be UTC already."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    dt = dt.astimezone(UTC)
    return f"{dt.year:04d}-" + dt.strftime("%m-%dT%H:%M:%S.%fZ")  # %Y does not zero-pad years before 1000


def _parse_iso(text: str) -> datetime:
    """Inverse of `_iso` (also reads SQLite's millisecond `strftime('%f')` form)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _now() -> str:
    return _iso(datetime.now(UTC))


def _bound(dt: datetime, name: str) -> str:
    if dt.tzinfo is None:
        raise ValueError(f"{name} needs a UTC offset (a timezone-aware datetime)")
    return _iso(dt)


# ---- the store itself: lifecycle, migrations, pages ----------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """One schema step: applied with its version row in a single transaction."""

    version: int
    description: str
    statements: tuple[str, ...]


def check_synchronous(synchronous: str) -> None:
    """ValueError unless `synchronous` is one that both stores understand."""
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError("synchronous must be 'FULL' or 'NORMAL'")


def step_pending(where: str, current: int, step: int, latest: int) -> bool:
    """Whether migration `step` is still to apply to a database at version `current` (`where` names it in
    errors): RuntimeError when the database is newer than this code (`latest`) or has no path to `step`."""
    if current > latest:
        raise RuntimeError(f"{where}: schema version {current} is newer than this code knows ({latest}); "
                           "upgrade Astralis")
    if current >= step:
        return False
    if current != step - 1:
        raise RuntimeError(f"{where}: schema version {current} has no path to {step}")
    return True


def page_limit(limit: int) -> int:
    """A page size within [1, MAX_PAGE]."""
    return max(1, min(limit, MAX_PAGE))


def split_page(rows: Sequence[Any], limit: int, row: Callable[[Any], T]) -> tuple[list[T], int | None]:
    """`rows` (up to `limit` + 1, newest first) as one page and the cursor of the next (a rowid; None at the end)."""
    page = rows[:limit]
    return [row(r) for r in page], (page[-1]["rowid"] if len(rows) > limit else None)


Placeholder = Callable[[list[Any], Any], str]
"""A dialect's placeholder: appends a value to a query's positional arguments and returns what stands for it in
the SQL (`?` for SQLite, `$n` for PostgreSQL)."""


def qmark(args: list[Any], value: Any) -> str:
    """SQLite's placeholder (`?`): append `value` to the query's arguments."""
    args.append(value)
    return "?"


def event_filters(ph: Placeholder, org: str, status: str | None, since: datetime | None,
                  until: datetime | None) -> tuple[list[str], list[Any]]:
    """The conditions and arguments of `list_events`: org, status, received in [since, until)."""
    args: list[Any] = []
    where = [f"org = {ph(args, org)}"]
    if status:
        where.append(f"status = {ph(args, status)}")
    if since is not None:
        where.append(f"received_at >= {ph(args, _bound(since, 'since'))}")
    if until is not None:
        where.append(f"received_at < {ph(args, _bound(until, 'until'))}")
    return where, args


def outbox_filters(ph: Placeholder, org: str, status: str | None) -> tuple[list[str], list[Any]]:
    """The conditions and arguments of `list_outbox`: org and status."""
    args: list[Any] = []
    where = [f"org = {ph(args, org)}"]
    if status:
        where.append(f"status = {ph(args, status)}")
    return where, args


def notification_filters(ph: Placeholder, org: str, user_id: str, unread_only: bool) -> tuple[list[str], list[Any]]:
    """The conditions and arguments of `list_notifications`: a user's, all or only the unread ones."""
    args: list[Any] = []
    where = [f"org = {ph(args, org)}", f"user_id = {ph(args, user_id)}"]
    if unread_only:
        where.append("read_at IS NULL")
    return where, args


class StoreBase:
    """What every store does the same way whatever holds its data: closing as a context manager, and the
    per-org planning snapshots (`adapters.store_planning.SnapshotCache`) that a change drops."""

    def __init__(self) -> None:
        self._closed = False
        self._snapshots: dict[str, tuple[float, datetime, Any]] = {}
        """org → (expires (monotonic), since, the read of its StaticState): planning state, read at most once a
        second per org."""

    async def close(self) -> None:
        """Close the store (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await self._release()

    async def _release(self) -> None:
        """Let go of the store's connections (once)."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        """`async with await Store.open(...) as store:` closes the store on exit."""
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        """Close the store."""
        await self.close()

    def _state_changed(self, org: str) -> None:
        """This process changed `org`'s intakes or calendar: its next plan reads them afresh."""
        self._snapshots.pop(org, None)


# ---- decisions -----------------------------------------------------------------------------------------


def refuse_dry_runs(decisions: Iterable[Decision]) -> None:
    """ValueError for a dry-run decision: the simulator has no side effects, so dry runs are never stored."""
    for d in decisions:
        if d.dry_run:
            raise ValueError(f"decision {d.id} is a dry run; dry runs are never stored")


def decision_params(decision: Decision, now: str) -> tuple[Any, ...]:
    """The values of a decision's row, in column order: id, org, event_id, source (from its input; None lets the
    store take the inbox's), status, intent, decision_type, decided_by, created_at, updated_at (`now`),
    ever_executed, record."""
    return (decision.id, decision.org, decision.event_id, decision.input.get("source"), decision.status,
            str(decision.intent), str(decision.decision_type), decision.decided_by, _iso(decision.created_at), now,
            int(decision.status == "EXECUTED"), decision.model_dump_json())


def check_decision_org(stored_org: str, decision: Decision) -> None:
    """ValueError when the stored decision of this id belongs to another org than `decision`."""
    if stored_org != decision.org:
        raise ValueError(f"decision {decision.id} belongs to another org")


def first_success(decision: Decision, first_insert: bool, ever_executed: Any) -> bool:
    """Whether saving `decision` counts a success: it is EXECUTED and was never saved so before."""
    return decision.status == "EXECUTED" and (first_insert or not ever_executed)


def _encode_cursor(created_at: str, decision_id: str) -> str:
    raw = json.dumps({"c": created_at, "i": decision_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        created_at, decision_id = data["c"], data["i"]
    except (binascii.Error, ValueError, TypeError, KeyError) as err:
        raise ValueError("invalid cursor") from err
    if not isinstance(created_at, str) or not isinstance(decision_id, str):
        raise ValueError("invalid cursor")
    return created_at, decision_id


def decisions_limit(limit: int) -> int:
    """`list_decisions`' page size: ValueError below 1, capped at MAX_PAGE."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    return min(limit, MAX_PAGE)


def filter_values(column: str, value: str | Sequence[str]) -> list[str]:
    """The values of a one-or-many filter on `column`; ValueError when there are none."""
    values = [str(value)] if isinstance(value, str) else [str(v) for v in value]
    if not values:
        raise ValueError(f"{column}: empty filter")
    return values


def decisions_page(rows: Sequence[Any], limit: int) -> tuple[list[Decision], str | None]:
    """`rows` (id, created_at, record; up to `limit` + 1) as a page of decisions and the next cursor."""
    page = rows[:limit]
    decisions = [Decision.model_validate_json(r["record"]) for r in page]
    next_cursor = _encode_cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit else None
    return decisions, next_cursor


def event_record(row: Any) -> dict[str, Any]:
    """`get_event`'s answer from a row of (org, id, envelope, status, error, received_at, updated_at)."""
    return {"org": row["org"], "id": row["id"], "envelope": json.loads(row["envelope"]),
            "status": row["status"], "error": row["error"],
            "received_at": _parse_iso(row["received_at"]), "updated_at": _parse_iso(row["updated_at"])}


def unknown_event(org: str, event_id: str) -> KeyError:
    """The error of a status change for an event the inbox does not have."""
    return KeyError(f"no event {event_id!r} for org {org!r}")


def config_payload(files: Mapping[str, str]) -> str:
    """An agent configuration's files as stored (and compared: the same files give the same text)."""
    return json.dumps(files, sort_keys=True, ensure_ascii=False)


def config_row(r: Any) -> dict[str, Any]:
    """An agent configuration `{org, revision, files, created_at, by}` from its row."""
    return {"org": r["org"], "revision": r["revision"], "files": json.loads(r["files"]),
            "created_at": _parse_iso(r["created_at"]), "by": r["changed_by"]}


def counters_row(row: Any) -> dict[str, int]:
    """An org's counters from its row (total, successful), zeros when it has none."""
    if row is None:
        return {"total_decisions": 0, "successful_decisions": 0}
    return {"total_decisions": int(row[0]), "successful_decisions": int(row[1])}


class AgentConfigs(StoreBase):
    """The latest agent configuration of an org, read through the store's `agent_config_history`."""

    async def agent_config(self, org: str) -> dict[str, Any] | None:
        """`org`'s latest configuration `{org, revision, files, created_at}`, or None."""
        history = await self.agent_config_history(org, limit=1)
        return history[0] if history else None

    async def agent_config_history(self, org: str, *, limit: int = 50) -> list[dict[str, Any]]:
        """`org`'s configurations, latest first, in the shape of `agent_config`."""
        raise NotImplementedError


# ---- inbox -----------------------------------------------------------------------------------------------

AWAITING = ("REQUIRES_APPROVAL", "PENDING")
"""Statuses of a decision held for a person: needs approval, or held by a rate limit."""

SIGNATURE_MEMORY_SECONDS = 900
"""How long webhook signatures are remembered: longer than twice the ±300 s timestamp tolerance."""

INBOX_STATUSES = ("accepted", "processing", "decided", "dead")
OUTBOX_STATUSES = ("pending", "running", "done", "dead", "cancelled")


@dataclass(frozen=True)
class InboxItem:
    """An event to accept into the inbox, with its queue priority, channel and (sync mode) lease owner."""

    event: Event
    priority: int = 3
    channel: str = "api"
    lease_owner: str | None = None
    lease_seconds: float = 60.0
    signature: str | None = None
    """Digest of a webhook's signed content: a second request with the same one is a replay."""


@dataclass(frozen=True)
class Accepted:
    """What the inbox did with one event: `new` False means a duplicate (status/decision of the original)."""

    org: str
    id: str
    new: bool
    status: str
    decision_id: str | None


@dataclass(frozen=True)
class Claimed:
    """An event leased to a worker, with how many times it has been claimed (this claim included)."""

    event: Event
    attempts: int
    channel: str | None


def accept_values(it: InboxItem, now_dt: datetime) -> list[Any]:
    """The new inbox row of `it`: org, id, source, type, envelope, status, priority, channel, attempts,
    lease_owner, lease_until (an item with a lease owner is written already claimed)."""
    return [it.event.org, it.event.id, str(it.event.source), it.event.type, it.event.model_dump_json(),
            "processing" if it.lease_owner else "accepted", it.priority, it.channel,
            1 if it.lease_owner else 0, it.lease_owner,
            _iso(now_dt + timedelta(seconds=it.lease_seconds)) if it.lease_owner else None]


def accepted_new(it: InboxItem) -> Accepted:
    """What accepting `it` did when it was new."""
    return Accepted(it.event.org, it.event.id, True, "processing" if it.lease_owner else "accepted", None)


def claimed(r: Any) -> Claimed:
    """A claimed event from its row (envelope, attempts, channel)."""
    return Claimed(Event.model_validate_json(r["envelope"]), int(r["attempts"]), r["channel"])


def failed_status(row: Any, owner: str, max_attempts: int) -> tuple[bool, str]:
    """For `fail_event`, from the event's row (attempts, status, lease_owner; None when absent): whether `owner`
    still holds it, and the status it gets (or has, when not held)."""
    if row is None or row["status"] != "processing" or row["lease_owner"] != owner:
        return False, row["status"] if row is not None else "missing"
    return True, "dead" if row["attempts"] >= max_attempts else "accepted"


def status_counts(statuses: Sequence[str], rows: Iterable[Any]) -> dict[str, int]:
    """How many there are in each status, from rows of (status, count); every one of `statuses` appears."""
    counts = dict.fromkeys(statuses, 0)
    counts.update({r[0]: int(r[1]) for r in rows})
    return counts


def _kind(decision: Decision) -> str:
    return {"EXECUTED": "executed", "REQUIRES_APPROVAL": "awaiting_approval", "PENDING": "awaiting_approval",
            "FAILED": "failed", "REJECTED": "rejected"}[decision.status]


def stream_payload(decision: Decision, kind: str, new: bool) -> str:
    """A stream entry's payload. The decision is serialised once, by pydantic, and spliced in (not dumped to a
    dict and encoded again)."""
    return f'{{"kind": {json.dumps(kind)}, "new": {json.dumps(new)}, "decision": {decision.model_dump_json()}}}'


def action_values(decision: Decision, base: int = 0) -> list[tuple[str, str, str, int, str, str]]:
    """The outbox rows of an executed decision: key, org, decision_id, idx (from `base`), type, params."""
    return [(a.idempotency_key or f"{decision.id}:{i}", decision.org, decision.id, base + i, str(a.type),
             json.dumps(a.params, default=str)) for i, a in enumerate(decision.actions)]


Review = Literal["missing", "repeat", "conflict", "approved", "rejected"]


def review_decision(record: str | None, verdict: Literal["approve", "reject"], by: str,
                    note: str | None) -> tuple[Decision | None, Review, str]:
    """Apply a reviewer's verdict to a stored decision (its JSON `record`; None when there is none): the decision,
    what to do, and the time stamp to write with it. "missing", "repeat" (the same verdict was given before) and
    "conflict" (not awaiting approval) leave it unchanged; "approved" (now EXECUTED: its actions go to the outbox)
    and "rejected" (REJECTED) are the decision to save and the stream entry's kind."""
    if record is None:
        return None, "missing", ""
    decision = Decision.model_validate_json(record)
    review = decision.trace.get("review") or {}
    if review.get("verdict") == verdict:
        return decision, "repeat", ""
    if decision.status not in AWAITING:
        return decision, "conflict", ""
    now_dt = datetime.now(UTC)
    decision.trace["review"] = {"verdict": verdict, "by": by, "note": note, "at": now_dt.isoformat(),
                                "previous_status": decision.status}
    if verdict == "approve":
        decision.status = "EXECUTED"
        decision.executed_at = now_dt
        return decision, "approved", _iso(now_dt)
    decision.status = "REJECTED"
    return decision, "rejected", _iso(now_dt)


class DecisionFlows(StoreBase):
    """Recording decisions of inbox events and reviewers' verdicts, each in one write transaction of the store; the
    store supplies the SQL through the `_dec_*` methods (each runs inside that transaction, on its connection)."""

    _write: Callable[[], AbstractAsyncContextManager[Any]]

    async def _dec_lock_events(self, db: Any, keys: list[tuple[str, str]]) -> None:
        """Lock the inbox rows of `keys` (sorted) until the transaction ends (nothing to do where one writer at a
        time is let in)."""

    async def _dec_inbox_state(self, db: Any, org: str, event_id: str) -> tuple[bool, str | None]:
        """Whether the inbox has the event, and the record of its decision when it is decided already."""
        raise NotImplementedError

    async def _dec_mark_decided(self, db: Any, decision: Decision, now: str) -> None:
        raise NotImplementedError

    async def _dec_review_record(self, db: Any, org: str, decision_id: str) -> str | None:
        """The record of `org`'s decision (locked until the transaction ends), or None."""
        raise NotImplementedError

    async def _dec_save(self, db: Any, decision: Decision) -> None:
        raise NotImplementedError

    async def _dec_actions(self, db: Any, decision: Decision, now: str, *, base: int = 0) -> None:
        raise NotImplementedError

    async def _dec_stream(self, db: Any, decision: Decision, kind: str, *, new: bool, now: str) -> None:
        raise NotImplementedError

    async def _dec_label(self, db: Any, label: dict[str, Any]) -> None:
        """Record a label (an approval or a correction), with the event's envelope from the inbox when it is
        still there; a label already recorded (same org and id) is left alone."""
        raise NotImplementedError

    async def _labels(self, org: str, since: str | None, limit: int) -> list[dict[str, Any]]:
        """`org`'s labels, oldest first (each with `decided` and `envelope` parsed)."""
        raise NotImplementedError

    async def list_labels(self, org: str, *, since: datetime | None = None, limit: int = 100_000) -> list[dict[str, Any]]:
        """The labels of one org only (labels never cross orgs): approvals and corrections, oldest first."""
        return await self._labels(org, _bound(since, "since") if since is not None else None, limit)

    async def correct_decision(self, org: str, decision_id: str,
                               apply: Callable[[Decision], Any]) -> tuple[Decision | None, str]:
        """Apply a correction to `org`'s decision in one transaction. `apply(decision)` (pure; see
        `engine.corrections.apply`) returns a result with the decision, the outcome — "approved" (a held
        decision, now EXECUTED with its corrected actions), "corrected" (an executed one: compensating
        actions), "repeat" (the same correction again: nothing written) or "conflict" —, the actions for the
        outbox and the label. Returns (decision, outcome); outcome "missing" when there is no such decision."""
        async with self._write() as db:
            record = await self._dec_review_record(db, org, decision_id)
            if record is None:
                return None, "missing"
            result = apply(Decision.model_validate_json(record))
            if result.outcome not in ("approved", "corrected"):
                return result.decision, result.outcome
            now = _now()
            await self._dec_save(db, result.decision)
            if result.actions:
                await self._dec_outbox(db, result.decision, result.actions, now)
            if result.label is not None:
                await self._dec_label(db, result.label)
            await self._dec_stream(db, result.decision, result.outcome, new=False, now=now)
        return result.decision, result.outcome

    async def _dec_outbox(self, db: Any, decision: Decision, actions: list[Any], now: str) -> None:
        """Put `actions` (with their idempotency keys) of `decision` in the outbox: the corrected plan of an
        approved decision at positions 0.., the compensation of correction n at n*1000 + i."""
        keyed = [a for a in actions if a.idempotency_key]
        fix = [a for a in keyed if ":fix" in a.idempotency_key]
        if not fix:
            await self._dec_actions(db, decision.model_copy(update={"actions": keyed}), now)
            return
        n = int(fix[0].idempotency_key.rsplit(":fix", 1)[1].split(":")[0])
        await self._dec_actions(db, decision.model_copy(update={"actions": fix}), now, base=n * 1000)

    async def complete_event(self, decision: Decision) -> tuple[Decision, bool]:
        """Record the decision of an inbox event, its outbox actions and its stream entry, and mark the event
        decided — all in one transaction. Exactly one decision per event: when the event is already decided
        (another worker got there first after a lease expired), nothing is written and the stored decision
        is returned with False."""
        return (await self.complete_events([decision]))[0]

    async def complete_events(self, decisions: Sequence[Decision]) -> list[tuple[Decision, bool]]:
        """`complete_event` for several decisions in ONE transaction (the workers' group commit). Where writers
        run in parallel, the batch's inbox rows are locked first, in key order (two workers completing overlapping
        batches wait for each other instead of deadlocking); a worker that waited then reads the event as the
        other left it — decided — and writes nothing."""
        refuse_dry_runs(decisions)
        now = _now()
        out: list[tuple[Decision, bool]] = []
        async with self._write() as db:
            await self._dec_lock_events(db, sorted({(d.org, d.event_id) for d in decisions}))
            for decision in decisions:
                in_inbox, decided = await self._dec_inbox_state(db, decision.org, decision.event_id)
                if decided:
                    out.append((Decision.model_validate_json(decided), False))
                    continue
                await self._dec_save(db, decision)
                if decision.status == "EXECUTED":
                    await self._dec_actions(db, decision, now)
                if in_inbox:
                    await self._dec_mark_decided(db, decision, now)
                await self._dec_stream(db, decision, _kind(decision), new=True, now=now)
                out.append((decision, True))
        return out

    async def resolve_decision(self, org: str, decision_id: str, verdict: Literal["approve", "reject"],
                               by: str, note: str | None) -> tuple[Decision | None, str]:
        """Approve (status EXECUTED, actions into the outbox) or reject (REJECTED, nothing runs) a decision
        awaiting approval, in one transaction. Returns (decision, outcome): outcome is "done", "repeat" (the
        same verdict was already given: nothing changes), "conflict" (not awaiting approval) or "missing".
        The decision's row is locked first (where writers run in parallel): of two reviewers at once, the second
        sees the first's verdict."""
        async with self._write() as db:
            record = await self._dec_review_record(db, org, decision_id)
            decision, outcome, now = review_decision(record, verdict, by, note)
            if decision is None or outcome not in ("approved", "rejected"):
                return decision, outcome
            await self._dec_save(db, decision)
            if outcome == "approved":
                await self._dec_actions(db, decision, now)
                # a person confirmed what was decided: a label for the org model
                await self._dec_label(db, label_of(decision, "approval", by, note, now, intent=str(decision.intent),
                                                   priority=decision.priority))
            await self._dec_stream(db, decision, outcome, new=False, now=now)
        return decision, "done"


def common_label(r: Any) -> dict[str, Any]:
    """A label row as plain data (both stores' rows read alike)."""
    out = {k: r[k] for k in ("org", "id", "decision_id", "event_id", "kind", "intent", "priority", "pipeline",
                             "assignee", "by", "note", "at")}
    out["decided"] = json.loads(r["decided"])
    out["envelope"] = json.loads(r["envelope"]) if r["envelope"] else None
    return out


def event_row(r: Any) -> dict[str, Any]:
    """An inbox event as the API shows it."""
    return {"id": r["id"], "org": r["org"], "source": r["source"], "type": r["type"], "status": r["status"],
            "channel": r["channel"], "priority": r["priority"], "attempts": r["attempts"], "error": r["error"],
            "decision_id": r["decision_id"], "received_at": r["received_at"], "updated_at": r["updated_at"],
            "envelope": json.loads(r["envelope"])}


def api_key_row(row: Any) -> dict[str, Any] | None:
    """An active API key `{id, org, name}` from its row (None when there is none)."""
    return {"id": row["id"], "org": row["org"], "name": row["name"]} if row is not None else None


def _percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p90/p99 (nearest rank) of sorted `values`; None when there are none."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    n = len(values)

    def rank(p: float) -> float:
        return round(values[min(n - 1, max(0, int(p * n + 0.999999) - 1))], 3)

    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": round(values[-1], 3)}


ANALYTICS_COLUMNS = ("status", "intent", "decision_type", "source", "decided_by")
"""The decision columns `analytics` counts by."""


def analytics_report(org: str, since: datetime, until: datetime, *, counts: dict[str, dict[str, int]],
                     totals: Sequence[Any], latencies: list[float], llm_latencies: list[float],
                     reviews: Sequence[Any]) -> dict[str, Any]:
    """`analytics`' answer from what the store read: counts per column of ANALYTICS_COLUMNS, the totals (count,
    LLM calls, input and output tokens), sorted latencies and the reviews (created_at, reviewed at, verdict)."""
    total, llm_calls, tokens_in, tokens_out = (int(v or 0) for v in totals)
    turnaround = sorted((_parse_iso(r[1]) - _parse_iso(r[0])).total_seconds() for r in reviews)
    return {
        "org": org, "since": since.isoformat(), "until": until.isoformat(), "total": total,
        "by_status": counts["status"], "by_intent": counts["intent"],
        "by_decision_type": counts["decision_type"], "by_source": counts["source"],
        "by_decided_by": counts["decided_by"],
        "llm": {"calls": llm_calls, "call_rate": round(llm_calls / total, 4) if total else 0.0,
                "input_tokens": tokens_in, "output_tokens": tokens_out,
                "latency_ms": _percentiles(llm_latencies)},
        "latency_ms": _percentiles(latencies),
        "approvals": {"reviewed": len(reviews),
                      "approved": sum(1 for r in reviews if r[2] == "approve"),
                      "rejected": sum(1 for r in reviews if r[2] == "reject"),
                      "awaiting": counts["status"].get("REQUIRES_APPROVAL", 0) + counts["status"].get("PENDING", 0),
                      "turnaround_seconds": _percentiles(turnaround)},
    }


# ---- outbox ----------------------------------------------------------------------------------------------

FAILURE_INDEX = -1  # the failure notice runs before (i.e. regardless of) the decision's own actions


def action_jobs(rows: Iterable[Any], records: Mapping[str, Any]) -> list[ActionJob]:
    """Claimed outbox rows as jobs, by decision then index, each with its decision and event (from `records`:
    decision id → a row of record and envelope)."""
    jobs = []
    for r in sorted(rows, key=lambda r: (r["decision_id"], r["idx"])):
        rec = records.get(r["decision_id"])
        decision = Decision.model_validate_json(rec["record"]) if rec else None
        event = json.loads(rec["envelope"]) if rec and rec["envelope"] else None
        jobs.append(ActionJob(key=r["key"], org=r["org"], decision_id=r["decision_id"], index=r["idx"],
                              type=r["type"], params=json.loads(r["params"]), attempt=r["attempts"],
                              decision=decision, event=event))
    return jobs


def done_attempt(now: str, duration_ms: float) -> str:
    """The attempt-log entry (JSON) of an action that succeeded."""
    return json.dumps({"attempt_at": now, "outcome": "done", "ms": round(duration_ms, 1)})


def failed_attempt(now: str, error: str, duration_ms: float, delay_seconds: float) -> str:
    """The attempt-log entry (JSON) of an action that failed and will be retried after `delay_seconds`."""
    return json.dumps({"attempt_at": now, "outcome": "failed", "error": error[:500], "ms": round(duration_ms, 1),
                       "retry_in_s": round(delay_seconds, 3)})


def dead_attempt(now: str, error: str, duration_ms: float | None) -> str:
    """The attempt-log entry (JSON) of an action that was dead-lettered."""
    return json.dumps({"attempt_at": now, "outcome": "dead", "error": error[:500],
                       "ms": round(duration_ms, 1) if duration_ms is not None else None})


def cancelled_reason(action: Any) -> str:
    """Why the later actions of a decision were not run, when `action` (idx, type) was dead-lettered."""
    return f"not run: action {action['idx']} ({action['type']}) failed"


def record_action_failure(decision: Decision, action: Any, key: str, error: str, now: str) -> bool:
    """Note on `decision` that its action `key` (idx, type) was dead-lettered; unless that was the failure notice
    itself (the decision already says why), the decision becomes FAILED and True is returned: queue its notice."""
    decision.trace.setdefault("execution_failures", []).append({"action": key, "error": error, "at": now})
    if action["idx"] == FAILURE_INDEX:
        return False
    decision.status = "FAILED"
    decision.error = f"action {action['idx']} ({action['type']}) failed: {error}"
    return True


def failure_notice(decision: Decision, escalation: dict[str, Any]) -> tuple[str, str, str, int, str]:
    """The outbox row of a decision's failure notice (an ESCALATE action): key, org, decision_id, idx, params."""
    return (f"{decision.id}:failure", decision.org, decision.id, FAILURE_INDEX, json.dumps(escalation, default=str))


def reopen_decision(decision: Decision, idx: int, key: str, by: str, now: str) -> None:
    """`decision` after its dead action `key` (index `idx`) is given fresh attempts by `by`: EXECUTED again
    unless that action was the failure notice."""
    if idx != FAILURE_INDEX and decision.status == "FAILED":
        decision.status = "EXECUTED"
        decision.error = None
    decision.trace.setdefault("action_retries", []).append({"action": key, "by": by, "at": now})


def action_row(r: Any) -> dict[str, Any]:
    """An outbox row as the API shows it."""
    return {"key": r["key"], "decision_id": r["decision_id"], "index": r["idx"], "type": r["type"],
            "params": json.loads(r["params"]), "status": r["status"], "attempts": r["attempts"], "error": r["error"],
            "available_at": r["available_at"], "started_at": r["started_at"], "finished_at": r["finished_at"],
            "duration_ms": r["duration_ms"], "result": json.loads(r["result"]) if r["result"] else None,
            "attempt_log": json.loads(r["attempt_log"]), "created_at": r["created_at"], "updated_at": r["updated_at"]}


# ---- notifications ---------------------------------------------------------------------------------------


def notification_values(row: Mapping[str, Any], action_key: str, now: str) -> tuple[Any, ...]:
    """A notification's row: org, id, user_id, template, subject, body, priority, decision_id, action_key,
    created_at."""
    return (row["org"], row["id"], row["user_id"], row["template"], row["subject"], row["body"],
            int(row.get("priority", 3)), row.get("decision_id"), action_key, now)


def notification_row(r: Any) -> dict[str, Any]:
    """A notification as the API shows it."""
    return {"id": r["id"], "org": r["org"], "user_id": r["user_id"], "template": r["template"],
            "subject": r["subject"], "body": r["body"], "priority": r["priority"], "decision_id": r["decision_id"],
            "action_key": r["action_key"], "created_at": r["created_at"], "read_at": r["read_at"],
            "read": r["read_at"] is not None}
