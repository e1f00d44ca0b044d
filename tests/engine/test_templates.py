"""Notification templates: built-ins for every name in use, policy overrides, the sandbox, the compile check and
its `path:line: invalid_template` errors from the loader."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.config import Template
from engine.loader import load_org, validate_org
from engine.models import Decision
from engine.templates import BUILTINS, build_context, check, render

ROOT = Path(__file__).resolve().parents[2]
ACME = load_org(ROOT / "rulesets" / "acme", ROOT / "policies")
EVENT = {"id": "evt-1", "org": "acme", "source": "EMAIL", "type": "email:received",
         "data": {"from": "Jo <jo@shop.example>", "subject": "Pricing", "text": "How much is the pro plan?"}}


def ctx(**extra: object) -> dict[str, object]:
    decision = Decision(event_id="evt-1", org="acme", input={"source": "EMAIL", "type": "email:received"},
                        intent="SALES_INQUIRY", priority=3, decision_type="ASSIGN_PIPELINE", confidence=0.9,
                        decided_by="rules", reasoning="Pricing question.", status="EXECUTED")
    return build_context(ACME.org, params={"priority": 3}, decision=decision, event=EVENT, extra=extra)


def test_every_template_name_in_use_has_a_built_in():
    used = {"booking_confirmation_guest", "escalation", "action_failed", "reminder_due", "pipeline_stage_changed",
            "automation_completed"}
    for org in ("acme", "brightsmile"):
        bundle = load_org(ROOT / "rulesets" / org, ROOT / "policies")
        used |= {route.notify.template for route in bundle.policy.routing.values()}
    assert used - set(BUILTINS) == set()


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_built_ins_render_with_and_without_data(name):
    for context in (ctx(), build_context(ACME.org, params={})):
        subject, body = render(name, {}, context)
        assert subject and "\n" not in subject
        assert "Undefined" not in subject + body and "None" not in subject
        assert "{{" not in body and "{%" not in body


def test_policy_template_overrides_and_extends():
    templates = {"new_intake": Template(subject="Custom {{ data.subject }}", body="Body {{ sender }}"),
                 "vip": Template(subject="VIP {{ summary }}", body="{{ excerpt }}")}
    assert render("new_intake", templates, ctx()) == ("Custom Pricing", "Body Jo <jo@shop.example>")
    assert render("vip", templates, ctx()) == ("VIP Pricing", "How much is the pro plan?")
    assert render("new_project", templates, ctx())[0].startswith("[Acme Studio] New project inquiry")


def test_unknown_name_renders_the_generic_text_naming_it():
    subject, body = render("new_lead_from_mars", {}, ctx())
    assert "new_lead_from_mars" in subject
    assert "There is no template named 'new_lead_from_mars'" in body and "How much is the pro plan?" in body


def test_missing_fields_render_empty():
    templates = {"t": Template(subject="[{{ data.nope.deeper }}]", body="{{ event.data.x.y.z }}!")}
    assert render("t", templates, ctx()) == ("[]", "!")


@pytest.mark.parametrize("source", ["{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ 1 + data.missing }}",
                                    "{{ range(10**9)|list }}"])
def test_a_template_that_fails_falls_back_to_the_built_in(source):
    errors: list[str] = []
    subject, _ = render("new_intake", {"new_intake": Template(subject="x", body=source)}, ctx(), errors)
    assert subject.startswith("[Acme Studio] New intake")
    assert len(errors) == 1 and "policy template 'new_intake' failed to render" in errors[0]


def test_subject_is_one_line():
    subject, _ = render("t", {"t": Template(subject="a\n{{ 'b\r\nc' }}\tBcc: x@y", body="b")}, ctx())
    assert subject == "a b c Bcc: x@y"


def test_local_times_are_in_the_org_zone():
    local = ctx()["local"]
    assert local("2026-12-08T15:00:00Z") == "Tue 8 Dec 2026, 10:00 EST"  # type: ignore[operator]
    assert local("2026-07-08T15:00:00+00:00", "time") == "11:00"  # type: ignore[operator]
    assert local(None) == "" and local("soon") == "soon"  # type: ignore[operator]


def test_check_reports_compile_errors():
    found = check({"ok": Template(subject="{{ a }}", body="b"),
                   "bad": Template(subject="{{ a }", body="x\n{% if a %}\ny")})
    assert [(n, f) for n, f, _ in found] == [("bad", "subject"), ("bad", "body")]
    assert "line 3 of the template" in found[1][2]


@pytest.fixture
def config(tmp_path: Path) -> tuple[Path, Path]:
    rulesets, policies = tmp_path / "rulesets", tmp_path / "policies"
    shutil.copytree(ROOT / "rulesets", rulesets)
    shutil.copytree(ROOT / "policies", policies)
    return rulesets, policies


def test_broken_policy_template_is_reported_at_its_line(config):
    rulesets, policies = config
    path = policies / "acme.yaml"
    text = path.read_text()
    lines = text.count("\n")
    path.write_text(text + "\nnotifications:\n  templates:\n    new_intake:\n      subject: 'Hi {{ summary }'\n"
                    "      body: |\n        ok\n        {% for x in y %}\n")
    bundle, errors = validate_org(rulesets / "acme", policies)
    assert bundle is None
    found = [str(e) for e in errors]
    assert found == [
        f"{path}:{lines + 5}: invalid_template: notifications.templates.new_intake.subject does not compile: "
        "unexpected '}'",
        f"{path}:{lines + 6}: invalid_template: notifications.templates.new_intake.body does not compile: "
        "Unexpected end of template. Jinja was looking for the following tags: 'endfor' or 'else'. The innermost "
        "block that needs to be closed is 'for'. (line 2 of the template)",
    ]


def test_broken_template_in_an_extended_policy_is_reported_there(config):
    rulesets, policies = config
    path = policies / "default.yaml"
    text = path.read_text()
    path.write_text(text + "\nnotifications:\n  templates:\n    digest: {subject: '{% if %}', body: ok}\n")
    _, errors = validate_org(rulesets / "acme", policies)
    (err,) = errors
    assert err.path == str(path) and err.line == text.count("\n") + 4 and err.code == "invalid_template"


def test_valid_templates_load():
    assert ACME.policy.notifications.templates == {}
