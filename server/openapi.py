"""GET /openapi.json: the OpenAPI 3.1 description of every route.

Request bodies come from the pydantic models in server/schemas.py (their `$defs` hoisted into
`components.schemas`), the decision from `engine.models.Decision`; the few dict-shaped answers (inbox rows,
analytics, health, config) are described here by hand. Every status a route can answer is listed with its
body and content type; tests/server/test_openapi.py checks that each registered route is documented and
fuzzes the live server against this document with schemathesis.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
from typing import Any, Literal, get_args

from aiohttp import web
from pydantic import BaseModel

from engine.config import DecisionType, Intent, Source
from engine.loader import ORG_FILE
from engine.models import IDENTIFIER_PATTERN, MAX_DEPTH, Decision, Status
from server.api import MODES
from server.configs import FILE_NAME, MAX_FILES, MAX_NAME_CHARS
from server.cursors import TOKEN_PATTERN
from server.schemas import (
    AcceptedOut,
    ConfigUpdate,
    DbTrigger,
    DecisionPage,
    EventIn,
    Rejection,
    Review,
    Rollback,
    SimulateRequest,
)
from server.signing import HEADER
from server.webhooks import DELIVERY, KINDS

REF = "#/components/schemas/{model}"
JSON = "application/json"
STATUSES = get_args(Status)
INBOX_STATUSES = ("accepted", "processing", "decided", "dead")
BEARER = [{"bearer": []}]
SIGNED = [{"signature": []}]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(properties: dict[str, Any], *, required: tuple[str, ...] | None = None, **extra: Any) -> dict[str, Any]:
    """An object schema; every property is required unless `required` says otherwise."""
    return {"type": "object", "required": list(properties if required is None else required),
            "properties": properties, **extra}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_COUNTS = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
_PERCENTILES = _obj({k: _nullable({"type": "number"}) for k in ("p50", "p90", "p99", "max")})

# ---- components: schemas --------------------------------------------------------------------------------

_HAND_WRITTEN: dict[str, dict[str, Any]] = {
    "Error": _obj({"error": _obj({
        "code": {"type": "string", "description": "Stable: bad_request, bad_json, too_deep, unauthorized, invalid_signature, "
                 "forbidden_org, not_found, method_not_allowed, not_awaiting_approval, org_not_loaded, "
                 "duplicate_delivery, payload_too_large, unsupported_media_type, invalid, invalid_config, "
                 "rate_limited, ..."},
        "message": {"type": "string", "description": "What is wrong and where, in a sentence."},
        "details": {"description": "The fields at fault (422: `[{field, message}]`), or other context, or null."},
    })}, description="Every error: `{\"error\": {\"code\", \"message\", \"details\"}}`."),
    "DecisionDetail": {"allOf": [_ref("Decision"), _obj({"outbox": {"type": "array", "items": _ref("OutboxAction")}})],
                       "description": "A decision with its whole trace and the outbox rows of its actions."},
    "OutboxAction": _obj({
        "key": {"type": "string", "description": "The idempotency key (decision id + action index; "
                "`<decision id>:failure` for the notice sent when an action is dead-lettered)."},
        "decision_id": _STR,
        "index": {"type": "integer", "description": "Run order within the decision (-1: the failure notice)."},
        "type": {"$ref": "#/components/schemas/DecisionType"},
        "params": {"type": "object"},
        "status": {"type": "string", "enum": ["pending", "running", "done", "dead", "cancelled"]},
        "attempts": _INT, "error": _nullable(_STR),
        "available_at": _nullable(_STR), "started_at": _nullable(_STR), "finished_at": _nullable(_STR),
        "duration_ms": _nullable({"type": "number"}),
        "result": _nullable({"type": "object", "description": "What the executor did (intake id, calendar "
                             "event, deliveries, the automation's answer)."}),
        "attempt_log": {"type": "array", "items": {"type": "object"},
                        "description": "Every attempt: when, outcome (done, failed, dead, interrupted), error, ms."},
        "created_at": _STR, "updated_at": _STR,
    }, description="One action in the outbox and every attempt to run it."),
    "InboxEvent": _obj({
        "id": _STR, "org": _STR, "source": _STR, "type": _STR,
        "status": {"type": "string", "enum": list(INBOX_STATUSES)},
        "channel": _nullable(_STR), "priority": _INT, "attempts": _INT, "error": _nullable(_STR),
        "decision_id": _nullable(_STR), "received_at": _STR, "updated_at": _STR,
        "envelope": {"type": "object", "description": "The event as received (DESIGN §4)."},
    }, description="An event in the inbox, with its processing state."),
    "EventPage": _obj({"events": {"type": "array", "items": _ref("InboxEvent")},
                       "next_cursor": _nullable({"type": "string", "pattern": TOKEN_PATTERN})},
                      description="One page of the inbox, newest first."),
    "Analytics": _obj({
        "org": _STR, "since": {"type": "string", "format": "date-time"},
        "until": {"type": "string", "format": "date-time"}, "total": _INT,
        "by_status": _COUNTS, "by_intent": _COUNTS, "by_decision_type": _COUNTS, "by_source": _COUNTS,
        "by_decided_by": _COUNTS,
        "rule_precision": {"type": "object", "description": "Per rule, from the approvals and corrections made in "
                           "the window: of the labelled decisions where it matched, how many kept its intent.",
                           "additionalProperties": _obj({"labelled": _INT, "right": _INT,
                                                         "precision": {"type": "number"}})},
        "llm": _obj({"calls": _INT, "call_rate": {"type": "number"}, "input_tokens": _INT, "output_tokens": _INT,
                     "latency_ms": _PERCENTILES, "model": _STR,
                     "cost_usd": _nullable({"type": "number", "description": "Estimated at the policy's prices "
                                            "for its current model (`llm.prices`); null when it has none."})},
                    required=("calls", "call_rate", "input_tokens", "output_tokens", "latency_ms")),
        "latency_ms": _PERCENTILES,
        "approvals": _obj({"reviewed": _INT, "approved": _INT, "rejected": _INT, "awaiting": _INT,
                           "turnaround_seconds": _PERCENTILES}),
    }, description="Counts, LLM usage, latency and approvals of the decisions created in [since, until)."),
    "OrgConfiguration": _obj({
        "org": _STR, "revision": _nullable(_STR),
        "files": {"type": "object", "additionalProperties": _STR, "description": "File name → YAML text."},
        "policy": _nullable(_STR),
        "errors": {"type": "array", "items": _STR}, "warnings": {"type": "array", "items": _STR},
    }, description="The org's files on disk, its active revision and the problems of its last reload."),
    "ConfigApplied": _obj({
        "org": _STR, "revision": _STR, "previous_revision": _nullable(_STR),
        "warnings": {"type": "array", "items": _STR},
    }, description="An update applied: the org's new active revision."),
    "ConfigFinding": _obj({
        "file": {"type": "string", "description": "As the update names it: `rules.yaml`, or `policies/<org>.yaml`."},
        "line": {"type": "integer", "minimum": 0, "description": "1-based; 0 for the whole file."},
        "code": _STR, "message": _STR, "severity": {"type": "string", "enum": ["error", "warning"]},
        "text": {"type": "string", "description": "As `astralis validate` prints it: `file:line: code: message`."},
    }, description="One problem of a proposed configuration, located for an editor."),
    "SimulationSummary": _obj({
        "events": _INT, "by_intent": _COUNTS, "by_decision_type": _COUNTS, "by_status": _COUNTS,
        "by_decided_by": _COUNTS, "ambiguous_rate": {"type": "number"}, "llm_consulted_rate": {"type": "number"},
        "auto_execute_rate": {"type": "number"}, "approval_rate": {"type": "number"}, "llm_tokens": _INT,
        "revisions": {"type": "array", "items": _STR},
    }),
    "SimulationResult": _obj({
        "revision": _STR, "summary": _ref("SimulationSummary"),
        "report": {"type": "object", "required": ["org", "events", "candidate"], "description":
                   "The simulation report (as `astralis simulate --format json`'s `report`): the candidate's "
                   "rates, tokens, cost and decision times; with a proposed configuration, also the active one's "
                   "(`baseline`), the changes in every rate and count, the decisions that flip and the flip "
                   "matrices."},
        "decisions": {"type": "array", "items": _ref("Decision")},
        "events": {"type": "object", "additionalProperties": _ref("EventSummary"),
                   "description": "Each flipped event (by id) as a person reads it: sender, subject, first lines."},
        "past_decisions": {"type": "object", "additionalProperties": _STR,
                           "description": "With `past`: the stored decision id of each flipped event (by id)."},
    }, description="Dry-run decisions (nothing written, nothing executed), their summary and the report."),
    "Health": _obj({
        "status": {"type": "string", "enum": ["ok", "unavailable"]}, "live": {"type": "boolean"},
        "ready": {"type": "boolean"},
        "checks": _obj({
            "database": _obj({"ok": {"type": "boolean"}, "inbox": _COUNTS, "outbox": _COUNTS, "error": _STR},
                             required=("ok",)),
            "rulesets": _obj({"ok": {"type": "boolean"}, "orgs": {"type": "object", "additionalProperties": _obj({
                "loaded": {"type": "boolean"}, "revision": _nullable(_STR),
                "errors": {"type": "array", "items": _STR}})}}),
        }),
    }, required=("status",), description="Liveness and readiness: the database answers and every org has rulesets "
       "loaded. Anyone gets only `status`; the operator token (`ASTRALIS_OPERATOR_TOKEN`) also gets `live`, "
       "`ready` and the checks (per-org state, revisions, errors, queue depths)."),
}

_MODELS: tuple[tuple[type[BaseModel], Literal["validation", "serialization"]], ...] = (
    (EventIn, "validation"), (DbTrigger, "validation"), (Review, "validation"), (Rejection, "validation"),
    (ConfigUpdate, "validation"), (SimulateRequest, "validation"), (Rollback, "validation"),
    (Decision, "serialization"), (AcceptedOut, "serialization"), (DecisionPage, "serialization"),
)


EXTENSIONS = ("server.openapi_intakes", "server.openapi_notifications", "server.openapi_calendar",
              "server.openapi_corrections")
"""Modules describing the routes of other API modules: each has `paths()` and may have `schemas()` (hand-written
components) and `MODELS` (pydantic models, as `_MODELS`)."""


def _extensions() -> list[Any]:
    return [importlib.import_module(name) for name in EXTENSIONS if importlib.util.find_spec(name) is not None]


def _schemas() -> dict[str, Any]:
    """The pydantic models' JSON Schemas with their `$defs` hoisted, then the hand-written ones."""
    out: dict[str, Any] = {}
    extensions = _extensions()

    def put(name: str, schema: dict[str, Any]) -> None:
        if name in out and out[name] != schema:
            raise ValueError(f"two different schemas are named {name!r}; rename one of the models")
        out[name] = schema

    models = list(_MODELS) + [m for ext in extensions for m in getattr(ext, "MODELS", ())]
    for model, mode in models:
        schema = model.model_json_schema(ref_template=REF, mode=mode)
        for name, sub in schema.pop("$defs", {}).items():
            put(name, sub)
        put(model.__name__, schema)
    for name, schema in _HAND_WRITTEN.items():
        put(name, schema)
    for ext in extensions:
        for name, schema in getattr(ext, "schemas", dict)().items():
            put(name, schema)
    _constrain(out)
    return out


