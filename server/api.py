"""/api/agent/*: process, decisions, approvals, analytics, config, simulate, the inbox; and /healthz, /metrics.

Every route is scoped to the API key's org: an id of another org's decision or event answers 404, exactly as an
id that does not exist.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, get_args

from aiohttp import web
from pydantic import BaseModel, ValidationError

from adapters.bullmq_queue import QueueUnavailable
from adapters.replay import ReplayProvider, replay_decisions, replay_stage
from engine.agent import Agent, UnknownOrg
from engine.compare import Side, compare, prompt_chars
from engine.config import DecisionType, Intent, Source
from engine.evaluation import rule_precision_from_labels
from engine.models import DOOR, DecidedBy, Decision, Event, Status
from engine.rules import CompiledRules
from engine.simulator import summarize
from engine.templates import event_summary
from server import configs
from server.app import METRICS, REGISTRY, SERVICE, SETTINGS, STORE, principal
from server.cursors import cursors
from server.cursors import setup as cursors_setup
from server.door import load_json
from server.errors import ApiError, invalid
from server.metrics import operator_request, require_operator
from server.schemas import (
    AcceptedOut,
    ConfigUpdate,
    DbTrigger,
    EventIn,
    Rejection,
    Review,
    Rollback,
    SimulateRequest,
)

M = TypeVar("M", bound=BaseModel)
SIMULATE_SLICE = 8
"""Events a simulate request decides before it gives the event loop back (about 0.5 ms each)."""
MODES = ("auto", "sync", "queue", "dry_run")


async def read_json(request: web.Request, model: type[M], *, optional: bool = False) -> M:
    """The request body validated as `model`; 415/400/422 naming what is wrong."""
    if not request.can_read_body:
        if optional:
            return model()
        raise ApiError(400, "bad_request", "a JSON body is required")
    if request.content_type not in ("application/json", "text/json") and not request.content_type.endswith("+json"):
        raise ApiError(415, "unsupported_media_type",
                       f"send Content-Type: application/json, not {request.content_type or 'nothing'}")
    raw = await request.read()
    load_json(raw)  # depth, numbers and text checked before pydantic reads it (server/door.py)
    try:
        # Strict JSON types: lax mode would take `"occurred_at": 0` as Unix time and `"past": true` as 1.
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise invalid(exc) from None


def to_json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response (pydantic models and datetimes included), ending with a newline as a text answer should
    (a shell prompt after `curl` starts on its own line)."""
    text = data.model_dump_json() if isinstance(data, BaseModel) else json.dumps(data, default=_default)
    return web.Response(text=text + "\n", status=status, content_type="application/json", headers=headers)


def _default(o: Any) -> Any:
    if isinstance(o, BaseModel):
        return o.model_dump(mode="json")
    if isinstance(o, datetime):
        return o.isoformat()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def event_from(body: EventIn, org: str) -> Event:
    """The envelope for the key's org; a body naming another org is refused."""
    if body.org is not None and body.org != org:
        raise ApiError(403, "forbidden_org", f"this API key belongs to org '{org}', not '{body.org}'",
                       {"field": "org"})
    fields = body.model_dump(exclude_none=True, exclude={"org"})
    try:
        return Event.model_validate({**fields, "org": org}, context=DOOR)
    except ValidationError as exc:
        raise invalid(exc, "event") from None


def loaded(request: web.Request, org: str) -> CompiledRules:
    """The org's active compiled rules; 409 org_not_loaded (with its configuration errors) when it has none."""
    compiled = request.app[REGISTRY].get(org)
    if compiled is None:
        state = request.app[REGISTRY].state(org)
        details = [configs.tenant_text(str(e), request.app[REGISTRY]) for e in state.errors] if state else []
        raise ApiError(409, "org_not_loaded", f"org '{org}' has no valid configuration loaded", details)
    return compiled


# ---- process --------------------------------------------------------------------------------------------

