"""Notification templates: the built-in texts, the context they are rendered with, and the compile check.

Templates are Jinja2 in a sandbox (an operator writes them in a policy file; they must not reach Python
internals). Autoescape is off: the output is plain-text email and in-app text, never HTML. A field a
template names but an event lacks renders empty (`ChainableUndefined`): an operator's template written for
email events must not fail on a form. A policy's `notifications.templates` override and extend the
built-ins; an unknown name renders the generic text, which says which template was missing.
Pure logic: no I/O. Jinja2 is imported on first use (the loader calls `config_errors` on every policy).
"""

from __future__ import annotations

import contextvars
import functools
import re
import time
import types
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from engine.config import OrgConfig, Threshold
from engine.errors import ConfigError
from engine.text import extract

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


# --------------------------------------------------------------------------- rendering, with limits
#
# A policy's templates are tenant input (an org admin edits them through the API) and the event data they read comes
# from senders. The sandbox keeps them from Python's internals; these limits keep them from the CPU and memory: every
# loop iteration, call, filter, operator and string join of one render draws on one budget of operations and one
# deadline, checked as it goes, so a nested loop stops within the deadline even in a thread nobody can kill; `range`
# is capped; a value, the text a template reads and the output are capped in size.

MAX_OPS = 50_000
"""Loop iterations, calls, filters, operators and joins in one render."""
RENDER_SECONDS = 0.5
"""Wall-clock deadline of one render (checked at every operation)."""
MAX_RANGE = 1_000
"""Longest `range()` a template may make."""
MAX_VALUE = BODY_MAX
"""Longest string, list or mapping an operation may produce (characters or items)."""
MAX_INT_ARG = 10_000
"""Largest integer argument of a call or filter (widths, counts): `center(10**9)` would allocate a gigabyte."""
MAX_TEMPLATE_CHARS = 20_000
"""Longest template source (a validation finding beyond)."""
_SLOW_INPUT_FILTERS = {"striptags": 10_000, "wordwrap": 10_000, "urlize": 0, "pprint": 0}
"""Filters whose cost grows faster than their input: refused past this many characters of input (0: never)."""

_budget: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("template_budget", default=None)


class TemplateLimitError(Exception):
    """A template went over a rendering limit; the message names the limit."""


def _spend(n: int = 1) -> None:
    budget = _budget.get()
    if budget is None:
        return
    budget[0] -= n
    if budget[0] < 0:
        raise TemplateLimitError(f"the template used more than {MAX_OPS} operations (loop iterations, calls, filters)")
    if time.monotonic() > budget[1]:
        raise TemplateLimitError(f"the template took longer than {RENDER_SECONDS} s to render")


def _sized(value: Any) -> Any:
    if isinstance(value, str | bytes | list | tuple | dict | set) and len(value) > MAX_VALUE:
        raise TemplateLimitError(f"a value of {len(value)} characters or items was made; at most {MAX_VALUE}")
    return value


def _check_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_INT_ARG:
            raise TemplateLimitError(f"the number {a} is too large for a template argument (at most {MAX_INT_ARG})")


def _weight(value: Any, cap: int = MAX_VALUE) -> int:
    """About how many characters `str(value)` has, counted without making it (a list that holds one long string a
    thousand times weighs a thousand of them); counting stops once past `cap`."""
    if isinstance(value, str | bytes):
        return len(value)
    total, stack = 0, [value]
    while stack and total <= cap:
        v = stack.pop()
        if isinstance(v, str | bytes):
            total += len(v) + 3  # quotes (and b) in a container's text
        elif isinstance(v, Mapping):
            total += 2 + 4 * len(v)
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list | tuple | set | frozenset):
            total += 2 + 2 * len(v)
            stack.extend(v)
        elif isinstance(v, int) and not isinstance(v, bool):
            total += v.bit_length() // 3 + 2
        else:
            total += 24
    return total


def _refuse_over(size: int, what: str) -> None:
    if size > MAX_VALUE:
        raise TemplateLimitError(f"{what} would make more than {MAX_VALUE} characters ({size} counted from its "
                                 "inputs); refused before it was made")


MAX_FORMAT_WIDTH = 999
"""Widest width or precision in a `%` or `str.format` conversion."""