def _constrain(schemas: dict[str, Any]) -> None:
    """What the handlers check beyond the pydantic models, stated in the document too."""
    update = schemas["ConfigUpdate"]["properties"]
    name = {"type": "string", "pattern": FILE_NAME.pattern, "maxLength": MAX_NAME_CHARS}
    update["files"]["propertyNames"] = name
    update["files"]["maxProperties"] = MAX_FILES
    update["delete"]["items"] = {**name, "not": {"const": ORG_FILE}}
    schemas["SimulateRequest"]["oneOf"] = [
        {"required": ["events"], "properties": {"events": {"type": "array"}, "past": {"type": "null"},
                                                "since": {"type": "null"}, "until": {"type": "null"}}},
        {"required": ["past"], "properties": {"past": {"type": "integer"}, "events": {"type": "null"}}},
    ]
    schemas["SimulateRequest"]["description"] += " Give exactly one of events and past; since and until go with past."


# ---- components: responses, parameters ------------------------------------------------------------------

def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    resp: dict[str, Any] = {"description": description, "content": {JSON: {"schema": _ref("Error")}}}
    if headers:
        resp["headers"] = headers
    return resp


_RESPONSES: dict[str, dict[str, Any]] = {
    "BadRequest": _error("A malformed query parameter or header (one with a control character included), a body "
                         f"that is not JSON or nests more than {MAX_DEPTH} levels deep (too_deep), or no body where "
                         "one is required."),
    "Unauthorized": _error("No API key, or an invalid or revoked one.", {
        "WWW-Authenticate": {"required": True, "schema": {"type": "string", "const": "Bearer"}}}),
    "BadSignature": _error(f"The {HEADER} header is missing, malformed, too old or does not match "
                           "the body, or the org accepts no webhooks (also for an org that does not exist)."),
    "ForbiddenOrg": _error("The body names another org than the API key's."),
    "NotFound": _error("No such resource for the API key's org (another org's ids answer the same)."),
    "PayloadTooLarge": _error("The body is larger than the server's limit (`--max-body`)."),
    "UnsupportedMediaType": _error("The Content-Type is not one this route reads."),
    "Invalid": _error("The body is well-formed but invalid; `details` lists every field at fault."),
    "RateLimited": _error("Too many requests for this API key.", {
        "Retry-After": {"required": True, "description": "Seconds to wait.", "schema": {"type": "string",
                                                                                        "pattern": "^[0-9]+$"}}}),
}
_ERRORS = {400: "BadRequest", 401: "Unauthorized", 403: "ForbiddenOrg", 404: "NotFound", 413: "PayloadTooLarge",
           415: "UnsupportedMediaType", 422: "Invalid", 429: "RateLimited"}