async def submit(request: web.Request, event: Event, *, mode: str, channel: str,
                 signature: str | None = None) -> web.Response:
    """Accept an event and answer per `mode`: 200 with the decision (sync, dry_run, urgent in auto) or 202."""
    app = request.app
    service = app[SERVICE]
    loaded(request, event.org)
    if mode == "dry_run":
        t0 = time.perf_counter()
        decision = await service.agent.process(event, dry_run=True)
        app[METRICS].observe_decision(decision, "dry_run", time.perf_counter() - t0)
        return to_json(decision)
    if mode == "auto":
        try:
            priority = service.agent.triage(event)
        except UnknownOrg as exc:
            raise ApiError(409, "org_not_loaded", str(exc)) from None
        mode = "sync" if priority >= 5 else "queue"
    else:
        priority = 3
    try:
        acc = await service.accept(event, channel=channel, priority=priority, lease=(mode == "sync"),
                                   signature=signature)
    except QueueUnavailable as exc:
        raise ApiError(503, "unavailable", "the queue (Redis) is unavailable: the event is stored and will be "
                       "decided once it is back; repeating this request with the same event id is safe",
                       {"event_id": event.id, "cause": str(exc)}) from None
    if acc.status == "replayed":
        raise ApiError(409, "replayed_signature", "this exact signed request was already received; a new "
                       "delivery needs a new signature", {"event_id": None, "status": None, "decision_id": None})
    if not acc.new:
        return await _duplicate(request, event, acc.status, acc.decision_id, mode)
    if mode == "queue":
        return to_json(AcceptedOut(event_id=event.id, status="accepted", duplicate=False, mode="queue"), 202)
    decision = await service.decide_now(event)
    if decision is None:  # failed: the event stays in the inbox and is retried
        info = await app[STORE].event_info(event.org, event.id)
        return to_json(AcceptedOut(event_id=event.id, status=info["status"] if info else "accepted",
                                   duplicate=False, mode="sync"), 202)
    return to_json(decision, headers={"X-Astralis-Mode": "sync"})


async def _duplicate(request: web.Request, event: Event, status: str, decision_id: str | None,
                     mode: str) -> web.Response:
    """A repeated delivery: the original event's answer, nothing new written."""
    if decision_id is not None and mode == "sync":
        decision = await request.app[STORE].get_decision(event.org, decision_id)
        if decision is not None:
            return to_json(decision, headers={"X-Astralis-Duplicate": "true", "X-Astralis-Mode": "sync"})
    code = 202 if status in ("accepted", "processing") else 200
    return to_json(AcceptedOut(event_id=event.id, status=status, duplicate=True, decision_id=decision_id, mode=mode),
                   code, headers={"X-Astralis-Duplicate": "true"})


def _mode(request: web.Request) -> str:
    mode = request.query.get("mode", "auto")
    if mode not in MODES:
        raise ApiError(400, "bad_request", f"mode must be one of {', '.join(MODES)}, not {mode!r}", {"field": "mode"})
    return mode


async def process(request: web.Request) -> web.Response:
    """POST /api/agent/process?mode=auto|sync|queue|dry_run"""
    mode = _mode(request)
    body = await read_json(request, EventIn)
    return await submit(request, event_from(body, principal(request).org), mode=mode, channel="api")


def _noun(table: str) -> str:
    """The event-type noun of a table: a plural's final s dropped ("intakes" → "intake"); digits, which a table
    name may have and an event type may not, as "_"."""
    noun = table[:-1] if len(table) > 1 and table.endswith("s") else table
    return re.sub(r"[^a-z_]", "_", noun)[:55]  # an event type is at most 64 characters, ":inserted" included


