"""PipelineAssigner: the executor of ASSIGN_PIPELINE actions — the intake lands in its pipeline's stage with its
assignee, once per action (the intake records the action's idempotency key)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from email.utils import parseaddr
from typing import Any

from adapters.sqlite_intakes import Intake, IntakeTables
from engine.loader import OrgBundle
from engine.ports import ActionFailed, ActionJob


def intake_id(job: ActionJob) -> str:
    """The intake a correction re-routes (`params.intake`), else the host platform's own id for `intake:created`
    events (`data.intakeId`), else one derived from the action's key — the same on every attempt."""
    named = job.params.get("intake")
    if isinstance(named, str) and named:
        return named[:200]
    return intake_id_for(job.key, job.event)


def intake_id_for(key: str, event: dict[str, Any] | None) -> str:
    """The id of the intake an ASSIGN_PIPELINE action with idempotency key `key` made for `event`."""
    event = event or {}
    data = event.get("data") or {}
    if event.get("type") == "intake:created" and isinstance(data.get("intakeId"), str) and data["intakeId"]:
        return str(data["intakeId"])[:200]
    return "int_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def describe(event: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """A title and a contact (name, email) for an intake, from the event that caused it."""
    event = event or {}
    data = event.get("data") or {}

    def text(key: str) -> str:
        value = data.get(key)
        return value.strip() if isinstance(value, str) else ""

    contact: dict[str, Any] = {}
    if text("from"):
        name, addr = parseaddr(text("from"))
        contact = {k: v for k, v in (("name", name), ("email", addr)) if v}
    for key in ("name", "email", "phone", "company"):
        if text(key) and key not in contact:
            contact[key] = text(key)
    title = text("title") or text("subject")
    if not title and text("form"):
        title = f"{text('form').capitalize()} form" + (f" from {contact['name']}" if contact.get("name") else "")
    if not title:
        title = (text("message") or text("text") or text("description"))[:80] or str(event.get("type") or "Intake")
    return title[:300], contact


class PipelineAssigner:
    """Runs ASSIGN_PIPELINE: creates (or re-routes) the intake in the pipeline, stage and assignee planned."""

    def __init__(self, store: IntakeTables, bundles: Callable[[str], OrgBundle | None]) -> None:
        self.store = store
        self.bundles = bundles

    async def run(self, job: ActionJob) -> dict[str, Any]:
        """Assign the intake (idempotent under `job.key`)."""
        bundle = self.bundles(job.org)
        if bundle is None:
            raise ActionFailed(f"org '{job.org}' has no configuration loaded")
        pipeline_id = str(job.params.get("pipeline") or "")
        pipeline = bundle.org.pipeline(pipeline_id)
        if pipeline is None:
            raise ActionFailed(f"pipeline '{pipeline_id}' is not defined in org '{job.org}' (any more)", permanent=True)
        stage = str(job.params.get("stage") or pipeline.stages[0])
        if stage not in pipeline.stages:
            raise ActionFailed(f"stage '{stage}' is not a stage of pipeline '{pipeline.id}' "
                               f"({', '.join(pipeline.stages)})", permanent=True)
        assignee = job.params.get("assignee")
        if assignee is not None and bundle.org.user(str(assignee)) is None:
            raise ActionFailed(f"assignee '{assignee}' is not a user of org '{job.org}' (any more)", permanent=True)
        title, contact = describe(job.event)
        priority = job.params.get("priority")
        intake, created = await self.store.assign_intake(Intake(
            org=job.org, id=intake_id(job), title=title, pipeline=pipeline.id, stage=stage,
            assignee=str(assignee) if assignee is not None else None,
            priority=priority if isinstance(priority, int) else 3, closed=stage in pipeline.closed_stages,
            contact=contact, decision_id=job.decision_id,
            event_id=(job.event or {}).get("id")), action_key=job.key)
        return {"intake_id": intake.id, "pipeline": intake.pipeline, "stage": intake.stage,
                "assignee": intake.assignee, "new": created}
