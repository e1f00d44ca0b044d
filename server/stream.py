"""GET /api/stream: server-sent events of the key's org's decisions, resumable with Last-Event-ID.

Every change is a row of the `stream` table, written in the transaction that made it (a new decision, an
approval, a rejection), so the stream never shows what was not committed and a reconnecting client that sends
`Last-Event-ID: <id>` receives everything after it, across restarts. Ids are opaque and per org
(`server.cursors`): they reveal nothing of other orgs' activity. Event names: `decision.executed`,
`decision.awaiting_approval`, `decision.failed`, `decision.rejected` (new decisions; `"new": true` in the data)
and `decision.approved`, `decision.rejected` (reviews). Without Last-Event-ID a client starts at the present.
"""

from __future__ import annotations

import contextlib
import json
import logging

from aiohttp import web
from aiohttp_sse import sse_response

from server.app import SERVICE, STORE, principal
from server.cursors import cursors
from server.errors import ApiError

log = logging.getLogger("astralis.stream")

POLL_SECONDS = 1.0
"""Other processes (and approvals made elsewhere) are noticed by polling at this interval."""
NOTIFIED_POLL_SECONDS = 10.0
"""With a store that announces its stream entries (PostgreSQL's NOTIFY, `server.pg_events`), readers wake on
the notice, and poll only as a fallback (a dropped listener connection)."""


async def stream(request: web.Request) -> web.StreamResponse:
    """The live stream of decisions for the API key's org."""
    org = principal(request).org
    store, service = request.app[STORE], request.app[SERVICE]
    ids = cursors(request.app)  # stream ids are opaque and per org: they count nothing of other orgs
    opened = None
    # Both may be given (the header wins): each must be valid, so that a bad one is never silently ignored.
    for name, raw in (("last_event_id", request.query.get("last_event_id")),
                      ("Last-Event-ID", request.headers.get("Last-Event-ID"))):
        if raw is None:
            continue
        opened = ids.open(org, "stream", raw.strip())
        if opened is None:
            raise ApiError(400, "bad_request", f"{name} must be the id of an event of this stream, not "
                           f"{raw[:40]!r}", {"field": name})
    last = opened if opened is not None else await store.stream_head(org)
    poll = NOTIFIED_POLL_SECONDS if hasattr(store, "listen") else POLL_SECONDS
    limit = request.query.get("limit")  # for tests and tools: stop after N events
    if limit is not None and not (limit.isascii() and limit.isdigit() and len(limit) <= 18 and int(limit) > 0):
        raise ApiError(400, "bad_request", f"limit must be a whole number of decisions from 1, not {limit!r}",
                       {"field": "limit"})
    remaining = int(limit) if limit is not None else None
    async with sse_response(request, ping_interval=15) as resp:
        # A client that goes away between two is_connected() checks ends its stream; it is not a server error.
        with contextlib.suppress(ConnectionResetError):
            await resp.send(json.dumps({"org": org, "after": ids.seal(org, "stream", last)}), event="ready",
                            retry=2000)
            while resp.is_connected():
                entries = await store.stream_after(org, last)
                for seq, kind, payload in entries:
                    await resp.send(json.dumps(payload), id=ids.seal(org, "stream", seq), event=f"decision.{kind}")
                    last = seq
                    if remaining is not None:
                        remaining -= 1
                        if remaining == 0:
                            return resp
                if not entries:
                    await service.wait_for_change(poll)
    return resp


def setup(app: web.Application) -> None:
    """Register the stream route."""
    app.router.add_get("/api/stream", stream)
