"""Reading and changing an org's configuration over the API, all or nothing.

An update (`POST /api/agent/config`, the editor's save and rollback, and config sync from another machine) is:

1. checked as a whole before anything is written: every file name (a YAML file name of at most
   `MAX_NAME_CHARS` characters, no path separator, no `..`, not hidden), how many files (`MAX_FILES`) and how
   large (`MAX_FILE_BYTES` each) — each problem a 422 naming the file;
2. staged: the org's folder as it would be after the update, built in `<rulesets>/.staging/<random>/` beside it
   (unchanged files hard-linked, new ones written and synced), with a copy of the policies folder;
3. validated and compiled there as a unit, exactly like `astralis validate`;
4. swapped in: the staged folder takes the org folder's place in one `renameat2(RENAME_EXCHANGE)` (Linux; two
   renames elsewhere), the org's policy file is replaced by rename, and the registry loads the result. Should
   that load not give the staged revision (a file changed meanwhile), both are swapped back;
5. recorded in the history (with the files as they were before, if they were never saved).

Any failure before the swap leaves nothing written, nothing loaded and no history entry; the answer is a 4xx
with the findings, each `path:line: code: message` with paths as the org sees them (`rulesets/acme/intake.yaml`,
`policies/acme.yaml`), never a host path. Shared policies (default.yaml, or any other policy no org owns) cannot
be changed through one org's key.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import difflib
import errno
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.errors import ConfigError
from engine.loader import ORG_FILE, org_dirs, yaml_limits
from engine.registry import Registry, build
from engine.rules import CompiledRules
from server.app import CONFIG_LOCKS, CONFIG_SYNC, METRICS, REGISTRY, STORE, report_org
from server.errors import ApiError
from server.schemas import ConfigUpdate

FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*\.ya?ml$")
"""A rule file's name: letters, digits, `_`, `-`, single dots; `.yaml` or `.yml`; never hidden, never a path."""
MAX_NAME_CHARS = 64
MAX_FILES = 50
"""YAML files an org folder may hold after an update (org.yaml included)."""
MAX_FILE_BYTES = 256 * 1024
STAGING = ".staging"
"""The folder under the rulesets folder where updates are staged (one level deeper than any org's files, so
neither the registry nor the file watcher takes a staged folder for an org)."""


def _files(org_dir: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(org_dir.glob("*.y*ml"))}


def tenant_text(text: str, registry: Registry, *scratch: Path) -> str:
    """`text` (a finding) as an org may see it: the operator's folders, and the `scratch` copies of them, shown as
    `rulesets` and `policies`, never as host paths."""
    pairs: list[tuple[str, str]] = []
    for base in scratch:
        pairs += [(str(base / "rulesets"), "rulesets"), (str(base / "policies"), "policies")]
    for folder, shown in ((registry.rulesets_dir, "rulesets"), (registry.policies_dir, "policies")):
        pairs.append((str(folder.resolve()), shown))
        if str(folder) not in (".", "", shown):
            pairs.append((str(folder), shown))
    for form, shown in sorted(pairs, key=lambda p: len(p[0]), reverse=True):
        text = re.sub(re.escape(form) + r"(?=/|[\s:'\"),;]|$)", shown, text)
    return text


async def describe(app: web.Application, org: str) -> dict[str, Any]:
    """The org's files as they are on disk, the active revision and the errors of the last failed reload."""
    registry = app[REGISTRY]
    org_dir = registry.rulesets_dir / org
    if not (org_dir / ORG_FILE).exists():
        raise ApiError(404, "not_found", f"org '{org}' has no configuration folder")
    policy_path = registry.policies_dir / f"{org}.yaml"
    files = await asyncio.to_thread(_files, org_dir)
    policy = await asyncio.to_thread(policy_path.read_text, encoding="utf-8") if policy_path.exists() else None
    state = registry.state(org)
    active = state.active if state else None
    return {"org": org, "revision": active.revision if active else None, "files": files, "policy": policy,
            "errors": [tenant_text(str(e), registry) for e in state.errors] if state else [],
            "warnings": [tenant_text(str(w), registry) for w in state.warnings] if state else []}


