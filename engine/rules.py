"""The rules stage: compile an org's rules for durable-rules and find every rule an event matches.

Text conditions (keywords, phrases, regexes, negations) are evaluated once per event in Python and
handed to the engine as boolean feature fields (`t3: true`); structured conditions on type, source
and data fields (equality, comparisons, existence) stay in the engine, except lists of values
(`type: [a, b]`, `in:`, `not_equals:`), which become membership features (`g2: true`) because the
engine turns every `$or` branch of every rule into a node of its own. The compiled conditions are plain JSON in durable-rules'
dialect, so the same definition can also be evaluated by `evaluate` in Python — the reference the
tests and the benchmark compare against, and the fallback for the rare event that satisfies more
conditions at once than the engine accepts.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from engine import durable
from engine.config import FieldCondition, TextCondition, compile_user_regex
from engine.errors import ConfigError
from engine.loader import OrgBundle, RuleRef
from engine.patterns import RegexBudget, UserRegex
from engine.text import EventText, Term, extract

Cond = dict[str, Any]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextFeature:
    """One distinct text condition, evaluated once per event into a boolean field."""

    key: str
    scope: str
    include_quoted: bool
    count_negated: bool
    any: tuple[Term, ...]
    all: tuple[Term, ...]
    none: tuple[Term, ...]
    regex: tuple[UserRegex, ...]

    def evaluate(self, text: EventText, budget: RegexBudget | None = None) -> bool:
        """Whether the event's text satisfies this condition; its regexes run within the event's `budget`."""
        sc = text.scope(self.scope, self.include_quoted)
        neg = self.count_negated
        if self.none and any(sc.has(t, True) for t in self.none):
            return False
        if self.all and not all(sc.has(t, neg) for t in self.all):
            return False
        positives = bool(self.any or self.regex)
        if not positives:
            return True
        if any(sc.has(t, neg) for t in self.any):
            return True
        raw = text.raw_bytes(self.scope, self.include_quoted) if self.regex else b""
        if budget is None:
            return any(r.search(raw) for r in self.regex)
        return any(budget.search(r, raw) for r in self.regex)


@dataclass
class TextIndex:
    """Which text features each word can make true, built once per compiled revision, so that an
    event costs in proportion to the words it contains rather than to the number of rules.

    Features made only of `any` keywords and phrases are indexed (single words by the word, phrases by
    their first word); the others (all / none / regex / prefix terms) are evaluated in full.
    """

    words: dict[tuple[str, bool, bool], dict[str, list[str]]] = field(default_factory=dict)
    phrases: dict[tuple[str, bool, bool], dict[str, list[tuple[Term, str]]]] = field(default_factory=dict)
    full: list[TextFeature] = field(default_factory=list)  # evaluated for every event
    gated: dict[tuple[str, bool], dict[str, list[TextFeature]]] = field(default_factory=dict)  # only if a word occurs

    @classmethod
    def build(cls, features: list[TextFeature]) -> TextIndex:
        """Index the features that are plain keyword lists; keep the rest for full evaluation."""
        idx = cls()
        for tf in features:
            if tf.all or tf.none or tf.regex or any(t.prefix for t in tf.any):
                # Evaluated in full, but only when a word it needs occurs: the first word of an `all`
                # term (required), else of any `any` term. Regexes and prefixes cannot be gated.
                needs = [tf.all[0]] if tf.all else list(tf.any)
                if tf.regex or not needs or any(t.prefix for t in needs):
                    idx.full.append(tf)
                else:
                    gate = idx.gated.setdefault((tf.scope, tf.include_quoted), {})
                    for first in {t.words[0] for t in needs}:
                        gate.setdefault(first, []).append(tf)
                continue
            group = (tf.scope, tf.include_quoted, tf.count_negated)
            for term in tf.any:
                if len(term.words) == 1:
                    idx.words.setdefault(group, {}).setdefault(term.words[0], []).append(tf.key)
                else:
                    idx.phrases.setdefault(group, {}).setdefault(term.words[0], []).append((term, tf.key))
        return idx

    def true_features(self, text: EventText, budget: RegexBudget | None = None) -> set[str]:
        """Keys of every text feature the event's text satisfies (regexes within `budget`)."""
        out: set[str] = set()
        for group in self.words.keys() | self.phrases.keys():
            scope, quoted, negated_too = group
            sc = text.scope(scope, quoted)
            vocab = sc.words if negated_too else sc.plain
            index = self.words.get(group, {})
            small, large = (vocab, index) if len(vocab) < len(index) else (index, vocab)
            for w in small:
                if w in large:
                    out.update(index[w])
            for first, terms in self.phrases.get(group, {}).items():
                if first in sc.words:
                    out.update(key for term, key in terms if key not in out and sc.has(term, negated_too))
        out.update(tf.key for tf in self.full if tf.evaluate(text, budget))
        for (scope, quoted), gate in self.gated.items():
            present = text.scope(scope, quoted).words
            for word, feats in gate.items():
                if word in present:
                    out.update(tf.key for tf in feats if tf.key not in out and tf.evaluate(text, budget))
        return out


