"""Benchmark of the rules stage: features, durable-rules matching and resolve, per event.

Run from the repository root (`make bench` does this)::

    .venv/bin/python -m bench.rules              # 10,000 events, 100 orgs for memory (~2-3 min)
    .venv/bin/python -m bench.rules --quick      # 1,000 events, 10 orgs for memory
    .venv/bin/python -m bench.rules --events 20000

Two orgs are measured on the same events and the same feature facts:

* `acme`, the real org (`rulesets/acme`, `policies/acme.yaml`), on `tests/cases/acme/corpus.jsonl`;
* `gen500`, a generated org of 500 rules (YAML written into a temporary folder and loaded through
  the ordinary loader), on generated events that match 0-5 rules each, occasionally more.

Variants per org (see bench/README.md):

* a  - the whole stage as the product runs it: extract + features + durable-rules match + resolve;
* b  - durable-rules alone (`DurableRuleset.match`) on precomputed feature facts;
* c  - the reference Python evaluator (`engine.rules.match_python`) on the same facts; c' the whole stage with it;
* d  - an indexed plain-Python matcher of the same rules on the same facts; d' the whole stage with it
       (the baseline of the throughput target);
* f  - extract + features alone, for reference (what a, c' and d' share).

Then the memory of 100 orgs x 200 rules, measured in a fresh subprocess (`--memory-child`).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present: only the generator uses it

TARGET_RATIO = 0.30  # (a) events/s at least this share of the plain-Python whole stage (c')
TARGET_P99_US = 1000.0  # p99 of (a) at 500 rules
TARGET_MEMORY_MB = 300.0  # 100 orgs x 200 rules
# durable-rules builds a node per `$or` branch and an event may satisfy at most 64 nodes: with a
# multi-type `type:` list at the head of more than 64 rules, every event of that type failed (error
# 303; past ~128 rules, error 107). The compiler now puts `$or` groups last, so the generated org no
# longer has to stay under that; this cap is high enough to exercise the fix (about a third of the
# rules list several types, as in acme).
MAX_OR_HEAD_PER_VALUE = 1000
CHUNK = 500  # events per variant per round

# --------------------------------------------------------------------------- generated orgs

EVENT_TYPES = ["email:received", "form:submitted", "intake:created", "booking:created", "automation:completed"]
SOURCE_OF = {"email:received": "EMAIL", "form:submitted": "WEBHOOK", "intake:created": "DB_TRIGGER",
             "booking:created": "WEBHOOK", "automation:completed": "WORKER"}
# A rule's `type`: one type or a list, weighted like an agency's intake rules.
RULE_TYPES: list[tuple[list[str], float]] = [
    (["email:received"], 0.40), (["form:submitted"], 0.14), (["intake:created"], 0.08),
    (["email:received", "form:submitted", "intake:created"], 0.25), (["email:received", "form:submitted"], 0.08),
    (["booking:created"], 0.03), (["automation:completed"], 0.02)]
EVENT_TYPE_WEIGHTS = [0.55, 0.22, 0.12, 0.07, 0.04]
CATEGORIES = ["billing", "support", "sales", "partnership", "project", "other", "careers", "press", "legal",
              "feedback"]
AMOUNT_THRESHOLDS = [100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0]
INTENTS = ["SALES_INQUIRY", "SUPPORT_REQUEST", "BILLING_QUESTION", "PARTNERSHIP", "PROJECT", "SCHEDULING",
           "SPAM", "OTHER"]
CONFIDENCES = [0.5, 0.55, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]

# Real business words and phrases rules use (disjoint from FILLER below).
BUSINESS = ["invoice", "refund", "receipt", "chargeback", "overdue", "remittance", "prorated", "statement", "vat", "quote", "pricing", "estimate", "retainer", "demo", "trial", "upgrade", "discount", "license", "licensing", "partnership", "reseller", "affiliate", "sponsorship", "collaboration", "redesign", "rebuild", "migration", "prototype", "mvp", "dashboard", "portal", "microsite", "ecommerce", "shopify", "wordpress", "webflow", "rebrand", "logo", "outage", "crash", "glitch", "bug", "timeout", "unresponsive", "malware", "certificate", "password", "login", "checkout", "cart", "shipping", "warranty", "contract", "renewal", "cancellation", "onboarding", "offboarding", "payroll", "compliance", "audit", "gdpr", "hipaa", "subpoena", "lawsuit", "trademark", "copyright", "sitemap", "analytics", "seo", "backlinks", "newsletter", "unsubscribe", "webinar", "podcast", "interview", "internship", "resume", "portfolio", "careers", "vendor", "procurement", "tender", "rfp", "proposal", "deadline", "milestone", "deliverable", "handoff", "kickoff", "roadmap", "sprint", "backlog", "staging", "deployment", "hosting", "domain", "dns", "ssl", "cdn", "api", "webhook", "integration", "zapier", "hubspot", "salesforce", "quickbooks", "stripe", "paypal", "invoicing", "billing", "subscription"]
PHRASES = ["late fee", "purchase order", "credit card", "wire transfer", "payment failed", "not loading",
           "site is down", "error code", "free trial", "how much", "landing page", "mobile app", "scope of work",
           "white label", "referral fee", "out of office", "gift card", "data breach", "terms of service",
           "privacy policy", "service level", "bank details", "tax id", "account manager", "case study"]
# Ordinary words for the rest of the text: no keyword, no negator, nothing the injection filter removes.
FILLER = ["hello", "hi", "team", "we", "our", "you", "your", "i", "me", "my", "they", "them", "hope", "this", "message", "finds", "well", "thank", "for", "the", "a", "an", "and", "or", "but", "with", "from", "about", "regarding", "on", "in", "at", "by", "of", "what", "when", "where", "which", "who", "how", "could", "would", "should", "will", "can", "may", "might", "please", "kindly", "let", "know", "if", "there", "any", "update", "last", "week", "month", "today", "tomorrow", "morning", "afternoon", "evening", "client", "customer", "company", "office", "colleague", "manager", "friend", "name", "email", "phone", "address", "number", "call", "back", "soon", "later", "again", "also", "just", "still", "really", "quite", "very", "more", "less", "some", "many", "few", "little", "much", "good", "great", "fine", "happy", "glad", "looking", "forward", "reply", "answer", "details", "information", "note", "regards", "working", "project", "page", "site", "website", "app", "account", "order", "item", "product", "service", "plan", "file", "document", "attached", "link", "below", "above", "here", "everything", "something", "anything", "thing", "things", "time", "day", "days", "people", "person", "question", "share", "send", "sent", "get", "got", "make", "made", "take", "taken", "give", "given", "see", "seen", "look", "looked", "need", "want", "like", "think", "feel", "hear", "heard", "help", "helps", "trying", "tried"]


def pseudo_words(rng: random.Random, n: int, avoid: set[str]) -> list[str]:
    """n distinct made-up words (2-3 syllables, never ending in s so plural folding stays out of it)."""
    cons, vows = "bdfgklmnprtvz", "aeiou"
    out: list[str] = []
    seen = set(avoid)
    while len(out) < n:
        w = "".join(rng.choice(cons) + rng.choice(vows) + (rng.choice("lnrt") if rng.random() < 0.3 else "")
                    for _ in range(rng.choice((2, 2, 3))))
        if len(w) >= 4 and w not in seen:
            seen.add(w)
            out.append(w)
    return out


@dataclasses.dataclass
class GenRule:
    """What the event generator needs to know about a generated rule."""

    types: list[str]
    text: dict[str, Any] | None
    category: list[str] | None
    amount_gt: float | None


def make_text_condition(rng: random.Random, vocab: list[str]) -> dict[str, Any]:
    """One realistic text condition: mostly `any` of 2-6 keywords, some none/all/subject/regex/flags."""

    def keyword() -> str:
        r = rng.random()
        if r < 0.80:
            return rng.choice(vocab)
        if r < 0.96:
            return rng.choice(BUSINESS)
        return rng.choice(PHRASES)

    def keywords(k: int) -> list[str]:
        out: list[str] = []
        while len(out) < k:
            w = keyword()
            if w not in out:
                out.append(w)
        return out

    kind = rng.random()
    cond: dict[str, Any]
    if kind < 0.80:
        cond = {"any": keywords(rng.randint(2, 6))}
    elif kind < 0.88:
        cond = {"any": keywords(rng.randint(2, 5)), "none": keywords(rng.randint(1, 2))}
    elif kind < 0.93:
        cond = {"all": keywords(2)}
    elif kind < 0.97:
        cond = {"scope": "subject", "any": keywords(rng.randint(2, 4))}
    else:
        prefixes = [rng.choice(vocab) for _ in range(2)]
        cond = {"regex": [rf"\b(?:{'|'.join(prefixes)})-\d{{4,6}}\b"]}
    if rng.random() < 0.08:
        cond["count_negated"] = True
    if rng.random() < 0.05 and cond.get("scope") != "subject":
        cond["include_quoted"] = True
    if rng.random() < 0.05 and "scope" not in cond:
        cond["scope"] = "full"
    return cond


def generate_rules(seed: int, n_rules: int, n_text: int, vocab: list[str]) -> tuple[list[dict[str, Any]], list[GenRule]]:
    """`n_rules` rule dicts (YAML-ready) sharing `n_text` distinct text conditions, and their summary."""
    rng = random.Random(seed)
    texts: list[dict[str, Any]] = []
    seen_specs: set[str] = set()
    while len(texts) < n_text:
        t = make_text_condition(rng, vocab)
        spec = json.dumps(t, sort_keys=True)
        if spec not in seen_specs:
            seen_specs.add(spec)
            texts.append(t)
    type_choices, type_weights = zip(*RULE_TYPES, strict=True)
    rules: list[dict[str, Any]] = []
    info: list[GenRule] = []
    n_with_text = min(n_rules, max(n_text, int(n_rules * 0.92)))
    text_order = list(range(n_text)) + [rng.randrange(n_text) for _ in range(n_with_text - n_text)]
    rng.shuffle(text_order)
    with_text = set(rng.sample(range(n_rules), n_with_text))
    next_text = iter(text_order)
    or_heads: Counter[str] = Counter()
    used_texts: set[int] = set()
    for i in range(n_rules):
        types = list(rng.choices(type_choices, type_weights)[0])
        if len(types) > 1:
            # See MAX_OR_HEAD_PER_VALUE: more multi-type rules per type and the engine falls back/refuses.
            if any(or_heads[t] >= MAX_OR_HEAD_PER_VALUE for t in types):
                types = [types[0]]
            else:
                or_heads.update(types)
        ti = next(next_text) if i in with_text else None
        if ti is None:  # rules on form fields alone (like acme's *-form-category rules)
            types = [rng.choice(("form:submitted", "intake:created"))]
        when: dict[str, Any] = {"type": types[0] if len(types) == 1 else types}
        text = texts[ti] if ti is not None else None
        # A text condition's second and later rules are mostly refinements: same words, plus a field.
        refine = ti in used_texts
        if ti is not None:
            used_texts.add(ti)
        fields: list[dict[str, Any]] = []
        category: list[str] | None = None
        amount: float | None = None
        r = rng.random() * (0.18 if refine else 1.0)
        if text is None or r < 0.14:
            category = [rng.choice(CATEGORIES)]
            fields.append({"field": "data.category", "equals": category[0]})
        elif r < 0.22:
            category = rng.sample(CATEGORIES, rng.randint(2, 3))
            fields.append({"field": "data.category", "in": category})
        if (text is None and not fields) or rng.random() < (0.6 if refine and not fields else 0.10):
            amount = rng.choice(AMOUNT_THRESHOLDS)
            fields.append({"field": "data.amount", "gt": amount})
        if fields:
            when["fields"] = fields
        if text is not None:
            when["text"] = text
        then: dict[str, Any] = {"intent": rng.choice(INTENTS), "confidence": rng.choice(CONFIDENCES)}
        if rng.random() < 0.15:
            then["priority"] = rng.randint(1, 5)
        if rng.random() < 0.02:
            then["consult_llm"] = True
        if rng.random() < 0.02:
            then["urgent"] = True
        rule: dict[str, Any] = {"id": f"rule-{i:04d}", "when": when, "then": then}
        if rng.random() < 0.3:
            rule["salience"] = rng.choice((10, 20, 50, 100))
        rules.append(rule)
        info.append(GenRule(types, text, category, amount))
    return rules, info


def write_org(root: Path, org: str, rules: list[dict[str, Any]], per_file: int = 100) -> Path:
    """Write `root/rulesets/<org>/` (org.yaml in acme's shape + ruleset files) and `root/policies/default.yaml`."""
    org_dir = root / "rulesets" / org
    org_dir.mkdir(parents=True, exist_ok=True)
    acme_org = (REPO / "rulesets" / "acme" / "org.yaml").read_text(encoding="utf-8")
    (org_dir / "org.yaml").write_text(re.sub(r"(?m)^org: .*$", f"org: {org}", acme_org), encoding="utf-8")
    for k in range(0, len(rules), per_file):
        doc = {"ruleset": f"gen-{k // per_file:02d}", "description": "generated for the benchmark",
               "rules": rules[k:k + per_file]}
        (org_dir / f"gen-{k // per_file:02d}.yaml").write_text(
            yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120), encoding="utf-8")
    policies = root / "policies"
    policies.mkdir(exist_ok=True)
    if not (policies / "default.yaml").exists():
        shutil.copy(REPO / "policies" / "default.yaml", policies / "default.yaml")
    return org_dir


