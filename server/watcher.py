"""Hot reload: watch the rulesets and policies folders and reload the orgs a changed file belongs to.

Which orgs a change reloads:
- `<rulesets>/<org>/<file>.yaml` → that org (a new folder becomes an org once it holds org.yaml);
- `<rulesets>/<org>` itself (an API update swaps the whole folder in at once) → that org;
  files deeper down (the org's `tests/` cases) are not part of its revision and reload nothing;
- `<policies>/<org>.yaml` → that org, and any org whose active revision also reads it (`extends: <org>`);
- any other policy file (`default.yaml`, or a shared one a policy extends) → every org.

A reload that fails keeps the org on its last good revision (the registry's guarantee); its errors
are logged, one `path:line: code: message` line each, and stay in `registry.state(org).errors` until
a later reload succeeds. Reloads run in a worker thread, one org at a time, so the event loop is
never blocked by validation or compilation.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from watchfiles import Change, DefaultFilter, awatch

from engine.errors import ConfigError
from engine.loader import ORG_FILE, org_dirs
from engine.registry import Registry

log = logging.getLogger("astralis.config")

YAML_SUFFIXES = (".yaml", ".yml")
_WAKE_MS = 1000  # the watch loop wakes at least this often, to re-check recently changed files
_RECHECK_S = 2.5  # how long a reloaded file is re-checked: past the second its change was stamped in

OnReload = Callable[[str, list[ConfigError]], Awaitable[None] | None]


class ConfigWatcher:
    """Reloads orgs in a `Registry` when their YAML files change on disk.

    `on_reload(org, findings)` (sync or async) is called after every reload with the errors and
    warnings found; an exception it raises is logged and does not stop the watcher.
    """

    def __init__(self, registry: Registry, *, on_reload: OnReload | None = None, debounce_ms: int = 200,
                 force_polling: bool | None = None, poll_delay_ms: int = 300) -> None:
        if debounce_ms < 0:
            raise ValueError(f"ConfigWatcher debounce_ms must not be negative, got {debounce_ms}")
        if poll_delay_ms <= 0:
            raise ValueError(f"ConfigWatcher poll_delay_ms must be positive, got {poll_delay_ms}")
        self.registry = registry
        self.on_reload = on_reload
        self.debounce_ms = debounce_ms
        self.force_polling = force_polling
        self.poll_delay_ms = poll_delay_ms
        self._rulesets = registry.rulesets_dir.resolve()
        self._policies = registry.policies_dir.resolve()
        self._filter = DefaultFilter()

    def _watched(self, change: Change, path: str) -> bool:
        # An org folder itself changes when an update swaps a staged copy in (server/configs.py): one event for
        # the whole folder, none for its files.
        return (path.endswith(YAML_SUFFIXES) or Path(path).parent == self._rulesets) and self._filter(change, path)

    def all_orgs(self) -> list[str]:
        """Every org: folders holding org.yaml, and orgs the registry serves (even if their folder went)."""
        return sorted({d.name for d in org_dirs(self._rulesets)} | set(self.registry.orgs))

    def orgs_for(self, paths: Iterable[Path]) -> list[str]:
        """The orgs that changes to these files affect (see the module docstring), sorted."""
        orgs: set[str] = set()
        everyone: list[str] | None = None
        for raw in paths:
            path = Path(raw).resolve()
            if path.parent == self._rulesets and path.suffix not in YAML_SUFFIXES:
                if (path / ORG_FILE).exists() or self.registry.state(path.name) is not None:
                    orgs.add(path.name)  # the org folder swapped as a whole
                continue
            if path.suffix not in YAML_SUFFIXES:
                continue
            if path.is_relative_to(self._rulesets):
                parts = path.relative_to(self._rulesets).parts
                if len(parts) != 2:
                    continue
                org = parts[0]
                if (self._rulesets / org / ORG_FILE).exists() or self.registry.state(org) is not None:
                    orgs.add(org)
            elif path.is_relative_to(self._policies):
                parts = path.relative_to(self._policies).parts
                if len(parts) != 1:
                    continue
                everyone = everyone if everyone is not None else self.all_orgs()
                if path.stem in everyone:
                    orgs.add(path.stem)
                    orgs.update(o for o in everyone if self._reads(o, path))
                else:
                    orgs.update(everyone)
        return sorted(orgs)

    def _reads(self, org: str, path: Path) -> bool:
        active = self.registry.get(org)
        return active is not None and any(Path(f).resolve() == path for f in active.bundle.files)

    async def reload_paths(self, paths: Iterable[Path]) -> dict[str, list[ConfigError]]:
        """Reload every org the changed files affect, one after the other; the findings per org.

        An org whose reload raised (rather than reporting errors) is logged and left out.
        """
        results: dict[str, list[ConfigError]] = {}
        for org in self.orgs_for(paths):
            findings = await self._reload(org)
            if findings is not None:
                results[org] = findings
        return results

    async def _reload(self, org: str) -> list[ConfigError] | None:
        before = self.registry.get(org)
        try:
            findings = await asyncio.to_thread(self.registry.reload, org)
        except Exception:
            log.exception("reloading org '%s' failed; it stays on its last good revision", org, extra={"org": org})
            return None
        for finding in findings:
            log.warning("%s", finding, extra={"org": org})
        active = self.registry.get(org)
        errors = sum(f.severity == "error" for f in findings)
        if errors:
            kept = f"still on revision {active.revision}" if active is not None else "not loaded"
            log.warning("org '%s': reload rejected with %d error(s); %s", org, errors, kept, extra={"org": org})
        elif active is not None:
            same = before is not None and before.revision == active.revision
            log.info("org '%s': revision %s active%s", org, active.revision, " (unchanged)" if same else "",
                     extra={"org": org})
        await self._notify(org, findings)
        return findings

    async def _notify(self, org: str, findings: list[ConfigError]) -> None:
        if self.on_reload is None:
            return
        try:
            result = self.on_reload(org, findings)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_reload callback failed for org '%s'", org, extra={"org": org})

    async def run(self) -> None:
        """Watch both folders and reload affected orgs until cancelled."""
        # Polling (force_polling, or where native events are unavailable) compares modification times in
        # whole seconds, so a file written again within the second of its last change looks unchanged.
        # Files just reloaded are therefore re-checked (mtime in ns, size) at each wake-up for a while.
        recent: dict[Path, tuple[tuple[int, int] | None, float]] = {}
        loop = asyncio.get_running_loop()
        async for changes in awatch(self._rulesets, self._policies, watch_filter=self._watched,
                                    debounce=self.debounce_ms, force_polling=self.force_polling,
                                    poll_delay_ms=self.poll_delay_ms, rust_timeout=_WAKE_MS, yield_on_timeout=True):
            now = loop.time()
            paths = {Path(p) for _, p in changes}
            for path, (seen, until) in list(recent.items()):
                if path in paths:
                    continue
                if _stat(path) != seen:
                    paths.add(path)
                elif now > until:
                    del recent[path]
            if not paths:
                continue
            for path in paths:
                recent[path] = (_stat(path), now + _RECHECK_S)
            log.debug("changed: %s", ", ".join(map(str, sorted(paths))))
            try:
                await self.reload_paths(sorted(paths))
            except Exception:  # a bug in one batch must not end hot reload for good
                log.exception("reloading after changes to %s failed", ", ".join(map(str, sorted(paths))))


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
