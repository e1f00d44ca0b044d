"""POST /api/webhooks/{org}/{email|form|booking|n8n}: HMAC-signed deliveries from other systems.

The signature (server/signing.py) is checked against the raw body before anything is parsed or written; the
org's secrets come from the environment variable named by `webhook_secret_env` in its org.yaml (several secrets,
comma-separated, during a rotation), which must be under the org's own prefix (`ACME_WEBHOOK_SECRET`,
adapters/secrets.py). The delivery id (`X-Astralis-Delivery`, else the body's `id`) is the event id and so the
idempotency key: a repeated delivery writes nothing and answers 409 with the original event's id.
An org without a configured secret accepts no webhooks (401), and an unknown org answers exactly like a bad
signature, so the endpoint does not reveal which orgs exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from secrets import token_hex
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from adapters.mime import MimeLimitError, parse_email
from adapters.secrets import SecretRefused, SecretResolver
from engine.config import Source
from engine.models import DOOR, Event
from server import logs
from server.api import submit
from server.app import METRICS, REGISTRY, SETTINGS, STORE, WEBHOOK_LIMITER
from server.auth import too_many
from server.door import load_json
from server.errors import ApiError, invalid
from server.signing import HEADER, SignatureError, verify

log = logging.getLogger("astralis.webhooks")

DELIVERY = "X-Astralis-Delivery"
KINDS: dict[str, tuple[Source, str]] = {
    "email": (Source.EMAIL, "email:received"),
    "form": (Source.WEBHOOK, "form:submitted"),
    "booking": (Source.WEBHOOK, "booking:created"),
    "n8n": (Source.WEBHOOK, "automation:completed"),
}
# A body with only these keys (and `data` an object) is a whole envelope; any other key means a payload that
# happens to have a `data` field (an n8n callback, say), which is kept whole.
_ENVELOPE_KEYS = frozenset({"id", "org", "source", "type", "data", "occurred_at"})


def _secrets(app: web.Application, org: str) -> list[str]:
    registry = app[REGISTRY]
    compiled = registry.get(org)
    if compiled is None:
        return []
    env = compiled.bundle.org.webhook_secret_env
    if not env:
        return []
    try:  # only a name under the org's own prefix (ACME_WEBHOOK_SECRET): never the server's or another org's
        values = SecretResolver(os.environ, lambda: registry.known).values(org, env, field="webhook_secret_env")
    except SecretRefused as exc:
        log.warning("webhook secret refused: %s", exc, extra={"org": org})
        return []
    for v in values:
        logs.register_secret(v)
    return values


def _unauthorized(message: str, code: str) -> ApiError:
    return ApiError(401, "invalid_signature", message, {"reason": code})


# Mail is parsed on threads of its own: a flood of heavy mail from outside senders queues here, not on the default
# executor that every org's other off-loop work shares.
_EMAIL_EXECUTOR = ThreadPoolExecutor(max_workers=2, thread_name_prefix="astralis-email")


async def _email(raw: bytes) -> dict[str, str]:
    """`parse_email` in a worker thread (the standard library's parser is slow Python: never on the event loop), on
    `_EMAIL_EXECUTOR`; mail over a limit of adapters/mime.py answers 413 (a size) or 422 (a count) naming the limit."""
    try:
        return await asyncio.get_running_loop().run_in_executor(_EMAIL_EXECUTOR, parse_email, raw)
    except MimeLimitError as exc:
        raise ApiError(exc.status, "email_too_large" if exc.status == 413 else "email_too_complex", str(exc),
                       {"field": "body", "limit": exc.limit}) from None


async def _data(kind: str, raw: bytes, content_type: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(data, envelope fields) from the body: JSON (the data itself, or a whole envelope) or raw MIME email."""
    if kind == "email" and content_type in ("message/rfc822", "text/plain"):
        parsed = await _email(raw)
        if not any(parsed.get(k) for k in ("from", "subject", "text")):
            raise ApiError(422, "invalid", "the body is not a readable email message", {"field": "body"})
        return {k: v for k, v in parsed.items() if v}, {}
    if content_type != "application/json":
        accepted = "application/json" + (" or message/rfc822" if kind == "email" else "")
        raise ApiError(415, "unsupported_media_type", f"send Content-Type: {accepted}")
    body = load_json(raw)  # depth, numbers and text checked at the door (server/door.py)
    if not isinstance(body, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object", {"field": "body"})
    if isinstance(body.get("data"), dict) and set(body) <= _ENVELOPE_KEYS:  # a whole envelope
        extra = {k: body[k] for k in ("id", "occurred_at") if k in body}
        return body["data"], extra
    return body, {}


def _n8n(data: dict[str, Any]) -> dict[str, Any]:
    """An n8n callback (whatever the workflow sends) with the fields the rules can count on."""
    out = dict(data)
    out.setdefault("status", "success" if not data.get("error") else "error")
    for key in ("workflow", "execution_id", "decision_id", "idempotency_key"):
        out.setdefault(key, data.get(key))
    return out


async def receive(request: web.Request) -> web.Response:
    """One signed delivery → one event (queued, or decided at once when urgent)."""
    org, kind = request.match_info["org"], request.match_info["kind"]
    app = request.app
    # Counted per org and sender address before the body is read: a flood of large deliveries (signed or not) is
    # answered 429 at almost no cost, and one sender's flood does not use up another sender's deliveries.
    wait = app[WEBHOOK_LIMITER].take(f"{org}\0{request.remote or ''}")
    if wait > 0:
        raise too_many(wait, "deliveries to this webhook from this address")
    raw = await request.read()  # size-capped by the app's client_max_size (413 beyond)
    secrets = _secrets(app, org) if kind in KINDS else []
    if not secrets:
        # Unknown org, or no secret configured: check against a random secret, which matches nothing, so that the
        # answer is exactly a bad signature's and does not reveal which orgs exist.
        log.warning("webhook for an org without a webhook secret", extra={"org": org, "kind": kind})
    try:
        timestamp = verify(request.headers.get(HEADER), raw, secrets or [token_hex(32)], now=app[SETTINGS].clock(),
                           tolerance=app[SETTINGS].webhook_tolerance_seconds)
    except SignatureError as exc:
        log.warning("webhook refused: %s", exc.code, extra={"org": org, "kind": kind})
        raise _unauthorized(str(exc), exc.code) from None
    source, type_ = KINDS[kind]
    data, extra = await _data(kind, raw, request.content_type)
    if kind == "n8n":
        data = _n8n(data)
    delivery = request.headers.get(DELIVERY) or extra.get("id")
    fields: dict[str, Any] = {"org": org, "source": source, "type": type_, "data": data}
    if delivery:
        fields["id"] = delivery
    if extra.get("occurred_at"):
        fields["occurred_at"] = extra["occurred_at"]
    try:
        event = Event.model_validate(fields, context=DOOR)
    except ValidationError as exc:
        raise invalid(exc, "delivery") from None
    with logs.bind(org=org, delivery_id=delivery, event_id=event.id):
        existing = await app[STORE].event_info(org, event.id) if delivery else None
        if existing is not None:
            app[METRICS].event_duplicate(org, f"webhook_{kind}")
            raise _replayed(existing)
        # Keyed on what was signed (timestamp and body), not the header's text: the same signature written
        # differently (spacing, order, hex case, extra schemes or decoy v1 values) is still the same request.
        digest = hashlib.sha256(f"{org}\n{timestamp}\n".encode() + raw).hexdigest()
        try:
            resp = await submit(request, event, mode="auto", channel=f"webhook_{kind}", signature=digest)
        except ApiError as exc:
            if exc.code == "replayed_signature":
                app[METRICS].event_duplicate(org, f"webhook_{kind}")
            raise
        if resp.headers.get("X-Astralis-Duplicate") == "true":  # lost a race with a concurrent delivery
            info = await app[STORE].event_info(org, event.id)
            raise _replayed(info or {"id": event.id, "status": "accepted", "decision_id": None})
        return resp


def _replayed(info: dict[str, Any]) -> ApiError:
    return ApiError(409, "duplicate_delivery", f"delivery {info['id']} was already received; nothing was written",
                    {"event_id": info["id"], "status": info["status"], "decision_id": info.get("decision_id")})


async def unknown_kind(request: web.Request) -> web.Response:
    """Anything else under /api/webhooks/{org}/."""
    raise ApiError(404, "not_found", f"no webhook {request.match_info['kind']!r}; expected one of {', '.join(KINDS)}")


def setup(app: web.Application) -> None:
    """Register the webhook routes."""
    app.router.add_post("/api/webhooks/{org}/{kind:email|form|booking|n8n}", receive)
    app.router.add_post("/api/webhooks/{org}/{kind}", unknown_kind)