def plant_for(rng: random.Random, text: dict[str, Any]) -> list[str]:
    """Words/phrases that make `text` true when placed in the right scope."""
    if text.get("regex"):
        m = re.search(r"\(\?:([^)]*)\)", text["regex"][0])
        assert m is not None
        return [f"{rng.choice(m.group(1).split('|'))}-{rng.randint(1000, 999999)}"]
    if text.get("all"):
        return list(text["all"])
    return [rng.choice(text["any"])]


def sentences(rng: random.Random, n_words: int, planted: list[str]) -> str:
    """Filler text of about n_words with `planted` keywords at random places, in sentences."""
    words = [rng.choice(FILLER) for _ in range(n_words)]
    for p in planted:
        words.insert(rng.randint(0, len(words)), p)
    out: list[str] = []
    i = 0
    while i < len(words):
        k = rng.randint(6, 14)
        chunk = words[i:i + k]
        out.append(chunk[0].capitalize() + " " + " ".join(chunk[1:]) + rng.choice((".", ".", "?", "!")))
        i += k
    paragraphs = [" ".join(out[j:j + 3]) for j in range(0, len(out), 3)]
    return "\n\n".join(paragraphs)


def generate_events(seed: int, org: str, infos: list[GenRule], n: int) -> list[dict[str, Any]]:
    """n event envelopes whose texts plant the keywords of 0-5 rules each (occasionally more)."""
    rng = random.Random(seed)
    by_type: dict[str, list[GenRule]] = {t: [g for g in infos if g.text and t in g.types] for t in EVENT_TYPES}
    k_values, k_weights = [0, 1, 2, 3, 4, 6], [0.22, 0.42, 0.20, 0.09, 0.05, 0.02]
    names = ["Maya Lindqvist", "Luca Bianchi", "Grace Huang", "Rob Fenwick", "Rachel Kim", "Omar Haddad"]
    events: list[dict[str, Any]] = []
    for i in range(n):
        etype = rng.choices(EVENT_TYPES, EVENT_TYPE_WEIGHTS)[0]
        has_subject = etype in ("email:received", "intake:created")
        pool = [g for g in by_type[etype] if has_subject or (g.text or {}).get("scope") != "subject"]
        k = min(len(pool), rng.choices(k_values, k_weights)[0])
        targets = rng.sample(pool, k)
        subject_words: list[str] = []
        body_words: list[str] = []
        category: str | None = None
        if etype in ("form:submitted", "intake:created") and rng.random() < 0.6:
            category = rng.choice(CATEGORIES)
        amount: float | None = round(rng.lognormvariate(6.5, 1.6), 2) if rng.random() < 0.3 else None
        for g in targets:
            assert g.text is not None
            (subject_words if g.text.get("scope") == "subject" else body_words).extend(plant_for(rng, g.text))
            if g.category:
                category = rng.choice(g.category)
            if g.amount_gt is not None:
                amount = round(g.amount_gt * rng.uniform(1.01, 3.0), 2)
        body = sentences(rng, rng.randint(25, 140), body_words)
        if rng.random() < 0.10 and by_type[etype]:  # a negated mention: does not count unless count_negated
            g = rng.choice(by_type[etype])
            assert g.text is not None
            body += f"\n\nWe do not need {plant_for(rng, g.text)[0]} at the moment."
        name = rng.choice(names)
        if etype == "email:received" and rng.random() < 0.15 and by_type[etype]:
            g = rng.choice(by_type[etype])
            assert g.text is not None
            body += ("\n\nOn Tue, Dec 8, 2026 at 9:02 AM Ana Ruiz <ana@acme.example> wrote:\n> "
                     + sentences(rng, 20, plant_for(rng, g.text)).replace("\n", "\n> "))
        elif rng.random() < 0.5:
            body += f"\n\nBest,\n{name}\nAccount Director"
        subject = " ".join([rng.choice(FILLER) for _ in range(rng.randint(2, 6))] + subject_words).capitalize()
        data: dict[str, Any]
        if etype == "email:received":
            data = {"from": f"{name} <{name.split()[0].lower()}@example.com>", "to": "hello@acme.example",
                    "subject": subject}
            if rng.random() < 0.05:
                data["html"] = "<html><body><p>" + body.replace("\n\n", "</p><p>") + "</p></body></html>"
            else:
                data["text"] = body
        elif etype == "form:submitted":
            data = {"form": "contact", "name": name, "email": "someone@example.com", "message": body}
        elif etype == "intake:created":
            data = {"intakeId": f"INT-{i}", "title": subject, "description": body, "channel": "chat"}
        elif etype == "booking:created":
            data = {"form": "booking", "name": name, "email": "someone@example.com", "purpose": body,
                    "requested_start": "2026-12-10T16:45:00-05:00"}
        else:
            data = {"workflow": "sync-crm", "status": rng.choice(("success", "failed")), "notes": body}
        if category is not None and etype in ("form:submitted", "intake:created", "email:received"):
            data["category"] = category
        if amount is not None:
            data["amount"] = amount
        events.append({"id": f"gen-{i}", "org": org, "source": SOURCE_OF[etype], "type": etype, "data": data,
                       "occurred_at": "2026-12-09T11:47:22-05:00"})
    return events


