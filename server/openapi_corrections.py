"""The OpenAPI description of server/api_corrections.py: correcting a decision, and the org's labels."""

from __future__ import annotations

from typing import Any

from server.schemas import CorrectionIn

MODELS = ((CorrectionIn, "validation"),)


def schemas() -> dict[str, Any]:
    """Hand-written components of these routes."""
    from server.openapi import _INT, _STR, _nullable, _obj, _ref

    return {
        "Label": _obj({
            "org": _STR, "id": _STR, "decision_id": _STR, "event_id": _STR,
            "kind": {"type": "string", "enum": ["approval", "correction"]},
            "intent": _STR, "priority": _nullable(_INT), "pipeline": _nullable(_STR), "assignee": _nullable(_STR),
            "by": _STR, "note": _nullable(_STR), "at": _STR,
            "decided": {"type": "object", "description": "What had been decided: intent, priority, decided_by, "
                        "confidence, model_version, and the rules that matched with their intents."},
            "envelope": _nullable({"type": "object", "description": "The event as it came in."}),
        }, description="An approval or a correction: what a person said a decision should be."),
        "LabelList": _obj({"labels": {"type": "array", "items": _ref("Label")}},
                          description="The org's labels, oldest first."),
    }


def paths() -> dict[str, Any]:
    """`{path: path item}` for the correction routes."""
    from server.openapi import _body, _error, _id, _ok, _op, _ref

    repeat = {"X-Astralis-Repeat": {"description": "`true` when the same correction was already applied: nothing "
                                    "changed.", "schema": {"type": "string", "enum": ["true"]}}}
    return {
        "/api/agent/decisions/{id}/correct": {"post": _op(
            "Correct a decision", "decisions",
            {200: _ok(_ref("Decision"), "The decision: a held one approved with the change (its corrected actions in "
                      "the outbox); an executed one with the correction in its trace and the compensating actions "
                      "(intake moved and reassigned, the new assignee notified) in the outbox.", repeat)},
            errors=(400, 404, 413, 415, 422), parameters=[_id("decision")],
            extra={409: _error("The decision cannot be corrected (not_correctable: failed, or rejected by a person); "
                               "or the org has no valid configuration loaded (org_not_loaded).")},
            body=_body("CorrectionIn"),
            description="422 invalid_correction when the pipeline or assignee is not the org's. Every correction is "
                        "a label of the org (GET /api/agent/labels) the org model learns from.")},
        "/api/agent/labels": {"get": _op(
            "List the org's labels", "decisions", {200: _ok(_ref("LabelList"), "Approvals and corrections.")},
            errors=(400,), parameters=[{"name": "limit", "in": "query", "required": False,
                                        "description": "How many labels at most.",
                                        "schema": {"type": "integer", "minimum": 1, "maximum": 100_000,
                                                   "default": 1000}}])},
    }
