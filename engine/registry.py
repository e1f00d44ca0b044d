"""The loaded orgs: each one's last good compiled revision, swapped atomically on reload.

A revision that fails validation or compilation never replaces a good one; the failure is kept so
that it can be shown, and fixing the files clears it on the next reload. Any exception raised while
loading one org — not only the findings validation knows of — stays with that org: it becomes a
`load_failed` error of that org, and every other org loads as usual.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ConfigError
from engine.loader import org_dirs, validate_org
from engine.rules import CompiledRules, compile_rules

log = logging.getLogger("astralis.config")


@dataclass
class OrgState:
    """One org's active revision and the errors of its last failed reload, if any."""

    active: CompiledRules | None = None
    errors: list[ConfigError] = field(default_factory=list)
    warnings: list[ConfigError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the org is served from its files as they are: a revision is active and the last load had no
        error. False for an org that never loaded, and for one whose last reload failed (it is still served, from
        its last good revision, but its files on disk are broken: health checks say so)."""
        return self.active is not None and not self.errors


def build(org_dir: Path, policies_dir: Path, *, load_engine: bool = True,
          orgs: Iterable[str] | None = None) -> tuple[CompiledRules | None, list[ConfigError]]:
    """Validate and compile one org folder; the compiled rules, or None with every error. `orgs`: as for
    `engine.loader.validate_org` (the orgs whose policies are not shared)."""
    bundle, findings = validate_org(org_dir, policies_dir, orgs=orgs)
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
        stays active and the errors are kept. Returns the errors and warnings found. Never raises for a
        problem of the org's files or a bug they trigger: that is a `load_failed` error of this org."""
        try:
            compiled, findings = build(self.rulesets_dir / org, self.policies_dir)
        except Exception as exc:  # contained to this org: the others, and the service, go on
            log.debug("loading org '%s' raised", org, exc_info=True, extra={"org": org})
            compiled, findings = None, [self._load_failed(org, exc)]
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

    def _load_failed(self, org: str, exc: Exception) -> ConfigError:
        """The error that stands for an exception raised while loading `org`, located at its folder. The
        message names the exception without host paths (the operator's folders are shown relative)."""
        kind = type(exc).__qualname__ if type(exc).__module__ == "builtins" else \
            f"{type(exc).__module__}.{type(exc).__qualname__}"
        text = f"{kind}: {exc}"
        for folder, shown in ((self.rulesets_dir, "rulesets"), (self.policies_dir, "policies")):
            for form in sorted({str(folder.resolve()), str(folder)}, key=len, reverse=True):
                if form not in (".", ""):
                    text = text.replace(form, shown)
        return ConfigError(str(self.rulesets_dir / org), 0, "load_failed",
                           f"loading org '{org}' failed: {text[:500]}; it is not served from these files")

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