def indexed_matcher(definition: dict[str, Any]) -> Callable[[dict[str, Any]], list[str]]:
    """A fast plain-Python matcher of the same compiled rules (the practical limit of matching in
    Python): each rule's conditions become closures, and rules are indexed by one field their first
    condition needs present, so an event only evaluates rules whose anchor field it carries."""
    ops = {"$gt": lambda a, b: a > b, "$gte": lambda a, b: a >= b, "$lt": lambda a, b: a < b, "$lte": lambda a, b: a <= b}

    def check(atom: dict[str, Any]) -> tuple[str | None, Callable[[dict[str, Any]], bool]]:
        (op, arg), = atom.items()
        if op == "$ex":
            k = next(iter(arg))
            return k, lambda f: k in f
        if op == "$or":
            branches = [check(b)[1] for b in arg]
            return None, lambda f: any(fn(f) for fn in branches)
        if op == "$and":
            parts = [check(b)[1] for b in arg]
            return None, lambda f: all(fn(f) for fn in parts)
        if op == "$nex":
            k = next(iter(arg))
            return None, lambda f: k not in f
        if op == "$neq":
            (k, v), = arg.items()
            return k, lambda f: k in f and f[k] != v
        if op in ops:
            (k, v), = arg.items()
            cmp = ops[op]
            return k, lambda f: isinstance(f.get(k), float | int) and cmp(f[k], v)
        k, v = op, arg
        return k, lambda f: k in f and f[k] == v and isinstance(f[k], bool) == isinstance(v, bool)

    by_key: dict[str, list[tuple[str, list[Callable[[dict[str, Any]], bool]]]]] = {}
    always: list[tuple[str, list[Callable[[dict[str, Any]], bool]]]] = []
    for name, rule in definition.items():
        m = rule["all"][0]["m"]
        atoms = m.get("$and", [m])
        compiled = [check(a) for a in atoms]
        keys = [k for k, _ in compiled if k is not None]
        # the rarest field as anchor: a text or regex feature, else a data field, else type/source
        anchor = min(keys, key=lambda k: 0 if k[0] in "tx" and k[1:].isdigit() else
                     1 if k[0] in "vne" and k[1:].isdigit() else 2, default=None)
        entry = (name, [fn for _, fn in compiled])
        (by_key.setdefault(anchor, []) if anchor else always).append(entry)

    def match(fact: dict[str, Any]) -> list[str]:
        out = []
        for k in fact.keys() & by_key.keys():
            for name, fns in by_key[k]:
                if all(fn(fact) for fn in fns):
                    out.append(name)
        out += [name for name, fns in always if all(fn(fact) for fn in fns)]
        return out

    return match


