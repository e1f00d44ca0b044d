"""Notification templates: the built-in texts, the context they are rendered with, and the compile check.

Templates are Jinja2 in a sandbox (an operator writes them in a policy file; they must not reach Python
internals). Autoescape is off: the output is plain-text email and in-app text, never HTML. A field a
template names but an event lacks renders empty (`ChainableUndefined`): an operator's template written for
email events must not fail on a form. A policy's `notifications.templates` override and extend the
built-ins; an unknown name renders the generic text, which says which template was missing.
Pure logic: no I/O. Jinja2 is imported on first use (the loader calls `config_errors` on every policy).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from engine.config import OrgConfig, Threshold
from engine.errors import ConfigError

SUBJECT_MAX = 300
BODY_MAX = 100_000
EXCERPT_CHARS = 600
_BODY_FIELDS = ("text", "message", "description", "body", "notes", "comment")
_SUBJECT_FIELDS = ("subject", "title", "purpose")

# --------------------------------------------------------------------------- the built-in texts

_HELLO = "{% if user %}Hi {{ user.name }},\n\n{% endif %}"

# What happened, for a person who has not seen the event: shared by the notices and the escalations.
_EVENT_BLOCK = """\
Event: {{ event.type or "unknown" }} from {{ event.source or "unknown source" }}{{ (" (id " ~ event.id ~ ")") if event.id else "" }}
{% if sender %}
From: {{ sender }}
{% endif %}
{% if data.subject %}
Subject: {{ data.subject }}
{% endif %}
{% for name, value in fields %}
{{ name }}: {{ value }}
{% endfor %}
{% if excerpt %}

{{ excerpt }}
{% endif %}
"""

_DECISION_BLOCK = """\
{% if decision.id %}
Decision {{ decision.id }}: {{ decision.intent }} → {{ decision.decision_type }}, priority {{ priority }}, status {{ decision.status }}
Decided by {{ decision.decided_by }}{{ (" with confidence %.2f" % decision.confidence) if decision.confidence is number else "" }}
{% if thresholds %}
Thresholds for {{ decision.decision_type }}: auto-execute at {{ "%.2f"|format(thresholds.auto_execute) }}, approval at {{ "%.2f"|format(thresholds.require_approval) }}
{% endif %}
{% if gate %}
Gate: {{ gate }}
{% endif %}
{% if decision.matched_rules %}
Matched rules: {{ decision.matched_rules|join(", ") }}
{% endif %}
{% if decision.reasoning %}
Reasoning: {{ decision.reasoning }}
{% endif %}
{% endif %}
"""

_INTAKE_NAMES = {
    "new_intake": "New intake",
    "new_sales_inquiry": "New sales inquiry",
    "new_support_request": "New support request",
    "new_billing_question": "New billing question",
    "new_partnership": "New partnership inquiry",
    "new_project": "New project inquiry",
    # brightsmile's routing table
    "new_patient_inquiry": "New patient inquiry",
    "patient_care_question": "Patient care question",
    "billing_question": "Billing question",
    "new_partner_contact": "New partner contact",
    "community_request": "Community request",
}


def _intake(headline: str) -> tuple[str, str]:
    subject = ("[{{ org.name }}] " + headline + "{{ ' (URGENT)' if urgent else '' }}: "
               "{{ summary or event.type or 'no subject' }}")
    body = _HELLO + headline + """ for {{ org.name }}{{ (', marked URGENT (priority %s)' % priority) if urgent else '' }}.

{% if assignment.pipeline %}
Pipeline: {{ assignment.pipeline }}{{ (', stage ' ~ assignment.stage) if assignment.stage else '' }}
Assigned to: {{ assignment.assignee_name or assignment.assignee or 'nobody yet' }}
{% if assignment.intake_id %}
Intake: {{ assignment.intake_id }}
{% endif %}

