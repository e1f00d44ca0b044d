"""Fixtures shared by the engine tests: the acme example org (loaded, compiled, or copied to break it),
bundles built programmatically from rule dicts, and the acme event corpus."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.config import Rule
from engine.errors import ConfigError
from engine.learning import with_learning
from engine.loader import OrgBundle, RuleRef, load_org, validate_org
from engine.models import Event
from engine.rules import CompiledRules, compile_rules
from engine.simulator import read_events
from tests.orgs import copy_org

ROOT = Path(__file__).resolve().parents[2]
ACME_DIR = ROOT / "rulesets" / "acme"
POLICIES_DIR = ROOT / "policies"
CORPUS = ROOT / "tests" / "cases" / "acme" / "corpus.jsonl"


@dataclass
class OrgCopy:
    """A private copy of `rulesets/` (acme) and `policies/` that a test may break."""

    root: Path

    @property
    def rulesets(self) -> Path:
        return self.root / "rulesets"

    @property
    def policies(self) -> Path:
        return self.root / "policies"

    def org_dir(self, org: str = "acme") -> Path:
        return self.rulesets / org

    def path(self, rel: str) -> Path:
        """A file of the copy, by its path relative to the copy's root (`rulesets/acme/org.yaml`)."""
        return self.root / rel

    def replace(self, rel: str, old: str, new: str) -> None:
        """Replace the one occurrence of `old` in a file (failing loudly if the fixture text moved)."""
        p = self.path(rel)
        text = p.read_text(encoding="utf-8")
        assert text.count(old) == 1, f"{rel}: expected exactly one {old!r}"
        p.write_text(text.replace(old, new), encoding="utf-8")

    def line_of(self, rel: str, needle: str, nth: int = 1) -> int:
        """The 1-based number of the `nth` line of a file that contains `needle` (expected lines are
        computed, so the tests survive edits elsewhere in the example files)."""
        found = [i for i, line in enumerate(self.path(rel).read_text(encoding="utf-8").splitlines(), 1)
                 if needle in line]
        assert len(found) >= nth, f"{rel}: {needle!r} occurs {len(found)} times"
        return found[nth - 1]

    def add_org(self, org: str) -> Path:
        """Another org: a copy of acme under a new id and its own secret names (it has no policy of its own:
        default.yaml applies)."""
        return copy_org(ACME_DIR, self.rulesets / org, org)

    def validate(self, org: str = "acme") -> tuple[OrgBundle | None, list[ConfigError]]:
        return validate_org(self.org_dir(org), self.policies)

    def errors(self, org: str = "acme") -> tuple[OrgBundle | None, list[str]]:
        """The bundle and every finding as `path:line: code: message`, paths relative to the copy's root."""
        bundle, found = self.validate(org)
        return bundle, [str(e).replace(str(self.root) + "/", "") for e in found]


@pytest.fixture
def org_copy(tmp_path: Path) -> OrgCopy:
    """acme and the policies copied into tmp_path."""
    shutil.copytree(ACME_DIR, tmp_path / "rulesets" / "acme")
    shutil.copytree(POLICIES_DIR, tmp_path / "policies")
    return OrgCopy(tmp_path)


@pytest.fixture(scope="session")
def acme_bundle() -> OrgBundle:
    """The example org as shipped, validated."""
    return load_org(ACME_DIR, POLICIES_DIR)


@pytest.fixture(scope="session")
def acme_rules(acme_bundle: OrgBundle) -> CompiledRules:
    """The example org compiled and loaded in durable-rules (probed first, as in production), its org model off."""
    compiled = compile_rules(acme_bundle)
    assert isinstance(compiled, CompiledRules), compiled
    assert compiled.engine is not None
    return with_learning(compiled, False)  # the rules alone; test_agent_learning.py covers the org model


@pytest.fixture(scope="session")
def corpus() -> list[Event]:
    """The acme event corpus."""
    events, errors = read_events(CORPUS)
    assert not errors, [str(e) for e in errors]
    assert len(events) > 100
    return events


_unique = itertools.count()

BundleFactory = Callable[..., OrgBundle]


@pytest.fixture(scope="session")
def make_bundle(acme_bundle: OrgBundle) -> BundleFactory:
    """Build an OrgBundle from rule dicts (acme's org and policy unless given), without any YAML.

    `make_bundle([{"id": "r", "when": {...}, "then": {...}}, ...], revision=..., policy=...)`
    """

    def make(rules: list[dict[str, Any]], *, revision: str | None = None, ruleset: str = "t",
             policy: Any = None, org: Any = None) -> OrgBundle:
        refs = tuple(RuleRef(ruleset, Rule.model_validate(d), f"/virtual/{ruleset}.yaml", i + 1)
                     for i, d in enumerate(rules))
        return OrgBundle(org=org or acme_bundle.org, policy=policy or acme_bundle.policy, rules=refs,
                         revision=revision or f"test{next(_unique)}", files=("/virtual/org.yaml",))

    return make
