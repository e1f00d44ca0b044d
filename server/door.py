"""Input at the door: request bodies and parameters checked before anything reads them further or writes them.

A JSON body is parsed by `load_json`: nesting deeper than `MAX_DEPTH` is a 400 `too_deep` (deeper than the
parser's own recursion limit, it stops there instead of a RecursionError 500), and a number Python cannot hold as
sent (an integer of more than 4,300 digits, `NaN`, `Infinity`, `1e999`) or a string that is not text (a lone
surrogate) is a 422 naming the field. The `params_middleware` refuses control characters in path and query
parameters (400 naming the parameter): no id has them, and some stores cannot even look them up. Events are held
to the same limits, and to their own (ids, dates), by `Event.model_validate(..., context=DOOR)` (engine/models.py).
"""

from __future__ import annotations

import json
from typing import Any

import re2
from aiohttp import web

from engine.models import DEPTH_PROBLEM, MAX_DEPTH, MAX_INT_DIGITS, identifier_problem, json_problem
from server.errors import ApiError, Handler

_TOO_DEEP = f"the body nests objects and arrays more than {MAX_DEPTH} levels deep"


class _Unreadable:
    """A number the body states that no Python number holds faithfully; `json_problem` reports it with its path."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _int(text: str) -> Any:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        return _Unreadable(f"an integer of {digits} digits; at most {MAX_INT_DIGITS} are accepted")
    return int(text)


def _float(text: str) -> Any:
    value = float(text)
    if value - value != 0:  # 1e999 is inf
        return _Unreadable(f"{text[:40]} is beyond the range of a double-precision number")
    return value


def _constant(name: str) -> Any:
    return _Unreadable(f"{name} is not a JSON number")


MAX_VALUES = 10_000
"""JSON values (scalars, arrays, objects) one body may hold. Parsing costs about 0.1–0.5 µs a value, all of it on
the event loop (the C parser holds the GIL): 10,000 keep a body under a few milliseconds, where 1 MiB of `[]`
would hold the loop for 0.1–0.3 s. Events are emails, forms and rows: a few hundred values."""


_OPEN_RUN = re2.compile(rb"(?:[\[{][^\[\]{}]*){%d}" % (MAX_DEPTH + 1))
"""More than MAX_DEPTH openers with no closer between them: nested too deep, whatever else the body holds."""


def value_count_problem(raw: bytes) -> tuple[str, str] | None:
    """(code, why) when `raw` holds more than MAX_VALUES JSON values — or, found on the way, nests deeper than
    MAX_DEPTH — else None; counted on the bytes, before parsing, in a few milliseconds at most. Commas and opening
    brackets bound the values from above; only when they pass the limit are the ones inside strings set aside
    (bounded too: more quotes than the limit allows is already too many)."""
    rough = raw.count(b",") + raw.count(b"[") + raw.count(b"{")
    if rough <= MAX_VALUES:
        return None
    bare = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    if bare.count(b'"') > 4 * MAX_VALUES:  # more than 2 × MAX_VALUES strings (keys included)
        if _OPEN_RUN.search(raw):  # brackets inside strings could only make this say too_deep of a body refused anyway
            return "too_deep", _TOO_DEEP
        return "too_many_values", f"the body holds more than {MAX_VALUES} JSON values"
    outside = b"".join(bare.split(b'"')[::2])
    if _OPEN_RUN.search(outside):
        return "too_deep", _TOO_DEEP
    count = outside.count(b",") + outside.count(b"[") + outside.count(b"{")
    if count > MAX_VALUES:
        return "too_many_values", f"the body holds about {count} JSON values; at most {MAX_VALUES} are accepted"
    return None


def load_json(raw: bytes) -> Any:
    """`raw` parsed as JSON, within the door's limits; ApiError naming what is wrong (and where) otherwise."""
    if problem := value_count_problem(raw):
        code, why = problem
        if code == "too_deep":
            raise ApiError(400, code, why, {"field": "body", "limit": MAX_DEPTH})
        raise ApiError(413, code, why, {"field": "body", "limit": MAX_VALUES})
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_json", f"the body is not valid JSON: it is not UTF-8 ({exc})") from None
    try:
        value = json.loads(text, parse_float=_float, parse_constant=_constant)
    except RecursionError:  # far deeper than MAX_DEPTH: the parser stopped at its recursion limit
        raise ApiError(400, "too_deep", _TOO_DEEP, {"field": "body", "limit": MAX_DEPTH}) from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {exc}") from None
    except ValueError:  # an integer beyond Python's digit limit: parsed again, to name where it is
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    if problem := json_problem(value):
        path, why = problem
        field = path or "body"
        if why == DEPTH_PROBLEM.format(MAX_DEPTH):
            raise ApiError(400, "too_deep", f"{_TOO_DEEP} (at {field})", {"field": field, "limit": MAX_DEPTH})
        raise ApiError(422, "invalid", f"invalid request body: {field}: {why}", [{"field": field, "message": why}])
    return value


@web.middleware
async def params_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """400 for a path or query parameter with a control character (or a lone surrogate), naming it."""
    for where, values in (("path", request.match_info.items()), ("query", request.query.items())):
        for name, value in values:
            if problem := identifier_problem(value):
                raise ApiError(400, "bad_request", f"{where} parameter {name}: {problem}", {"field": name})
    return await handler(request)