{% endif %}
""" + _EVENT_BLOCK + """
{% if decision.reasoning %}
Why: {{ decision.reasoning }}
{% endif %}
{% if decision.id %}
Decision: {{ links.decision }}
{% endif %}
"""
    return subject, body


_WHEN = ("{{ local(booking.start) }}{{ (' until ' ~ local(booking.end, 'time')) if booking.end else '' }}")

_BOOKING_HOST = (
    "[{{ org.name }}] {{ booking.headline or 'Booking' }}: {{ booking.title or data.purpose or 'meeting' }}"
    "{{ (', ' ~ local(booking.start)) if booking.start else '' }}",
    _HELLO + """{{ booking.headline or 'Booking' }}: {{ booking.title or data.purpose or 'meeting' }}

{% if booking.start %}
When: """ + _WHEN + """
{% endif %}
{% if booking.previous_start %}
Was: {{ local(booking.previous_start) }}
{% endif %}
{% if booking.host_name %}
Host: {{ booking.host_name }}
{% endif %}
{% if guest %}
With: {{ guest }}
{% endif %}
{% if booking.reason %}
Note: {{ booking.reason }}
{% endif %}
{% if excerpt %}

{{ excerpt }}
{% endif %}
{% if attached %}

The calendar invitation is attached.
{% endif %}
{% if decision.id %}
Decision: {{ links.decision }}
{% endif %}
""",
)

_BOOKING_GUEST = (
    "{{ 'Cancelled: your' if booking.status == 'cancelled' else 'Your' }} appointment with {{ org.name }}"
    "{{ (', ' ~ local(booking.start)) if booking.start else '' }}",
    """Hello{{ (' ' ~ data.name) if data.name else '' }},

{% set what = 'your appointment' ~ ((' "' ~ booking.title ~ '"') if booking.title else '') %}
{% if booking.status == 'cancelled' %}
{{ what }} on {{ local(booking.start) }} is cancelled.
{% elif booking.status == 'updated' %}
{{ what }} has moved to """ + _WHEN + """.
{% else %}
{{ what }} is confirmed for """ + _WHEN + """.
{% if booking.status == 'moved' %}
The time you asked for was taken, so this is the nearest free time.
{% endif %}
{% endif %}
{% if booking.host_name %}

With: {{ booking.host_name }}
{% endif %}
{% if attached %}

The calendar invitation is attached.
{% endif %}

To change it, reply to this message.

{{ org.name }}
""",
)

_EVENT_NOTICE = (
    "[{{ org.name }}] {{ event.type or 'notice' }}: {{ summary or 'no subject' }}",
    _HELLO + _EVENT_BLOCK + "{% if decision.id %}\nDecision: {{ links.decision }}\n{% endif %}",
)

_ESCALATION_WHAT_TO_DO = """\

What to do
{% if decision.status == "REQUIRES_APPROVAL" %}
This decision is held for approval.
{% endif %}
Review it: GET {{ links.decision }}
Approve it: POST {{ links.approve }}
Reject it: POST {{ links.reject }} with {"reason": "..."}
Or handle the request by hand and reject the decision with the reason.
"""

BUILTINS: dict[str, tuple[str, str]] = {
    **{name: _intake(headline) for name, headline in _INTAKE_NAMES.items()},
    "booking_confirmation": _BOOKING_HOST,
    "appointment_confirmation": _BOOKING_HOST,  # brightsmile's name for the host's notice
    "booking_updated": _BOOKING_HOST,
    "booking_cancelled": _BOOKING_HOST,
    "booking_confirmation_guest": _BOOKING_GUEST,
    "booking_updated_guest": _BOOKING_GUEST,
    "booking_cancelled_guest": _BOOKING_GUEST,
    "reminder_due": (
        "[{{ org.name }}] Reminder: {{ data.title or 'appointment' }}{{ (', ' ~ local(data.start)) if data.start else '' }}",
        _HELLO + """Reminder: {{ data.title or 'an appointment' }} starts {{ local(data.start) or 'soon' }}{{ (' and ends ' ~ local(data.end, 'time')) if data.end else '' }}.
{% if data.attendees %}
With: {% for a in data.attendees %}{{ a.name or a.email or a }}{{ (' <' ~ a.email ~ '>') if a.name and a.email else '' }}{{ '' if loop.last else ', ' }}{% endfor %}