def _name_shown(name: str) -> str:
    text = repr(name)
    return text if len(text) <= 62 else f"{text[:40]}…' ({len(name)} characters)"


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a file of an org's folder, or None when it can."""
    if len(name) > MAX_NAME_CHARS:
        return f"the name is {len(name)} characters long; at most {MAX_NAME_CHARS}"
    if "/" in name or "\\" in name:
        return "a file name, not a path: no '/' or '\\'"
    if ".." in name:
        return "no '..' in a file name"
    if name.startswith("."):
        return "no hidden files (a name starting with '.')"
    if not name.endswith((".yaml", ".yml")):
        return "a YAML file: the name ends in .yaml or .yml"
    if not FILE_NAME.fullmatch(name):
        return "letters, digits, '_', '-' and single dots only, starting with a letter or digit"
    return None


def check_update(body: ConfigUpdate, existing: Iterable[str]) -> None:
    """422 naming every file of the update that cannot be applied (name, count, size): nothing is staged."""
    problems: list[dict[str, str]] = []

    def bad(field: str, message: str) -> None:
        problems.append({"field": field, "message": message})

    for name in body.files:
        why = name_problem(name)
        if why is not None:
            bad(f"files.{name[:80]}", f"files: {_name_shown(name)} cannot be a file of the org's folder: {why}")
        elif len(body.files[name].encode("utf-8")) > MAX_FILE_BYTES:
            bad(f"files.{name}", f"files: {name!r} is {len(body.files[name].encode('utf-8'))} bytes; a file has "
                f"at most {MAX_FILE_BYTES}")
    for name in body.delete:
        why = name_problem(name)
        if why is not None:
            bad("delete", f"delete: {_name_shown(name)} cannot be a file of the org's folder: {why}")
        elif name == ORG_FILE:
            bad("delete", f"delete: {ORG_FILE} cannot be deleted")
        elif name in body.files:
            bad("delete", f"delete: {name!r} is also among the files to write")
    if body.policy is not None and len(body.policy.encode("utf-8")) > MAX_FILE_BYTES:
        bad("policy", f"policy: {len(body.policy.encode('utf-8'))} bytes; a file has at most {MAX_FILE_BYTES}")
    if not problems:  # YAML aliases and deep nesting are refused here, before anything is staged or parsed
        texts = [(f"files.{n}", n, t) for n, t in body.files.items()]
        texts += [("policy", "policy", body.policy)] if body.policy is not None else []
        for fld, shown, text in texts:
            refused = yaml_limits(text, shown)
            if refused is not None:
                bad(fld, f"{fld.split('.')[0]}: {refused}")
    if not body.files and body.policy is None and not body.delete:
        bad("files", "nothing to change: give files, policy or delete")
    if not problems:
        after = (set(existing) | set(body.files)) - set(body.delete)
        if len(after) > MAX_FILES:
            bad("files", f"files: the org's folder would hold {len(after)} YAML files; at most {MAX_FILES}")
    if problems:
        raise ApiError(422, "invalid", problems[0]["message"], problems)


# ---- staging and swapping (blocking: run in a thread) ------------------------------------------------------

@dataclass
class Staged:
    """An update staged under `root`: the org's folder as it would be (`org_dir`) and the policies (`policies`)."""

    root: Path
    org_dir: Path
    policies: Path

    def discard(self) -> None:
        """Remove the staging folder and everything in it."""
        shutil.rmtree(self.root, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # the same bytes, already on disk: nothing to copy or sync
    except OSError:
        shutil.copy2(src, dst)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot sync a directory; the rename is still atomic
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def stage(rulesets: Path, policies: Path, org: str, body: ConfigUpdate, *, base: Path | None = None,
          cases: bool = True) -> Staged:
    """The org's folder after `body`, and the policies folder with the org's new policy, built in a new folder
    under `base` (default: `<rulesets>/.staging`, on the same filesystem as the org folder, so it can be swapped
    in). `cases`: bring the org's `tests/` cases along (a folder to swap in must keep them)."""
    if base is None:
        base = rulesets / STAGING
        base.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"{org}-", dir=base))
    staged = Staged(root, root / "rulesets" / org, root / "policies")
    try:
        source = rulesets / org
        if source.is_dir():
            ignore = None if cases else shutil.ignore_patterns("tests")
            shutil.copytree(source, staged.org_dir, symlinks=True, ignore=ignore, copy_function=_link_or_copy)
        else:
            staged.org_dir.mkdir(parents=True)
        shutil.copytree(policies, staged.policies, ignore=shutil.ignore_patterns(".*"), copy_function=_link_or_copy)
        for name in body.delete:
            target = staged.org_dir / name
            if not target.is_file():
                raise ApiError(422, "invalid", f"delete: there is no file {name!r}", {"field": "delete"})
            target.unlink()
        for name, text in body.files.items():
            target = staged.org_dir / name
            target.unlink(missing_ok=True)  # a hard link to the live file: never write through it
            _write_synced(target, text)
        if body.policy is not None:
            target = staged.policies / f"{org}.yaml"
            target.unlink(missing_ok=True)
            _write_synced(target, body.policy)
        _fsync_dir(staged.org_dir)
    except BaseException:
        staged.discard()
        raise
    return staged


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2); False where the system cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))