def _time_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False,
            "description": f"{description} From 0001-01-02 to 9999-12-30 (UTC).",
            "schema": {"type": "string", "format": "date-time"}}


def _enum_filter(name: str, values: list[str], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "style": "form", "explode": True,
            "description": f"{description} Repeat the parameter (or separate values with commas) for any of several.",
            "schema": {"type": "array", "items": {"type": "string", "enum": values}, "minItems": 1}}


def _limit(default: int = 50) -> dict[str, Any]:
    return {"name": "limit", "in": "query", "required": False, "description": "Page size.",
            "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": default}}


def _mode(default: str) -> dict[str, Any]:
    return {"name": "mode", "in": "query", "required": False,
            "description": "auto: decide at once when urgent (priority 5), else queue; sync: decide now (200); "
                           "queue: accept and decide in the background (202); dry_run: decide without writing or "
                           "executing anything.",
            "schema": {"type": "string", "enum": list(MODES), "default": default}}


def _id(what: str) -> dict[str, Any]:
    return {"name": "id", "in": "path", "required": True, "description": f"The {what} id.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": IDENTIFIER_PATTERN}}


def _no_control_characters(op: dict[str, Any]) -> None:
    """Every free-text parameter (path, query, header) says what `server.door.params_middleware` enforces on every
    route: no control characters, 400 otherwise."""
    for param in op.get("parameters", []):
        schema = param.get("schema", {})
        if schema.get("type") == "string" and "pattern" not in schema and "enum" not in schema:
            schema["pattern"] = IDENTIFIER_PATTERN
    if "400" not in op["responses"]:
        op["responses"] = dict(sorted({**op["responses"], "400": {"$ref": "#/components/responses/BadRequest"}}.items()))