def _format_number(text: str | None, take: Callable[[], Any], where: str) -> int:
    if not text:
        return 0
    if text == "*":
        value = take()
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else "0"
    n = int(text.lstrip("-")) if len(text.lstrip("-")) <= 4 else MAX_FORMAT_WIDTH + 1
    if n > MAX_FORMAT_WIDTH:
        raise TemplateLimitError(f"a format width or precision of {text if len(text) <= 12 else text[:12] + '…'} "
                                 f"in {where} is too large (at most {MAX_FORMAT_WIDTH})")
    return n


def _conversion_size(value: Any, width: int, precision: int, conv: str) -> int:
    """At most how many characters one conversion makes: its width, or the value's text (escaped by repr/ascii
    up to ten characters per character, a float's `f` form up to 310 digits) plus the precision."""
    text = _weight(value) * (10 if conv in ("r", "a") else 1)
    return max(width, text + precision + (310 if isinstance(value, float) else 0))


_PERCENT_TAIL = re.compile(r"(\*|\d+)?(?:\.(\*|\d*))?[hlL]?")


def _percent_size(fmt: str, values: Any) -> int:
    """At most how long `fmt % values` is, from the format and the values, without formatting: every conversion,
    named (`%(a)9s`) or not, with `*` widths read from the values as Python reads them."""
    positional = list(values) if isinstance(values, tuple) else [values]
    taken = 0

    def take() -> Any:
        nonlocal taken
        taken += 1
        return positional[taken - 1] if taken <= len(positional) else None

    total, i, n = len(fmt), 0, len(fmt)
    while (i := fmt.find("%", i)) >= 0:
        i += 1
        key = None
        if i < n and fmt[i] == "(":  # a mapping key, with nested parentheses as Python counts them
            depth, start = 1, i + 1
            i += 1
            while i < n and depth:
                depth += {"(": 1, ")": -1}.get(fmt[i], 0)
                i += 1
            key = fmt[start:i - 1]
        while i < n and fmt[i] in "-#0 +":
            i += 1
        spec = _PERCENT_TAIL.match(fmt, i)
        assert spec is not None  # every group is optional
        i = spec.end()
        conv = fmt[i:i + 1]
        i += 1
        width = _format_number(spec.group(1), take, "a % format")
        precision = _format_number(spec.group(2), take, "a % format")
        if conv == "%":
            total += width
            continue
        value = take() if key is None else values.get(key) if isinstance(values, Mapping) else values
        total += _conversion_size(value, width, precision, conv)
        if total > MAX_VALUE:
            break
    return total


_FORMAT_SPEC = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(\d*)[,_]?(?:\.(\d+))?[a-zA-Z%]?", re.S)


def _format_spec_size(value: Any, spec: str) -> int:
    """At most how long `format(value, spec)` is; a width or precision over `MAX_FORMAT_WIDTH` is refused."""
    m = _FORMAT_SPEC.fullmatch(spec)
    if m is None:  # not the standard mini-language: a date's strftime pattern (a few characters per directive)
        return _weight(value) + 16 * len(spec)
    none: Callable[[], Any] = lambda: None  # noqa: E731 (str.format has no `*`)
    width = _format_number(m.group(1), none, "a str.format field")
    precision = _format_number(m.group(2), none, "a str.format field")
    return _conversion_size(value, width, precision, "")


def _bounded_items(items: Any) -> list[Any]:
    """The items of an iterable that is not a list (a generator from `map`), taken one operation each and refused
    once together they weigh more than `MAX_VALUE`: `join` over them never builds the oversize text."""
    out, size = [], 0
    for item in items:
        _spend()
        size += _weight(item)
        _refuse_over(size, "joining these items")
        out.append(item)
    return out