def db_trigger_event(org: str, body: DbTrigger) -> Event:
    """The DB_TRIGGER event of a row change (`<table>:<inserted|updated|deleted>` unless the change names its
    type); ValidationError when it makes no valid event."""
    verb = {"INSERT": "inserted", "UPDATE": "updated", "DELETE": "deleted"}[body.operation]
    data = {**body.row, "db": {"table": body.table, "operation": body.operation, "old_row": body.old_row}}
    fields: dict[str, Any] = {"org": org, "source": Source.DB_TRIGGER, "type": body.type or f"{_noun(body.table)}:{verb}",
                              "data": data, "occurred_at": body.occurred_at, "id": body.id}
    return Event.model_validate({k: v for k, v in fields.items() if v is not None}, context=DOOR)


async def db_trigger(request: web.Request) -> web.Response:
    """POST /api/agent/db-trigger: a row change from the host platform, as a DB_TRIGGER event (queued)."""
    body = await read_json(request, DbTrigger)
    try:
        event = db_trigger_event(principal(request).org, body)
    except ValidationError as exc:
        raise invalid(exc, "event") from None
    return await submit(request, event, mode=_mode(request) if "mode" in request.query else "queue",
                        channel="db_trigger")


# ---- decisions ------------------------------------------------------------------------------------------

def _multi(request: web.Request, name: str, allowed: tuple[str, ...]) -> list[str] | None:
    values = [v for raw in request.query.getall(name, []) for v in raw.split(",")]
    for v in values:
        if v not in allowed:  # a misspelt filter would otherwise match nothing, silently
            raise ApiError(400, "bad_request", f"{name}: one of {', '.join(allowed)}, not {v!r}", {"field": name})
    return values or None


def _time(request: web.Request, name: str, *, clamp: bool = False) -> datetime | None:
    """The query parameter `name` as an aware datetime (400 naming it when unreadable). Outside years 1–9999:
    400, or with `clamp` the nearest end (a window beyond what can be stored means "unbounded")."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        dt = datetime.fromisoformat(raw.upper().replace("Z", "+00:00"))  # RFC 3339 allows "t" and "z" too
    except ValueError:
        raise ApiError(400, "bad_request", f"{name}: not an ISO-8601 time: {raw!r}", {"field": name}) from None
    if dt.tzinfo is None:
        raise ApiError(400, "bad_request", f"{name}: needs a UTC offset, e.g. 2026-12-08T10:00:00Z", {"field": name})
    if clamp:
        try:
            return min(max(dt, _EARLIEST), _LATEST)
        except OverflowError:
            return _EARLIEST if dt.year < 5000 else _LATEST
    if not _EARLIEST <= dt <= _LATEST:  # beyond, converting to UTC (or a day's arithmetic) overflows
        raise ApiError(400, "bad_request", f"{name}: out of range: {raw!r}", {"field": name})
    return dt


_EARLIEST, _LATEST = datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 30, tzinfo=UTC)


def _digits(raw: str) -> bool:
    """ASCII digits only: str.isdigit() also takes "²", which int() refuses."""
    return raw.isascii() and raw.isdigit()


def rowid_cursor(request: web.Request, kind: str) -> int | None:
    """The `cursor` query parameter of a rowid-paged listing (`kind`: events, intakes, actions, notifications):
    the `next_cursor` of a previous page of the same org's same listing, opened (`server.cursors`); 400 for
    anything else, another org's cursor included."""
    cursor = request.query.get("cursor")
    if cursor is None:
        return None
    rowid = cursors(request.app).open(principal(request).org, kind, cursor)
    if rowid is None:
        raise ApiError(400, "bad_request", f"cursor: not a next_cursor of this {kind} listing", {"field": "cursor"})
    return rowid


def next_cursor(request: web.Request, kind: str, rowid: int | None) -> str | None:
    """The opaque `next_cursor` of a rowid-paged listing (None at the end): reveals nothing of other orgs."""
    return cursors(request.app).seal(principal(request).org, kind, rowid) if rowid is not None else None


