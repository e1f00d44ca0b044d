"""The loader: each validation stage reports `path:line: code: message` at the right place; env overrides;
the revision hash (engine/loader.py)."""

from __future__ import annotations

import pytest

from engine.config import DecisionType
from engine.errors import ConfigError, ConfigInvalid
from engine.loader import OrgBundle, load_org
from tests.engine.conftest import ACME_DIR, POLICIES_DIR, OrgCopy

ENV_VARS = ("AGENT_DEFAULT_PROVIDER", "AGENT_AUTO_EXECUTE_THRESHOLD", "AGENT_REQUIRE_APPROVAL_THRESHOLD")


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def only_error(copy: OrgCopy, org: str = "acme") -> str:
    """The one error the copy now has (no bundle is produced)."""
    bundle, errors = copy.errors(org)
    assert bundle is None
    assert len(errors) == 1, errors
    return errors[0]


def test_the_shipped_org_is_valid(acme_bundle: OrgBundle) -> None:
    bundle = acme_bundle
    assert bundle.warnings == ()
    assert bundle.org.org == "acme" and bundle.policy.llm.provider == "openai"
    assert {r.ruleset for r in bundle.rules} == {"bookings", "intake", "languages", "spam"}
    # a rule knows where it lives
    ref = next(r for r in bundle.rules if r.key == "bookings/reminder-due")
    lines = (ACME_DIR / "bookings.yaml").read_text().splitlines()
    assert ref.path.endswith("rulesets/acme/bookings.yaml") and lines[ref.line - 1] == "  - id: reminder-due"


# --------------------------------------------------------------------------- stage 1: YAML syntax

BOOKINGS = "rulesets/acme/bookings.yaml"
ORG = "rulesets/acme/org.yaml"
POLICY = "policies/acme.yaml"


def test_yaml_syntax_error_points_at_the_problem_line(org_copy: OrgCopy) -> None:
    org_copy.replace(ORG, "name: Acme Studio\n", "name: Acme Studio\n  bad: : x\n")
    assert only_error(org_copy) == f"{ORG}:{org_copy.line_of(ORG, 'bad: : x')}: yaml_syntax: mapping values are not allowed here"


def test_yaml_tab_error_points_at_the_tab(org_copy: OrgCopy) -> None:
    org_copy.replace(POLICY, "  model: gpt-4o-mini\n", "\tmodel: gpt-4o-mini\n")
    line = org_copy.line_of(POLICY, "\tmodel")
    assert only_error(org_copy) == f"{POLICY}:{line}: yaml_syntax: found character '\\t' that cannot start any token"


def test_top_level_list_is_not_a_mapping(org_copy: OrgCopy) -> None:
    org_copy.path("rulesets/acme/spam.yaml").write_text("- just\n- a list\n")
    assert only_error(org_copy).startswith("rulesets/acme/spam.yaml:1: not_a_mapping:")


def test_every_broken_file_is_reported_in_one_run(org_copy: OrgCopy) -> None:
    org_copy.replace(ORG, "name: Acme Studio\n", "name: Acme Studio\n  bad: : x\n")
    org_copy.replace(BOOKINGS, "    salience: 90\n", "    salience: high\n")
    _, errors = org_copy.errors()
    assert [e.split(": ")[0] for e in errors] == [f"{ORG}:{org_copy.line_of(ORG, 'bad: : x')}",
                                                  f"{BOOKINGS}:{org_copy.line_of(BOOKINGS, 'salience: high')}"]
    assert [e.split(": ")[1] for e in errors] == ["yaml_syntax", "schema"]


# --------------------------------------------------------------------------- stage 2: JSON Schema

def test_wrong_type_is_a_schema_error_at_its_line(org_copy: OrgCopy) -> None:
    org_copy.replace(BOOKINGS, "    salience: 90\n", "    salience: high\n")
    line = org_copy.line_of(BOOKINGS, "salience: high")
    assert only_error(org_copy) == f"{BOOKINGS}:{line}: schema: rules[4].salience: 'high' is not of type 'integer'"