def distinct_atoms(definition: dict[str, Any]) -> int:
    """Distinct top-level conditions of a compiled definition (what the engine's ~512 cap counts)."""
    atoms: set[str] = set()

    def walk(cond: dict[str, Any]) -> None:
        (op, arg), = cond.items()
        if op in ("$and", "$or"):
            for c in arg:
                walk(c)
        else:
            atoms.add(json.dumps(cond, sort_keys=True))

    for rule in definition.values():
        walk(rule["all"][0]["m"])
    return len(atoms)


# --------------------------------------------------------------------------- timing

@dataclasses.dataclass
class Row:
    """One org x variant measurement."""

    org: str
    variant: str
    label: str
    n: int
    wall_ns: int
    lat_ns: list[int]
    ref: str | None = None  # the variant this row's ratio is taken against

    @property
    def eps(self) -> float:
        return self.n / (self.wall_ns / 1e9)

    def pct_us(self, q: float) -> float:
        s = sorted(self.lat_ns)
        return s[max(0, math.ceil(q * len(s)) - 1)] / 1000


def bench_org(name: str, compiled: Any, envelopes: list[dict[str, Any]]) -> tuple[list[Row], list[str]]:
    """Time variants a, b, c, c', f for one org on the same envelopes and facts; verify a == c'."""
    import durable_rules_engine as dre

    from engine import durable
    from engine.resolve import resolve
    from engine.rules import match_python
    from engine.text import extract

    assert compiled.engine is not None, "the org must be loaded in durable-rules"
    ambiguity = compiled.bundle.policy.ambiguity
    py_compiled = dataclasses.replace(compiled, engine=None)  # same rules, plain-Python matcher
    engine = compiled.engine
    definition = compiled.definition
    notes: list[str] = []

    warm = min(200, len(envelopes))

    def whole_durable(env: dict[str, Any]) -> tuple[Any, ...]:
        text = extract(env.get("data") or {})
        fact = compiled.features(env, text)
        matches, used = compiled.match_fact(fact)
        return fact, matches, used, resolve(matches, ambiguity)

    def whole_python(env: dict[str, Any]) -> tuple[Any, ...]:
        text = extract(env.get("data") or {})
        fact = py_compiled.features(env, text)
        matches, used = py_compiled.match_fact(fact)
        return fact, matches, used, resolve(matches, ambiguity)

    def features_only(env: dict[str, Any]) -> dict[str, Any]:
        return compiled.features(env, extract(env.get("data") or {}))

    def raw_durable(fact: dict[str, Any]) -> tuple[list[str], bool]:
        try:
            return engine.match(fact), False
        except durable.EngineLimit:
            return match_python(definition, fact), True

    indexed = indexed_matcher(definition)

    def raw_indexed(fact: dict[str, Any]) -> tuple[list[str], bool]:
        return indexed(fact), False

    def whole_indexed(env: dict[str, Any]) -> tuple[Any, ...]:
        text = extract(env.get("data") or {})
        fact = compiled.features(env, text)
        idx = sorted({int(n[1:].split(".")[0]) for n in indexed(fact)},
                     key=lambda i: (-compiled.rules[i].rule.salience, i))
        matches = [compiled.rules[i] for i in idx]
        return fact, matches, "indexed python", resolve(matches, ambiguity)

    def raw_python(fact: dict[str, Any]) -> list[str]:
        return match_python(definition, fact)

    # f runs first in every round; its feature facts are the precomputed input of b, c and d.
    n = len(envelopes)
    facts: list[Any] = [None] * n
    plan: list[tuple[str, str, Callable[[Any], Any], bool, str | None]] = [
        ("a", "whole stage, durable-rules (product)", whole_durable, False, "d'"),
        ("b", "durable-rules match only", raw_durable, True, "d"),
        ("c", "reference Python evaluator, match only", raw_python, True, "d"),
        ("c'", "whole stage, reference Python evaluator", whole_python, False, "d'"),
        ("d", "indexed plain-Python matcher, match only", raw_indexed, True, None),
        ("d'", "whole stage, indexed plain-Python matcher", whole_indexed, False, None),
        ("f", "extract + features only", features_only, False, None),
    ]
    order = [plan[-1], *plan[:-1]]
    out: dict[str, list[Any]] = {key: [None] * n for key, *_ in plan}
    lat: dict[str, list[int]] = {key: [0] * n for key, *_ in plan}
    wall: dict[str, int] = dict.fromkeys(out, 0)
    warm_facts = [features_only(env) for env in envelopes[:warm]]
    for _key, _label, fn, on_facts, _ref in order:  # warm-up
        for x in warm_facts if on_facts else envelopes[:warm]:
            fn(x)
    gc.collect()
    gc.freeze()  # the benchmark's own event lists are not the product's garbage: keep them out of GC passes
    pc = time.perf_counter_ns
    # Round-robin over chunks of events, so that a burst of load from elsewhere on the machine hits
    # every variant alike instead of skewing one of them.
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        for key, _label, fn, on_facts, _ref in order:
            items = facts if on_facts else envelopes
            res, lt = out[key], lat[key]
            t0 = pc()
            for i in range(lo, hi):
                s = pc()
                r = fn(items[i])
                lt[i] = pc() - s
                res[i] = r
            wall[key] += pc() - t0
            if key == "f":
                facts[lo:hi] = res[lo:hi]
    gc.unfreeze()
    rows = [Row(name, key, label, n, wall[key], lat[key], ref) for key, label, _fn, _on, ref in plan]
    left = [len(json.loads(dre.get_facts(rs._handle, "0"))) for rs in (engine,)]
    notes.append(f"facts left in the engine after {2 * n:,} assert/retract pairs: {sum(left)}")

    a, c, cw = out["a"], out["c"], out["c'"]
    b = [x[0] for x in out["b"]]
    bfix = [x[0] for x in out["d"]]
    refused = sum(x[1] for x in out["b"])
    keys = lambda ms: [m.key for m in ms]  # noqa: E731
    mismatch_sets = sum(set(keys(a[i][1])) != set(keys(cw[i][1])) for i in range(n))
    mismatch_order = sum(keys(a[i][1]) != keys(cw[i][1]) for i in range(n))
    mismatch_res = sum(a[i][3] != cw[i][3] for i in range(n))
    mismatch_raw = sum(sorted(set(b[i])) != sorted(set(c[i])) for i in range(n))
    mismatch_fix = sum(sorted(set(bfix[i])) != sorted(set(c[i])) for i in range(n))
    mismatch_whole_indexed = sum(set(keys(a[i][1])) != set(keys(out["d'"][i][1])) for i in range(n))
    mismatch_facts = sum(a[i][0] != facts[i] or cw[i][0] != facts[i] for i in range(n))
    fallbacks = Counter(x[2] for x in a)
    matched = sorted(len(x[1]) for x in a)
    dist = Counter(min(len(x[1]), 6) for x in a)
    notes.append(f"matched rule sets, (a) vs (c'): {mismatch_sets} mismatches of {n} events "
                 f"(order: {mismatch_order}, resolution: {mismatch_res}); (a) vs (d'): {mismatch_whole_indexed}; "
                 f"raw (b) vs (c): {mismatch_raw}, (d) vs (c): {mismatch_fix}; "
                 f"feature facts differing from the precomputed ones: {mismatch_facts}")
    notes.append("engine used by (a): " + ", ".join(f"{k} {v}" for k, v in sorted(fallbacks.items()))
                 + f"; events the engine refused (error 303, matched in Python instead): (b) {refused}")
    notes.append(f"rules matched per event: mean {sum(matched) / n:.2f}, max {matched[-1]}; "
                 + ", ".join(f"{k if k < 6 else '6+'}: {dist[k] / n:.0%}" for k in range(7)))
    if mismatch_sets:
        first = next(i for i in range(n) if set(keys(a[i][1])) != set(keys(cw[i][1])))
        notes.append(f"first mismatch: event #{first} {envelopes[first]['id']}: durable {keys(a[first][1])} "
                     f"vs python {keys(cw[first][1])}; fact {facts[first]}")
    return rows, notes