@dataclass(frozen=True)
class MatchFeature:
    """A `matches:` field condition (a regex on a field's text), evaluated in Python."""

    key: str
    path: tuple[str, ...]
    regex: UserRegex

    def evaluate(self, event: dict[str, Any], budget: RegexBudget | None = None) -> bool:
        """Whether the field exists and the regex is found in its text (within the event's `budget`)."""
        value = resolve_path(event, self.path)
        if value is None:
            return False
        return self.regex.search(str(value)) if budget is None else budget.search(self.regex, str(value))


@dataclass(frozen=True)
class SetFeature:
    """Membership of a field in a list of values (`type: [a, b]`, `in:`, `not_equals:`), computed once per
    event into a boolean field: durable-rules gives every branch of an `$or` its own node per rule,
    and an event may satisfy at most 64 nodes, so lists never reach the engine as `$or`."""

    key: str
    slot: str  # the fact key holding the field's value: "type", "source" or a value slot
    values: frozenset[Any]
    negate: bool = False  # not_equals: true when the field is absent or holds another value

    def evaluate(self, fact: dict[str, Any]) -> bool:
        """Whether the fact's value is in the set (or, negated, is not)."""
        return (fact.get(self.slot) in self.values) != self.negate


def resolve_path(event: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The value at a dotted path of the event (None when absent)."""
    cur: Any = event
    for part in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _norm_value(v: Any) -> str:
    # One canonical text form for equality, so the engine (which coerces 5 == "5" and true == "true")
    # and the Python evaluator agree, and "Billing" equals billing.
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip().lower()


@dataclass
class CompiledRules:
    """An org's rules compiled at one revision: features to compute and the engine definition."""

    bundle: OrgBundle
    rules: list[RuleRef]
    definition_json: str  # the engine definition, kept compact: it is parsed only when Python must match
    text_features: list[TextFeature]
    match_features: list[MatchFeature]
    value_slots: dict[str, tuple[str, ...]]  # fact key -> path, value as given (strings lower-cased)
    number_slots: dict[str, tuple[str, ...]]  # fact key -> path, value as a number
    exists_slots: dict[str, tuple[str, ...]]  # fact key -> path, present when the field holds any value
    set_features: list[SetFeature] = field(default_factory=list)
    engine: durable.DurableRuleset | None = None
    warnings: list[ConfigError] = field(default_factory=list)
    text_index: TextIndex = field(default_factory=TextIndex)

    _definition: dict[str, Cond] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.text_index = TextIndex.build(self.text_features)

    @property
    def definition(self) -> dict[str, Cond]:
        """The compiled rules in durable-rules' JSON dialect (engine rule name -> condition)."""
        if self._definition is None:
            self._definition = json.loads(self.definition_json)
        return self._definition

    @property
    def revision(self) -> str:
        """The org revision these rules were compiled from."""
        return self.bundle.revision

    def features(self, event: dict[str, Any], text: EventText | None = None) -> dict[str, Any]:
        """The fact handed to the engine: type, source, referenced fields, and every text feature. The event's rule
        regexes share one `RegexBudget`: past it they count as not matched, and `text.notes` says so."""
        text = text or extract(event.get("data") or {})
        budget = RegexBudget()
        fact: dict[str, Any] = {"type": event.get("type"), "source": event.get("source")}
        for key, path in self.value_slots.items():
            v = resolve_path(event, path)
            if isinstance(v, str | int | float | bool):
                fact[key] = _norm_value(v)
        for key, path in self.exists_slots.items():
            if resolve_path(event, path) is not None:
                fact[key] = 1
        for key, path in self.number_slots.items():
            v = resolve_path(event, path)
            if isinstance(v, bool):
                continue
            try:
                x = float(v)
            except (TypeError, ValueError):
                continue  # not a number: numeric conditions on it do not hold
            if math.isfinite(x):  # "inf" or "1e999" would break the engine's JSON
                fact[key] = x
        for key in self.text_index.true_features(text, budget):
            fact[key] = True
        for sf in self.set_features:
            if sf.evaluate(fact):
                fact[sf.key] = True
        for mf in self.match_features:
            if mf.evaluate(event, budget):
                fact[mf.key] = True
        if budget.note is not None and budget.note not in text.notes:
            text.notes.append(budget.note)
        return fact

    def match_fact(self, fact: dict[str, Any]) -> tuple[list[RuleRef], str]:
        """Rules matched by a feature fact, best first (salience, then file order), and which engine ran."""
        engine = "durable-rules"
        names: list[str]
        if self.engine is None:
            names, engine = match_python(self.definition, fact), "python"
        else:
            try:
                names = self.engine.match(fact)
            except durable.EngineLimit:
                # More conditions true at once than the engine holds: same semantics, in Python.
                names, engine = match_python(self.definition, fact), "python (engine limit)"
            except durable.EngineError as exc:
                # Never lose an event to an engine fault: same semantics, in Python, and say why.
                log.warning("durable-rules refused a fact for %s (%s); matched in Python", self.bundle.org.org, exc)
                names, engine = match_python(self.definition, fact), f"python (engine error: {exc})"
        seen = set()
        out = []
        for n in names:
            i = int(n[1:])
            if i not in seen:
                seen.add(i)
                out.append(i)
        out.sort(key=lambda i: (-self.rules[i].rule.salience, i))
        return [self.rules[i] for i in out], engine


# --------------------------------------------------------------------------- evaluation in Python

_OPS = {"$gt": lambda a, b: a > b, "$gte": lambda a, b: a >= b, "$lt": lambda a, b: a < b,
        "$lte": lambda a, b: a <= b}


def evaluate(cond: Cond, fact: dict[str, Any]) -> bool:
    """Evaluate one compiled condition exactly as durable-rules does (the reference semantics)."""
    (op, arg), = cond.items()
    if op == "$and":
        return all(evaluate(c, fact) for c in arg)
    if op == "$or":
        return any(evaluate(c, fact) for c in arg)
    if op == "$ex":
        return next(iter(arg)) in fact
    if op == "$nex":
        return next(iter(arg)) not in fact
    if op == "$neq":
        (k, v), = arg.items()
        return k in fact and fact[k] != v
    if op in _OPS:
        (k, v), = arg.items()
        x = fact.get(k)
        return isinstance(x, int | float) and not isinstance(x, bool) and _OPS[op](x, v)
    if op not in fact:
        return False
    value = fact[op]
    return bool(value == arg and isinstance(value, bool) == isinstance(arg, bool))


def match_python(definition: dict[str, Cond], fact: dict[str, Any]) -> list[str]:
    """Rule names whose condition holds for `fact`, evaluated in Python."""
    return [name for name, rule in definition.items() if evaluate(rule["all"][0]["m"], fact)]


# --------------------------------------------------------------------------- compiler

class _Compiler:
    def __init__(self, bundle: OrgBundle) -> None:
        self.bundle = bundle
        self.text: dict[str, TextFeature] = {}
        self.matches: dict[str, MatchFeature] = {}
        self.values: dict[tuple[str, ...], str] = {}
        self.numbers: dict[tuple[str, ...], str] = {}
        self.present: dict[tuple[str, ...], str] = {}
        self.sets: dict[tuple[str, frozenset[Any], bool], SetFeature] = {}

    def member(self, slot: str, values: list[Any], negate: bool = False) -> Cond:
        """A condition on one value (plain equality, which the engine shares) or on a set of them."""
        if len(values) == 1 and not negate:
            return {slot: values[0]}
        spec = (slot, frozenset(values), negate)
        if spec not in self.sets:
            self.sets[spec] = SetFeature(f"g{len(self.sets)}", slot, spec[1], negate)
        return {self.sets[spec].key: True}
        self.errors: list[ConfigError] = []

    def slot(self, path: tuple[str, ...], numeric: bool = False, exists: bool = False) -> str:
        table, prefix = (self.numbers, "n") if numeric else (self.present, "e") if exists else (self.values, "v")
        if path not in table:
            table[path] = f"{prefix}{len(table)}"
        return table[path]

    def text_feature(self, t: TextCondition) -> str:
        spec = json.dumps(t.model_dump(mode="json"), sort_keys=True)
        if spec not in self.text:
            self.text[spec] = TextFeature(
                key=f"t{len(self.text)}", scope=t.scope, include_quoted=t.include_quoted,
                count_negated=t.count_negated, any=tuple(Term.parse(k) for k in t.any),
                all=tuple(Term.parse(k) for k in t.all), none=tuple(Term.parse(k) for k in t.none),
                regex=tuple(compile_user_regex(r) for r in t.regex))
        return self.text[spec].key

    def field_cond(self, fc: FieldCondition) -> Cond:
        path = tuple(fc.field.split("."))
        op, v = fc.operator, fc.value
        if op == "matches":
            spec = f"{fc.field}\0{v}"
            if spec not in self.matches:
                self.matches[spec] = MatchFeature(f"x{len(self.matches)}", path, compile_user_regex(str(v)))
            return {self.matches[spec].key: True}
        if op in ("gt", "gte", "lt", "lte"):
            return {f"${op}": {self.slot(path, numeric=True): float(v)}}
        if op == "exists":
            # Its own slot: a list or an object exists too, though only scalars are compared.
            return {"$ex" if v else "$nex": {self.slot(path, exists=True): 1}}
        key = self.slot(path)
        if op == "equals":
            return {key: _norm_value(v)}
        if op == "not_equals":
            # An absent field is "not equal" to users (the engine's $neq needs it present).
            return self.member(key, [_norm_value(v)], negate=True)
        if op == "in":
            return self.member(key, [_norm_value(x) for x in v])
        raise AssertionError(f"unhandled operator {op}")

    def rule_cond(self, ref: RuleRef) -> Cond:
        w = ref.rule.when
        conds: list[Cond] = []
        if w.types():
            conds.append(self.member("type", w.types()))
        if w.sources():
            conds.append(self.member("source", w.sources()))
        conds.extend(self.field_cond(fc) for fc in w.fields)
        if w.text is not None:
            conds.append({self.text_feature(w.text): True})
        if not conds:
            return {"$ex": {"type": 1}}  # no conditions: matches every event
        return conds[0] if len(conds) == 1 else {"$and": conds}




def _atoms(cond: Cond, out: list[Cond]) -> None:
    (op, arg), = cond.items()
    if op in ("$and", "$or"):
        for c in arg:
            _atoms(c, out)
    else:
        out.append(cond)


def _selectivity(atom: Cond) -> int:
    # Type and source tests first (a single value, or a list as a set feature: both shared by many
    # rules), then data fields, then text features.
    key = _atom_key(atom)
    if key in ("type", "source") or (key[0] == "g" and key[1:].isdigit()):
        return 0
    if key[0] in "vne" and key[1:].isdigit():
        return 1
    return 2


def _atom_key(atom: Cond) -> str:
    (op, arg), = atom.items()
    return op if not op.startswith("$") else next(iter(arg))


def compile_rules(bundle: OrgBundle, *, load_engine: bool = True, probe: bool = True) -> CompiledRules | list[ConfigError]:
    """Compile an org's rules; enforce the engine's hard limits; optionally probe and load it.

    Returns the compiled rules, or the errors that keep this revision from replacing a good one.
    """
    c = _Compiler(bundle)
    rules = list(bundle.rules)
    definition: dict[str, Cond] = {}
    errors: list[ConfigError] = []
    all_atoms: set[str] = set()
    for i, ref in enumerate(rules):
        cond = c.rule_cond(ref)
        atoms: list[Cond] = []
        _atoms(cond, atoms)
        if len(atoms) > durable.MAX_SIMULTANEOUS:
            errors.append(ConfigError(ref.path, ref.line, "engine_limit",
                                      f"rule '{ref.key}' has {len(atoms)} conditions; the rules engine takes at most "
                                      f"{durable.MAX_SIMULTANEOUS} per event"))
        all_atoms.update(json.dumps(a, sort_keys=True) for a in atoms)
        # Shared conditions first: identical first conditions share one engine node (less memory, and
        # fewer nodes an event satisfies at once).
        atoms.sort(key=_selectivity)
        definition[f"r{i}"] = {"all": [{"m": atoms[0] if len(atoms) == 1 else {"$and": atoms}}]}
    org_path = bundle.files[0]
    if len(rules) > durable.MAX_RULES:
        errors.append(ConfigError(org_path, 0, "engine_limit",
                                  f"{len(rules)} rules; the rules engine takes at most {durable.MAX_RULES}"))
    if len(all_atoms) > durable.MAX_DISTINCT_CONDITIONS:
        errors.append(ConfigError(org_path, 0, "engine_limit",
                                  f"the rules use {len(all_atoms)} distinct conditions; the rules engine hangs past "
                                  f"~512, so at most {durable.MAX_DISTINCT_CONDITIONS} are allowed — merge keyword "
                                  "lists into shared text conditions or split the org"))
    properties = 4 + len(c.values) + len(c.numbers) + len(c.present) + len(c.text) + len(c.matches) + len(c.sets)
    if properties > durable.MAX_PROPERTIES:
        errors.append(ConfigError(org_path, 0, "engine_limit",
                                  f"events would carry {properties} feature fields; the rules engine takes at most "
                                  f"{durable.MAX_PROPERTIES}"))
    warnings: list[ConfigError] = []
    bound = _simultaneous_bound(all_atoms)
    if bound > durable.MAX_SIMULTANEOUS:
        warnings.append(ConfigError(org_path, 0, "may_exceed_engine_limit",
                                    f"an event could satisfy up to {bound} distinct conditions at once; past "
                                    f"{durable.MAX_SIMULTANEOUS} such an event is matched in Python instead", "warning"))
    if errors:
        return errors
    compiled = CompiledRules(
        bundle=bundle, rules=rules, definition_json=json.dumps(definition, separators=(",", ":")),
        text_features=list(c.text.values()), match_features=list(c.matches.values()),
        value_slots={k: p for p, k in c.values.items()}, number_slots={k: p for p, k in c.numbers.items()},
        exists_slots={k: p for p, k in c.present.items()}, set_features=list(c.sets.values()),
        warnings=warnings)
    if load_engine:
        if probe:
            why = durable.probe(definition)
            if why:
                return [ConfigError(org_path, 0, "compile_failed", why)]
        compiled.engine = durable.load(bundle.org.org, definition)
    return compiled


def _simultaneous_bound(atoms: set[str]) -> int:
    # Equalities on one field exclude each other (a field has one value); every other atom counts.
    eq_keys: set[str] = set()
    others = 0
    for a in atoms:
        atom = json.loads(a)
        (op, _), = atom.items()
        if op.startswith("$"):
            others += 1
        else:
            eq_keys.add(_atom_key(atom))
    return others + len(eq_keys)
