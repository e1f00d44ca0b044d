"""Plan: from an intent and a decision type to concrete actions, through the policy's routing table
(engine/plan.py)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from engine.config import DecisionType, Intent, Notify, Route, User
from engine.loader import OrgBundle
from engine.plan import Plan, make_plan, pick_assignee
from engine.ports import Busy, StaticState
from engine.text import extract

NY = ZoneInfo("America/New_York")
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=NY)  # a Tuesday
BOOKING = {"form": "booking", "host": "u-sam", "requested_start": "2026-12-08T14:00", "name": "Luca Bianchi",
           "email": "luca@example.com", "purpose": "Discuss the new menu pages"}


def plan(bundle: OrgBundle, intent: Intent, dtype: DecisionType | None = None, data: dict[str, Any] | None = None,
         priority: int = 3, state: StaticState | None = None, now: datetime = NOW,
         etype: str = "email:received") -> Plan:
    data = data or {}
    st = state or StaticState()
    ev = {"org": "acme", "type": etype, "source": "EMAIL", "data": data}
    return make_plan(bundle, intent, dtype, priority, ev, extract(data), st, st, now)


def kinds(p: Plan) -> list[str]:
    return [str(a.type) for a in p.actions]


def params(p: Plan, kind: DecisionType) -> dict[str, Any]:
    [a] = [a for a in p.actions if a.type == kind]
    return a.params


# --------------------------------------------------------------------------- assignee by role and load

def test_assignee_has_the_lowest_load_relative_to_capacity(acme_bundle: OrgBundle) -> None:
    org = acme_bundle.org  # ADMINs: u-omar (capacity 20), u-ana (capacity 15)
    user, why = pick_assignee(org, "ADMIN", StaticState(loads={"u-omar": 10, "u-ana": 6}), [])
    assert user is not None and user.id == "u-ana"  # 6/15 = 0.4 beats 10/20 = 0.5
    assert why == "u-ana has the lightest ADMIN load (6/15)"
    user, _ = pick_assignee(org, "ADMIN", StaticState(loads={"u-omar": 4, "u-ana": 6}), [])
    assert user is not None and user.id == "u-omar"


def test_users_at_capacity_are_skipped(acme_bundle: OrgBundle) -> None:
    org = acme_bundle.org  # SALES: u-sam and u-lee, capacity 12 each
    user, why = pick_assignee(org, "SALES", StaticState(loads={"u-sam": 12, "u-lee": 13}), [])
    assert user is None
    assert why == "every SALES is at capacity (u-sam 12/12, u-lee 13/12)"
    p = plan(acme_bundle, Intent.SALES_INQUIRY, state=StaticState(loads={"u-sam": 12, "u-lee": 13}))
    assert params(p, DecisionType.ASSIGN_PIPELINE)["assignee"] is None
    assert p.notes[0] == "route to sales-inquiries, unassigned" and "at capacity" in p.notes[1]
    assert params(p, DecisionType.SEND_NOTIFICATION)["to"] == ["u-sam", "u-lee"]  # the team still hears


def test_ties_go_to_the_pipeline_team(acme_bundle: OrgBundle) -> None:
    outsider = User(id="u-abe", name="Abe Outside", email="abe@acme.example", role="SALES", capacity=12)
    org = acme_bundle.org.model_copy(update={"users": [*acme_bundle.org.users, outsider]})
    idle = StaticState()
    user, _ = pick_assignee(org, "SALES", idle, ["u-sam", "u-lee"])
    assert user is not None and user.id == "u-lee"  # in the team; then by id
    user, _ = pick_assignee(org, "SALES", idle, [])
    assert user is not None and user.id == "u-abe"  # no team preference: by id
    # through the plan: the route's pipeline team is preferred
    p = plan(dataclasses.replace(acme_bundle, org=org), Intent.SALES_INQUIRY)
    assert params(p, DecisionType.ASSIGN_PIPELINE)["assignee"] == "u-lee"


def test_no_user_with_the_role(acme_bundle: OrgBundle) -> None:
    assert pick_assignee(acme_bundle.org, "DESIGNER", StaticState(), []) == (None, "no user holds role DESIGNER")


# --------------------------------------------------------------------------- routing to a pipeline

def test_sales_inquiry_is_assigned_and_the_team_notified(acme_bundle: OrgBundle) -> None:
    p = plan(acme_bundle, Intent.SALES_INQUIRY, state=StaticState(loads={"u-lee": 5}))
    assert p.decision_type == DecisionType.ASSIGN_PIPELINE
    assert kinds(p) == ["ASSIGN_PIPELINE", "SEND_NOTIFICATION"]
    assert params(p, DecisionType.ASSIGN_PIPELINE) == {
        "pipeline": "sales-inquiries", "stage": "new", "assignee": "u-sam", "priority": 3}
    assert params(p, DecisionType.SEND_NOTIFICATION) == {
        "to": ["u-sam", "u-lee"], "template": "new_sales_inquiry", "priority": 3, "immediate": False}
    assert p.notes[0] == "route to sales-inquiries, assign u-sam"


def test_notifications_by_role_with_the_assignee_first(acme_bundle: OrgBundle) -> None:
    p = plan(acme_bundle, Intent.SUPPORT_REQUEST, state=StaticState(loads={"u-kim": 5}))
    assert params(p, DecisionType.ASSIGN_PIPELINE)["assignee"] == "u-raj"
    note = params(p, DecisionType.SEND_NOTIFICATION)
    assert note["to"] == ["u-raj", "u-kim"] and note["template"] == "new_support_request"


def test_unassigned_route_notifies_its_roles(acme_bundle: OrgBundle) -> None:
    p = plan(acme_bundle, Intent.PARTNERSHIP)
    assert params(p, DecisionType.ASSIGN_PIPELINE)["assignee"] is None
    assert params(p, DecisionType.SEND_NOTIFICATION)["to"] == ["u-omar", "u-ana"]


def test_priority_five_is_notified_immediately(acme_bundle: OrgBundle) -> None:
    urgent = plan(acme_bundle, Intent.SUPPORT_REQUEST, priority=5)
    normal = plan(acme_bundle, Intent.SUPPORT_REQUEST, priority=4)
    assert params(urgent, DecisionType.SEND_NOTIFICATION)["immediate"] is True
    assert params(normal, DecisionType.SEND_NOTIFICATION)["immediate"] is False
    assert params(urgent, DecisionType.ASSIGN_PIPELINE)["priority"] == 5


def test_notification_route_members_are_deduplicated(acme_bundle: OrgBundle) -> None:
    route = Route(pipeline="general-intake", assignee_role="PM",
                  notify=Notify(users=["u-pat", "u-omar"], roles=["ADMIN"], team=True), automations=["crm-sync"])
    policy = acme_bundle.policy.model_copy(update={"routing": {Intent.PROJECT: route}})
    p = plan(dataclasses.replace(acme_bundle, policy=policy), Intent.PROJECT)
    assert params(p, DecisionType.SEND_NOTIFICATION)["to"] == ["u-pat", "u-omar", "u-ana"]
    assert kinds(p) == ["ASSIGN_PIPELINE", "SEND_NOTIFICATION", "TRIGGER_AUTOMATION"]
    assert params(p, DecisionType.TRIGGER_AUTOMATION) == {"workflow": "crm-sync"}


# --------------------------------------------------------------------------- no action, escalation

def test_spam_needs_no_action(acme_bundle: OrgBundle) -> None:
    p = plan(acme_bundle, Intent.SPAM)
    assert (p.decision_type, p.actions, p.notes) == (DecisionType.NO_ACTION, [], ["SPAM needs no action"])


def test_a_route_without_a_pipeline_is_escalated(acme_bundle: OrgBundle) -> None:
    policy = acme_bundle.policy.model_copy(update={"routing": {
        **acme_bundle.policy.routing, Intent.PARTNERSHIP: Route(notify=Notify(roles=["ADMIN"]))}})
    p = plan(dataclasses.replace(acme_bundle, policy=policy), Intent.PARTNERSHIP, priority=4)
    assert p.decision_type == DecisionType.ESCALATE
    assert p.escalated == "the routing table has no pipeline for PARTNERSHIP"
    assert [a.params for a in p.actions] == [{"address": "ops@acme.example", "to": ["u-omar", "u-ana"],
                                              "reason": "the routing table has no pipeline for PARTNERSHIP",
                                              "priority": 4}]


def test_an_intent_without_a_route_is_escalated(acme_bundle: OrgBundle) -> None:
    policy = acme_bundle.policy.model_copy(update={"routing": {}})
    p = plan(dataclasses.replace(acme_bundle, policy=policy), Intent.OTHER)
    assert p.decision_type == DecisionType.ESCALATE and kinds(p) == ["ESCALATE"]
    assert p.escalated == "OTHER is escalated to a person"


def test_a_notification_event_notifies_the_named_user(acme_bundle: OrgBundle) -> None:
    p = plan(acme_bundle, Intent.SCHEDULING, DecisionType.SEND_NOTIFICATION, {"host": "u-lee"}, etype="reminder:due")
    assert p.decision_type == DecisionType.SEND_NOTIFICATION
    assert params(p, DecisionType.SEND_NOTIFICATION)["to"] == ["u-lee"]
    assert params(p, DecisionType.SEND_NOTIFICATION)["template"] == "reminder_due"


# --------------------------------------------------------------------------- bookings

def test_booking_creates_the_event_with_reminders(acme_bundle: OrgBundle) -> None:
    p = plan(acme_bundle, Intent.SCHEDULING, data=BOOKING)
    assert p.decision_type == DecisionType.CREATE_EVENT
    assert kinds(p) == ["CREATE_EVENT", "SEND_NOTIFICATION"]
    start = datetime(2026, 12, 8, 14, 0, tzinfo=NY)
    ev = params(p, DecisionType.CREATE_EVENT)
    assert ev == {
        "host": "u-sam", "start": start.isoformat(), "end": (start + timedelta(minutes=30)).isoformat(),
        "duration_minutes": 30, "title": "Discuss the new menu pages",
        "attendee": {"name": "Luca Bianchi", "email": "luca@example.com"},
        "reminders": [(start - timedelta(minutes=1440)).isoformat(), (start - timedelta(minutes=60)).isoformat()],
        "moved": False}
    assert params(p, DecisionType.SEND_NOTIFICATION) == {
        "to": ["u-sam"], "template": "booking_confirmation", "priority": 3, "immediate": False,
        "start": start.isoformat(), "attach_ics": True}
    assert p.booking is not None and p.booking.status == "requested"


def test_booking_takes_its_duration_from_the_form(acme_bundle: OrgBundle) -> None:
    p = plan(acme_bundle, Intent.SCHEDULING, data={**BOOKING, "duration_minutes": 60})
    ev = params(p, DecisionType.CREATE_EVENT)
    assert ev["duration_minutes"] == 60 and ev["end"] == datetime(2026, 12, 8, 15, 0, tzinfo=NY).isoformat()


def test_booking_on_a_busy_slot_is_moved(acme_bundle: OrgBundle) -> None:
    busy = StaticState(calendar=[Busy("u-sam", datetime(2026, 12, 8, 14, tzinfo=NY), datetime(2026, 12, 8, 15, tzinfo=NY))])
    p = plan(acme_bundle, Intent.SCHEDULING, data=BOOKING, state=busy)
    assert p.decision_type == DecisionType.CREATE_EVENT
    ev = params(p, DecisionType.CREATE_EVENT)
    assert ev["moved"] is True
    start = datetime.fromisoformat(ev["start"])
    end = datetime.fromisoformat(ev["end"])
    assert start.date() == datetime(2026, 12, 8).date()
    assert end <= datetime(2026, 12, 8, 14, tzinfo=NY) or start >= datetime(2026, 12, 8, 15, tzinfo=NY)
    assert "u-sam is busy 14:00–15:00" in p.notes[0]
    assert params(p, DecisionType.SEND_NOTIFICATION)["start"] == ev["start"]


def test_another_hosts_calendar_does_not_matter(acme_bundle: OrgBundle) -> None:
    busy = StaticState(calendar=[Busy("u-lee", datetime(2026, 12, 8, 14, tzinfo=NY), datetime(2026, 12, 8, 15, tzinfo=NY))])
    assert params(plan(acme_bundle, Intent.SCHEDULING, data=BOOKING, state=busy), DecisionType.CREATE_EVENT)["moved"] is False


@pytest.mark.parametrize(("data", "reason"), [
    ({**BOOKING, "host": "u-ghost"},
     "the booking names host 'u-ghost', who is not a user of acme; a person must pick the host"),
    ({**BOOKING, "host": "u-kim"}, "u-kim does not take bookings; a person must pick the host"),
    ({**BOOKING, "requested_start": "whenever suits"},
     "The requested start “whenever suits” is not a valid ISO-8601 date and time; not guessing."),
    ({**BOOKING, "requested_start": "2026-11-20T10:00"}, None),  # in the past
    ({k: v for k, v in BOOKING.items() if k != "host"}, "No host is given, so there is no calendar to book on."),
], ids=["unknown host", "host without bookings", "unparseable time", "past time", "no host"])
def test_bookings_that_need_a_person_are_escalated(acme_bundle: OrgBundle, data: dict[str, Any],
                                                   reason: str | None) -> None:
    p = plan(acme_bundle, Intent.SCHEDULING, data=data, priority=4)
    assert p.decision_type == DecisionType.ESCALATE
    assert kinds(p) == ["ESCALATE"]
    esc = p.actions[0].params
    assert esc["address"] == "ops@acme.example" and esc["to"] == ["u-omar", "u-ana"] and esc["priority"] == 4
    assert esc["reason"] == p.escalated
    if reason is not None:
        assert p.escalated == reason
    else:
        assert p.escalated is not None and "in the past" in p.escalated


def test_booking_planned_on_a_leap_day(acme_bundle: OrgBundle) -> None:
    p = plan(acme_bundle, Intent.SCHEDULING, data={**BOOKING, "requested_start": "2028-03-01T14:00"},
             now=datetime(2028, 2, 29, 9, 0, tzinfo=NY))
    assert p.decision_type == DecisionType.CREATE_EVENT
    assert params(p, DecisionType.CREATE_EVENT)["start"] == datetime(2028, 3, 1, 14, 0, tzinfo=NY).isoformat()


# --------------------------------------------------------------------------- moving and cancelling a meeting

ADA = "Ada Lovelace <ada@example.com>"
MEETINGS = StaticState(calendar=[
    Busy("u-lee", datetime(2026, 12, 8, 10, tzinfo=NY), datetime(2026, 12, 8, 10, 30, tzinfo=NY), "Intro call",
         id="cev_1", attendees=("ada@example.com",)),
    Busy("u-sam", datetime(2026, 12, 10, 14, tzinfo=NY), datetime(2026, 12, 10, 15, tzinfo=NY), "Proposal review",
         id="cev_2", attendees=("Ada@Example.com", "bo@example.com")),
    Busy("u-lee", datetime(2026, 12, 8, 15, tzinfo=NY), datetime(2026, 12, 8, 16, tzinfo=NY), "Workshop",
         id="cev_3", attendees=("cy@example.com",)),
    Busy("u-lee", datetime(2026, 12, 8, 16, tzinfo=NY), datetime(2026, 12, 8, 16, 30, tzinfo=NY), "Not ours"),
])


def change(bundle: OrgBundle, dtype: DecisionType, text: str, sender: str = ADA,
           state: StaticState = MEETINGS) -> Plan:
    return plan(bundle, Intent.SCHEDULING, dtype, {"from": sender, "subject": "our meeting", "text": text},
                state=state)


def test_a_move_to_a_free_time_updates_the_meeting(acme_bundle: OrgBundle) -> None:
    p = change(acme_bundle, DecisionType.UPDATE_EVENT, "Hi Lee, can we move Tuesday's call to 2pm?")
    assert p.decision_type == DecisionType.UPDATE_EVENT
    assert kinds(p) == ["UPDATE_EVENT", "SEND_NOTIFICATION"]
    start = datetime(2026, 12, 8, 14, tzinfo=NY)
    assert params(p, DecisionType.UPDATE_EVENT) == {
        "event_id": "cev_1", "host": "u-lee", "start": start.isoformat(),
        "end": (start + timedelta(minutes=30)).isoformat(), "duration_minutes": 30, "title": "Intro call",
        "previous_start": datetime(2026, 12, 8, 10, tzinfo=NY).isoformat(), "moved": False}
    assert params(p, DecisionType.SEND_NOTIFICATION) == {
        "to": ["u-lee"], "template": "booking_updated", "priority": 3, "immediate": False,
        "start": start.isoformat(), "attach_ics": True}
    assert p.notes[0].startswith("move Intro call with u-lee from Tue 8 Dec 2026 10:00 to Tue 8 Dec 2026 14:00")


def test_a_move_onto_a_busy_time_goes_to_the_nearest_free_slot(acme_bundle: OrgBundle) -> None:
    p = change(acme_bundle, DecisionType.UPDATE_EVENT, "can we move Tuesday's call to 3pm?")  # Workshop 15–16
    ev = params(p, DecisionType.UPDATE_EVENT)
    assert ev["moved"] is True and ev["start"] == datetime(2026, 12, 8, 14, 30, tzinfo=NY).isoformat()
    assert "u-lee is busy 15:00–16:00 (Workshop)" in p.notes[1]


def test_the_meeting_itself_does_not_block_its_new_time(acme_bundle: OrgBundle) -> None:
    p = change(acme_bundle, DecisionType.UPDATE_EVENT, "can we move Tuesday's call to 10:15am?")
    assert params(p, DecisionType.UPDATE_EVENT)["start"] == datetime(2026, 12, 8, 10, 15, tzinfo=NY).isoformat()


def test_a_cancel_request_cancels_the_meeting(acme_bundle: OrgBundle) -> None:
    p = change(acme_bundle, DecisionType.CANCEL_EVENT, "I need to cancel our meeting on Thursday, sorry.")
    assert p.decision_type == DecisionType.CANCEL_EVENT
    assert kinds(p) == ["CANCEL_EVENT", "SEND_NOTIFICATION"]
    assert params(p, DecisionType.CANCEL_EVENT) == {
        "event_id": "cev_2", "host": "u-sam", "start": datetime(2026, 12, 10, 14, tzinfo=NY).isoformat(),
        "title": "Proposal review"}
    assert params(p, DecisionType.SEND_NOTIFICATION)["template"] == "booking_cancelled"


def test_the_guest_hears_when_email_is_configured(acme_bundle: OrgBundle) -> None:
    from engine.config import EmailSettings, Notifications

    notifications = Notifications(email=EmailSettings.model_validate({"from": "hello@acme.example"}))
    policy = acme_bundle.policy.model_copy(update={"notifications": notifications})
    p = change(dataclasses.replace(acme_bundle, policy=policy), DecisionType.CANCEL_EVENT,
               "I need to cancel our meeting on Thursday")
    guest = p.actions[-1].params
    assert guest["template"] == "booking_cancelled_guest" and guest["to_email"] == ["ada@example.com"]
    assert guest["to"] == [] and guest["attach_ics"] is True


@pytest.mark.parametrize(("dtype", "text", "sender", "reason"), [
    (DecisionType.UPDATE_EVENT, "can we move our call to 3pm?", "stranger@example.com",
     "no upcoming event with stranger@example.com as an attendee"),
    (DecisionType.CANCEL_EVENT, "I need to cancel our meeting", ADA,
     "2 upcoming events of ada@example.com could be meant (Intro call with u-lee on Tue 8 Dec 2026 10:00; "
     "Proposal review with u-sam on Thu 10 Dec 2026 14:00)"),
    (DecisionType.CANCEL_EVENT, "I need to cancel our meeting on Friday", ADA,
     "none of the upcoming events of ada@example.com is on Friday"),
    (DecisionType.UPDATE_EVENT, "can we move Tuesday's call to tomorrow at 3pm?", ADA,
     "“tomorrow”, which is relative"),
    (DecisionType.UPDATE_EVENT, "can we move Tuesday's call?", ADA, "does not say when to move it to"),
    (DecisionType.UPDATE_EVENT, "can we move Tuesday's call to 3?", ADA, "“3” without am/pm"),
    (DecisionType.UPDATE_EVENT, "can we move Tuesday's call to 12:30pm?", ADA, None),  # lunch: moved, not escalated
    (DecisionType.UPDATE_EVENT, "can we move Tuesday's call to Saturday at 10am?", ADA, None),
], ids=["unknown sender", "ambiguous", "no event that day", "relative time", "no new time", "bare hour",
        "lunch", "weekend"])
def test_changes_that_need_a_person_are_escalated(acme_bundle: OrgBundle, dtype: DecisionType, text: str,
                                                  sender: str, reason: str | None) -> None:
    p = change(acme_bundle, dtype, text, sender)
    if reason is None:
        assert p.decision_type == dtype and params(p, dtype)["moved"] is True
        return
    assert p.decision_type == DecisionType.ESCALATE and kinds(p) == ["ESCALATE"]
    assert p.escalated is not None and reason in p.escalated, p.escalated
    assert p.actions[0].params["reason"] == p.escalated


def test_a_change_without_a_sender_is_escalated(acme_bundle: OrgBundle) -> None:
    p = plan(acme_bundle, Intent.SCHEDULING, DecisionType.CANCEL_EVENT, {"text": "cancel our meeting"},
             state=MEETINGS)
    assert p.decision_type == DecisionType.ESCALATE and "no sender address" in (p.escalated or "")


def test_bookings_honour_the_policy_buffer(acme_bundle: OrgBundle) -> None:
    from engine.config import Scheduling

    scheduling = Scheduling(buffer_minutes=30)
    policy = acme_bundle.policy.model_copy(update={"scheduling": scheduling})
    busy = StaticState(calendar=[Busy("u-sam", datetime(2026, 12, 8, 13, tzinfo=NY), datetime(2026, 12, 8, 13, 45, tzinfo=NY))])
    p = plan(dataclasses.replace(acme_bundle, policy=policy), Intent.SCHEDULING, data=BOOKING, state=busy)
    ev = params(p, DecisionType.CREATE_EVENT)
    assert ev["moved"] is True and ev["start"] == datetime(2026, 12, 8, 14, 15, tzinfo=NY).isoformat()
