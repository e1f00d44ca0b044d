"""The registry: every org's last good revision, kept when a reload fails, replaced when one succeeds
(engine/registry.py)."""

from __future__ import annotations

import pytest

from engine.registry import Registry
from tests.engine.conftest import OrgCopy

SPAM = "rulesets/acme/spam.yaml"


@pytest.fixture
def registry(org_copy: OrgCopy) -> Registry:
    """acme and beta (a copy of acme under another id, on the default policy), both loaded."""
    org_copy.add_org("beta")
    reg = Registry(org_copy.rulesets, org_copy.policies)
    assert reg.load_all() == {"acme": [], "beta": []}
    return reg


def test_load_all(registry: Registry) -> None:
    assert registry.orgs == ["acme", "beta"]
    acme, beta = registry.get("acme"), registry.get("beta")
    assert acme is not None and beta is not None
    assert acme.bundle.org.org == "acme" and beta.bundle.org.org == "beta"
    assert (acme.bundle.policy.llm.provider, beta.bundle.policy.llm.provider) == ("openai", "none")
    assert acme.revision != beta.revision
    assert acme.engine is not None and acme.engine is beta.engine  # identical rules share one engine ruleset
    assert registry.get("nobody") is None and registry.state("nobody") is None


def test_a_bad_revision_keeps_the_last_good_one(registry: Registry, org_copy: OrgCopy) -> None:
    good_acme, good_beta = registry.get("acme"), registry.get("beta")
    assert good_acme is not None and good_beta is not None
    org_copy.replace(SPAM, "ruleset: spam\n", "ruleset: [spam\n")

    findings = registry.reload("acme")
    assert [f.code for f in findings] == ["yaml_syntax"]
    assert registry.get("acme") is good_acme  # still serving the last good revision
    assert registry.get("acme").revision == good_acme.revision  # type: ignore[union-attr]
    state = registry.state("acme")
    assert state is not None and state.errors == findings
    assert registry.orgs == ["acme", "beta"]
    # the other org is untouched
    assert registry.get("beta") is good_beta
    beta_state = registry.state("beta")
    assert beta_state is not None and beta_state.errors == []


def test_errors_stay_until_fixed_and_clear_on_reload(registry: Registry, org_copy: OrgCopy) -> None:
    good = registry.get("acme")
    assert good is not None
    spam = org_copy.path(SPAM)
    original = spam.read_text()
    spam.write_text(original.replace("ruleset: spam\n", "ruleset: [spam\n", 1))
    registry.reload("acme")
    registry.reload("beta")  # reloading another org does not clear acme's errors
    state = registry.state("acme")
    assert state is not None and [e.code for e in state.errors] == ["yaml_syntax"]

    spam.write_text(original)
    assert registry.reload("acme") == []
    assert state.errors == []
    assert registry.get("acme") is not None and registry.get("acme").revision == good.revision  # type: ignore[union-attr]


def test_a_revision_the_engine_cannot_take_keeps_the_last_good_one(registry: Registry, org_copy: OrgCopy) -> None:
    good = registry.get("acme")
    conditions = "\n".join(f"          - {{field: data.f{i}, exists: true}}" for i in range(70))
    org_copy.path("rulesets/acme/wide.yaml").write_text(
        f"ruleset: wide\nrules:\n  - id: too-wide\n    when:\n      fields:\n{conditions}\n    then: {{intent: OTHER}}\n")
    findings = registry.reload("acme")
    assert [(f.code, f.line) for f in findings] == [("engine_limit", 3)]
    assert findings[0].path.endswith("rulesets/acme/wide.yaml")
    assert registry.get("acme") is good


def test_a_good_new_revision_replaces_the_old_one(registry: Registry, org_copy: OrgCopy) -> None:
    old = registry.get("acme")
    assert old is not None
    org_copy.replace("rulesets/acme/bookings.yaml", "  - id: reminder-due\n", "  - id: reminder-due\n    enabled: false\n")
    findings = registry.reload("acme")
    assert [(f.severity, f.code) for f in findings] == [("warning", "unreachable_rule")]
    new = registry.get("acme")
    assert new is not None and new is not old and new.revision != old.revision
    assert "bookings/reminder-due" not in {r.key for r in new.rules}
    state = registry.state("acme")
    assert state is not None and state.errors == [] and [w.code for w in state.warnings] == ["unreachable_rule"]


def test_an_org_that_never_loaded_is_not_served(org_copy: OrgCopy) -> None:
    org_copy.add_org("gamma")
    org_copy.replace("rulesets/gamma/org.yaml", "timezone: America/New_York", "timezone: Mars/Olympus_Mons")
    reg = Registry(org_copy.rulesets, org_copy.policies)
    findings = reg.load_all()
    assert findings["acme"] == []
    assert [f.code for f in findings["gamma"]] == ["invalid_value"]
    assert "Mars/Olympus_Mons" in findings["gamma"][0].message
    assert reg.orgs == ["acme"] and reg.get("gamma") is None
    state = reg.state("gamma")
    assert state is not None and state.active is None and len(state.errors) == 1