{% endif %}
""",
    ),
    "pipeline_stage_changed": (
        "[{{ org.name }}] {{ data.title or data.intakeId or 'An intake' }} moved to {{ data.stage or 'another stage' }}",
        _HELLO + """{{ data.title or 'An intake' }}{{ (' (' ~ data.intakeId ~ ')') if data.intakeId else '' }} in {{ data.pipeline or 'its pipeline' }} moved from {{ data.from_stage or '?' }} to {{ data.stage or '?' }}{{ (' by ' ~ data.by) if data.by else '' }}.
{% if data.assignee %}
Assigned to: {{ data.assignee }}{{ (' (was ' ~ data.from_assignee ~ ')') if data.from_assignee and data.from_assignee != data.assignee else '' }}
{% endif %}
{% if data.note %}
Note: {{ data.note }}
{% endif %}
{% if data.closed %}
The intake is closed.
{% endif %}
""",
    ),
    "automation_completed": (
        "[{{ org.name }}] Automation {{ data.workflow or data.name or '' }} {{ data.status or 'completed' }}",
        _HELLO + "The automation {{ data.workflow or data.name or '(unnamed)' }} reported "
        "{{ data.status or 'completion' }}.\n\n" + _EVENT_BLOCK,
    ),
    "email_received": _EVENT_NOTICE,
    "form_submitted": _EVENT_NOTICE,
    "booking_created": _EVENT_NOTICE,
    "intake_created": _EVENT_NOTICE,
    "schedule_tick": _EVENT_NOTICE,
    "notice": _EVENT_NOTICE,
    "escalation": (
        "[{{ org.name }}] Needs a person: {{ reason or summary or 'a decision' }}",
        _HELLO + "A decision needs a person.\n\nReason: {{ reason or 'not given' }}\n\n" + _EVENT_BLOCK + "\n"
        + _DECISION_BLOCK + _ESCALATION_WHAT_TO_DO,
    ),
    "action_failed": (
        "[{{ org.name }}] Action failed: {{ failed_action or 'an action' }}"
        "{% if decision.id %} of decision {{ decision.id }}{% endif %}",
        _HELLO + "An action failed for good and was not retried further.\n\n"
        "Action: {{ failed_action or 'unknown' }}\nError: {{ error or reason or 'not given' }}\n\n"
        "The decision is now FAILED and its later actions were not run.\n\n" + _EVENT_BLOCK + "\n"
        + _DECISION_BLOCK +
        "\nWhat to do\nSee the decision and its outbox: GET {{ links.decision }}\n"
        "Fix the cause (the error above says what), then retry the action from the outbox, "
        "or do by hand what it should have done.\n",
    ),
}
"""Subject and body of every template the shipped policies and the planner use."""

FALLBACK: tuple[str, str] = (
    "[{{ org.name }}] {{ missing_template }}: {{ summary or event.type or 'notification' }}",
    "(There is no template named '{{ missing_template }}': add one under notifications.templates in the "
    "policy. This is the generic text.)\n\n" + _HELLO + _EVENT_BLOCK + "\n" + _DECISION_BLOCK,
)
"""Rendered for a template name that is neither in the policy nor built in."""


# --------------------------------------------------------------------------- rendering

@functools.cache
def _env() -> Any:
    from jinja2 import ChainableUndefined
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(autoescape=False, undefined=ChainableUndefined, trim_blocks=True,
                                lstrip_blocks=True, keep_trailing_newline=False)


@functools.lru_cache(maxsize=512)
def _compile(source: str) -> Any:
    return _env().from_string(source)


def _subject(text: str) -> str:
    # One header line: a template's line breaks must never reach the email header.
    return " ".join(text.split())[:SUBJECT_MAX]


_BLANKS = re.compile(r"\n{3,}")


def _body(text: str) -> str:
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return _BLANKS.sub("\n\n", text).strip()[:BODY_MAX]


def _render_pair(pair: tuple[str, str], context: Mapping[str, Any]) -> tuple[str, str]:
    return _subject(_compile(pair[0]).render(context)), _body(_compile(pair[1]).render(context))


def render(name: str, policy_templates: Mapping[str, Any], context: Mapping[str, Any],
           errors: list[str] | None = None) -> tuple[str, str]:
    """Subject and body of template `name`: the policy's own if it defines one, else the built-in, else the
    generic text naming the missing template. A policy template that fails while rendering (e.g. arithmetic on
    a missing field) falls back to the built-in text, and the failure is appended to `errors`."""
    ctx = {**context, "template": name}
    own = policy_templates.get(name)
    if own is not None:
        pair = (own.subject, own.body) if hasattr(own, "subject") else (own["subject"], own["body"])
        try:
            return _render_pair(pair, ctx)
        except Exception as exc:  # a sandbox refusal, a type error, a syntax error: the person still hears
            if errors is not None:
                errors.append(f"policy template '{name}' failed to render ({type(exc).__name__}: {exc}); "
                              "the built-in text was used")
    builtin = BUILTINS.get(name)
    if builtin is None:
        return _render_pair(FALLBACK, {**ctx, "missing_template": name})
    return _render_pair(builtin, ctx)


def check(templates: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Compile every subject and body; `(name, field, message)` for each one that does not compile."""
    from jinja2 import TemplateSyntaxError

    out = []
    for name, tpl in templates.items():
        for fld in ("subject", "body"):
            source = getattr(tpl, fld) if hasattr(tpl, fld) else tpl.get(fld)
            if not isinstance(source, str):
                continue
            try:
                _env().parse(source)
            except TemplateSyntaxError as exc:
                where = f" (line {exc.lineno} of the template)" if source.count("\n") and exc.lineno else ""
                out.append((name, fld, f"{exc.message}{where}"))
    return out


