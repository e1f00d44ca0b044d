"""durable-rules behind engine/durable.py: the same answers as the Python reference, no state carried
between events or orgs, the 64-condition limit, shared rulesets, and the subprocess probe."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest

from engine import durable
from engine.loader import OrgBundle
from engine.models import Event
from engine.rules import CompiledRules, compile_rules, match_python
from tests.engine.conftest import BundleFactory


def compiled(bundle: OrgBundle) -> CompiledRules:
    c = compile_rules(bundle)
    assert isinstance(c, CompiledRules), [str(e) for e in c]
    assert c.engine is not None
    return c


def engine_names(c: CompiledRules, fact: dict[str, Any]) -> list[str]:
    assert c.engine is not None
    return sorted(c.engine.match(fact))


def keys(c: CompiledRules, event: dict[str, Any]) -> list[str]:
    return [m.key for m in c.match_fact(c.features(event))[0]]


# --------------------------------------------------------------------------- equivalence with Python

def test_engine_matches_python_on_every_corpus_event(acme_rules: CompiledRules, corpus: list[Event]) -> None:
    fired: set[str] = set()
    matched_events = 0
    for ev in corpus:
        fact = acme_rules.features(ev.envelope())
        in_engine = engine_names(acme_rules, fact)
        assert in_engine == sorted(match_python(acme_rules.definition, fact)), ev.id
        fired.update(in_engine)
        matched_events += bool(in_engine)
    # the property is not vacuous: most events match, and many different rules fire
    assert matched_events >= 0.8 * len(corpus)
    assert len(fired) >= 20


MIXED_TYPES = [
    # (condition, event value): the engine and the Python reference must agree whatever the types. The
    # engine coerces mixed types (5 == "5", true == "true"), and how may depend on what it loaded before.
    ({"equals": 5}, "5"),
    ({"equals": "5"}, 5),
    ({"equals": True}, 1),
    ({"equals": True}, "true"),
    ({"not_equals": 5}, "5"),
    ({"in": [1, 2]}, "1"),
]


@pytest.mark.parametrize(("cond", "value"), MIXED_TYPES, ids=[f"{c}-{v!r}" for c, v in MIXED_TYPES])
def test_engine_matches_python_for_mixed_types(make_bundle: BundleFactory, cond: dict[str, Any], value: Any) -> None:
    c = compiled(make_bundle([{"id": "r", "when": {"fields": [{"field": "data.k", **cond}]},
                               "then": {"intent": "OTHER"}}], revision="mixed-types"))
    fact = c.features({"type": "a:b", "source": "API", "data": {"k": value}})
    assert engine_names(c, fact) == sorted(match_python(c.definition, fact))


# --------------------------------------------------------------------------- no state carried over

def test_the_same_events_twice_give_the_same_matches(acme_rules: CompiledRules, corpus: list[Event]) -> None:
    first = [keys(acme_rules, ev.envelope()) for ev in corpus]
    second = [keys(acme_rules, ev.envelope()) for ev in corpus]
    assert first == second


def test_a_match_leaves_nothing_behind(acme_rules: CompiledRules) -> None:
    busy = {"type": "email:received", "source": "EMAIL",
            "data": {"subject": "Refund", "text": "Invoice wrong, site is down, need a quote and a partnership."}}
    assert len(keys(acme_rules, busy)) >= 3
    assert keys(acme_rules, {"type": "nothing:here", "source": "API", "data": {}}) == []
    assert keys(acme_rules, busy) == keys(acme_rules, busy)


def test_interleaving_two_orgs_gives_the_same_results_as_separately(
        acme_rules: CompiledRules, acme_bundle: OrgBundle, corpus: list[Event]) -> None:
    # a second org with different rules: the spam and booking rules only, in reverse order
    other = tuple(reversed([r for r in acme_bundle.rules if r.ruleset in ("spam", "bookings")]))
    beta = compiled(dataclasses.replace(acme_bundle, rules=other, revision="beta"))
    assert beta.engine is not acme_rules.engine
    events = [ev.envelope() for ev in corpus]
    alone_acme = [keys(acme_rules, ev) for ev in events]
    alone_beta = [keys(beta, ev) for ev in events]
    interleaved = [(keys(acme_rules, ev), keys(beta, ev)) for ev in events]
    assert interleaved == list(zip(alone_acme, alone_beta, strict=True))
    assert alone_acme != alone_beta  # the two orgs do answer differently


# --------------------------------------------------------------------------- more than 64 at once

@pytest.fixture(scope="module")
def wide(make_bundle: BundleFactory) -> CompiledRules:
    n = durable.MAX_SIMULTANEOUS + 6
    rules = [{"id": f"f{i}", "when": {"fields": [{"field": f"data.f{i}", "exists": True}]}, "then": {"intent": "OTHER"}}
             for i in range(n)]
    return compiled(make_bundle(rules, revision="wide"))


def test_an_event_over_the_limit_is_matched_in_python(wide: CompiledRules) -> None:
    n = durable.MAX_SIMULTANEOUS + 6
    assert [w.code for w in wide.warnings] == ["may_exceed_engine_limit"]
    assert wide.engine is not None
    fact = wide.features({"type": "a:b", "source": "API", "data": {f"f{i}": i for i in range(n)}})
    with pytest.raises(durable.EngineLimit):
        wide.engine.match(fact)
    matches, engine = wide.match_fact(fact)
    assert engine == "python (engine limit)"
    assert {m.rule.id for m in matches} == {f"f{i}" for i in range(n)}


def test_the_engine_still_answers_after_the_limit(wide: CompiledRules) -> None:
    n = durable.MAX_SIMULTANEOUS + 6
    over = wide.features({"type": "a:b", "source": "API", "data": {f"f{i}": i for i in range(n)}})
    assert wide.match_fact(over)[1] == "python (engine limit)"
    for count in (3, 0, durable.MAX_SIMULTANEOUS):
        fact = wide.features({"type": "a:b", "source": "API", "data": {f"f{i}": i for i in range(count)}})
        matches, engine = wide.match_fact(fact)
        assert engine == "durable-rules"
        assert {m.rule.id for m in matches} == {f"f{i}" for i in range(count)}
    assert wide.match_fact(over)[1] == "python (engine limit)"


# --------------------------------------------------------------------------- shared rulesets

def test_identical_definitions_share_one_engine_ruleset(acme_rules: CompiledRules, acme_bundle: OrgBundle) -> None:
    before = durable.loaded_count()
    again = compiled(acme_bundle)
    # a new revision whose rules compile to the same definition (say, only a comment changed)
    renamed = compiled(dataclasses.replace(acme_bundle, revision="only-a-comment-changed"))
    assert again.engine is acme_rules.engine and renamed.engine is acme_rules.engine
    assert durable.load("any-prefix", dict(acme_rules.definition)) is acme_rules.engine
    assert durable.loaded_count() == before


def test_a_changed_definition_gets_a_new_engine_ruleset(acme_rules: CompiledRules, acme_bundle: OrgBundle) -> None:
    before = durable.loaded_count()
    changed = compiled(dataclasses.replace(acme_bundle, rules=acme_bundle.rules[1:], revision="changed"))
    assert changed.engine is not acme_rules.engine
    assert changed.engine is not None and changed.engine.name.startswith("acme@")
    assert changed.engine.name != acme_rules.engine.name  # type: ignore[union-attr]
    assert durable.loaded_count() == before + 1


# --------------------------------------------------------------------------- the probe

def test_probe_reports_a_definition_the_engine_refuses() -> None:
    why = durable.probe({"r0": {"all": [{"m": {"$bogus": {"a": 1}}}]}})
    assert why is not None and why.startswith("the rules engine refused the compiled rules:")
    # the refusal happened in the subprocess: this process and its engine carry on
    assert durable.probe({"r0": {"all": [{"m": {"type": f"ok-{uuid.uuid4().hex}"}}]}}) is None


def test_probe_times_out_on_a_definition_that_hangs() -> None:
    # a fresh definition and no time at all: the subprocess cannot finish, as one that hangs would not
    why = durable.probe({"r0": {"all": [{"m": {"type": f"slow-{uuid.uuid4().hex}"}}]}}, timeout=0.001)
    assert why is not None and "did not finish compiling" in why


def test_a_refused_definition_is_a_compile_failed_error(make_bundle: BundleFactory,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(durable, "probe", lambda definition, timeout=20.0: "the rules engine refused it: error 202")
    loaded = durable.loaded_count()
    errors = compile_rules(make_bundle([{"id": "r", "when": {"type": "a:b"}, "then": {"intent": "OTHER"}}]))
    assert isinstance(errors, list)
    assert [str(e) for e in errors] == ["/virtual/org.yaml:0: compile_failed: the rules engine refused it: error 202"]
    assert durable.loaded_count() == loaded
