"""Structured logs: one JSON object per line, carrying the org / event / decision being worked on.

`bind(org=..., event_id=...)` puts fields in a context variable for the duration of a `with` block;
`ContextFilter` (installed on the handler by `configure`) copies them onto every record, so every line
logged while an event is processed carries its ids, including lines from tasks created inside the
block (asyncio copies the context into new tasks).

Secrets never reach the output: fields named like a credential (authorization, api_key, secret,
token, password, ...) are replaced by "[redacted]" at any depth, and every string (message, field
values, tracebacks) is masked for bearer tokens, `sk-` keys, `key=value` credentials and the values
of registered secrets (`register_secret`; `configure` registers the LLM API keys from the environment).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from itertools import pairwise
from types import MappingProxyType
from typing import IO, Any

from adapters.llm import redact

# Python names its modules' loggers after the package (`engine.rules`), so those hierarchies are
# configured too; "astralis" is for loggers that are not module-named.
LOGGERS = ("astralis", "engine", "adapters", "server")
CONTEXT_FIELDS = ("org", "event_id", "decision_id", "request_id", "delivery_id")
REDACTED = "[redacted]"

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_context: ContextVar[Mapping[str, Any]] = ContextVar("astralis_log_context", default=MappingProxyType({}))
_secrets: set[str] = set()

_SECRET_PARTS = frozenset({"authorization", "secret", "secrets", "token", "password", "passwords", "passwd",
                           "apikey", "cookie"})
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}")
_SK_KEY = re.compile(r"\bsk-[A-Za-z0-9_-]{8,}")
_KEY_VALUE = re.compile(
    r"(?i)\b([\w-]*?(?:authorization|api[_-]?key|secret(?:[_-]?key)?|token|password|passwd))"
    r"(\"?\s*[=:]\s*)(?!(?:bearer|basic)\b|\[redacted\])(\"?)[^\s\"',;&]+")


def current() -> dict[str, Any]:
    """The fields bound in the current context (a copy)."""
    return dict(_context.get())


@contextmanager
def bind(**fields: Any) -> Iterator[dict[str, Any]]:
    """Add `fields` (org, event_id, decision_id, request_id, delivery_id, ...) to every log line in the block.

    Nested binds merge; leaving the block restores the outer fields. None values are skipped, so
    `bind(request_id=headers.get("X-Request-Id"))` is safe.
    """
    for key in fields:
        if key in _STANDARD or key.startswith("_"):
            raise ValueError(f"log field {key!r} clashes with a LogRecord attribute; pick another name")
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(MappingProxyType(merged))
    try:
        yield dict(merged)
    finally:
        _context.reset(token)


def register_secret(value: str | None) -> None:
    """Mask every occurrence of `value` (an API key, a webhook secret) in log output from now on."""
    if value:
        _secrets.add(value)


def mask(text: str) -> str:
    """`text` with registered secrets, bearer/basic credentials, `sk-` keys and `key=value` secrets masked."""
    for secret in sorted(_secrets, key=len, reverse=True):
        text = redact(text, secret)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _SK_KEY.sub(f"sk-{REDACTED}", text)
    return _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}{REDACTED}", text)


def is_secret_key(key: str) -> bool:
    """Whether a field called `key` holds a credential (`X-Api-Key`, `webhook_secret`, `accessToken`).

    `input_tokens` / `output_tokens` are counts, not credentials, so plural "tokens" is not matched.
    """
    parts = [p for p in re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower()) if p]
    return any(p in _SECRET_PARTS for p in parts) or ("api", "key") in pairwise(parts)


def scrub(key: str, value: Any, depth: int = 0) -> Any:
    """`value` safe to log under `key`: credentials redacted, strings masked, containers walked."""
    if is_secret_key(key):
        return REDACTED
    if isinstance(value, str):
        return mask(value)
    if depth >= 6:
        return mask(str(value))
    if isinstance(value, Mapping):
        return {str(k): scrub(str(k), v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub("", v, depth + 1) for v in value]
    if isinstance(value, bool | int | float) or value is None:
        return value
    return mask(str(value))


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's context and `extra=` fields, context fields first, scrubbed."""
    extra = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
    ordered = {k: extra.pop(k) for k in CONTEXT_FIELDS if k in extra}
    ordered.update(extra)
    return {k: scrub(k, v) for k, v in ordered.items()}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ContextFilter(logging.Filter):
    """Copies the fields bound with `bind` onto each record (an `extra=` field of the same name wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate `record`; never drops it."""
        for key, value in _context.get().items():
            if key not in vars(record):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the bound and extra fields, and `exc`."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single line of JSON, secrets masked."""
        out: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname, "logger": record.name,
                               "msg": mask(record.getMessage())}
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = mask(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc"] = mask(record.exc_text)
        if record.stack_info:
            out["stack"] = mask(self.formatStack(record.stack_info))
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines: `ts level logger [org=.. event_id=.. decision_id=..] msg key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line (plus a traceback, if any), secrets masked."""
        fields = _fields(record)
        bound = " ".join(f"{k}={fields.pop(k)}" for k in CONTEXT_FIELDS if k in fields)
        parts = [_timestamp(record), record.levelname, record.name]
        if bound:
            parts.append(f"[{bound}]")
        parts.append(mask(record.getMessage()))
        parts.extend(f"{k}={_text_value(v)}" for k, v in fields.items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + mask(self.formatException(record.exc_info))
        if record.stack_info:
            line += "\n" + mask(self.formatStack(record.stack_info))
        return line


def _text_value(value: Any) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in "\"=" for c in value):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


class _Handler(logging.StreamHandler):
    """The handler `configure` installs; its own class so that a second `configure` can find and replace it."""


def configure(level: str = "INFO", *, json_format: bool = True, stream: IO[str] | None = None) -> None:
    """Send the service's logs (the `LOGGERS` hierarchies, not the root logger) to `stream` (stderr).

    Idempotent: a second call replaces the handler installed by the first. Records still propagate
    to the root logger, so pytest's caplog and an embedding app's handlers keep working.
    """
    levels = logging.getLevelNamesMapping()
    name = level.upper()
    if name not in levels or name == "NOTSET":
        raise ValueError(f"log level {level!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if json_format else TextFormatter())
    for logger_name in LOGGERS:
        logger = logging.getLogger(logger_name)
        for old in [h for h in logger.handlers if isinstance(h, _Handler)]:
            logger.removeHandler(old)  # not closed: the stream (stderr) belongs to the caller
        logger.addHandler(handler)
        logger.setLevel(levels[name])
    for env in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        register_secret(os.environ.get(env))