_SSE_DATA = {"type": "string", "contentMediaType": JSON}
_STREAM_EVENT = {"oneOf": [
    _obj({"event": {"const": "ready"},
          "data": {**_SSE_DATA, "description": "`{\"org\", \"after\"}`: the key's org and the id (opaque, per org) "
                   "of the position the stream starts after.", "contentSchema": _obj({
                       "org": _STR, "after": {"type": "string", "pattern": TOKEN_PATTERN}})},
          "retry": {"type": "integer", "minimum": 0, "description": "Milliseconds to wait before reconnecting."},
          "id": {"type": "string", "pattern": TOKEN_PATTERN}},
         required=("event", "data"), description="Sent first: the stream is open."),
    _obj({"event": {"type": "string", "enum": ["decision.executed", "decision.awaiting_approval", "decision.failed",
                                              "decision.rejected", "decision.approved"]},
          "data": {**_SSE_DATA, "description": "`{\"kind\", \"new\", \"decision\"}`: what happened, whether the "
                   "decision is new, and the decision."},
          "id": {"type": "string", "pattern": TOKEN_PATTERN,
                 "description": "The entry's id (for Last-Event-ID): opaque and per org."},
          "retry": {"type": "integer", "minimum": 0}},
         required=("event", "data", "id"), description="A decision made or reviewed."),
], "description": "One server-sent event, as its fields (`event`, `data`, `id`, `retry`)."}