def test_unknown_intent_is_a_schema_error_at_its_line(org_copy: OrgCopy) -> None:
    org_copy.replace(BOOKINGS, "then: {intent: OTHER, confidence: 0.9, decision_type: NO_ACTION}",
                     "then: {intent: OTHERS, confidence: 0.9, decision_type: NO_ACTION}")
    line = org_copy.line_of(BOOKINGS, "intent: OTHERS")
    assert only_error(org_copy).startswith(f"{BOOKINGS}:{line}: schema: rules[4].then.intent: 'OTHERS'")


def test_unknown_key_is_a_schema_error_naming_the_key_and_the_allowed_ones(org_copy: OrgCopy) -> None:
    org_copy.replace(BOOKINGS, "    salience: 90\n", "    salience: 90\n    salence: 3\n")
    err = only_error(org_copy)
    assert err.startswith(f"{BOOKINGS}:")
    assert ": schema: rules[4]: " in err and "'salence' was unexpected" in err
    assert "allowed here: description, enabled, id, salience, then, when" in err


@pytest.mark.parametrize(("rel", "old", "new"), [
    (BOOKINGS, "    salience: 90\n", "    salience: 90\n    salence: 3\n"),
    (ORG, "timezone: America/New_York\n", "timezone: America/New_York\ntimzone: UTC\n"),
])
def test_unknown_key_points_at_its_own_line(org_copy: OrgCopy, rel: str, old: str, new: str) -> None:
    org_copy.replace(rel, old, new)
    key = new.split("\n")[1].strip()
    assert only_error(org_copy).startswith(f"{rel}:{org_copy.line_of(rel, key)}: schema:")


# --------------------------------------------------------------------------- stage 3: models

def test_threshold_require_approval_above_auto_execute_is_a_model_error(org_copy: OrgCopy) -> None:
    org_copy.replace(POLICY, "CREATE_EVENT: {auto_execute: 0.9, require_approval: 0.6}",
                     "CREATE_EVENT: {auto_execute: 0.5, require_approval: 0.6}")
    line = org_copy.line_of(POLICY, "CREATE_EVENT: {auto_execute: 0.5")
    assert only_error(org_copy) == (f"{POLICY}:{line}: invalid_value: thresholds.CREATE_EVENT: "
                                    "require_approval 0.6 is above auto_execute 0.5")


def test_business_hours_ending_before_they_start_is_a_model_error(org_copy: OrgCopy) -> None:
    org_copy.replace(ORG, 'business_hours: {start: "09:00", end: "17:00"', 'business_hours: {start: "17:00", end: "09:00"')
    err = only_error(org_copy)
    assert err.startswith(f"{ORG}:{org_copy.line_of(ORG, 'business_hours:')}: invalid_value: business_hours")
    assert "must be after start" in err


def _add_schedules(copy: OrgCopy, *items: str) -> None:
    copy.replace(POLICY, "\nescalation:\n", "\nschedules:\n" + "".join(items) + "\nescalation:\n")


DIGEST = "  - id: digest\n    cron: '0 8 * * mon-fri'\n    type: schedule:daily_digest\n"


def test_schedules_load(org_copy: OrgCopy) -> None:
    _add_schedules(org_copy, DIGEST, "  - {id: night, cron: '30 2 * * *', timezone: Europe/London, data: {x: 1}}\n")
    bundle, errors = org_copy.validate()
    assert bundle is not None and errors == []
    assert [(s.id, s.cron, s.type, s.timezone, s.data) for s in bundle.policy.schedules] == [
        ("digest", "0 8 * * mon-fri", "schedule:daily_digest", None, {}),
        ("night", "30 2 * * *", "schedule:tick", "Europe/London", {"x": 1})]