@dataclass
class Swapped:
    """An update swapped into place, with what it replaced kept until `finish` (or put back by `undo`)."""

    org_dir: Path
    previous_dir: Path | None
    """Where the replaced org folder is now (None: there was none)."""
    policy: Path | None
    """The org's policy file, when the update replaced it."""
    previous_policy: Path | None
    """A link to the policy file it replaced (None: there was none, or the policy was not changed)."""
    aside: Path
    """Where `undo` moves the new folder (inside the staging folder, removed with it)."""

    def undo(self) -> None:
        """Put back what the update replaced."""
        if self.policy is not None:
            if self.previous_policy is not None:
                os.replace(self.previous_policy, self.policy)
            else:
                self.policy.unlink(missing_ok=True)
        if self.previous_dir is None:
            os.rename(self.org_dir, self.aside)  # there was no folder: the new one goes, with the staging folder
        elif not _exchange(self.previous_dir, self.org_dir):
            os.rename(self.org_dir, self.aside)
            os.rename(self.previous_dir, self.org_dir)
        _fsync_dir(self.org_dir.parent)

    def finish(self) -> None:
        """Forget what was replaced."""
        if self.previous_policy is not None:
            self.previous_policy.unlink(missing_ok=True)


def swap(rulesets: Path, policies: Path, org: str, staged: Staged, *, policy_changed: bool) -> Swapped:
    """Put the staged folder in the org folder's place (the replaced one goes into the staging folder, removed
    with it) and, if `policy_changed`, the staged policy in place of the org's policy file. On any failure what
    was moved is put back and the error raised."""
    target = rulesets / org
    policy = policies / f"{org}.yaml"
    tag = secrets.token_hex(4)
    # Beside the policy file: the policies folder may be on another filesystem than the staging folder.
    staged_policy = policies / f".{org}.yaml.staged-{tag}"
    previous_policy = policies / f".{org}.yaml.previous-{tag}"
    keep_previous = False
    try:
        if policy_changed:
            _write_synced(staged_policy, (staged.policies / f"{org}.yaml").read_text(encoding="utf-8"))
            if policy.exists():
                os.link(policy, previous_policy)
        moved = staged.root / "replaced"
        previous_dir: Path | None = None
        if target.exists():
            if _exchange(staged.org_dir, target):
                os.rename(staged.org_dir, moved)
            else:
                os.rename(target, moved)
                os.rename(staged.org_dir, target)
            previous_dir = moved
        else:
            os.rename(staged.org_dir, target)
        done = Swapped(target, previous_dir, None, None, staged.root / "undone")
        try:
            if policy_changed:
                os.replace(staged_policy, policy)
                done.policy, done.previous_policy = policy, previous_policy if previous_policy.exists() else None
            _fsync_dir(rulesets)
            _fsync_dir(policies)
        except BaseException:
            done.undo()
            raise
        keep_previous = done.previous_policy is not None
        return done
    finally:
        staged_policy.unlink(missing_ok=True)
        if not keep_previous:
            previous_policy.unlink(missing_ok=True)


def owners(registry: Registry) -> set[str]:
    """The orgs whose policies are their own (never shared through `extends`): every org folder and every org
    the registry knows."""
    return {d.name for d in org_dirs(registry.rulesets_dir)} | set(registry.known)


@dataclass
class Installed:
    """The outcome of `install`: the new active revision, or the errors (nothing changed), and the findings."""

    revision: str | None
    errors: list[str]
    warnings: list[str]
    conflict: bool = False
    """True when the staged revision validated but did not load from the swapped files (put back since)."""