def config_errors(templates: Mapping[str, Any], docs: Mapping[str, Any], policy_path: str) -> list[ConfigError]:
    """`check` as `invalid_template` errors, each at the line of the template's field in the policy file that
    defines it (the org's own policy first, then the files it extends). `docs` maps paths to `engine.loader.Located`."""
    if not templates:
        return []
    found = check(templates)
    errors = []
    ordered = [policy_path, *(p for p in docs if p != policy_path)]
    for name, fld, message in found:
        path, line = policy_path, 0
        for candidate in ordered:
            doc = docs.get(candidate)
            lines = getattr(doc, "lines", None) or {}
            for loc in (("notifications", "templates", name, fld), ("notifications", "templates", name)):
                if loc in lines:
                    path, line = candidate, lines[loc]
                    break
            else:
                continue
            break
        errors.append(ConfigError(path, line, "invalid_template",
                                  f"notifications.templates.{name}.{fld} does not compile: {message}"))
    return errors


# --------------------------------------------------------------------------- the context

def _local_formatter(tz: ZoneInfo) -> Callable[..., str]:
    def local(value: Any, part: str = "full") -> str:
        """An ISO-8601 time (or datetime) in the org's zone: 'Tue 8 Dec 2026, 10:00 EST' (part='time': '10:30')."""
        if not value or not isinstance(value, (str, datetime)):
            return ""
        try:
            dt = value if isinstance(value, datetime) else datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return str(value)
        if dt.tzinfo is not None:
            dt = dt.astimezone(tz)
        if part == "time":
            return f"{dt:%H:%M}"
        return f"{dt:%a} {dt.day} {dt:%b %Y, %H:%M}" + (f" {dt:%Z}" if dt.tzinfo is not None else "")

    return local


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _sender(data: Mapping[str, Any]) -> str:
    if isinstance(data.get("from"), str):
        return str(data["from"])
    name, email = data.get("name"), data.get("email")
    if isinstance(name, str) and isinstance(email, str):
        return f"{name} <{email}>"
    return str(email or name or "") if isinstance(email or name, str) else ""