@pytest.mark.parametrize(("cron", "message"), [
    ("61 8 * * mon-fri", "cron '61 8 * * mon-fri' is not a valid cron expression (out of range)"),
    ("0 8 * * mon-fry", "cron '0 8 * * mon-fry' is not a valid cron expression"),
    ("0 0 31 2 *", "cron '0 0 31 2 *' never fires (no such date)"),
    ("0 8 * * * *", "cron '0 8 * * * *' has 6 fields, expected 5: minute hour day-of-month month day-of-week, "
                    "e.g. '0 8 * * mon-fri'"),
])
def test_bad_cron_is_a_model_error_at_its_line(org_copy: OrgCopy, cron: str, message: str) -> None:
    _add_schedules(org_copy, DIGEST, f"  - id: broken\n    cron: '{cron}'\n")
    line = org_copy.line_of(POLICY, f"cron: '{cron}'")
    assert only_error(org_copy) == f"{POLICY}:{line}: invalid_value: schedules[1].cron: {message}"


def test_schedule_with_an_unknown_time_zone(org_copy: OrgCopy) -> None:
    _add_schedules(org_copy, DIGEST + "    timezone: America/Gotham\n")
    line = org_copy.line_of(POLICY, "America/Gotham")
    assert only_error(org_copy) == (
        f"{POLICY}:{line}: invalid_value: schedules[0].timezone: 'America/Gotham' is not a known IANA time zone")


def test_schedule_with_a_bad_event_type_is_a_schema_error(org_copy: OrgCopy) -> None:
    _add_schedules(org_copy, DIGEST.replace("schedule:daily_digest", "DailyDigest"))
    line = org_copy.line_of(POLICY, "type: DailyDigest")
    assert only_error(org_copy) == (
        f"{POLICY}:{line}: schema: schedules[0].type: 'DailyDigest' does not match '^[a-z_]+:[a-z_]+$'")


def test_duplicate_schedule_id(org_copy: OrgCopy) -> None:
    _add_schedules(org_copy, DIGEST, "  - {id: digest, cron: '0 9 * * *'}\n")
    assert only_error(org_copy) == (
        f"{POLICY}:{org_copy.line_of(POLICY, 'schedules:')}: invalid_value: schedules: "
        "schedule id 'digest' is defined twice (schedules[0] and schedules[1])")


# --------------------------------------------------------------------------- stage 4: references

def test_unknown_pipeline_in_routing(org_copy: OrgCopy) -> None:
    org_copy.replace(POLICY, "pipeline: support-requests", "pipeline: support-queue")
    assert only_error(org_copy) == (
        f"{POLICY}:{org_copy.line_of(POLICY, 'support-queue')}: unknown_pipeline: routing for SUPPORT_REQUEST "
        "names pipeline 'support-queue', which org 'acme' does not define")


def test_unknown_stage_in_routing(org_copy: OrgCopy) -> None:
    org_copy.replace(POLICY, "    pipeline: support-requests\n", "    pipeline: support-requests\n    stage: backlog\n")
    assert only_error(org_copy) == (
        f"{POLICY}:{org_copy.line_of(POLICY, 'stage: backlog')}: unknown_stage: routing for SUPPORT_REQUEST names "
        "stage 'backlog', not a stage of pipeline 'support-requests' (new, triage, in-progress, resolved)")


def test_unknown_role_in_routing(org_copy: OrgCopy) -> None:
    org_copy.replace(POLICY, "assignee_role: PM", "assignee_role: DESIGNER")
    err = only_error(org_copy)
    assert err.startswith(f"{POLICY}:") and ": unknown_role: " in err
    assert "routing for PROJECT names role 'DESIGNER'" in err and "(ADMIN, OPERATOR, PM, SALES)" in err


def test_unknown_role_points_at_the_line_naming_it(org_copy: OrgCopy) -> None:
    org_copy.replace(POLICY, "assignee_role: PM", "assignee_role: DESIGNER")
    assert only_error(org_copy).startswith(f"{POLICY}:{org_copy.line_of(POLICY, 'DESIGNER')}: unknown_role:")