def _int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _digits(raw) or not lo <= int(raw) <= hi:
        raise ApiError(400, "bad_request", f"{name}: an integer from {lo} to {hi}, not {raw!r}", {"field": name})
    return int(raw)


def _public(d: Decision) -> dict[str, Any]:
    out = d.model_dump(mode="json")
    out.pop("trace", None)
    return out


async def list_decisions(request: web.Request) -> web.Response:
    """GET /api/agent/decisions?status=&intent=&decision_type=&source=&decided_by=&since=&until=&limit=&cursor=
    &include=event (adds `events`: each decision's event as sender, subject and first lines, by event id)
    &order=newest|oldest (the approvals inbox works from the oldest)."""
    org = principal(request).org
    include, order = request.query.get("include"), request.query.get("order", "newest")
    if include not in (None, "event"):
        raise ApiError(400, "bad_request", f"include: event, not {include!r}", {"field": "include"})
    if order not in ("newest", "oldest"):
        raise ApiError(400, "bad_request", f"order: newest or oldest, not {order!r}", {"field": "order"})
    try:
        page, cursor = await request.app[STORE].list_decisions(
            org, status=_multi(request, "status", get_args(Status)), intent=_multi(request, "intent", tuple(Intent)),
            decision_type=_multi(request, "decision_type", tuple(DecisionType)),
            source=_multi(request, "source", tuple(Source)),
            decided_by=_multi(request, "decided_by", get_args(DecidedBy)),
            since=_time(request, "since"), until=_time(request, "until"),
            limit=_int(request, "limit", 50, 1, 500), cursor=request.query.get("cursor"),
            oldest_first=order == "oldest")
    except ValueError as exc:
        raise ApiError(400, "bad_request", str(exc), {"field": "cursor"}) from None
    out: dict[str, Any] = {"decisions": [_public(d) for d in page], "next_cursor": cursor}
    if include == "event":
        envelopes = await request.app[STORE].envelopes(org, [d.event_id for d in page])
        out["events"] = {i: event_summary(e.get("data") or {}) for i, e in envelopes.items()}
    return to_json(out)


async def get_decision(request: web.Request) -> web.Response:
    """GET /api/agent/decisions/{id}: the decision with its whole trace and its outbox actions."""
    org = principal(request).org
    decision = await request.app[STORE].get_decision(org, request.match_info["id"])
    if decision is None:
        raise ApiError(404, "not_found", f"no decision {request.match_info['id']!r}")
    out = decision.model_dump(mode="json")
    out["outbox"] = await request.app[STORE].list_actions(org, decision.id)
    return to_json(out)


async def _review(request: web.Request, verdict: str) -> web.Response:
    p = principal(request)
    body: Review | Rejection
    if verdict == "approve":
        body = await read_json(request, Review, optional=True)
        note = body.note
    else:
        body = await read_json(request, Rejection)
        note = body.reason
    decision_id = request.match_info["id"]
    decision, outcome = await request.app[STORE].resolve_decision(
        p.org, decision_id, verdict, body.by or p.name, note)  # type: ignore[arg-type]
    if outcome == "missing" or decision is None:
        raise ApiError(404, "not_found", f"no decision {decision_id!r}")
    if outcome == "conflict":
        raise ApiError(409, "not_awaiting_approval",
                       f"decision {decision_id} is {decision.status}, not awaiting approval",
                       {"status": decision.status, "review": decision.trace.get("review")})
    if outcome == "done":
        await request.app[SERVICE].notify()
    return to_json(decision, headers={"X-Astralis-Repeat": "true"} if outcome == "repeat" else None)


async def approve(request: web.Request) -> web.Response:
    """POST /api/agent/decisions/{id}/approve: the held actions go to the outbox, once."""
    return await _review(request, "approve")


async def reject(request: web.Request) -> web.Response:
    """POST /api/agent/decisions/{id}/reject: recorded with who and why; the actions never run."""
    return await _review(request, "reject")


