"""JSON errors everywhere: `{"error": {"code", "message", "details"}}`, whatever went wrong and where."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

log = logging.getLogger("astralis.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid",
          429: "rate_limited", 500: "internal", 503: "unavailable"}


class ApiError(web.HTTPException):
    """An HTTP error with a stable code and details, rendered as the JSON error body."""

    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        super().__init__(headers=headers, text=error_text(code, message, details), content_type="application/json")
        self.code = code


def error_text(code: str, message: str, details: Any = None) -> str:
    """The JSON error body (ending with a newline)."""
    return json.dumps({"error": {"code": code, "message": message, "details": details}}) + "\n"


def validation_details(exc: ValidationError, prefix: str = "") -> list[dict[str, Any]]:
    """pydantic errors as `[{"field": "data.email", "message": ...}]` (the field path a client can fix)."""
    out = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        out.append({"field": f"{prefix}{loc}" if loc else prefix.rstrip(".") or "body", "message": e["msg"]})
    return out


def invalid(exc: ValidationError, what: str = "request body", prefix: str = "") -> ApiError:
    """A 422 naming every invalid field."""
    details = validation_details(exc, prefix)
    first = details[0] if details else {"field": "body", "message": "invalid"}
    return ApiError(422, "invalid", f"invalid {what}: {first['field']}: {first['message']}", details)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as JSON: our ApiErrors as they are, aiohttp's (404, 405, 413…) re-shaped, crashes as 500."""
    try:
        return await handler(request)
    except ApiError:
        raise
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        code = _CODES.get(exc.status, "error")
        message = exc.reason
        if exc.status == 413:
            message = f"request body too large: the limit is {request.app._client_max_size} bytes"
        raise ApiError(exc.status, code, message, None, headers=_keep_headers(exc)) from None
    except Exception as exc:
        from adapters.stores import unavailable

        if unavailable(exc):
            log.warning("store unavailable on %s %s: %s", request.method, request.path, exc)
            raise ApiError(503, "unavailable", "the store is unavailable; repeat the request later (with the same "
                           "event id, a repeat is never processed twice)", None, headers={"Retry-After": "2"}) from None
        log.exception("unhandled error on %s %s", request.method, request.path)
        raise ApiError(500, "internal", "internal error; the event, if accepted, is kept") from None


def _keep_headers(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