def _fields(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The event's short scalar fields (form fields), for a person to read; long text goes in the excerpt."""
    skip = {"from", "subject", "html", "headers", *_BODY_FIELDS}
    out = []
    for k, v in data.items():
        if k in skip or isinstance(v, (dict, list)) or v is None or v == "":
            continue
        out.append((str(k), _clip(str(v), 200)))
        if len(out) == 20:
            break
    return out


def _excerpt(data: Mapping[str, Any]) -> str:
    parts = [str(data[k]) for k in _BODY_FIELDS if isinstance(data.get(k), str) and data[k].strip()]
    text = "\n".join(parts)
    text = re.sub(r"[ \t]+", " ", text)
    return _clip(re.sub(r"\n\s*\n+", "\n\n", text), EXCERPT_CHARS) if text else ""


def _summary(data: Mapping[str, Any]) -> str:
    for k in _SUBJECT_FIELDS:
        if isinstance(data.get(k), str) and data[k].strip():
            return _clip(" ".join(data[k].split()), 120)
    excerpt = _excerpt(data)
    return _clip(excerpt.splitlines()[0], 80) if excerpt else ""


def _decision_dict(decision: Any) -> dict[str, Any]:
    if decision is None:
        return {}
    if hasattr(decision, "model_dump"):
        return dict(decision.model_dump(mode="json", exclude={"llm"}))
    return dict(decision)


def build_context(org: OrgConfig, *, params: Mapping[str, Any], decision: Any = None,
                  event: Mapping[str, Any] | None = None, booking: Mapping[str, Any] | None = None,
                  assignment: Mapping[str, Any] | None = None, threshold: Threshold | None = None,
                  extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What every template can use: `org`, `decision` (its record, trace included), `event` and `data` (the
    envelope and its data), `params` (the action's), `priority`, `urgent`, `sender`, `summary`, `excerpt`,
    `fields` (short data fields as pairs), `booking` (the calendar event actually booked: start, end, host,
    title, status, headline), `assignment` (pipeline, stage, assignee), `thresholds`, `gate`, `links`
    (decision, approve, reject) and `local(iso_time, part='full'|'time')` (a time in the org's zone).
    Escalations add `reason`, `failed_action`, `error`; the dispatcher sets `user` (or `guest`) per recipient."""
    env = dict(event or {})
    raw = env.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    dec = _decision_dict(decision)
    trace: dict[str, Any] = dec["trace"] if isinstance(dec.get("trace"), dict) else {}
    gate: dict[str, Any] = trace["gate"] if isinstance(trace.get("gate"), dict) else {}
    priority = params.get("priority", dec.get("priority", 3))
    decision_id = dec.get("id", "")
    links = {"decision": f"/api/agent/decisions/{decision_id}",
             "approve": f"/api/agent/decisions/{decision_id}/approve",
             "reject": f"/api/agent/decisions/{decision_id}/reject"}
    book = dict(booking or {})
    if book:
        host = org.user(str(book.get("host", "")))
        book.setdefault("host_name", host.name if host else book.get("host"))
        book.setdefault("headline", {"booked": "New booking", "moved": "New booking (moved to a free time)",
                                     "updated": "Booking rescheduled", "cancelled": "Booking cancelled"}
                        .get(str(book.get("status", "booked")), "Booking"))
    assign = dict(assignment or {})
    if assign.get("assignee"):
        who = org.user(str(assign["assignee"]))
        assign.setdefault("assignee_name", who.name if who else assign["assignee"])
    guest = _sender(data) if data.get("email") or data.get("from") else ""
    ctx: dict[str, Any] = {
        "org": {"id": org.org, "name": org.name, "timezone": org.timezone},
        "decision": dec, "event": env, "data": data, "params": dict(params),
        "priority": priority, "urgent": isinstance(priority, int) and priority >= 5,
        "sender": _sender(data), "summary": _summary(data), "excerpt": _excerpt(data), "fields": _fields(data),
        "booking": book, "assignment": assign, "guest": guest,
        "thresholds": ({"auto_execute": threshold.auto_execute, "require_approval": threshold.require_approval}
                       if threshold is not None else None),
        "gate": gate.get("reason", ""), "links": links, "local": _local_formatter(ZoneInfo(org.timezone)),
        "user": None, "attached": False,
    }
    ctx.update(extra or {})
    return ctx

