"""Reading and changing an org's configuration over the API.

An update is validated exactly like `astralis validate`: the proposed files are written into a scratch copy of
the org's folder and the policies folder, and the same loader and compiler run there. Only when that copy is
free of errors are the files replaced (each atomically, by rename) and the org reloaded; a bad update changes
nothing and answers 422 with every error as `path:line: code: message`, paths named as in the real folders.
Shared policies (default.yaml, or any policy another org extends) cannot be changed through one org's key.
"""

from __future__ import annotations

import asyncio
import difflib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.errors import ConfigError
from engine.loader import ORG_FILE
from engine.registry import build
from engine.rules import CompiledRules
from server.app import CONFIG_LOCKS, CONFIG_SYNC, METRICS, REGISTRY, STORE, report_org
from server.errors import ApiError
from server.schemas import ConfigUpdate

FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.ya?ml$")


def _files(org_dir: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(org_dir.glob("*.y*ml"))}


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
            "errors": [str(e) for e in state.errors] if state else [],
            "warnings": [str(w) for w in state.warnings] if state else []}


def _check_names(org: str, body: ConfigUpdate) -> None:
    for name in [*body.files, *body.delete]:
        if not FILE_NAME.fullmatch(name):
            raise ApiError(422, "invalid", f"files: {name!r} is not a YAML file name in the org's folder",
                           {"field": f"files.{name}"})
    if ORG_FILE in body.delete:
        raise ApiError(422, "invalid", f"delete: {ORG_FILE} cannot be deleted", {"field": "delete"})
    if not body.files and body.policy is None and not body.delete:
        raise ApiError(422, "invalid", "nothing to change: give files, policy or delete", {"field": "files"})


def _stage(registry_rulesets: Path, registry_policies: Path, org: str, body: ConfigUpdate,
           scratch: Path) -> tuple[Path, Path]:
    """Copy the org's folder and the policies into `scratch` and apply the update there."""
    org_dir = scratch / "rulesets" / org
    policies = scratch / "policies"
    shutil.copytree(registry_rulesets / org, org_dir, ignore=shutil.ignore_patterns("tests"))
    shutil.copytree(registry_policies, policies)
    for name in body.delete:
        target = org_dir / name
        if not target.exists():
            raise ApiError(422, "invalid", f"delete: there is no file {name!r}", {"field": "delete"})
        target.unlink()
    for name, text in body.files.items():
        (org_dir / name).write_text(text, encoding="utf-8")
    if body.policy is not None:
        (policies / f"{org}.yaml").write_text(body.policy, encoding="utf-8")
    return org_dir, policies


def _rename(err: ConfigError, scratch: Path, rulesets: Path, policies: Path) -> str:
    """An error found in the scratch copy, with the path of the real file."""
    text = str(err)
    text = text.replace(str(scratch / "rulesets"), str(rulesets)).replace(str(scratch / "policies"), str(policies))
    return text


def _validate(rulesets: Path, policies: Path, org: str, body: ConfigUpdate) -> tuple[CompiledRules | None, list[str]]:
    with tempfile.TemporaryDirectory(prefix="astralis-config-") as tmp:
        scratch = Path(tmp)
        org_dir, scratch_policies = _stage(rulesets, policies, org, body, scratch)
        compiled, findings = build(org_dir, scratch_policies)
        errors = [_rename(f, scratch, rulesets, policies) for f in findings if f.severity == "error"]
        return (compiled if not errors else None), errors


