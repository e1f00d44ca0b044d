"""The loaded orgs: each one's last good compiled revision, swapped atomically on reload.

A revision that fails validation or compilation never replaces a good one; the failure is kept so
that it can be shown, and fixing the files clears it on the next reload.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ConfigError
from engine.loader import org_dirs, validate_org
from engine.rules import CompiledRules, compile_rules


@dataclass
class OrgState:
    """One org's active revision and the errors of its last failed reload, if any."""

    active: CompiledRules | None = None
    errors: list[ConfigError] = field(default_factory=list)
    warnings: list[ConfigError] = field(default_factory=list)


def build(org_dir: Path, policies_dir: Path, *, load_engine: bool = True) -> tuple[CompiledRules | None, list[ConfigError]]:
    """Validate and compile one org folder; the compiled rules, or None with every error."""
    bundle, findings = validate_org(org_dir, policies_dir)
    if bundle is None:
        return None, findings
    compiled = compile_rules(bundle, load_engine=load_engine)
    if isinstance(compiled, list):
        return None, findings + compiled
    return compiled, findings + compiled.warnings


class Registry:
    """Every org under a rulesets folder, with its policy; safe to read while another thread reloads."""

    def __init__(self, rulesets_dir: Path, policies_dir: Path) -> None:
        self.rulesets_dir = Path(rulesets_dir)
        self.policies_dir = Path(policies_dir)
        self._orgs: dict[str, OrgState] = {}
        self._lock = threading.Lock()

    def load_all(self) -> dict[str, list[ConfigError]]:
        """(Re)load every org folder; returns the findings per org."""
        return {d.name: self.reload(d.name) for d in org_dirs(self.rulesets_dir)}

    def reload(self, org: str) -> list[ConfigError]:
        """Rebuild one org. On success its new revision becomes active; on failure the last good one
        stays active and the errors are kept. Returns the errors and warnings found."""
        compiled, findings = build(self.rulesets_dir / org, self.policies_dir)
        errors = [f for f in findings if f.severity == "error"]
        with self._lock:
            state = self._orgs.setdefault(org, OrgState())
            if compiled is not None and not errors:
                state.active = compiled
                state.errors = []
                state.warnings = [f for f in findings if f.severity == "warning"]  # of the active revision
            else:
                state.errors = errors
        return findings

    def get(self, org: str) -> CompiledRules | None:
        """The active compiled revision of an org (None if it never loaded)."""
        state = self._orgs.get(org)
        return state.active if state else None

    def state(self, org: str) -> OrgState | None:
        """The org's active revision and outstanding errors."""
        return self._orgs.get(org)

    @property
    def known(self) -> list[str]:
        """Every org a load was tried for, with or without an active revision."""
        return sorted(self._orgs)

    @property
    def orgs(self) -> list[str]:
        """Orgs with an active revision."""
        return sorted(o for o, s in self._orgs.items() if s.active is not None)
