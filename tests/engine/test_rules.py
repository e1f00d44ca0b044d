"""The rules stage: compiling an org's rules, the feature fact, field operators, match order, and the
compile-time limits of the engine (engine/rules.py)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from engine import durable
from engine.loader import OrgBundle
from engine.rules import CompiledRules, compile_rules, match_python
from tests.engine.conftest import BundleFactory


def rule(rid: str, when: dict[str, Any], intent: str | None = "OTHER", salience: int = 0,
         **then: Any) -> dict[str, Any]:
    return {"id": rid, "when": when, "salience": salience,
            "then": {**({"intent": intent} if intent else {}), **then}}


def field(rid: str, **cond: Any) -> dict[str, Any]:
    return rule(rid, {"fields": [cond]})


def event(data: dict[str, Any] | None = None, type_: str = "form:submitted", source: str = "WEBHOOK") -> dict[str, Any]:
    return {"org": "acme", "type": type_, "source": source, "data": data or {}}


def compiled(bundle: OrgBundle, **kw: Any) -> CompiledRules:
    c = compile_rules(bundle, **kw)
    assert isinstance(c, CompiledRules), [str(e) for e in c]
    return c


def ids(c: CompiledRules, ev: dict[str, Any]) -> set[str]:
    matches, _ = c.match_fact(c.features(ev))
    return {m.rule.id for m in matches}


# --------------------------------------------------------------------------- the compiled definition

def test_text_is_matched_in_python_and_handed_to_the_engine_as_booleans(acme_rules: CompiledRules) -> None:
    blob = json.dumps(acme_rules.definition)
    assert "$imt" not in blob and "$mt" not in blob  # no regex in the engine (RECIPES: its dialect is buggy)
    # every rule is in the definition (a rule may be split into alternatives named r<i>.<j>)
    assert {int(k[1:].split(".")[0]) for k in acme_rules.definition} == set(range(len(acme_rules.rules)))
    fact = acme_rules.features(event({"subject": "Refund please", "text": "I was charged twice."},
                                     "email:received", "EMAIL"))
    keys = {k for k in fact if k.startswith("t")} - {"type"}
    assert keys and all(fact[k] is True for k in keys)
    assert {m.key for m in acme_rules.match_fact(fact)[0]} == {"intake/billing"}


def test_identical_text_conditions_share_one_feature(make_bundle: BundleFactory) -> None:
    text = {"text": {"any": ["refund", "chargeback"]}}
    c = compiled(make_bundle([rule("a", text), rule("b", text, intent="SPAM"), rule("c", {"text": {"any": ["x"]}})]),
                 load_engine=False)
    assert len(c.text_features) == 2


def test_rule_without_conditions_matches_every_event(make_bundle: BundleFactory) -> None:
    c = compiled(make_bundle([rule("any", {}), field("never", equals="x", **{"field": "data.k"})]), load_engine=False)
    assert ids(c, event()) == {"any"}
    assert ids(c, event({"k": "x"}, "email:received", "EMAIL")) == {"any", "never"}


def test_type_source_fields_and_text_must_all_hold(make_bundle: BundleFactory) -> None:
    both = rule("both", {"type": ["email:received", "form:submitted"], "source": ["EMAIL"],
                         "fields": [{"field": "data.lang", "equals": "en"}], "text": {"any": ["refund"]}})
    c = compiled(make_bundle([both]))
    ok = event({"lang": "en", "text": "a refund"}, "email:received", "EMAIL")
    assert ids(c, ok) == {"both"}
    assert ids(c, {**ok, "source": "API"}) == set()
    assert ids(c, {**ok, "type": "booking:created"}) == set()
    assert ids(c, event({"lang": "fr", "text": "a refund"}, "email:received", "EMAIL")) == set()
    assert ids(c, event({"lang": "en", "text": "a question"}, "email:received", "EMAIL")) == set()


def test_matches_are_ordered_by_salience_then_file_order(make_bundle: BundleFactory) -> None:
    c = compiled(make_bundle([
        rule("low", {"type": "a:b"}, salience=-5),
        rule("first", {"type": "a:b"}),
        rule("high", {"type": ["a:b", "c:d"]}, salience=100),
        rule("second", {"type": "a:b"}),
        rule("other", {"type": "c:d"}, salience=1000),
    ]))
    matches, engine = c.match_fact(c.features(event(type_="a:b")))
    assert engine == "durable-rules"
    assert [m.key for m in matches] == ["t/high", "t/first", "t/second", "t/low"]


# --------------------------------------------------------------------------- field operators

OPERATOR_RULES = [
    field("eq", field="data.category", equals="Billing"),
    field("ne", field="data.category", not_equals="billing"),
    field("in", field="data.category", **{"in": ["sales", "Support"]}),
    field("gt", field="data.amount", gt=100),
    field("gte", field="data.amount", gte=100),
    field("lt", field="data.amount", lt=100),
    field("lte", field="data.amount", lte=100),
    field("ex", field="data.ref", exists=True),
    field("nex", field="data.ref", exists=False),
    field("mt", field="data.from", matches="(mailer-daemon|postmaster)@"),
    field("deep", field="data.customer.tier", equals="gold"),
]

OPERATOR_CASES = [
    # data, rules expected to match
    ({}, {"ne", "nex"}),
    ({"category": " BILLING "}, {"eq", "nex"}),  # case and surrounding space do not matter
    ({"category": "support"}, {"ne", "in", "nex"}),
    ({"category": "marketing"}, {"ne", "nex"}),
    ({"amount": 150}, {"gt", "gte", "ne", "nex"}),
    ({"amount": 100}, {"gte", "lte", "ne", "nex"}),
    ({"amount": "100"}, {"gte", "lte", "ne", "nex"}),  # numeric strings are numbers
    ({"amount": " 99.5 "}, {"lt", "lte", "ne", "nex"}),
    ({"amount": "lots"}, {"ne", "nex"}),  # not a number: no numeric test holds
    ({"amount": True}, {"ne", "nex"}),  # nor is a boolean
    ({"ref": "abc"}, {"ex", "ne"}),
    ({"ref": 0}, {"ex", "ne"}),  # falsy values exist too
    ({"ref": False}, {"ex", "ne"}),
    ({"from": "MAILER-DAEMON@mx.example.com"}, {"mt", "ne", "nex"}),  # regexes ignore case
    ({"from": "Mail Delivery <postmaster@example.org>"}, {"mt", "ne", "nex"}),  # searched, not anchored
    ({"from": "anna@example.com"}, {"ne", "nex"}),
    ({"customer": {"tier": "Gold"}}, {"deep", "ne", "nex"}),
    ({"customer": "gold"}, {"ne", "nex"}),
]


@pytest.fixture(scope="module")
def operators(make_bundle: BundleFactory) -> CompiledRules:
    return compiled(make_bundle(OPERATOR_RULES, revision="operators"))


@pytest.mark.parametrize("where", ["durable-rules", "python"])
@pytest.mark.parametrize(("data", "expected"), OPERATOR_CASES, ids=[json.dumps(d) for d, _ in OPERATOR_CASES])
def test_field_operators(operators: CompiledRules, where: str, data: dict[str, Any], expected: set[str]) -> None:
    c = operators if where == "durable-rules" else dataclasses.replace(operators, engine=None)
    matches, engine = c.match_fact(c.features(event(data)))
    assert engine == where
    assert {m.rule.id for m in matches} == expected


@pytest.mark.parametrize("value", [["a.pdf"], {"name": "a.pdf"}])
def test_exists_holds_for_lists_and_objects(make_bundle: BundleFactory, value: Any) -> None:
    c = compiled(make_bundle([field("ex", field="data.attachments", exists=True),
                              field("nex", field="data.attachments", exists=False)]), load_engine=False)
    assert ids(c, event({"attachments": value})) == {"ex"}


# --------------------------------------------------------------------------- compile-time limits

def test_rule_with_more_conditions_than_the_engine_takes(make_bundle: BundleFactory) -> None:
    n = durable.MAX_SIMULTANEOUS + 1
    big = rule("big", {"fields": [{"field": f"data.f{i}", "exists": True} for i in range(n)]})
    errors = compile_rules(make_bundle([rule("small", {"type": "a:b"}), big]))
    assert isinstance(errors, list)
    assert [str(e) for e in errors] == [
        f"/virtual/t.yaml:2: engine_limit: rule 't/big' has {n} conditions; the rules engine takes at most "
        f"{durable.MAX_SIMULTANEOUS} per event"]


def test_too_many_distinct_conditions(make_bundle: BundleFactory) -> None:
    n = durable.MAX_DISTINCT_CONDITIONS + 1
    rules = [field(f"r{i}", field="data.sku", equals=f"sku-{i}") for i in range(n)]
    loaded = durable.loaded_count()
    errors = compile_rules(make_bundle(rules))
    assert isinstance(errors, list) and len(errors) == 1
    assert str(errors[0]).startswith(f"/virtual/org.yaml:0: engine_limit: the rules use {n} distinct conditions")
    assert durable.loaded_count() == loaded  # never handed to the engine (it would hang)


def test_too_many_properties_per_event(make_bundle: BundleFactory) -> None:
    n = durable.MAX_PROPERTIES - 3  # + type, source, sid, id
    rules = [field(f"r{i}", field=f"data.f{i}", exists=True) for i in range(n)]
    errors = compile_rules(make_bundle(rules))
    assert isinstance(errors, list)
    assert [e.code for e in errors] == ["engine_limit"]
    assert f"events would carry {n + 4} feature fields" in errors[0].message


def test_too_many_rules(make_bundle: BundleFactory) -> None:
    n = durable.MAX_RULES + 1
    errors = compile_rules(make_bundle([rule(f"r{i}", {"type": "a:b"}) for i in range(n)]), load_engine=False)
    assert isinstance(errors, list)
    assert [(e.code, e.line) for e in errors] == [("engine_limit", 0)]
    assert f"{n} rules" in errors[0].message


def test_may_exceed_engine_limit_warning(make_bundle: BundleFactory, acme_rules: CompiledRules) -> None:
    n = durable.MAX_SIMULTANEOUS + 6
    c = compiled(make_bundle([field(f"r{i}", field=f"data.f{i}", exists=True) for i in range(n)]), load_engine=False)
    assert [(w.code, w.severity) for w in c.warnings] == [("may_exceed_engine_limit", "warning")]
    assert f"up to {n} distinct conditions" in c.warnings[0].message
    assert acme_rules.warnings == []


def test_equalities_on_one_field_exclude_each_other(make_bundle: BundleFactory) -> None:
    # 100 values of one field: an event has one value, so at most one of them holds at once
    c = compiled(make_bundle([field(f"r{i}", field="data.sku", equals=f"sku-{i}") for i in range(100)]),
                 load_engine=False)
    assert c.warnings == []
    assert ids(c, event({"sku": "SKU-42"})) == {"r42"}


def test_python_matcher_is_used_when_no_engine_is_loaded(make_bundle: BundleFactory) -> None:
    c = compiled(make_bundle([rule("a", {"type": "a:b"})]), load_engine=False)
    assert c.engine is None
    fact = c.features(event(type_="a:b"))
    assert c.match_fact(fact)[1] == "python"
    assert match_python(c.definition, fact) == ["r0"]


# --------------------------------------------------------------------------- `$or` and the engine's node limit

def test_many_rules_listing_several_types_stay_in_the_engine(make_bundle: BundleFactory) -> None:
    """200 rules with `type: [a, b]` compiled to `$or`s put 400 branch nodes in the network, so every event
    of type a satisfied more than 64 nodes (error 303) or the ruleset was refused (error 107)."""
    rules = [rule(f"r{i}", {"type": ["email:received", "form:submitted"], "text": {"any": [f"word{i}"]}})
             for i in range(200)]
    rules += [rule("only-types", {"type": ["email:received", "form:submitted"]}),
              rule("in-list", {"fields": [{"field": "data.category", "in": ["a", "b"]}]})]
    c = compiled(make_bundle(rules))
    # lists reach the engine as one shared membership feature, never as `$or` branches
    assert "$or" not in json.dumps(c.definition)
    assert len(c.set_features) == 2  # the type list (shared by 201 rules) and the `in` list
    assert len(c.definition) == len(rules)
    ev = event({"text": "about word3 and word150", "category": "b"}, type_="email:received")
    matches, engine = c.match_fact(c.features(ev))
    assert engine == "durable-rules"
    assert {m.rule.id for m in matches} == {"r3", "r150", "only-types", "in-list"}
    assert ids(c, event({"text": "nothing here"}, type_="intake:created")) == set()


def test_non_finite_numbers_never_reach_the_engine(make_bundle: BundleFactory) -> None:
    c = compiled(make_bundle([field("big", field="data.amount", gt=100)]))
    for amount in ("inf", "Infinity", "1e999", "nan"):
        matches, engine = c.match_fact(c.features(event({"amount": amount})))
        assert matches == [] and engine == "durable-rules", amount
    assert ids(c, event({"amount": "150"})) == {"big"}