def test_unknown_team_member(org_copy: OrgCopy) -> None:
    org_copy.replace(ORG, "team: [u-kim, u-raj]", "team: [u-kim, u-rajj]")
    assert only_error(org_copy) == (
        f"{ORG}:{org_copy.line_of(ORG, 'u-rajj')}: unknown_user: pipeline 'support-requests' lists team member "
        "'u-rajj', who is not among the org's users")


def test_duplicate_rule_id_points_at_the_second_and_names_the_first(org_copy: OrgCopy) -> None:
    org_copy.replace(BOOKINGS, "  - id: automation-done", "  - id: reminder-due")
    first, second = org_copy.line_of(BOOKINGS, "id: reminder-due"), org_copy.line_of(BOOKINGS, "id: reminder-due", 2)
    err = only_error(org_copy)
    assert err.startswith(f"{BOOKINGS}:{second}: duplicate_rule_id: rule id 'bookings/reminder-due' "
                          "is already defined at ")
    assert err.endswith(f"{BOOKINGS}:{first}")


def test_duplicate_pipeline_id(org_copy: OrgCopy) -> None:
    org_copy.replace(ORG, "    team: [u-omar, u-ana, u-pat]\n",
                     "    team: [u-omar, u-ana, u-pat]\n  - id: support-requests\n    name: Again\n    stages: [new]\n")
    line = org_copy.line_of(ORG, "id: support-requests", 2)
    assert only_error(org_copy) == f"{ORG}:{line}: duplicate_id: pipeline id 'support-requests' is defined twice"


def test_invalid_regex_points_at_the_regex(org_copy: OrgCopy) -> None:
    spam = "rulesets/acme/spam.yaml"
    org_copy.replace(spam, r"- '\b(out of office|ooo)\b'", r"- '\b(out of office|ooo\b'")
    err = only_error(org_copy)
    line = org_copy.line_of(spam, r"(out of office|ooo\b'")
    assert err.startswith(f"{spam}:{line}: invalid_regex: rule 'auto-reply-subject': regex ")
    assert "does not compile" in err


def test_org_id_must_match_its_folder(org_copy: OrgCopy) -> None:
    org_copy.replace(ORG, "org: acme\n", "org: acme-inc\n")
    assert only_error(org_copy) == (
        f"{ORG}:{org_copy.line_of(ORG, 'org: acme-inc')}: org_mismatch: org id 'acme-inc' differs from its "
        "folder name 'acme'")


def test_missing_org_yaml(org_copy: OrgCopy) -> None:
    org_copy.path(ORG).unlink()
    assert only_error(org_copy) == f"{ORG}:0: missing_file: every org folder needs org.yaml"


def test_policy_extends_an_unknown_policy(org_copy: OrgCopy) -> None:
    org_copy.replace(POLICY, "extends: default\n", "extends: defaults\n")
    err = only_error(org_copy)
    line = org_copy.line_of(POLICY, "extends: defaults")
    assert err == (f"{POLICY}:{line}: unknown_policy: extends: there is no shared policy 'defaults'; a policy "
                   "extends `default` or a shared policy of the operator's, never an org's own")


def _make_cycle(copy: OrgCopy) -> None:
    copy.replace(POLICY, "extends: default\n", "extends: base\n")
    copy.path("policies/base.yaml").write_text("# the base extends acme again\nextends: acme\nllm: {provider: none}\n")


def test_policy_extends_cycle(org_copy: OrgCopy) -> None:
    _make_cycle(org_copy)
    err = only_error(org_copy)
    assert ": extends_cycle: " in err
    assert err.startswith((f"{POLICY}:", "policies/base.yaml:"))
    assert "'acme'" in err and "'base'" in err


def test_policy_extends_cycle_points_at_an_extends_line(org_copy: OrgCopy) -> None:
    _make_cycle(org_copy)
    assert only_error(org_copy).split(": ")[0] in (
        "policies/base.yaml:2", f"{POLICY}:{org_copy.line_of(POLICY, 'extends: base')}")