# ---- operations -----------------------------------------------------------------------------------------

def _body(name: str, *, required: bool = True, description: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"required": required, "content": {JSON: {"schema": _ref(name)}}}
    if description:
        body["description"] = description
    return body


def _ok(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None,
        content_type: str = JSON) -> dict[str, Any]:
    resp: dict[str, Any] = {"description": description, "content": {content_type: {"schema": schema}}}
    if headers:
        resp["headers"] = headers
    return resp


def _op(summary: str, tag: str, responses: dict[int, Any], *, errors: tuple[int, ...] = (),
        security: list[dict[str, list[str]]] = BEARER, parameters: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, description: str | None = None,
        extra: dict[int, Any] | None = None) -> dict[str, Any]:
    """One operation: its own responses, then the shared error responses by status (401 and 429 on API-key
    routes always), then `extra` responses that replace a shared one."""
    if security is BEARER:
        errors = (*errors, 401, 429)
    out: dict[str, Any] = {str(s): r for s, r in responses.items()}
    for status in sorted(set(errors)):
        out[str(status)] = {"$ref": f"#/components/responses/{_ERRORS[status]}"}
    for status, r in (extra or {}).items():
        out[str(status)] = r
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "security": security,
                          "responses": dict(sorted(out.items()))}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body:
        op["requestBody"] = body
    return op


_HDR_MODE = {"X-Astralis-Mode": {"description": "`sync` when the event was decided in this request.",
                                 "schema": {"type": "string"}}}
_HDR_DUP = {"X-Astralis-Duplicate": {"description": "`true` when the event id was already received; nothing new "
                                                    "was written.", "schema": {"type": "string", "enum": ["true"]}}}
_DECIDED_OR_DUP = {"anyOf": [_ref("Decision"), _ref("AcceptedOut")]}


def _accepting(what: str) -> dict[int, Any]:
    return {
        200: _ok(_DECIDED_OR_DUP, f"{what} decided now (sync, dry_run, or urgent in auto mode): the decision. A "
                 "repeated id answers the original decision (sync) or its inbox status (duplicate: true).",
                 {**_HDR_MODE, **_HDR_DUP}),
        202: _ok(_ref("AcceptedOut"), f"{what} accepted into the inbox, to be decided by the workers (or a "
                 "repeated id still being processed).", _HDR_DUP),
    }


_MIME = {"type": "string", "minLength": 1,
         "description": "A raw RFC 822 email message (email kind only): at least a From, a Subject or a body."}
_ORG_NOT_LOADED = _error("The org has no valid configuration loaded (org_not_loaded); `details` lists its errors.")


