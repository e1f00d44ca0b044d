"""/api/agent/intakes, /api/agent/pipelines and /api/agent/actions: the pipelines' work items (read, move between
stages), the boards with each user's load, and the outbox (dead-lettered actions and their retry)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from server.api import _int, loaded, next_cursor, read_json, rowid_cursor, to_json
from server.app import SERVICE, STORE, principal
from server.errors import ApiError
from server.schemas import IntakeMove

ACTION_STATUSES = ("pending", "running", "done", "dead", "cancelled")


def _bundle(request: web.Request) -> Any:
    return loaded(request, principal(request).org).bundle


async def list_intakes(request: web.Request) -> web.Response:
    """GET /api/agent/intakes?pipeline=&stage=&assignee=&open=: the org's intakes, newest first."""
    q = request.query
    open_ = q.get("open")
    if open_ is not None and open_ not in ("true", "false"):
        raise ApiError(400, "bad_request", f"open: true or false, not {open_!r}", {"field": "open"})
    intakes, nxt = await request.app[STORE].list_intakes(
        principal(request).org, pipeline=q.get("pipeline"), stage=q.get("stage"), assignee=q.get("assignee"),
        closed=None if open_ is None else open_ == "false", limit=_int(request, "limit", 50, 1, 500),
        before=rowid_cursor(request, "intakes"))
    return to_json({"intakes": [i.to_json() for i in intakes], "next_cursor": next_cursor(request, "intakes", nxt)})


async def get_intake(request: web.Request) -> web.Response:
    """GET /api/agent/intakes/{id}: one intake with its history."""
    intake = await request.app[STORE].get_intake(principal(request).org, request.match_info["id"])
    if intake is None:
        raise ApiError(404, "not_found", f"no intake {request.match_info['id']!r}")
    return to_json(intake.to_json())


async def move_intake(request: web.Request) -> web.Response:
    """POST /api/agent/intakes/{id}/move: another stage (and assignee); raises `pipeline:stage_changed`."""
    p = principal(request)
    body = await read_json(request, IntakeMove)
    store = request.app[STORE]
    intake_id = request.match_info["id"]
    current = await store.get_intake(p.org, intake_id)
    if current is None:
        raise ApiError(404, "not_found", f"no intake {intake_id!r}")
    bundle = _bundle(request)
    pipeline = bundle.org.pipeline(current.pipeline)
    if pipeline is None:
        raise ApiError(409, "unknown_pipeline", f"intake {intake_id} is in pipeline '{current.pipeline}', which the "
                       "org no longer defines")
    if body.stage not in pipeline.stages:
        raise ApiError(422, "invalid", f"stage: '{body.stage}' is not a stage of pipeline '{pipeline.id}' "
                       f"({', '.join(pipeline.stages)})", [{"field": "stage", "message": "unknown stage"}])
    keep = "assignee" not in body.model_fields_set
    if not keep and body.assignee is not None and bundle.org.user(body.assignee) is None:
        raise ApiError(422, "invalid", f"assignee: '{body.assignee}' is not a user of org '{p.org}'",
                       [{"field": "assignee", "message": "unknown user"}])
    moved = await store.move_intake(p.org, intake_id, stage=body.stage, closed=body.stage in pipeline.closed_stages,
                                    assignee=body.assignee, keep_assignee=keep, by=body.by or p.name, note=body.note)
    if moved is None:
        raise ApiError(404, "not_found", f"no intake {intake_id!r}")
    intake, event = moved
    if event is not None:
        request.app[SERVICE].wake()  # the stage change is in the inbox; let the workers decide it
    return to_json({**intake.to_json(), "stage_event_id": event.id if event else None})


async def pipelines(request: web.Request) -> web.Response:
    """GET /api/agent/pipelines: every pipeline as a board (open intakes per stage) and each user's load."""
    bundle = _bundle(request)
    store = request.app[STORE]
    counts = await store.intake_counts(bundle.org.org)
    loads = (await store.snapshot(bundle.org.org, datetime.now(UTC))).loads
    return to_json({
        "pipelines": [{"id": pl.id, "name": pl.name, "team": pl.team, "closed_stages": pl.closed_stages,
                       "stages": [{"id": s, "intakes": counts.get((pl.id, s), 0)} for s in pl.stages]}
                      for pl in bundle.org.pipelines],
        "users": [{"id": u.id, "name": u.name, "role": u.role, "capacity": u.capacity, "open": loads.get(u.id, 0)}
                  for u in bundle.org.users]})


async def org_profile(request: web.Request) -> web.Response:
    """GET /api/agent/org: the org's name, time zone, users and pipelines (the dashboard's names for ids)."""
    org = _bundle(request).org
    return to_json({"id": org.org, "name": org.name, "timezone": org.timezone,
                    "users": [{"id": u.id, "name": u.name, "role": u.role, "takes_bookings": u.takes_bookings}
                              for u in org.users],
                    "pipelines": [{"id": pl.id, "name": pl.name} for pl in org.pipelines]})


async def list_actions(request: web.Request) -> web.Response:
    """GET /api/agent/actions?status=dead: the outbox, newest first."""
    status = request.query.get("status")
    if status is not None and status not in ACTION_STATUSES:
        raise ApiError(400, "bad_request", f"status: one of {', '.join(ACTION_STATUSES)}, not {status!r}",
                       {"field": "status"})
    rows, nxt = await request.app[STORE].list_outbox(principal(request).org, status=status,
                                                     limit=_int(request, "limit", 50, 1, 500), before=rowid_cursor(request, "actions"))
    return to_json({"actions": rows, "next_cursor": next_cursor(request, "actions", nxt)})


async def retry_action(request: web.Request) -> web.Response:
    """POST /api/agent/actions/{key}/retry: a dead-lettered action gets a fresh set of attempts."""
    p = principal(request)
    key = request.match_info["key"]
    store = request.app[STORE]
    decision = await store.retry_dead_action(p.org, key, by=p.name)
    if decision is None:
        row = await store.get_action(p.org, key)
        if row is None:
            raise ApiError(404, "not_found", f"no action {key!r}")
        raise ApiError(409, "not_dead", f"action {key} is {row['status']}, not dead-lettered", {"status": row["status"]})
    await request.app[SERVICE].notify()
    return to_json(await store.get_action(p.org, key), 202)


def setup(app: web.Application) -> None:
    """Register the routes of this module."""
    app.router.add_get("/api/agent/intakes", list_intakes)
    app.router.add_get("/api/agent/intakes/{id}", get_intake)
    app.router.add_post("/api/agent/intakes/{id}/move", move_intake)
    app.router.add_get("/api/agent/pipelines", pipelines)
    app.router.add_get("/api/agent/org", org_profile)
    app.router.add_get("/api/agent/actions", list_actions)
    app.router.add_post("/api/agent/actions/{key}/retry", retry_action)