# --------------------------------------------------------------------------- memory (subprocess)

def write_memory_orgs(root: Path, n_orgs: int, n_rules: int = 200, n_text: int = 170) -> list[Path]:
    """n_orgs generated orgs with their own keywords and structure (distinct compiled definitions)."""
    dirs = []
    for k in range(n_orgs):
        vocab = pseudo_words(random.Random(50_000 + k), 2000, set(BUSINESS) | set(FILLER))
        rules, _ = generate_rules(10_000 + k, n_rules, n_text, vocab)
        dirs.append(write_org(root, f"mem{k:03d}", rules))
    return dirs


def memory_child(mem_dir: str | None, n_orgs: int, probe: bool) -> None:
    """Compile and load every org under mem_dir/rulesets; print RSS figures as one JSON line."""
    from engine import durable
    from engine.loader import validate_org
    from engine.rules import compile_rules

    proc = psutil.Process()
    tmp = None
    if mem_dir is None:  # standalone run: generate here (before the baseline is taken)
        tmp = tempfile.mkdtemp(prefix="bench-mem-")
        write_memory_orgs(Path(tmp), n_orgs)
        mem_dir = tmp
    root = Path(mem_dir)
    org_dirs = sorted(p.parent for p in (root / "rulesets").glob("*/org.yaml"))
    # Warm the one-time caches (JSON Schema validators, imports) on a throwaway copy of acme's shape.
    validate_org(REPO / "rulesets" / "acme", REPO / "policies")
    gc.collect()
    base = proc.memory_info().rss
    kept = []
    t_validate = t_compile = 0.0
    errors: list[str] = []
    grew_validate = grew_compile = 0  # RSS growth during each step, summed (a rough split)
    for d in org_dirs:
        r0 = proc.memory_info().rss
        t = time.perf_counter()
        bundle, findings = validate_org(d, root / "policies")
        t_validate += time.perf_counter() - t
        r1 = proc.memory_info().rss
        if bundle is None:
            errors.extend(str(e) for e in findings)
            continue
        t = time.perf_counter()
        compiled = compile_rules(bundle, probe=probe)
        t_compile += time.perf_counter() - t
        r2 = proc.memory_info().rss
        grew_validate += r1 - r0
        grew_compile += r2 - r1
        if isinstance(compiled, list):
            errors.extend(str(e) for e in compiled)
            continue
        kept.append(compiled)
    gc.collect()
    total = proc.memory_info().rss
    print(json.dumps({"orgs": len(kept), "baseline_mb": base / 2**20, "rss_mb": total / 2**20,
                      "delta_mb": (total - base) / 2**20, "validate_s": t_validate, "compile_s": t_compile,
                      "validate_mb": grew_validate / 2**20, "compile_mb": grew_compile / 2**20,
                      "loaded_rulesets": durable.loaded_count(), "probe": probe,
                      "rules": sum(len(c.rules) for c in kept), "errors": errors[:5]}))
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