# ---- analytics ------------------------------------------------------------------------------------------

async def analytics(request: web.Request) -> web.Response:
    """GET /api/agent/analytics?since=&until= (default: the last 24 hours)."""
    until = _time(request, "until") or datetime.now(UTC)
    since = _time(request, "since") or until - timedelta(hours=24)
    if since >= until:
        raise ApiError(400, "bad_request", "since must be before until", {"field": "since"})
    org = principal(request).org
    report = await request.app[STORE].analytics(org, since, until)
    # what people said of the rules' answers in the window (approvals and corrections)
    labels = [lab for lab in await request.app[STORE].list_labels(org, since=since)
              if lab["at"] < until.isoformat()]
    report["rule_precision"] = rule_precision_from_labels(labels)
    compiled = request.app[REGISTRY].get(org)
    llm = report.get("llm")
    if compiled is not None and isinstance(llm, dict):
        # An estimate at the prices of the policy's current model (its `llm.prices` table).
        settings = compiled.bundle.policy.llm
        price = settings.prices.get(settings.model)
        llm["model"] = settings.model
        llm["cost_usd"] = None if price is None else round(
            llm["input_tokens"] * price.input_per_million / 1e6 + llm["output_tokens"] * price.output_per_million / 1e6, 6)
    return to_json(report)


# ---- config ---------------------------------------------------------------------------------------------

async def get_config(request: web.Request) -> web.Response:
    """GET /api/agent/config: the org's files, active revision and outstanding errors."""
    return to_json(await configs.describe(request.app, principal(request).org))


async def update_config(request: web.Request) -> web.Response:
    """POST /api/agent/config: validated exactly like `astralis validate`; a bad update changes nothing (422).
    The change is recorded with the API key's name."""
    body = await read_json(request, ConfigUpdate)
    p = principal(request)
    return to_json(await configs.update(request.app, p.org, body, by=p.name))


async def validate_config(request: web.Request) -> web.Response:
    """POST /api/agent/config/validate: the errors and warnings of proposed files, each with its file and line;
    nothing is applied."""
    body = await read_json(request, ConfigUpdate)
    return to_json(await configs.validate(request.app, principal(request).org, body))


async def config_history(request: web.Request) -> web.Response:
    """GET /api/agent/config/history: saved revisions, latest first, with who changed them and the diffs."""
    return to_json(await configs.history(request.app, principal(request).org))


async def rollback_config(request: web.Request) -> web.Response:
    """POST /api/agent/config/rollback `{"revision"}`: that saved revision's files, applied like an update."""
    body = await read_json(request, Rollback)
    p = principal(request)
    return to_json(await configs.rollback(request.app, p.org, body.revision, by=f"{p.name} (rollback)"))


# ---- simulate -------------------------------------------------------------------------------------------

