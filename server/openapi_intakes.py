"""The OpenAPI description of server/api_intakes.py: intakes, pipeline boards and the outbox."""

from __future__ import annotations

from typing import Any

from server.cursors import TOKEN_PATTERN
from server.schemas import IntakeMove

MODELS = ((IntakeMove, "validation"),)


def schemas() -> dict[str, Any]:
    """Hand-written components of these routes."""
    from server.openapi import _STR, _nullable, _obj, _ref

    entry = {"type": "object", "description": "One change: when, by whom (a decision id or a person), what "
             "(assigned, moved), the stage and assignee before and after, and a note."}
    return {
        "Intake": _obj({
            "id": _STR, "org": _STR, "title": _STR,
            "contact": {"type": "object", "description": "name, email, phone, company when known."},
            "pipeline": _STR, "stage": _STR, "assignee": _nullable(_STR), "priority": {"type": "integer"},
            "closed": {"type": "boolean", "description": "In one of the pipeline's closed stages."},
            "decision_id": _nullable(_STR), "event_id": _nullable(_STR),
            "history": {"type": "array", "items": entry}, "created_at": _STR, "updated_at": _STR,
        }, description="A work item in a pipeline, with its history."),
        "IntakeMoved": {"allOf": [_ref("Intake"), _obj({"stage_event_id": _nullable(_STR)})],
                        "description": "The intake after the move; `stage_event_id` names the "
                                       "`pipeline:stage_changed` event raised (null when nothing changed)."},
        "IntakePage": _obj({"intakes": {"type": "array", "items": _ref("Intake")},
                            "next_cursor": _nullable({"type": "string", "pattern": TOKEN_PATTERN})},
                           description="One page of intakes, newest first."),
        "Boards": _obj({
            "pipelines": {"type": "array", "items": _obj({
                "id": _STR, "name": _STR, "team": {"type": "array", "items": _STR},
                "closed_stages": {"type": "array", "items": _STR},
                "stages": {"type": "array", "items": _obj({"id": _STR, "intakes": {"type": "integer"}})}})},
            "users": {"type": "array", "items": _obj({
                "id": _STR, "name": _STR, "role": _STR, "capacity": {"type": "integer"},
                "open": {"type": "integer", "description": "Open intakes assigned to the user."}})},
        }, description="Every pipeline with its open intakes per stage, and every user's load."),
        "OrgProfile": _obj({
            "id": _STR, "name": _STR,
            "timezone": {"type": "string", "description": "The org's IANA time zone: the dashboard shows every "
                         "time in it, labelled."},
            "users": {"type": "array", "items": _obj({
                "id": _STR, "name": _STR, "role": _STR, "takes_bookings": {"type": "boolean"}})},
            "pipelines": {"type": "array", "items": _obj({"id": _STR, "name": _STR})},
        }, description="The org's name, time zone, users and pipelines: what pages need to put names on ids."),
        "ActionPage": _obj({"actions": {"type": "array", "items": _ref("OutboxAction")},
                            "next_cursor": _nullable({"type": "string", "pattern": TOKEN_PATTERN})},
                           description="One page of the outbox, newest first."),
    }


def paths() -> dict[str, Any]:
    """The path items of these routes."""
    from server.openapi import _body, _error, _id, _limit, _ok, _op, _ref

    cursor = {"name": "cursor", "in": "query", "required": False, "description": "`next_cursor` of the previous page.",
              "schema": {"type": "string", "pattern": TOKEN_PATTERN}}

    def text(name: str, description: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "description": description,
                "schema": {"type": "string"}}

    p: dict[str, Any] = {}
    p["/api/agent/intakes"] = {"get": _op(
        "List intakes", "pipelines", {200: _ok(_ref("IntakePage"), "A page of intakes, newest first.")},
        errors=(400,), parameters=[
            text("pipeline", "Only this pipeline's."), text("stage", "Only those in this stage."),
            text("assignee", "Only this user's."),
            {"name": "open", "in": "query", "required": False, "description": "true: open only; false: closed only.",
             "schema": {"type": "string", "enum": ["true", "false"]}},
            _limit(), cursor])}
    p["/api/agent/intakes/{id}"] = {"get": _op(
        "Get an intake", "pipelines", {200: _ok(_ref("Intake"), "The intake and its history.")},
        errors=(404,), parameters=[_id("intake")])}
    p["/api/agent/intakes/{id}/move"] = {"post": _op(
        "Move an intake", "pipelines", {200: _ok(_ref("IntakeMoved"), "Moved (or already there: nothing changed).")},
        errors=(400, 404, 415, 422), parameters=[_id("intake")], body=_body("IntakeMove"),
        description="Moves the intake to another stage of its pipeline (and optionally to another assignee) and "
                    "raises a `pipeline:stage_changed` event in the same transaction.",
        extra={409: _error("The org has no configuration loaded, or the intake's pipeline no longer exists.")})}
    p["/api/agent/pipelines"] = {"get": _op(
        "Pipeline boards", "pipelines", {200: _ok(_ref("Boards"), "The boards and the users' loads.")},
        extra={409: _error("The org has no valid configuration loaded (org_not_loaded).")})}
    p["/api/agent/org"] = {"get": _op(
        "Org profile", "pipelines", {200: _ok(_ref("OrgProfile"), "The org's name, time zone, users, pipelines.")},
        extra={409: _error("The org has no valid configuration loaded (org_not_loaded).")})}
    p["/api/agent/actions"] = {"get": _op(
        "List outbox actions", "actions", {200: _ok(_ref("ActionPage"), "A page of the outbox, newest first.")},
        errors=(400,), parameters=[
            {"name": "status", "in": "query", "required": False, "description": "Only actions in this status.",
             "schema": {"type": "string", "enum": ["pending", "running", "done", "dead", "cancelled"]}},
            _limit(), cursor])}
    p["/api/agent/actions/{key}/retry"] = {"post": _op(
        "Retry a dead-lettered action", "actions", {202: _ok(_ref("OutboxAction"), "Back in the outbox.")},
        errors=(404,), parameters=[{"name": "key", "in": "path", "required": True,
                                    "description": "The action's idempotency key.", "schema": {"type": "string"}}],
        extra={409: _error("The action is not dead-lettered (not_dead); `details` has its status.")})}
    return p
