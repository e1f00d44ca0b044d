"""POST /api/agent/decisions/{id}/correct: a person says what a decision should have been (engine/corrections.py).
A held decision is approved with the change; an executed one gets its correction recorded and compensating actions
in the outbox (the intake moved and reassigned, the new assignee notified), once: repeating the same correction
changes nothing. Either way the correction is a label of the org, with who and when (GET /api/agent/labels)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from adapters.pipelines import intake_id_for
from engine.config import DecisionType
from engine.corrections import apply, plan_for, problems
from server.api import _int, loaded, read_json, to_json
from server.app import SERVICE, STORE, principal
from server.errors import ApiError
from server.schemas import CorrectionIn


async def correct(request: web.Request) -> web.Response:
    """Correct a decision: approve a held one with the change, or compensate an executed one."""
    p = principal(request)
    body = await read_json(request, CorrectionIn)
    store = request.app[STORE]
    decision_id = request.match_info["id"]
    decision = await store.get_decision(p.org, decision_id)
    if decision is None:
        raise ApiError(404, "not_found", f"no decision {decision_id!r}")
    bundle = loaded(request, p.org).bundle
    found = problems(bundle, body)
    if found:
        raise ApiError(422, "invalid_correction", "; ".join(found), {"problems": found})
    event = await store.get_event(p.org, decision.event_id)
    envelope: dict[str, Any] = (event or {}).get("envelope") or {
        "id": decision.event_id, "org": p.org, "data": {}, **decision.input}
    now = datetime.now(UTC)
    state = await store.snapshot(p.org, now)
    planned = plan_for(bundle, decision, envelope, body, state, now)
    assign = next((a for a in decision.actions if a.type == DecisionType.ASSIGN_PIPELINE), None)
    intake = (intake_id_for(assign.idempotency_key or f"{decision.id}:0", envelope)
              if assign is not None and decision.status == "EXECUTED" else None)
    by = body.by or p.name
    result, outcome = await store.correct_decision(
        p.org, decision_id, lambda d: apply(d, body, by, now, planned=planned, intake=intake, bundle=bundle))
    if result is None or outcome == "missing":
        raise ApiError(404, "not_found", f"no decision {decision_id!r}")
    if outcome == "conflict":
        raise ApiError(409, "not_correctable", f"decision {decision_id} is {result.status}: only a held, executed or "
                       "automatically rejected decision can be corrected",
                       {"status": result.status, "review": result.trace.get("review")})
    if outcome in ("approved", "corrected"):
        await request.app[SERVICE].notify()
    return to_json(result, headers={"X-Astralis-Repeat": "true"} if outcome == "repeat" else None)


async def labels(request: web.Request) -> web.Response:
    """GET /api/agent/labels?limit=: the org's approvals and corrections, oldest first (what the model learns)."""
    org = principal(request).org
    rows = await request.app[STORE].list_labels(org, limit=_int(request, "limit", 1000, 1, 100_000))
    return to_json({"labels": rows})


def setup(app: web.Application) -> None:
    """Register the routes of this module."""
    app.router.add_post("/api/agent/decisions/{id}/correct", correct)
    app.router.add_get("/api/agent/labels", labels)
