"""PipelineAssigner (adapters/pipelines.py): ASSIGN_PIPELINE actions become intakes in a real SQLite store,
once per action key."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.pipelines import PipelineAssigner, describe, intake_id
from adapters.stores import open_store
from engine.config import Pipeline
from engine.loader import OrgBundle, load_org
from engine.ports import ActionFailed, ActionJob

ROOT = Path(__file__).resolve().parents[2]

EMAIL = {"id": "evt-mail-1", "org": "acme", "source": "EMAIL", "type": "email:received",
         "data": {"from": "Ana <ana@x.com>", "to": "hello@acme.example", "subject": "Pricing for 40 seats",
                  "text": "Could you send a quote?"}}
CONTACT = {"id": "evt-form-1", "org": "acme", "source": "WEBHOOK", "type": "form:submitted",
           "data": {"form": "contact", "name": "Ana Ruiz", "email": "ana@x.com", "category": None,
                    "message": "We would like a new website for our bakery."}}
HOST_INTAKE = {"id": "evt-intake-1", "org": "acme", "source": "WEBHOOK", "type": "intake:created",
               "data": {"intakeId": "crm-4711", "title": "Redesign for Nordic Linens",
                        "description": "Shop redesign", "channel": "web"}}


@pytest.fixture(scope="module")
def acme() -> OrgBundle:
    """The example org as shipped."""
    return load_org(ROOT / "rulesets" / "acme", ROOT / "policies")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Any]:
    """A real store of each kind (`store_url`)."""
    s = await open_store(store_url)
    yield s
    await s.close()


def bundles_of(bundle: OrgBundle | None) -> Callable[[str], OrgBundle | None]:
    return lambda org: bundle if bundle is not None and org == bundle.org.org else None


def job(params: dict[str, Any], event: dict[str, Any] | None = EMAIL, *, decision_id: str = "dec_one",
        index: int = 0, attempt: int = 1) -> ActionJob:
    return ActionJob(key=f"{decision_id}:{index}", org="acme", decision_id=decision_id, index=index,
                     type="ASSIGN_PIPELINE", params=params, attempt=attempt, decision=None, event=event)


SALES = {"pipeline": "sales-inquiries", "stage": "new", "assignee": "u-sam", "priority": 3}


# --------------------------------------------------------------------------- creating intakes

async def test_an_email_becomes_an_intake_in_its_pipeline_stage_and_assignee(store, acme):
    result = await PipelineAssigner(store, bundles_of(acme)).run(job(SALES))
    iid = result["intake_id"]
    assert result == {"intake_id": iid, "pipeline": "sales-inquiries", "stage": "new", "assignee": "u-sam",
                      "new": True}
    intake = await store.get_intake("acme", iid)
    assert intake is not None
    assert (intake.pipeline, intake.stage, intake.assignee, intake.closed) == ("sales-inquiries", "new", "u-sam", False)
    assert intake.title == "Pricing for 40 seats"
    assert intake.contact == {"name": "Ana", "email": "ana@x.com"}
    assert (intake.decision_id, intake.event_id, intake.priority) == ("dec_one", "evt-mail-1", 3)
    [entry] = intake.history
    assert entry["what"] == "assigned" and entry["by"] == "dec_one"
    assert (entry["pipeline"], entry["stage"], entry["assignee"]) == ("sales-inquiries", "new", "u-sam")
    assert intake.created_at and intake.created_at == intake.updated_at


async def test_a_contact_form_gets_a_title_and_contact_from_its_fields(store, acme):
    params = {"pipeline": "general-intake", "stage": "new", "assignee": "u-pat", "priority": 5}
    result = await PipelineAssigner(store, bundles_of(acme)).run(job(params, CONTACT))
    intake = await store.get_intake("acme", result["intake_id"])
    assert intake is not None
    assert intake.title == "Contact form from Ana Ruiz"
    assert intake.contact == {"name": "Ana Ruiz", "email": "ana@x.com"}
    assert (intake.pipeline, intake.assignee, intake.priority, intake.event_id) == (
        "general-intake", "u-pat", 5, "evt-form-1")


def test_titles_and_contacts_from_other_shapes():
    assert describe({"type": "email:received", "data": {"from": "plain@x.com", "text": "hello there"}}) == (
        "hello there", {"email": "plain@x.com"})
    title, contact = describe({"type": "form:submitted", "data": {"form": "booking", "email": "b@x.com"}})
    assert (title, contact) == ("Booking form", {"email": "b@x.com"})
    assert describe(None) == ("Intake", {})
    assert describe({"type": "db:changed", "data": {}}) == ("db:changed", {})
    long, _ = describe({"type": "email:received", "data": {"subject": "x" * 1000}})
    assert len(long) == 300


async def test_without_a_stage_the_intake_lands_in_the_first_stage(store, acme):
    result = await PipelineAssigner(store, bundles_of(acme)).run(job({"pipeline": "support-requests"}))
    assert (result["stage"], result["assignee"]) == ("new", None)
    intake = await store.get_intake("acme", result["intake_id"])
    assert intake is not None and intake.priority == 3  # the default when the plan gave none
    # unassigned work counts toward nobody's load
    assert (await store.snapshot("acme", datetime.now(UTC))).loads == {}


# --------------------------------------------------------------------------- idempotency

async def test_the_same_job_twice_makes_one_intake(store, acme):
    assigner = PipelineAssigner(store, bundles_of(acme))
    first = await assigner.run(job(SALES))
    again = await assigner.run(job(SALES, attempt=2))
    assert first["new"] is True and again["new"] is False
    assert {k: v for k, v in again.items() if k != "new"} == {k: v for k, v in first.items() if k != "new"}
    intakes, _ = await store.list_intakes("acme")
    assert [i.id for i in intakes] == [first["intake_id"]]
    assert len(intakes[0].history) == 1
    assert (await store.snapshot("acme", datetime.now(UTC))).loads == {"u-sam": 1}


async def test_the_intake_id_is_the_same_on_every_attempt_and_differs_per_action():
    a1, a2 = job(SALES), job(SALES, attempt=3)
    assert intake_id(a1) == intake_id(a2)
    assert intake_id(job(SALES, index=1)) != intake_id(a1)
    assert intake_id(job(SALES, decision_id="dec_two")) != intake_id(a1)


async def test_two_actions_make_two_intakes(store, acme):
    assigner = PipelineAssigner(store, bundles_of(acme))
    one = await assigner.run(job(SALES, decision_id="dec_a"))
    two = await assigner.run(job({**SALES, "assignee": "u-lee"}, decision_id="dec_b"))
    assert one["intake_id"] != two["intake_id"] and one["new"] and two["new"]
    assert (await store.snapshot("acme", datetime.now(UTC))).loads == {"u-sam": 1, "u-lee": 1}


# --------------------------------------------------------------------------- the host platform's intakes

async def test_an_intake_created_event_keeps_the_hosts_intake_id(store, acme):
    params = {"pipeline": "general-intake", "stage": "new", "assignee": "u-pat"}
    result = await PipelineAssigner(store, bundles_of(acme)).run(job(params, HOST_INTAKE))
    assert result["intake_id"] == "crm-4711"
    intake = await store.get_intake("acme", "crm-4711")
    assert intake is not None and intake.title == "Redesign for Nordic Linens"


async def test_an_intake_id_on_another_event_type_is_not_trusted():
    spoofed = {**EMAIL, "data": {**EMAIL["data"], "intakeId": "crm-4711"}}
    assert intake_id(job(SALES, spoofed)).startswith("int_")


async def test_an_existing_intake_rerouted_keeps_its_history(store, acme):
    assigner = PipelineAssigner(store, bundles_of(acme))
    await assigner.run(job({"pipeline": "general-intake", "stage": "new", "assignee": "u-pat"}, HOST_INTAKE,
                           decision_id="dec_first"))
    result = await assigner.run(job({"pipeline": "sales-inquiries", "stage": "qualified", "assignee": "u-lee"},
                                    HOST_INTAKE, decision_id="dec_second"))
    assert (result["intake_id"], result["pipeline"], result["stage"], result["assignee"]) == (
        "crm-4711", "sales-inquiries", "qualified", "u-lee")
    intake = await store.get_intake("acme", "crm-4711")
    assert intake is not None
    assert (intake.pipeline, intake.stage, intake.assignee) == ("sales-inquiries", "qualified", "u-lee")
    assert [(h["by"], h["pipeline"], h["assignee"]) for h in intake.history] == [
        ("dec_first", "general-intake", "u-pat"), ("dec_second", "sales-inquiries", "u-lee")]
    assert intake.decision_id == "dec_second"
    intakes, _ = await store.list_intakes("acme")
    assert len(intakes) == 1
    assert (await store.snapshot("acme", datetime.now(UTC))).loads == {"u-lee": 1}  # u-pat holds it no more


async def test_a_replayed_action_after_a_later_reroute_has_no_second_effect(store, acme):
    assigner = PipelineAssigner(store, bundles_of(acme))
    first = job({"pipeline": "general-intake", "stage": "new", "assignee": "u-pat"}, HOST_INTAKE, decision_id="dec_a")
    await assigner.run(first)
    await assigner.run(job({"pipeline": "sales-inquiries", "stage": "new", "assignee": "u-lee"}, HOST_INTAKE,
                           decision_id="dec_b"))
    # dec_a's runner crashed after the effect and before marking it done: the action runs again
    again = await assigner.run(dataclasses.replace(first, attempt=2))
    assert again["new"] is False
    intake = await store.get_intake("acme", "crm-4711")
    assert intake is not None
    assert len(intake.history) == 2 and intake.pipeline == "sales-inquiries"


# --------------------------------------------------------------------------- failures

@pytest.mark.parametrize(("params", "named"), [
    ({"pipeline": "billing-team", "stage": "new"}, "pipeline 'billing-team'"),
    ({"pipeline": "", "stage": "new"}, "pipeline ''"),
    ({"pipeline": "sales-inquiries", "stage": "triage"}, "stage 'triage'"),
    ({"pipeline": "sales-inquiries", "stage": "new", "assignee": "u-ghost"}, "assignee 'u-ghost'"),
])
async def test_unknown_pipeline_stage_or_assignee_fails_permanently(store, acme, params, named):
    with pytest.raises(ActionFailed) as err:
        await PipelineAssigner(store, bundles_of(acme)).run(job(params))
    assert err.value.permanent
    assert named in str(err.value)
    assert (await store.list_intakes("acme"))[0] == []


async def test_an_unknown_stage_lists_the_pipelines_stages(store, acme):
    with pytest.raises(ActionFailed) as err:
        await PipelineAssigner(store, bundles_of(acme)).run(job({"pipeline": "sales-inquiries", "stage": "triage"}))
    assert str(err.value) == ("stage 'triage' is not a stage of pipeline 'sales-inquiries' "
                              "(new, qualified, proposal, won, lost)")


async def test_an_org_without_configuration_is_a_transient_failure(store):
    with pytest.raises(ActionFailed) as err:
        await PipelineAssigner(store, bundles_of(None)).run(job(SALES))
    assert not err.value.permanent
    assert "acme" in str(err.value)
    assert (await store.list_intakes("acme"))[0] == []


# --------------------------------------------------------------------------- closed stages and loads

async def test_the_last_stage_is_closed_by_default_and_not_counted_as_load(store, acme):
    assigner = PipelineAssigner(store, bundles_of(acme))
    lost = await assigner.run(job({**SALES, "stage": "lost"}, decision_id="dec_lost"))
    won = await assigner.run(job({**SALES, "stage": "won"}, decision_id="dec_won"))
    lost_intake = await store.get_intake("acme", lost["intake_id"])
    won_intake = await store.get_intake("acme", won["intake_id"])
    assert lost_intake is not None and lost_intake.closed
    assert won_intake is not None and not won_intake.closed  # only the last stage, unless `closed` says more
    snap = await store.snapshot("acme", datetime.now(UTC))
    assert snap.loads == {"u-sam": 1}
    assert "u-sam" in snap.last_assigned  # closed work still counts for round-robin
    assert await store.intake_counts("acme") == {("sales-inquiries", "won"): 1}


async def test_closed_stages_named_in_the_pipeline(store, acme):
    sales = acme.org.pipeline("sales-inquiries")
    assert sales is not None
    closing = Pipeline(id=sales.id, name=sales.name, stages=sales.stages, team=sales.team, closed=["won", "lost"])
    org = acme.org.model_copy(update={"pipelines": [closing if p.id == sales.id else p for p in acme.org.pipelines]})
    assigner = PipelineAssigner(store, bundles_of(dataclasses.replace(acme, org=org)))
    for stage in ("won", "lost", "proposal"):
        result = await assigner.run(job({**SALES, "stage": stage, "assignee": "u-lee"}, decision_id=f"dec_{stage}"))
        intake = await store.get_intake("acme", result["intake_id"])
        assert intake is not None and intake.closed is (stage != "proposal"), stage
    assert (await store.snapshot("acme", datetime.now(UTC))).loads == {"u-lee": 1}
    open_, _ = await store.list_intakes("acme", closed=False)
    assert [i.stage for i in open_] == ["proposal"]


async def test_intakes_of_another_org_are_not_visible(store, acme):
    result = await PipelineAssigner(store, bundles_of(acme)).run(job(SALES))
    assert await store.get_intake("brightsmile", result["intake_id"]) is None
    assert (await store.list_intakes("brightsmile"))[0] == []
    assert (await store.snapshot("brightsmile", datetime.now(UTC))).loads == {}