async def simulate(request: web.Request) -> web.Response:
    """POST /api/agent/simulate: decisions for events without side effects, against the active or a
    proposed configuration."""
    org = principal(request).org
    body = await read_json(request, SimulateRequest)
    if (body.events is None) == (body.past is None):
        raise ApiError(422, "invalid", "give either events or past", {"field": "events"})
    if body.past is None and (body.since is not None or body.until is not None):
        raise ApiError(422, "invalid", "since and until select inbox events: give them with past", {"field": "since"})
    for name, value in (("since", body.since), ("until", body.until)):
        if value is not None and value.tzinfo is None:
            raise ApiError(422, "invalid", f"{name}: needs a UTC offset, e.g. 2026-12-08T10:00:00Z", {"field": name})
    store = request.app[STORE]
    replay: ReplayProvider | None = None
    past: dict[str, Decision] = {}
    if body.events is not None:
        events = [event_from(e, org) for e in body.events]
    else:
        rows, _ = await store.list_events(org, limit=body.past or 1, since=body.since, until=body.until)
        events = [Event.model_validate(r["envelope"]) for r in reversed(rows)]
        # Past events are decided with the LLM answers recorded the first time: no provider is called, no cost.
        originals = past = await store.decisions_for_events(org, [e.id for e in events])
        replay = ReplayProvider({e.id: originals[e.id].llm if e.id in originals else None for e in events})
    service = request.app[SERVICE]
    llm = replay_stage(replay) if replay is not None else service.agent.llm
    active = request.app[REGISTRY].get(org)
    if body.config is None:
        compiled = active = loaded(request, org)
    else:
        compiled = await configs.proposed(request.app, org, body.config)

    async def run(rules: Any) -> list[Decision]:
        agent = Agent(lambda o: rules if o == org else None, llm, state=service.agent.state,
                      state_source=service.agent.state_source)
        out: list[Decision] = []
        # A few events at a time, then the loop's turn: 1,000 events decided in one go held every other org's
        # requests for about a second (a dry run with the LLM off never awaits anything).
        for i in range(0, len(events), SIMULATE_SLICE):
            chunk = events[i:i + SIMULATE_SLICE]
            if replay is not None:
                out += await replay_decisions(agent, chunk, replay)
            else:
                out += [await agent.process(e, dry_run=True) for e in chunk]
            await asyncio.sleep(0)
        return out

    decisions = await run(compiled)
    before = await run(active) if body.config is not None and active is not None else None

    def answer() -> str:
        # Pure Python over every decision (prompt sizes, the comparison, JSON): in a thread, where the interpreter
        # gives the event loop its turn every few milliseconds, instead of one long stretch on the loop.
        candidate = Side(decisions, compiled.bundle.policy.llm, _prompt_sizes(compiled, events), compiled.revision)
        baseline = None
        if before is not None:
            # A proposed configuration is compared with the active one over the same events: what would change.
            baseline = Side(before, active.bundle.policy.llm, _prompt_sizes(active, events), active.revision)
        report = compare(candidate, baseline, org=org)
        flipped = {f["event_id"] for f in report.flips}
        return json.dumps({"revision": compiled.revision, "summary": summarize(decisions), "report": report.to_dict(),
                           "decisions": [d.model_dump(mode="json") for d in decisions],
                           # for a person reading the flips: each changed event's words and the past decision it names
                           "events": {e.id: event_summary(e.data) for e in events if e.id in flipped},
                           "past_decisions": {i: d.id for i, d in past.items() if i in flipped}}, default=_default)

    return web.Response(text=await asyncio.to_thread(answer) + "\n", content_type="application/json")


def _prompt_sizes(compiled: Any, events: list[Event]) -> dict[str, int]:
    """For the token estimate of events that would consult the LLM without a recorded answer."""
    return {e.id: prompt_chars(compiled, e) for e in events}


# ---- inbox ----------------------------------------------------------------------------------------------

async def list_events(request: web.Request) -> web.Response:
    """GET /api/agent/events?status=dead: the inbox (dead letters included), newest first."""
    status = request.query.get("status")
    if status is not None and status not in ("accepted", "processing", "decided", "dead"):
        raise ApiError(400, "bad_request", f"status: one of accepted, processing, decided, dead, not {status!r}",
                       {"field": "status"})
    rows, nxt = await request.app[STORE].list_events(principal(request).org, status=status,
                                                     limit=_int(request, "limit", 50, 1, 500),
                                                     before=rowid_cursor(request, "events"))
    return to_json({"events": rows, "next_cursor": next_cursor(request, "events", nxt)})


async def get_event(request: web.Request) -> web.Response:
    """GET /api/agent/events/{id}: status, attempts, error, decision id."""
    info = await request.app[STORE].event_info(principal(request).org, request.match_info["id"])
    if info is None:
        raise ApiError(404, "not_found", f"no event {request.match_info['id']!r}")
    return to_json(info)