def run_memory(n_orgs: int, probe: bool) -> list[str]:
    """Generate the orgs, run the memory child, and return the report lines."""
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        t = time.perf_counter()
        write_memory_orgs(Path(tmp), n_orgs)
        gen_s = time.perf_counter() - t
        cmd = [sys.executable, "-m", "bench.rules", "--memory-child", "--mem-dir", tmp, "--orgs", str(n_orgs)]
        if not probe:
            cmd.append("--no-probe")
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
        child_s = time.perf_counter() - t
    if proc.returncode != 0:
        return [f"memory child failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    if r["errors"]:
        lines.append("memory child errors: " + "; ".join(r["errors"]))
    verdict = "PASS" if r["delta_mb"] < TARGET_MEMORY_MB * n_orgs / 100 else "FAIL"
    per_org = r["delta_mb"] / max(1, r["orgs"])
    lines.append(f"- memory: {r['orgs']} orgs x {r['rules'] // max(1, r['orgs'])} rules, "
                 f"{r['loaded_rulesets']} distinct engine rulesets: RSS {r['baseline_mb']:.1f} MB -> "
                 f"{r['rss_mb']:.1f} MB, **+{r['delta_mb']:.1f} MB** ({per_org:.2f} MB per org; RSS grew "
                 f"{r['validate_mb']:.0f} MB while validating (YAML, models) and {r['compile_mb']:.0f} MB while "
                 f"compiling and loading in durable-rules)")
    target = TARGET_MEMORY_MB * n_orgs / 100
    lines.append(f"- memory target: < {target:.0f} MB for {n_orgs} orgs"
                 + (" (scaled from 300 MB per 100 orgs)" if n_orgs != 100 else "") + f": {verdict}"
                 + (f"; projected to 100 orgs: {per_org * 100:.0f} MB" if n_orgs != 100 else ""))
    lines.append(f"- compile time: validate {r['validate_s']:.1f} s + compile/probe/load {r['compile_s']:.1f} s "
                 f"for {r['orgs']} orgs ({(r['validate_s'] + r['compile_s']) / max(1, r['orgs']):.2f} s per org; "
                 f"probe {'on' if r['probe'] else 'OFF (--no-probe)'}); YAML generation {gen_s:.1f} s, "
                 f"child process {child_s:.1f} s")
    return lines


# --------------------------------------------------------------------------- main

def load_acme(n: int) -> tuple[Any, list[dict[str, Any]]]:
    """The acme org, and n envelopes cycling its corpus, each with a fresh id."""
    from engine.registry import build
    from engine.simulator import read_events

    compiled, findings = build(REPO / "rulesets" / "acme", REPO / "policies")
    if compiled is None:
        raise SystemExit("acme does not load:\n" + "\n".join(map(str, findings)))
    events, errors = read_events(REPO / "tests" / "cases" / "acme" / "corpus.jsonl")
    if errors or not events:
        raise SystemExit("corpus errors:\n" + "\n".join(map(str, errors)))
    envelopes = [events[i % len(events)].model_copy(update={"id": f"bench-{i}"}).envelope() for i in range(n)]
    return compiled, envelopes


def load_generated(tmp: Path, n: int, n_rules: int = 500, n_text: int = 230) -> tuple[Any, list[dict[str, Any]], str]:
    """The generated org (YAML through the ordinary loader) and n events for it."""
    from engine.models import Event
    from engine.registry import build

    vocab = pseudo_words(random.Random(7), 2000, set(BUSINESS) | set(FILLER))
    while True:
        rules, infos = generate_rules(42, n_rules, n_text, vocab)
        org_dir = write_org(tmp, "gen500", rules)
        compiled, findings = build(org_dir, tmp / "policies")
        if compiled is not None:
            break
        print("generated org refused:\n  " + "\n  ".join(map(str, findings)), file=sys.stderr)
        if n_text <= 50:
            raise SystemExit("cannot generate an org the compiler accepts")
        n_text -= 25  # fewer distinct text conditions: more sharing between rules
        shutil.rmtree(org_dir)
    raw = generate_events(43, "gen500", infos, n)
    envelopes = [Event.model_validate(e).envelope() for e in raw]
    warnings = "; ".join(f"{w.code}: {w.message}" for w in findings if w.severity == "warning")
    summary = (f"{len(compiled.rules)} rules, {len(compiled.text_features)} distinct text conditions, "
               f"{distinct_atoms(compiled.definition)} distinct engine conditions (cap "
               f"{__import__('engine.durable', fromlist=['x']).MAX_DISTINCT_CONDITIONS})"
               + (f"; compiler warnings: {warnings}" if warnings else ""))
    return compiled, envelopes, summary


def fmt_table(rows: list[Row]) -> str:
    """The results as a markdown table."""
    by = {(r.org, r.variant): r for r in rows}
    lines = ["| org | variant | events/s | p50 µs | p99 µs | ratio vs indexed plain-Python |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if r.ref:
            ratio = f"{r.eps / by[(r.org, r.ref)].eps:.2f}× of {r.ref}"
        elif r.variant in ("d", "d'"):
            ratio = "1.00 (reference)"
        else:
            ratio = "—"
        lines.append(f"| {r.org} | {r.variant}: {r.label} | {r.eps:,.0f} | {r.pct_us(0.5):,.1f} | "
                     f"{r.pct_us(0.99):,.1f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (`python -m bench.rules`)."""
    ap = argparse.ArgumentParser(prog="python -m bench.rules", description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=None, help="events per org (default 10000; 1000 with --quick)")
    ap.add_argument("--quick", action="store_true", help="1,000 events and 10 orgs for the memory test")
    ap.add_argument("--orgs", type=int, default=None, help="orgs for the memory test (default 100; 10 with --quick)")
    ap.add_argument("--no-probe", action="store_true", help="memory test: skip the compile probe subprocess")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory test")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mem-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    n_events = args.events or (1000 if args.quick else 10_000)
    n_orgs = args.orgs or (10 if args.quick else 100)
    if args.memory_child:
        memory_child(args.mem_dir, n_orgs, probe=not args.no_probe)
        return 0

    t_start = time.perf_counter()
    print(f"# rules stage benchmark: {n_events:,} events per org, Python {sys.version.split()[0]}, "
          f"{psutil.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start\n")
    rows: list[Row] = []
    notes: list[str] = []
    compiled, envelopes = load_acme(n_events)
    notes.append(f"acme: {len(compiled.rules)} rules, {len(compiled.text_features)} text conditions, "
                 f"{distinct_atoms(compiled.definition)} engine conditions; corpus cycled to {len(envelopes):,} events")
    r, nn = bench_org("acme", compiled, envelopes)
    rows += r
    notes += [f"acme: {x}" for x in nn]
    del compiled, envelopes

    with tempfile.TemporaryDirectory(prefix="bench-gen-") as tmp:
        t = time.perf_counter()
        compiled, envelopes, summary = load_generated(Path(tmp), n_events)
        notes.append(f"gen500: {summary}; built + {len(envelopes):,} events generated in "
                     f"{time.perf_counter() - t:.1f} s")
        r, nn = bench_org("gen500", compiled, envelopes)
        rows += r
        notes += [f"gen500: {x}" for x in nn]
        del compiled, envelopes

    print(fmt_table(rows))
    print()
    for x in notes:
        print(f"- {x}")
    print()
    by = {(r.org, r.variant): r for r in rows}
    a, dw, bm, dm = by[("gen500", "a")], by[("gen500", "d'")], by[("gen500", "b")], by[("gen500", "d")]
    ratio = a.eps / dw.eps
    print(f"- target (500 rules): (a) throughput ≥ {TARGET_RATIO:.0%} of the whole stage with the indexed plain-Python "
          f"matcher (d'): {ratio:.0%} → {'PASS' if ratio >= TARGET_RATIO else 'FAIL'}; matching alone, durable-rules (b) "
          f"is {bm.eps / dm.eps:.0%} of the indexed matcher (d)")
    p99 = a.pct_us(0.99)
    print(f"- target (500 rules): p99 of (a) < {TARGET_P99_US:,.0f} µs: {p99:,.1f} µs → "
          f"{'PASS' if p99 < TARGET_P99_US else 'FAIL'}")
    if not args.no_memory:
        for line in run_memory(n_orgs, probe=not args.no_probe):
            print(line)
    print(f"\n(total {time.perf_counter() - t_start:.0f} s; load average {os.getloadavg()[0]:.2f} at the end — "
          "other work on the machine inflates every row; compare rows of one run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