def _precheck(name: str, target: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any] | None = None) -> None:
    """Refuse before running it an operation whose result would pass `MAX_VALUE`, computing the result's size
    from its inputs: replace, join, % and the format filter, expandtabs (tabs × size), indent (lines × width),
    wordwrap (lines × wrapstring), translate (characters × longest replacement), string and tojson."""
    kwargs = kwargs or {}

    def arg(i: int, key: str, default: Any) -> Any:
        return args[i] if len(args) > i else kwargs.get(key, default)

    if name == "replace" and isinstance(target, str) and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        hits = target.count(old) if old else len(target) + 1
        _refuse_over(max(0, len(target) + hits * (len(new) - len(old))), "replace")
    elif name == "join":
        if isinstance(target, str):  # str.join: the separator is the target
            sep, items = target, args[0] if args else ()
        else:  # the join filter: the items are the target
            sep, items = (args[0] if args and isinstance(args[0], str) else ""), target
        if isinstance(items, list | tuple):
            _refuse_over(sum(_weight(i) for i in items) + len(sep) * len(items), "join")
    elif name == "%" and isinstance(target, str):
        _refuse_over(_percent_size(target, args[0] if args else ()), "a % format")
    elif name == "format" and isinstance(target, str):  # the format filter: `fmt|format(*args)` or `(**kwargs)`
        _refuse_over(_percent_size(target, dict(kwargs) if kwargs else tuple(args)), "the format filter")
    elif name == "expandtabs" and isinstance(target, str):
        size = arg(0, "tabsize", 8)
        size = size if isinstance(size, int) else 8
        _refuse_over(len(target) + target.count("\t") * max(size, 0), "expandtabs")
    elif name == "indent" and isinstance(target, str):
        width = arg(0, "width", 4)
        per_line = width if isinstance(width, int) and not isinstance(width, bool) else len(str(width))
        _refuse_over(len(target) + (target.count("\n") + 1) * max(per_line, 0), "indent")
    elif name == "wordwrap" and isinstance(target, str):
        wrap = arg(2, "wrapstring", None)
        _refuse_over(len(target) + (len(target) + 1) * max(1, len(str(wrap)) if wrap else 1), "wordwrap")
    elif name == "translate" and isinstance(target, str) and args:
        table = args[0]
        longest = 1
        if isinstance(table, Mapping | list | tuple):
            replacements = table.values() if isinstance(table, Mapping) else table
            longest = max((len(v) if isinstance(v, str) else 1 for v in replacements), default=1)
        _refuse_over(len(target) * longest, "translate")
    elif name == "string":
        _refuse_over(_weight(target), "the string filter")
    elif name == "tojson":
        indent = arg(0, "indent", None)
        per = indent if isinstance(indent, int) and not isinstance(indent, bool) else 0
        _refuse_over(_weight(target) * 6 * (1 + max(per, 0)), "tojson")


def _bounded_iter(iterable: Any) -> Any:
    """Every `for` loop of a template iterates through this: one operation per item."""
    for item in iterable:
        _spend()
        yield item


def _join(*parts: Any) -> str:
    """The `~` operator, with the result's size checked before it is made (and before any part is made text)."""
    _spend()
    if sum(_weight(p) for p in parts) > MAX_VALUE:
        raise TemplateLimitError(f"joining text with ~ would make more than {MAX_VALUE} characters")
    return "".join(str(p) for p in parts)


def _finalize(value: Any) -> Any:
    """Every `{{ value }}` before it becomes text: a list holding one long string many times is refused here."""
    if not isinstance(value, str):
        _refuse_over(_weight(value), "printing this value")
    return value


def _bounded_range(*args: int) -> range:
    _check_args(args, {})
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise TemplateLimitError(f"range() of {len(rng)} items; at most {MAX_RANGE}")
    _spend(len(rng))
    return rng


def _bounded_concat(parts: Any) -> str:
    """How Jinja joins the output of a block (`{% set %}`, macros, `{% filter %}`): size-checked as it grows."""
    out: list[str] = []
    size = 0
    for p in parts:
        size += len(p)
        if size > MAX_VALUE:
            raise TemplateLimitError(f"a block's output passed {MAX_VALUE} characters")
        out.append(p)
    return "".join(out)


def _wrap_filter(name: str, func: Any) -> Any:
    slow = _SLOW_INPUT_FILTERS.get(name)

    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _spend()
        _check_args(args, kwargs)
        values = [a for a in args if not _is_jinja_internal(a)]
        target = values[0] if values else None
        if slow is not None and _weight(target) > slow:
            raise TemplateLimitError(f"the {name} filter takes at most {slow} characters here")
        if name == "join" and target is not None and not isinstance(target, list | tuple | str):
            items = _bounded_items(target)  # a generator (`map`): taken item by item, refused once too long
            args = tuple(items if a is target else a for a in args)
            target = items
        _precheck(name, target, tuple(values[1:]), kwargs)
        return _sized(func(*args, **kwargs))

    return bounded


def _is_jinja_internal(x: Any) -> bool:
    from jinja2 import Environment
    from jinja2.nodes import EvalContext
    from jinja2.runtime import Context

    return isinstance(x, Context | EvalContext | Environment)