def test_disabled_rule_is_a_warning_not_an_error(org_copy: OrgCopy) -> None:
    org_copy.replace(BOOKINGS, "  - id: reminder-due\n", "  - id: reminder-due\n    enabled: false\n")
    bundle, found = org_copy.validate()
    assert bundle is not None
    assert "bookings/reminder-due" not in {r.key for r in bundle.rules}
    assert [(e.severity, e.code, e.line) for e in found] == [
        ("warning", "unreachable_rule", org_copy.line_of(BOOKINGS, "id: reminder-due"))]
    assert [w.code for w in bundle.warnings] == ["unreachable_rule"]


def test_load_org_raises_with_every_error(org_copy: OrgCopy) -> None:
    org_copy.replace(ORG, "team: [u-kim, u-raj]", "team: [u-kim, u-rajj]")
    org_copy.replace(POLICY, "assignee_role: PM", "assignee_role: DESIGNER")
    with pytest.raises(ConfigInvalid) as info:
        load_org(org_copy.org_dir(), org_copy.policies)
    assert sorted(e.code for e in info.value.errors) == ["unknown_role", "unknown_user"]
    assert "unknown_user" in str(info.value)


# --------------------------------------------------------------------------- environment overrides
# The shipped bundle (session fixture, loaded before these tests set anything) is the baseline: the
# revision does not depend on where the files are (see the revision tests below).