async def retry_event(request: web.Request) -> web.Response:
    """POST /api/agent/events/{id}/retry: a dead-lettered event back to the queue."""
    org, event_id = principal(request).org, request.match_info["id"]
    store = request.app[STORE]
    if not await store.retry_event(org, event_id):
        info = await store.event_info(org, event_id)
        if info is None:
            raise ApiError(404, "not_found", f"no event {event_id!r}")
        raise ApiError(409, "not_dead", f"event {event_id} is {info['status']}, not dead-lettered",
                       {"status": info["status"]})
    request.app[SERVICE].wake()
    return to_json(await store.event_info(org, event_id), 202)


# ---- operations -----------------------------------------------------------------------------------------

async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: liveness and readiness (database reachable, every org's rulesets loaded). Anyone gets only
    `{"status": "ok" | "unavailable"}`; the operator token (`server.metrics.operator_request`) gets the checks
    (per-org state, revisions, errors, queue depths)."""
    app = request.app
    detailed = operator_request(request, app[SETTINGS].operator_token)
    checks: dict[str, Any] = {}
    ok = True
    try:
        depth = await asyncio.wait_for(app[STORE].inbox_depth(), 5)
        actions = await asyncio.wait_for(app[STORE].outbox_depth(), 5)
        checks["database"] = {"ok": True, "inbox": depth, "outbox": actions}
    except Exception as exc:
        ok = False
        checks["database"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    registry = app[REGISTRY]
    orgs = {}
    for org in registry.known:
        state = registry.state(org)
        active = state.active if state else None
        # ok (OrgState.ok): loaded AND the last load had no error — a failed hot reload is not ok, though the
        # org is still served from its last good revision.
        orgs[org] = {"ok": state is not None and state.ok, "loaded": active is not None,
                     "revision": active.revision if active else None,
                     "errors": [str(e) for e in state.errors] if state else []}
        ok = ok and orgs[org]["ok"]
    checks["rulesets"] = {"ok": bool(orgs) and all(o["ok"] for o in orgs.values()), "orgs": orgs}
    ok = ok and bool(orgs)
    if not detailed:  # no org ids, counts or revisions for the public
        return to_json({"status": "ok" if ok else "unavailable"}, 200 if ok else 503)
    return to_json({"status": "ok" if ok else "unavailable", "live": True, "ready": ok, "checks": checks},
                   200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format, for the operator only (`server.metrics.require_operator`)."""
    app = request.app
    require_operator(request, app[SETTINGS].operator_token)

    async def refresh() -> None:
        app[METRICS].set_inbox_depth(await app[STORE].inbox_depth())
        app[METRICS].set_outbox_depth(await app[STORE].outbox_depth())

    body, content_type = await app[METRICS].render(refresh)
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = content_type
    return resp


def setup(app: web.Application) -> None:
    """Register the routes of this module."""
    _ = app[SETTINGS]
    cursors_setup(app)
    app.router.add_post("/api/agent/process", process)
    app.router.add_post("/api/agent/db-trigger", db_trigger)
    app.router.add_get("/api/agent/decisions", list_decisions)
    app.router.add_get("/api/agent/decisions/{id}", get_decision)
    app.router.add_post("/api/agent/decisions/{id}/approve", approve)
    app.router.add_post("/api/agent/decisions/{id}/reject", reject)
    app.router.add_get("/api/agent/analytics", analytics)
    app.router.add_get("/api/agent/config", get_config)
    app.router.add_post("/api/agent/config/validate", validate_config)
    app.router.add_get("/api/agent/config/history", config_history)
    app.router.add_post("/api/agent/config/rollback", rollback_config)
    app.router.add_post("/api/agent/config", update_config)
    app.router.add_post("/api/agent/simulate", simulate)
    app.router.add_get("/api/agent/events", list_events)
    app.router.add_get("/api/agent/events/{id}", get_event)
    app.router.add_post("/api/agent/events/{id}/retry", retry_event)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
