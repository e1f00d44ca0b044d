"""What a PostgreSQL store adds to a process: the live stream across processes, and row changes of the host
platform's own tables as DB_TRIGGER events.

- Every stream entry (a decision, an approval, a failure) is announced with NOTIFY when it commits
  (`PGStore.listen`): this process's `/api/stream` readers wake at once, whichever process wrote it, instead of
  at their next poll.
- A table of the platform with the trigger function `adapters.pg_store.DB_TRIGGER_FUNCTION` attached announces
  each row change on `astralis_db_trigger`; the API process turns it into the same event as
  `POST /api/agent/db-trigger` and accepts it into the inbox. Every API process hears every change, so the event
  id is derived from the change itself (`pg-<digest>`): the inbox keeps one, however many processes listen.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from pydantic import ValidationError

from server.schemas import DbTrigger

log = logging.getLogger("astralis.pg")


def change_event_id(change: dict[str, Any]) -> str:
    """A stable id for one announced row change (the same bytes from every listener)."""
    digest = hashlib.sha256(json.dumps(change, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"pg-{digest[:32]}"


async def subscribe(store: Any, service: Any, registry: Any) -> list[Any]:
    """Listen on `store` (a `PGStore`) for stream entries and, in a process that accepts events, row changes;
    the callbacks to `unlisten` at shutdown."""
    from server.api import db_trigger_event

    async def stream_entry(_org: str, _seq: int) -> None:
        await service.notify(actions=False)

    async def row_change(change: dict[str, Any]) -> None:
        org = str(change.get("org") or "")
        if registry.get(org) is None:
            log.warning("row change of table %r for org %r ignored: no such org is loaded", change.get("table"), org)
            return
        try:
            body = DbTrigger.model_validate({"id": change_event_id(change),
                                             **{k: change.get(k) for k in ("table", "operation", "row", "old_row",
                                                                            "occurred_at") if change.get(k) is not None}})
            event = db_trigger_event(org, body)
        except ValidationError as exc:
            log.warning("row change of table %r for org %r is not a valid event: %s", change.get("table"), org, exc)
            return
        acc = await service.emit(event, channel="db_trigger")
        if acc.new:
            log.info("row change of %s.%s accepted as %s", org, change.get("table"), event.id)

    await store.listen(stream_entry)
    await store.listen_db_triggers(row_change)
    return [stream_entry, row_change]