def _saved_files(registry: Any, org: str) -> dict[str, str]:
    """The org's files as `save_agent_config` keeps them: its folder's YAML files and `policies/<org>.yaml`."""
    files = _files(registry.rulesets_dir / org)
    policy_path = registry.policies_dir / f"{org}.yaml"
    if policy_path.exists():
        files[f"policies/{org}.yaml"] = policy_path.read_text(encoding="utf-8")
    return files


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` at once (written beside it, synced, renamed): a reader sees the old or the new."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _apply(rulesets: Path, policies: Path, org: str, body: ConfigUpdate) -> None:
    for name, text in body.files.items():
        write_atomic(rulesets / org / name, text)
    if body.policy is not None:
        write_atomic(policies / f"{org}.yaml", body.policy)
    for name in body.delete:
        (rulesets / org / name).unlink(missing_ok=True)


async def proposed(app: web.Application, org: str, body: ConfigUpdate) -> CompiledRules:
    """The compiled rules of a proposed update (for a dry run), without changing anything; 422 if invalid."""
    registry = app[REGISTRY]
    if not (registry.rulesets_dir / org / ORG_FILE).exists():
        raise ApiError(404, "not_found", f"org '{org}' has no configuration folder")
    _check_names(org, body)
    compiled, errors = await asyncio.to_thread(_validate, registry.rulesets_dir, registry.policies_dir, org, body)
    if compiled is None:
        raise ApiError(422, "invalid_config", errors[0] if errors else "invalid configuration", errors)
    return compiled


async def update(app: web.Application, org: str, body: ConfigUpdate, *, by: str | None = None) -> dict[str, Any]:
    """Validate and apply an update; the org's new active revision (recorded as changed `by` whom), or 422
    with every error."""
    registry = app[REGISTRY]
    locks: dict[str, asyncio.Lock] = app[CONFIG_LOCKS]
    async with locks.setdefault(org, asyncio.Lock()):
        await proposed(app, org, body)
        before = registry.get(org)
        latest = await app[STORE].agent_config(org)
        if before is not None and (latest is None or latest["revision"] != before.revision):
            # What is active now was never saved (the files as deployed, or edited by hand since): keep it in the
            # history first, so that this update can be rolled back.
            await app[STORE].save_agent_config(org, before.revision, await asyncio.to_thread(_saved_files, registry, org),
                                               by="files on disk")
        await asyncio.to_thread(_apply, registry.rulesets_dir, registry.policies_dir, org, body)
        findings = await asyncio.to_thread(registry.reload, org)
        report_org(app[METRICS], registry, org)
        errors = [str(f) for f in findings if f.severity == "error"]
        if errors:  # the files changed under us between validation and reload
            raise ApiError(409, "config_changed", "the files changed while updating; the last good revision stays "
                           "active", errors)
        active = registry.get(org)
        assert active is not None
        files = await asyncio.to_thread(_saved_files, registry, org)
        await app[STORE].save_agent_config(org, active.revision, files, by=by)
        sync = app.get(CONFIG_SYNC)
        if sync is not None:  # workers on other machines load it from the store
            await sync.publish(org, active.revision)  # type: ignore[attr-defined]
        return {"org": org, "revision": active.revision, "previous_revision": before.revision if before else None,
                "warnings": [str(f) for f in findings if f.severity == "warning"]}


# ---- the editor: validation as you type, history with diffs, rollback -----------------------------------

def _located(err: ConfigError, scratch: Path, org: str) -> dict[str, Any]:
    """An error of the scratch copy as the editor shows it: the file as the update names it (`rules.yaml`,
    `policies/<org>.yaml`), the line, the code and the message, and the text `astralis validate` prints."""
    path = Path(err.path)
    try:
        rel = path.relative_to(scratch / "rulesets" / org)
        name = str(rel)
    except ValueError:
        try:
            name = f"policies/{path.relative_to(scratch / 'policies')}"
        except ValueError:
            name = err.path
    return {"file": name, "line": err.line, "code": err.code, "message": err.message,
            "severity": err.severity, "text": f"{name}:{err.line}: {err.code}: {err.message}"}


def _check(rulesets: Path, policies: Path, org: str, body: ConfigUpdate) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="astralis-config-") as tmp:
        scratch = Path(tmp)
        org_dir, scratch_policies = _stage(rulesets, policies, org, body, scratch)
        compiled, findings = build(org_dir, scratch_policies, load_engine=False)
        found = [_located(f, scratch, org) for f in findings]
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
    _check_names(org, body)
    return await asyncio.to_thread(_check, registry.rulesets_dir, registry.policies_dir, org, body)


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