def install(registry: Registry, org: str, body: ConfigUpdate) -> Installed:
    """Stage, validate, compile, swap and load an update, all or nothing (blocking: call it in a thread)."""
    rulesets, policies = registry.rulesets_dir, registry.policies_dir
    staged = stage(rulesets, policies, org, body)
    try:
        compiled, findings = build(staged.org_dir, staged.policies, orgs=owners(registry) | {org})
        shown = [tenant_text(str(f), registry, staged.root) for f in findings]
        errors = [t for f, t in zip(findings, shown, strict=True) if f.severity == "error"]
        warnings = [t for f, t in zip(findings, shown, strict=True) if f.severity == "warning"]
        if compiled is None or errors:
            return Installed(None, errors or ["the configuration did not compile"], warnings)
        policy_changed = body.policy is not None
        done = swap(rulesets, policies, org, staged, policy_changed=policy_changed)
        loaded = registry.reload(org)
        active = registry.get(org)
        if active is None or active.revision != compiled.revision:
            # Something else changed these files (or a shared policy) meanwhile: back to what was there.
            done.undo()
            registry.reload(org)
            found = [tenant_text(str(f), registry) for f in loaded if f.severity == "error"]
            return Installed(None, found or [f"rulesets/{org}: the files changed while updating"], warnings,
                             conflict=True)
        done.finish()
        return Installed(active.revision, [], warnings)
    finally:
        staged.discard()


def _saved_files(registry: Any, org: str) -> dict[str, str]:
    """The org's files as `save_agent_config` keeps them: its folder's YAML files and `policies/<org>.yaml`."""
    files = _files(registry.rulesets_dir / org)
    policy_path = registry.policies_dir / f"{org}.yaml"
    if policy_path.exists():
        files[f"policies/{org}.yaml"] = policy_path.read_text(encoding="utf-8")
    return files


async def _existing(registry: Registry, org: str) -> list[str]:
    return await asyncio.to_thread(lambda: [p.name for p in (registry.rulesets_dir / org).glob("*.y*ml")])


async def proposed(app: web.Application, org: str, body: ConfigUpdate) -> CompiledRules:
    """The compiled rules of a proposed update (for a dry run), without changing anything; 422 if invalid."""
    registry = app[REGISTRY]
    if not (registry.rulesets_dir / org / ORG_FILE).exists():
        raise ApiError(404, "not_found", f"org '{org}' has no configuration folder")
    await asyncio.to_thread(check_update, body, await _existing(registry, org))  # parses YAML: off the loop

    def run() -> tuple[CompiledRules | None, list[str]]:
        with tempfile.TemporaryDirectory(prefix="astralis-config-") as tmp:
            staged = stage(registry.rulesets_dir, registry.policies_dir, org, body, base=Path(tmp), cases=False)
            compiled, findings = build(staged.org_dir, staged.policies, orgs=owners(registry) | {org})
            return compiled, [tenant_text(str(f), registry, staged.root) for f in findings if f.severity == "error"]

    compiled, errors = await asyncio.to_thread(run)
    if compiled is None or errors:
        raise ApiError(422, "invalid_config", errors[0] if errors else "invalid configuration", errors)
    return compiled


async def update(app: web.Application, org: str, body: ConfigUpdate, *, by: str | None = None) -> dict[str, Any]:
    """Validate and apply an update, all or nothing (see the module docstring); the org's new active revision
    (recorded as changed `by` whom), or 422 with every error and nothing changed."""
    registry = app[REGISTRY]
    locks: dict[str, asyncio.Lock] = app[CONFIG_LOCKS]
    async with locks.setdefault(org, asyncio.Lock()):
        if not (registry.rulesets_dir / org / ORG_FILE).exists():
            raise ApiError(404, "not_found", f"org '{org}' has no configuration folder")
        await asyncio.to_thread(check_update, body, await _existing(registry, org))  # parses YAML: off the loop
        before = registry.get(org)
        previous = await asyncio.to_thread(_saved_files, registry, org)
        done = await asyncio.to_thread(install, registry, org, body)
        report_org(app[METRICS], registry, org)
        if done.conflict:
            raise ApiError(409, "config_changed", "the files changed while updating; nothing was changed and the "
                           "last good revision stays active", done.errors)
        if done.revision is None:
            raise ApiError(422, "invalid_config", done.errors[0], done.errors)
        store = app[STORE]
        latest = await store.agent_config(org)
        if before is not None and (latest is None or latest["revision"] != before.revision):
            # What was active was never saved (the files as deployed, or edited by hand since): keep it in the
            # history first, so that this update can be rolled back.
            await store.save_agent_config(org, before.revision, previous, by="files on disk")
        files = await asyncio.to_thread(_saved_files, registry, org)
        await store.save_agent_config(org, done.revision, files, by=by)
        sync = app.get(CONFIG_SYNC)
        if sync is not None:  # workers on other machines load it from the store
            await sync.publish(org, done.revision)  # type: ignore[attr-defined]
        return {"org": org, "revision": done.revision, "previous_revision": before.revision if before else None,
                "warnings": done.warnings}