@functools.cache
def _env() -> Any:
    from jinja2 import ChainableUndefined, nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
    from jinja2.visitor import NodeTransformer
    from markupsafe import EscapeFormatter, Markup

    here = __name__

    class _BoundedFormatter(SandboxedFormatter):
        """The sandbox's `str.format`, with every field sized before it is made (see `_format_spec_size`)."""

        _size = 0

        def bounded_vformat(self, fmt: str, args: Any, kwargs: Any) -> str:
            self._size = len(fmt)
            return str(self.vformat(fmt, args, kwargs))

        def convert_field(self, value: Any, conversion: str | None) -> Any:
            if conversion in ("r", "a"):
                _refuse_over(self._size + 10 * _weight(value), "a str.format !r field")
            return super().convert_field(value, conversion)

        def format_field(self, value: Any, format_spec: str) -> Any:
            _spend()
            self._size += _format_spec_size(value, format_spec)
            _refuse_over(self._size, "str.format")
            return super().format_field(value, format_spec)

    class _BoundedEscapeFormatter(_BoundedFormatter, EscapeFormatter):
        pass

    class _Bound(NodeTransformer):
        """Every `for` loop iterates through `_bounded_iter`; every `~` is `_join`."""

        def visit_For(self, node: Any) -> Any:
            self.generic_visit(node)
            node.iter = nodes.Call(nodes.ImportedName(f"{here}._bounded_iter"), [node.iter], [], None, None,
                                   lineno=node.lineno)
            return node

        def visit_Concat(self, node: Any) -> Any:
            self.generic_visit(node)
            return nodes.Call(nodes.ImportedName(f"{here}._join"), list(node.nodes), [], None, None, lineno=node.lineno)

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        """The sandbox, with every operation drawing on the render's budget (see the limits above)."""

        intercepted_binops = frozenset(["*", "**", "%", "+", "//"])
        concat = staticmethod(_bounded_concat)

        def _parse(self, source: str, name: str | None, filename: str | None) -> Any:
            if len(source) > MAX_TEMPLATE_CHARS:
                raise TemplateLimitError(f"the template is {len(source)} characters long; at most {MAX_TEMPLATE_CHARS}")
            tree = _Bound().visit(super()._parse(source, name, filename))
            tree.set_environment(self)
            return tree

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            _spend()
            _check_args(args, kwargs)
            name, target = getattr(__obj, "__name__", ""), getattr(__obj, "__self__", None)
            if name == "join" and isinstance(target, str) and args and not isinstance(args[0], list | tuple | str):
                args = (_bounded_items(args[0]), *args[1:])
            _precheck(name, target, args, kwargs)
            return _sized(super().call(__context, __obj, *args, **kwargs))

        def wrap_str_format(self, value: Any) -> Any:
            """`str.format` / `format_map` through `_BoundedFormatter`: each field's size is computed from its
            value and spec before it is formatted, and the whole result's as it grows."""
            if not isinstance(value, types.MethodType | types.BuiltinMethodType) or value.__name__ not in (
                    "format", "format_map") or not isinstance(value.__self__, str):
                return None
            fmt: str = value.__self__
            is_map = value.__name__ == "format_map"
            formatter = (_BoundedEscapeFormatter(self, escape=fmt.escape) if isinstance(fmt, Markup)
                         else _BoundedFormatter(self))

            def wrapper(*args: Any, **kwargs: Any) -> str:
                if is_map:
                    if kwargs or len(args) != 1:
                        raise TypeError("format_map() takes exactly one argument")
                    return type(fmt)(formatter.bounded_vformat(fmt, (), args[0]))
                return type(fmt)(formatter.bounded_vformat(fmt, args, kwargs))

            return functools.update_wrapper(wrapper, value)

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _spend()
            if operator == "**" and isinstance(right, int | float) and (abs(right) > 64 or (
                    isinstance(left, int | float) and abs(left) > 2 ** 64)):
                raise TemplateLimitError("a power that large is not computed in a template (exponent at most 64)")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, str | list | tuple) and isinstance(n, int):
                        _sized(" " * min(MAX_VALUE + 1, len(seq) * max(n, 0)))
                        if isinstance(seq, list | tuple):  # the text it stands for: [s] * 1000 is s 1000 times
                            _refuse_over(max(0, _weight(seq) - 2) * max(n, 0), "this product")
                if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > 256:
                    raise TemplateLimitError("a product that large is not computed in a template")
            if operator == "%":
                _precheck("%", left, (right,))
            if operator == "+" and isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                _sized(" " * min(MAX_VALUE + 1, len(left) + len(right)))
            return _sized(super().call_binop(context, operator, left, right))

    env = BoundedSandbox(autoescape=False, undefined=ChainableUndefined, trim_blocks=True,
                         lstrip_blocks=True, keep_trailing_newline=False, finalize=_finalize)
    env.globals.pop("lipsum", None)
    env.globals["range"] = _bounded_range
    env.filters = {name: _wrap_filter(name, f) for name, f in env.filters.items()}
    return env