def _paths() -> dict[str, Any]:
    p: dict[str, Any] = {}
    p["/api/agent/process"] = {"post": _op(
        "Submit an event", "events", _accepting("The event"), errors=(400, 403, 413, 415, 422),
        parameters=[_mode("auto")], body=_body("EventIn", description="An event envelope (DESIGN §4)."),
        extra={409: _ORG_NOT_LOADED})}
    p["/api/agent/db-trigger"] = {"post": _op(
        "Submit a database row change", "events", _accepting("The row change"), errors=(400, 413, 415, 422),
        parameters=[_mode("queue")], body=_body("DbTrigger"), extra={409: _ORG_NOT_LOADED},
        description="The change becomes a DB_TRIGGER event of type `<table>:<inserted|updated|deleted>` "
                    "unless `type` is given; queued unless `mode` says otherwise.")}
    p["/api/agent/decisions"] = {"get": _op(
        "List decisions", "decisions", {200: _ok(_ref("DecisionPage"), "A page of decisions, newest first "
                                                 "(without their traces).")},
        errors=(400,), parameters=[
            _enum_filter("status", list(STATUSES), "Only decisions in this status."),
            _enum_filter("intent", [str(v) for v in Intent], "Only decisions with this intent."),
            _enum_filter("decision_type", [str(v) for v in DecisionType], "Only decisions of this type."),
            _enum_filter("source", [str(v) for v in Source], "Only decisions for events from this source."),
            _enum_filter("decided_by", ["rules", "model", "llm", "fallback"], "Only decisions taken this way."),
            _time_param("since", "Created at or after (with a UTC offset)."),
            _time_param("until", "Created before (with a UTC offset)."),
            _limit(),
            {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string", "minLength": 1},
             "description": "`next_cursor` of the previous page (with the same filters)."},
            {"name": "include", "in": "query", "required": False, "schema": {"type": "string", "enum": ["event"]},
             "description": "`event`: add `events`, each decision's event as sender, subject and first lines."},
            {"name": "order", "in": "query", "required": False,
             "schema": {"type": "string", "enum": ["newest", "oldest"], "default": "newest"},
             "description": "`oldest`: oldest first (ties by id either way); keep it with the cursor."},
        ])}
    p["/api/agent/decisions/{id}"] = {"get": _op(
        "Get a decision", "decisions", {200: _ok(_ref("DecisionDetail"), "The decision, its trace and outbox.")},
        errors=(404,), parameters=[_id("decision")])}
    review_errors = (400, 404, 413, 415, 422)
    conflict = _error("The decision is not awaiting approval (not_awaiting_approval); `details` has its status "
                      "and review.")
    repeat = {"X-Astralis-Repeat": {"description": "`true` when the same verdict was already given: nothing changed.",
                                    "schema": {"type": "string", "enum": ["true"]}}}
    p["/api/agent/decisions/{id}/approve"] = {"post": _op(
        "Approve a decision", "decisions", {200: _ok(_ref("Decision"), "The approved decision; its held actions "
                                                     "are in the outbox.", repeat)},
        errors=review_errors, parameters=[_id("decision")], extra={409: conflict},
        body=_body("Review", required=False, description="Optional: who approves, and a note."))}
    p["/api/agent/decisions/{id}/reject"] = {"post": _op(
        "Reject a decision", "decisions", {200: _ok(_ref("Decision"), "The rejected decision; its actions never "
                                                    "run.", repeat)},
        errors=review_errors, parameters=[_id("decision")], extra={409: conflict}, body=_body("Rejection"))}
    p["/api/agent/analytics"] = {"get": _op(
        "Decision analytics", "decisions", {200: _ok(_ref("Analytics"), "The org's analytics for the window.")},
        errors=(400,), parameters=[_time_param("since", "Window start (default: 24 hours before until)."),
                                   _time_param("until", "Window end (default: now); must be after since (else 400).")])}
    p["/api/agent/config"] = {
        "get": _op("Get the org's configuration", "config",
                   {200: _ok(_ref("OrgConfiguration"), "The org's files and active revision.")}, errors=(404,)),
        "post": _op("Update the org's configuration", "config",
                    {200: _ok(_ref("ConfigApplied"), "Validated and applied; the new revision is active.")},
                    errors=(400, 404, 413, 415), body=_body("ConfigUpdate"),
                    description="Validated exactly like `astralis validate`; a bad update changes nothing.",
                    extra={409: _error("The files changed on disk while updating (config_changed); the last good "
                                       "revision stays active."),
                           422: _error("An invalid body (invalid) or configuration (invalid_config: `details` "
                                       "lists every error as `path:line: code: message`).")}),
    }
    p["/api/agent/config/validate"] = {"post": _op(
        "Check proposed configuration files", "config",
        {200: _ok(_obj({"valid": {"type": "boolean"}, "revision": _nullable(_STR),
                        "errors": {"type": "array", "items": _ref("ConfigFinding")},
                        "warnings": {"type": "array", "items": _ref("ConfigFinding")}},
                       description="What `astralis validate` would say of the proposed files; nothing is applied."),
                  "The findings, each with its file and line (for an editor).")},
        errors=(400, 404, 413, 415), body=_body("ConfigUpdate"),
        extra={422: _error("An invalid body: a file name that is not a YAML file of the org's folder (invalid).")})}
    p["/api/agent/config/history"] = {"get": _op(
        "The configuration's saved revisions", "config",
        {200: _ok(_obj({"org": _STR, "active_revision": _nullable(_STR),
                        "history": {"type": "array", "items": _obj({
                            "revision": _STR, "created_at": _STR, "by": _nullable(_STR), "active": {"type": "boolean"},
                            "diff": {"type": "string", "description": "Unified diff from the revision before."}})}}),
                  "Latest first, with who changed each and the diff from the one before.")})}
    p["/api/agent/config/rollback"] = {"post": _op(
        "Make a saved revision active again", "config",
        {200: _ok(_ref("ConfigApplied"), "Its files, validated and applied like an update.")},
        errors=(400, 404, 413, 415), body=_body("Rollback"),
        extra={409: _error("The files changed on disk while updating (config_changed)."),
               422: _error("An invalid body, or a saved revision that no longer loads (invalid_config).")})}
    p["/api/agent/simulate"] = {"post": _op(
        "Simulate decisions", "config", {200: _ok(_ref("SimulationResult"), "The dry-run decisions.")},
        errors=(400, 403, 404, 413, 415), body=_body("SimulateRequest"), extra={
            409: _ORG_NOT_LOADED,
            422: _error("An invalid body, neither or both of events and past (invalid), or an invalid proposed "
                        "configuration (invalid_config).")},
        description="Decisions for the given events (or the org's latest `past` inbox events) against the active "
                    "or a proposed configuration, without side effects; a proposed configuration is compared with "
                    "the active one over the same events (the report's flips).")}
    p["/api/agent/events"] = {"get": _op(
        "List inbox events", "events", {200: _ok(_ref("EventPage"), "A page of the inbox, newest first.")},
        errors=(400,), parameters=[
            {"name": "status", "in": "query", "required": False, "description": "Only events in this status.",
             "schema": {"type": "string", "enum": list(INBOX_STATUSES)}},
            _limit(),
            {"name": "cursor", "in": "query", "required": False, "description": "`next_cursor` of the previous "
             "page.", "schema": {"type": "string", "pattern": TOKEN_PATTERN}},
        ])}
    p["/api/agent/events/{id}"] = {"get": _op(
        "Get an inbox event", "events", {200: _ok(_ref("InboxEvent"), "The event and its processing state.")},
        errors=(404,), parameters=[_id("event")])}
    p["/api/agent/events/{id}/retry"] = {"post": _op(
        "Retry a dead-lettered event", "events", {202: _ok(_ref("InboxEvent"), "Back in the queue.")},
        errors=(404,), parameters=[_id("event")],
        extra={409: _error("The event is not dead-lettered (not_dead); `details` has its status.")})}
    p["/api/webhooks/{org}/{kind}"] = {"post": _op(
        "Receive a signed webhook delivery", "webhooks", {
            200: _ok(_ref("Decision"), "An urgent delivery, decided at once.", _HDR_MODE),
            202: _ok(_ref("AcceptedOut"), "Accepted into the inbox."),
        }, security=SIGNED, errors=(400, 413, 415, 422, 429), parameters=[
            {"name": "org", "in": "path", "required": True, "description": "The receiving org.",
             "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]*$", "maxLength": 64}},
            {"name": "kind", "in": "path", "required": True, "description": "What is delivered.",
             "schema": {"type": "string", "enum": list(KINDS)}},
            {"name": DELIVERY, "in": "header", "required": False,
             "description": "The delivery id: the event id, and so the idempotency key (when absent or empty: the "
                            "body's `id`, else a new id).",
             "schema": {"type": "string", "maxLength": 200}},
        ], body={"required": True, "description": "JSON: the event data, or a whole envelope (its `data`, `id` and "
                 "`occurred_at` are used). The email kind also reads a raw MIME message.", "content": {
                     JSON: {"schema": {"type": "object"}},
                     "message/rfc822": {"schema": _MIME}, "text/plain": {"schema": _MIME}}},
        extra={401: {"$ref": "#/components/responses/BadSignature"},
               404: _error("The path does not name a webhook route (an unknown kind, or an org that is not a "
                           "path segment)."),
               409: _error("This delivery id, or this exact signed request, was already received "
                           "(duplicate_delivery, replayed_signature): nothing was written; `details` names the "
                           "original event.")},
        description="Signed with `X-Astralis-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "
                    "\"<t>.<raw body>\")>` (server/signing.py) instead of an API key.")}
    p["/api/stream"] = {"get": _op(
        "Live stream of decisions", "decisions", {200: _ok(
            _STREAM_EVENT, "Server-sent events: `ready`, then `decision.executed`, `decision.awaiting_approval`, "
            "`decision.failed`, `decision.rejected`, `decision.approved`, each with its stream sequence as the id.",
            content_type="text/event-stream")},
        errors=(400,), parameters=[
            {"name": "Last-Event-ID", "in": "header", "required": False,
             "description": "Resume after the event with this id (default: the present).",
             "schema": {"type": "string", "pattern": TOKEN_PATTERN}},
            {"name": "last_event_id", "in": "query", "required": False,
             "description": "As the Last-Event-ID header, for clients that cannot set headers.",
             "schema": {"type": "string", "pattern": TOKEN_PATTERN}},
            {"name": "limit", "in": "query", "required": False,
             "description": "Close the stream after this many decisions (for tools and tests).",
             "schema": {"type": "integer", "minimum": 1, "maximum": 10**18 - 1}},
        ])}
    p["/healthz"] = {"get": _op(
        "Liveness and readiness", "operations", {
            200: _ok(_ref("Health"), "Ready."),
            503: _ok(_ref("Health"), "Not ready: the database does not answer or an org has no rulesets loaded."),
        }, security=[{}, {"operator": []}], extra={401: _error("A bearer token that is not the operator token.")})}
    p["/schemas/{name}"] = {"get": _op(
        "Config file JSON Schema", "config", {
            200: _ok({"type": "object"}, "The JSON Schema (draft 2020-12) of org, ruleset or policy files, for "
                     "editors' completion and validation (a YAML file's `$schema` line may point here).",
                     content_type="application/schema+json"),
            404: _error("No such schema.")},
        parameters=[{"name": "name", "in": "path", "required": True, "description": "The schema's file name.",
                     "schema": {"type": "string", "enum": ["org.schema.json", "ruleset.schema.json",
                                                           "policy.schema.json"]}}], security=[])}
    p["/metrics"] = {"get": _op(
        "Prometheus metrics", "operations",
        {200: _ok({"type": "string"}, "The Prometheus text exposition format.", content_type="text/plain")},
        security=[{"operator": []}, {}], description="For the operator: `Authorization: Bearer <ASTRALIS_OPERATOR_TOKEN>`; "
        "with no token configured, only direct connections from this host (loopback, no proxy headers).",
        extra={401: _error("No or a wrong operator token (a token is configured)."),
               403: _error("No operator token is configured and the connection is not from this host.")})}
    p["/openapi.json"] = {"get": _op(
        "This document", "operations", {200: _ok({"type": "object"}, "The OpenAPI 3.1 description of the API.")},
        security=[])}
    for ext in _extensions():
        p.update(ext.paths())
    for path in p.values():
        for op in path.values():
            op["operationId"] = op["summary"].lower().replace(" ", "_").replace("'", "")
            _no_control_characters(op)
    return p


@functools.cache
def _spec_text() -> str:
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "Astralis Orchestrator", "version": "0.1.0",
                 "description": "Rules-first orchestration: events in, audited decisions out (DESIGN §4, §5, §7). "
                                "Every error is `{\"error\": {\"code\", \"message\", \"details\"}}`."},
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "responses": _RESPONSES,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "An org's API key (`astralis keys create --org ORG`)."},
                "signature": {"type": "apiKey", "in": "header", "name": HEADER,
                              "description": "HMAC-SHA256 of `<t>.<raw body>` under the org's webhook secret."},
                "operator": {"type": "http", "scheme": "bearer",
                             "description": "The operator token, `ASTRALIS_OPERATOR_TOKEN` (/metrics, the detailed "
                                            "/healthz)."},
            },
        },
    }
    return json.dumps(doc, ensure_ascii=False)


def spec() -> dict[str, Any]:
    """The OpenAPI document (serialised once; each call parses a private copy that callers may change)."""
    result: dict[str, Any] = json.loads(_spec_text())
    return result


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json"""
    return web.Response(text=_spec_text(), content_type=JSON)


def setup(app: web.Application) -> None:
    """Register the route."""
    app.router.add_get("/openapi.json", openapi)