# ---- the editor: validation as you type, history with diffs, rollback -----------------------------------

def _located(err: ConfigError, registry: Registry, staged: Staged, org: str) -> dict[str, Any]:
    """An error of the staged copy as the editor shows it: the file as the update names it (`rules.yaml`,
    `policies/<org>.yaml`), the line, the code and the message (no host path), and the text `astralis validate`
    prints."""
    path = Path(err.path)
    if path.is_relative_to(staged.org_dir):
        name = str(path.relative_to(staged.org_dir))
    elif path.is_relative_to(staged.policies):
        name = f"policies/{path.relative_to(staged.policies)}"
    else:
        name = tenant_text(err.path, registry, staged.root)
    message = tenant_text(err.message, registry, staged.root)
    return {"file": name, "line": err.line, "code": err.code, "message": message,
            "severity": err.severity, "text": f"{name}:{err.line}: {err.code}: {message}"}


def _check(registry: Registry, org: str, body: ConfigUpdate) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="astralis-config-") as tmp:
        staged = stage(registry.rulesets_dir, registry.policies_dir, org, body, base=Path(tmp), cases=False)
        compiled, findings = build(staged.org_dir, staged.policies, load_engine=False, orgs=owners(registry) | {org})
        found = [_located(f, registry, staged, org) for f in findings]
    errors = [f for f in found if f["severity"] == "error"]
    return {"valid": not errors and compiled is not None, "errors": errors,
            "warnings": [f for f in found if f["severity"] == "warning"],
            "revision": compiled.revision if compiled is not None and not errors else None}


async def validate(app: web.Application, org: str, body: ConfigUpdate) -> dict[str, Any]:
    """Check proposed files exactly as `astralis validate` would (nothing is applied): every error and warning
    with its file and line, for an editor to show where it is."""
    registry = app[REGISTRY]
    if not (registry.rulesets_dir / org / ORG_FILE).exists():
        raise ApiError(404, "not_found", f"org '{org}' has no configuration folder")
    await asyncio.to_thread(check_update, body, await _existing(registry, org))  # parses YAML: off the loop
    return await asyncio.to_thread(_check, registry, org, body)


def _diff(before: dict[str, str], after: dict[str, str]) -> str:
    out: list[str] = []
    for name in sorted(before.keys() | after.keys()):
        a, b = before.get(name, ""), after.get(name, "")
        if a != b:
            out.extend(difflib.unified_diff(a.splitlines(keepends=True), b.splitlines(keepends=True),
                                            fromfile=f"a/{name}", tofile=f"b/{name}"))
    return "".join(out)


async def history(app: web.Application, org: str, *, limit: int = 50) -> dict[str, Any]:
    """The org's saved configurations, latest first: revision, when, by whom, and the diff from the one before."""
    rows = await app[STORE].agent_config_history(org, limit=limit + 1)
    active = app[REGISTRY].get(org)
    out = []
    for i, row in enumerate(rows[:limit]):
        previous = rows[i + 1]["files"] if i + 1 < len(rows) else {}
        out.append({"revision": row["revision"], "created_at": row["created_at"].isoformat(), "by": row["by"],
                    "active": active is not None and active.revision == row["revision"],
                    "diff": _diff(previous, row["files"])})
    return {"org": org, "active_revision": active.revision if active else None, "history": out}


async def rollback(app: web.Application, org: str, revision: str, *, by: str | None = None) -> dict[str, Any]:
    """Make a saved revision the active one again: its files, validated and applied like any update."""
    rows = await app[STORE].agent_config_history(org, limit=500)
    saved = next((r for r in rows if r["revision"] == revision), None)
    if saved is None:
        raise ApiError(404, "not_found", f"org '{org}' has no saved revision {revision!r}", {"field": "revision"})
    files: dict[str, str] = saved["files"]
    registry = app[REGISTRY]
    current = await asyncio.to_thread(_files, registry.rulesets_dir / org)
    body = ConfigUpdate(files={k: v for k, v in files.items() if not k.startswith("policies/")},
                        policy=files.get(f"policies/{org}.yaml"),
                        delete=[name for name in current if name not in files and name != ORG_FILE])
    return await update(app, org, body, by=by or f"rollback to {revision}")