@functools.lru_cache(maxsize=512)
def _compile(source: str) -> Any:
    return _env().from_string(source)


def _generate(source: str, context: Mapping[str, Any], limit: int) -> str:
    """Render, keeping at most `limit` characters of output: the rest is never produced."""
    out: list[str] = []
    size = 0
    gen = _compile(source).generate(context)
    try:
        for chunk in gen:
            out.append(chunk)
            size += len(chunk)
            if size > limit:
                break
    finally:
        gen.close()
    return "".join(out)


def _subject(text: str) -> str:
    # One header line: a template's line breaks must never reach the email header.
    return " ".join(text.split())[:SUBJECT_MAX]


_BLANKS = re.compile(r"\n{3,}")


def _body(text: str) -> str:
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return _BLANKS.sub("\n\n", text).strip()[:BODY_MAX]


def _render_pair(pair: tuple[str, str], context: Mapping[str, Any]) -> tuple[str, str]:
    _compile(pair[0]), _compile(pair[1])  # compiled (and cached) outside the render's deadline
    token = _budget.set([float(MAX_OPS), time.monotonic() + RENDER_SECONDS])
    try:
        return (_subject(_generate(pair[0], context, SUBJECT_MAX * 4)),
                _body(_generate(pair[1], context, BODY_MAX + 1000)))
    finally:
        _budget.reset(token)


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
                tree = _env().parse(source)
            except TemplateSyntaxError as exc:
                where = f" (line {exc.lineno} of the template)" if source.count("\n") and exc.lineno else ""
                out.append((name, fld, f"{exc.message}{where}"))
                continue
            except TemplateLimitError as exc:
                out.append((name, fld, str(exc)))
                continue
            out.extend((name, fld, problem) for problem in _static_limits(tree))
    return out


def _static_limits(tree: Any) -> list[str]:
    """What a parsed template is sure to break when it renders: a `range()` of constants over `MAX_RANGE`."""
    from jinja2 import nodes

    problems = []
    for call in tree.find_all(nodes.Call):
        if isinstance(call.node, nodes.Name) and call.node.name == "range" and call.args and all(
                isinstance(a, nodes.Const) and isinstance(a.value, int) for a in call.args):
            try:
                n = len(range(*(a.value for a in call.args)))
            except (TypeError, ValueError, OverflowError):
                continue
            if n > MAX_RANGE:
                problems.append(f"range() of {n} items (line {call.lineno} of the template); a template's range() "
                                f"has at most {MAX_RANGE}")
    return problems


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


def _clipped(value: Any, depth: int = 0) -> Any:
    """`value` with every string longer than `BODY_MAX` cut to it (nested dicts and lists too)."""
    if isinstance(value, str):
        return value[:BODY_MAX]
    if depth > 32:
        return value
    if isinstance(value, dict):
        return {k: _clipped(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_clipped(v, depth + 1) for v in value]
    return value


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


SNIPPET_CHARS = 240


def event_summary(data: Mapping[str, Any]) -> dict[str, str]:
    """What a person reads to decide on an event without opening it: the sender, the subject (or title or
    purpose) and the first lines of the new text (quoted replies, signature and hidden instructions left out)."""
    text = extract(dict(data))
    return {"sender": _sender(data), "subject": _clip(" ".join(text.subject.split()), 200),
            "snippet": _clip(" ".join(text.body.split()), SNIPPET_CHARS)}


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
    # No template can show more than BODY_MAX characters: longer event text is cut there before any template
    # reads it, so that no filter works on a megabyte of sender text.
    data: dict[str, Any] = _clipped(raw) if isinstance(raw, dict) else {}
    if "data" in env:
        env["data"] = data
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