def test_default_provider_env_applies_to_orgs_that_do_not_name_one(org_copy: OrgCopy, acme_bundle: OrgBundle,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    org_copy.add_org("beta")  # no policies/beta.yaml: default.yaml (provider: none) applies
    beta_before = org_copy.validate("beta")[0]
    monkeypatch.setenv("AGENT_DEFAULT_PROVIDER", "anthropic")
    acme, beta = org_copy.validate("acme")[0], org_copy.validate("beta")[0]
    assert acme is not None and beta is not None and beta_before is not None
    assert beta.policy.llm.provider == "anthropic"
    assert beta.revision != beta_before.revision  # the override changed beta's policy, so its revision
    assert acme.policy.llm.provider == "openai"  # acme names its own provider and keeps it
    assert acme.revision == acme_bundle.revision  # ... and its revision, since nothing changed for it


def test_threshold_env_overrides_every_threshold_and_the_revision(org_copy: OrgCopy, acme_bundle: OrgBundle,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert acme_bundle.policy.threshold(DecisionType.ASSIGN_PIPELINE).auto_execute == 0.8

    monkeypatch.setenv("AGENT_AUTO_EXECUTE_THRESHOLD", "0.95")
    auto = org_copy.validate()[0]
    assert auto is not None
    gated = {k: t for k, t in auto.policy.thresholds.items() if k != DecisionType.ESCALATE}
    assert {t.auto_execute for t in gated.values()} == {0.95}
    # escalations always reach a person: the override leaves them alone
    assert auto.policy.threshold(DecisionType.ESCALATE) == acme_bundle.policy.threshold(DecisionType.ESCALATE)
    assert auto.policy.threshold(DecisionType.CREATE_EVENT).require_approval == 0.6  # untouched

    monkeypatch.setenv("AGENT_REQUIRE_APPROVAL_THRESHOLD", "0.7")
    both = org_copy.validate()[0]
    assert both is not None
    assert {(t.auto_execute, t.require_approval) for k, t in both.policy.thresholds.items()
            if k != DecisionType.ESCALATE} == {(0.95, 0.7)}
    assert len({acme_bundle.revision, auto.revision, both.revision}) == 3


@pytest.mark.parametrize(("auto", "expected"), [
    ("0.5", "require_approval 0.7 is above auto_execute 0.5"),
    ("high", "could not convert string to float"),
])
def test_invalid_threshold_env_is_an_error(org_copy: OrgCopy, monkeypatch: pytest.MonkeyPatch, auto: str,
                                           expected: str) -> None:
    monkeypatch.setenv("AGENT_AUTO_EXECUTE_THRESHOLD", auto)
    monkeypatch.setenv("AGENT_REQUIRE_APPROVAL_THRESHOLD", "0.7")
    err = only_error(org_copy)
    assert err.startswith("environment:0: invalid_value: AGENT_*_THRESHOLD:") and expected in err


# --------------------------------------------------------------------------- revision hash

def test_revision_is_stable_and_independent_of_location(org_copy: OrgCopy, acme_bundle: OrgBundle) -> None:
    first, second = org_copy.validate()[0], load_org(ACME_DIR, POLICIES_DIR)
    assert first is not None
    assert first.revision == second.revision == acme_bundle.revision
    assert len(first.revision) == 12


@pytest.mark.parametrize("rel", ["rulesets/acme/org.yaml", "rulesets/acme/intake.yaml", "policies/acme.yaml",
                                 "policies/default.yaml"])
def test_revision_changes_when_any_file_changes(org_copy: OrgCopy, acme_bundle: OrgBundle, rel: str) -> None:
    path = org_copy.path(rel)
    path.write_text(path.read_text() + "# a comment changes the revision too\n")
    changed = org_copy.validate()[0]
    assert changed is not None and changed.revision != acme_bundle.revision


def test_revision_changes_when_a_ruleset_file_is_added(org_copy: OrgCopy, acme_bundle: OrgBundle) -> None:
    org_copy.path("rulesets/acme/extra.yaml").write_text(
        "ruleset: extra\nrules:\n  - {id: x, when: {type: 'x:y'}, then: {intent: OTHER}}\n")
    added = org_copy.validate()[0]
    assert added is not None
    assert added.revision != acme_bundle.revision
    assert "extra/x" in {r.key for r in added.rules}


# --------------------------------------------------------------------------- YAML scalars (issue 13, F5 and F7)

def test_sexagesimal_scalars_are_text_and_other_numbers_are_yaml_11s():
    """YAML 1.2 numbers: `59:59` and `190:20:30.15` are text (YAML 1.1 made them 3599 and a float), times stay
    text whether quoted or not; decimal, hex, octal, underscores, floats, .inf and dates resolve as before."""
    from engine.loader import parse_yaml

    doc = parse_yaml('a: 59:59\nb: 9:00\nc: "09:00"\nd: 1_000\ne: 0x1F\nf: 017\ng: 1.5\nh: .inf\ni: 190:20:30.15\n'
                     "j: 2001-12-14\n", "f.yaml")
    assert not isinstance(doc, ConfigError)
    data = doc.data
    assert (data["a"], data["b"], data["c"], data["i"]) == ("59:59", "9:00", "09:00", "190:20:30.15")
    assert (data["d"], data["e"], data["f"], data["g"], data["h"]) == (1000, 31, 15, 1.5, float("inf"))
    assert str(data["j"]) == "2001-12-14"


@pytest.mark.parametrize(("text", "code", "line"), [
    ("a: 1\nb: " + "9" * 101 + "\n", "yaml_number", 2),
    ("a: 1\nb: !!int " + "9" * 101 + "\n", "yaml_number", 2),
    ("a: 1\n" + "1" * 200 + ".5: x\n", "yaml_number", 2),
    ("a: [" + ",".join(["1"] * 20_000) + "]\n", "yaml_too_many_nodes", 1),
    ("a: 1\nb:\n  - x\n  - 2001-12-14t21:59:43.10-99:99\n", "yaml_value", 4),
    ("a: 1\nb: 0000-01-01\n", "yaml_value", 2),
])
def test_scalars_past_the_limits_are_findings_at_their_line(text, code, line):
    from engine.loader import parse_yaml

    err = parse_yaml(text, "f.yaml")
    assert isinstance(err, ConfigError) and (err.code, err.line) == (code, line), err


def test_a_number_of_100_characters_and_quoted_long_digits_are_accepted():
    from engine.loader import parse_yaml

    doc = parse_yaml("a: " + "9" * 100 + "\nb: '" + "9" * 5000 + "'\n", "f.yaml")
    assert not isinstance(doc, ConfigError) and doc.data["a"] == int("9" * 100) and len(doc.data["b"]) == 5000
