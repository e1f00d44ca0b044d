"""Hot reload across machines: a configuration change made in one process reaches every worker.

On one machine the file watcher already reloads every process that reads the changed files. Workers on other
machines have folders of their own, so a process that applies an update (`PUT /api/agent/config`) records it in
the shared store (`save_agent_config`, as it always has) and announces `{org, revision, origin}` on the Redis
channel `<prefix>:config`. Every other process, on the notice:

1. reads the org's latest stored configuration from the store (the announced revision, or a later one);
2. if its files differ from the org's folder here (processes sharing a folder write nothing), stages the folder as
   the stored configuration has it, validates and compiles it there, and only then swaps it in and loads it, all
   or nothing, exactly as an API update (`server.configs.install`): a stored configuration that does not load
   here changes no file, the last good revision stays active and the errors are logged. Stored file names are
   checked again (`server.configs.name_problem`): one that is not a plain YAML file name is skipped and logged.

Decisions record the revision they were made with (`revision`), so every worker's use of the new rules is
visible in the log. After Redis comes back, and at start-up, a process loads any stored configuration that is
newer than its own files (`catch_up`): a notice missed during an outage is not lost, and a hand edit made here
later is not overwritten.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from engine.registry import Registry
from server.configs import install, name_problem, stage, swap
from server.schemas import ConfigUpdate

log = logging.getLogger("astralis.config")

OnReload = Callable[[str, list[Any]], Awaitable[None] | None]


def diff_update(rulesets: Path, policies: Path, org: str, files: dict[str, str]) -> ConfigUpdate | None:
    """What makes the org's folder (and its own policy file) hold exactly the stored `files` (names as
    `save_agent_config` keeps them: `<file>.yaml` in the org folder, `policies/<org>.yaml`); None when they
    already do. Names that cannot be an org's file, and shared policies, are left out (and logged)."""
    org_dir = rulesets / org
    current = {p.name: p.read_text(encoding="utf-8") for p in org_dir.glob("*.y*ml")} if org_dir.is_dir() else {}
    write: dict[str, str] = {}
    wanted: set[str] = set()
    policy: str | None = None
    for name, text in files.items():
        if name.startswith("policies/"):
            if name != f"policies/{org}.yaml":
                continue  # only the org's own policy travels with it (shared policies are not an org's to change)
            path = policies / f"{org}.yaml"
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                policy = text
            continue
        why = name_problem(name)
        if why is not None:
            log.warning("org '%s': stored file %r skipped: %s", org, name[:80], why, extra={"org": org})
            continue
        wanted.add(name)
        if current.get(name) != text:
            write[name] = text
    delete = sorted(n for n in current if n not in wanted)
    if not write and not delete and policy is None:
        return None
    return ConfigUpdate.model_construct(files=write, delete=delete, policy=policy)


def apply_files(rulesets: Path, policies: Path, org: str, files: dict[str, str]) -> bool:
    """Make the org's folder hold exactly the stored `files` (see `diff_update`), swapped in at once (without
    validating them: `ConfigSync` uses `server.configs.install`, which does). True if anything changed."""
    body = diff_update(rulesets, policies, org, files)
    if body is None:
        return False
    staged = stage(rulesets, policies, org, body)
    try:
        swap(rulesets, policies, org, staged, policy_changed=body.policy is not None).finish()
    finally:
        staged.discard()
    return True


class ConfigSync:
    """Announces this process's configuration updates and applies the others' (see the module docstring)."""

    def __init__(self, url: str, registry: Registry, store: Any, *, prefix: str = "astralis", origin: str = "",
                 on_reload: OnReload | None = None) -> None:
        self.client = aioredis.from_url(url, socket_connect_timeout=1.0)
        self.channel = f"{prefix}:config"
        self.registry = registry
        self.store = store
        self.origin = origin or f"{os.getpid()}:{id(self)}"
        self.on_reload = on_reload
        self.applied = asyncio.Event()
        """Set each time a notice has been applied (for tests and for waiting on a rollout)."""

    async def publish(self, org: str, revision: str) -> int:
        """Announce that `org`'s configuration is now `revision` (already in the store); how many processes
        heard it. A Redis outage is logged, not raised: the update itself has been applied and stored."""
        message = json.dumps({"org": org, "revision": revision, "origin": self.origin})
        try:
            return int(await self.client.publish(self.channel, message))
        except (RedisError, OSError) as exc:
            log.warning("could not announce revision %s of '%s' to the other workers (Redis: %s); they load it "
                        "at their next notice or restart", revision, org, exc, extra={"org": org})
            return 0

    async def catch_up(self) -> None:
        """Load every org whose stored configuration differs from this process's active revision and was
        stored after its files here last changed (a notice missed while Redis was away). Files edited here since
        then win: a hand edit is never overwritten by an older update."""
        for org in self.registry.known:
            await self._apply(org, None)

    def _edited_since(self, org: str, stored_at: Any) -> bool:
        paths = [*(self.registry.rulesets_dir / org).glob("*.y*ml"), self.registry.policies_dir / f"{org}.yaml"]
        newest = max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)
        return newest >= stored_at.timestamp()

    async def _apply(self, org: str, revision: str | None) -> None:
        stored = await self.store.agent_config(org)
        active = self.registry.get(org)
        if stored is None or (active is not None and active.revision == stored["revision"]):
            return
        if revision is None and self._edited_since(org, stored["created_at"]):
            return
        if revision is not None and stored["revision"] != revision:
            log.info("org '%s': revision %s was announced; the store's latest is %s, which is loaded",
                     org, revision, stored["revision"], extra={"org": org})
        body = await asyncio.to_thread(diff_update, self.registry.rulesets_dir, self.registry.policies_dir, org,
                                       stored["files"])
        errors: list[str] = []
        if body is None:  # the files are here already (a shared folder): load them
            findings = await asyncio.to_thread(self.registry.reload, org)
            errors = [str(f) for f in findings if f.severity == "error"]
        else:
            done = await asyncio.to_thread(install, self.registry, org, body)
            errors = done.errors
        now = self.registry.get(org)
        if errors or now is None or now.revision != stored["revision"]:
            kept = now.revision if now is not None else "none"
            log.error("org '%s': revision %s does not load here (%s); no file changed, still on %s", org,
                      stored["revision"], "; ".join(errors) or "its files differ", kept, extra={"org": org})
        else:
            log.info("org '%s': revision %s active (announced by another worker)", org, now.revision,
                     extra={"org": org})
        if self.on_reload is not None:
            state = self.registry.state(org)
            result = self.on_reload(org, list(state.errors) if state is not None else [])
            if asyncio.iscoroutine(result):
                await result

    async def run(self) -> None:
        """Apply the other processes' notices until cancelled; reconnect (and catch up) after an outage."""
        delay = 0.5
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                await self.catch_up()
                delay = 0.5
                async for message in pubsub.listen():
                    await self._on(message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("config notices: Redis unavailable (%s); retrying in %.1f s", exc, delay)
            except Exception:
                log.exception("config notices failed; resubscribing")
            finally:
                await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _on(self, message: dict[str, Any]) -> None:
        try:
            notice = json.loads(message["data"])
            org, revision, origin = str(notice["org"]), str(notice["revision"]), str(notice.get("origin", ""))
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed config notice: %r", message.get("data"))
            return
        if origin == self.origin:
            return
        try:
            await self._apply(org, revision)
        except Exception:
            log.exception("org '%s': applying revision %s failed; the last good revision stays active", org,
                          revision, extra={"org": org})
        self.applied.set()

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()
