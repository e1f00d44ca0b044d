"""Hot reload across machines: a configuration change made in one process reaches every worker.

On one machine the file watcher already reloads every process that reads the changed files. Workers on other
machines have folders of their own, so a process that applies an update (`PUT /api/agent/config`) records it in
the shared store (`save_agent_config`, as it always has) and announces `{org, revision, origin}` on the Redis
channel `<prefix>:config`. Every other process, on the notice:

1. reads the org's latest stored configuration from the store (the announced revision, or a later one);
2. writes those files into its own folders, each atomically, and removes the org's YAML files the stored
   configuration no longer has — only where they differ, so processes sharing a folder write nothing;
3. reloads the org: the new revision becomes active in one swap, or, if it does not load here, the last good
   revision stays active and the errors are logged (as for a file edit).

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
from server.configs import write_atomic

log = logging.getLogger("astralis.config")

OnReload = Callable[[str, list[Any]], Awaitable[None] | None]


def apply_files(rulesets: Path, policies: Path, org: str, files: dict[str, str]) -> bool:
    """Make the org's folder (and its own policy file) hold exactly the stored `files` (names as
    `save_agent_config` keeps them: `<file>.yaml` in the org folder, `policies/<org>.yaml`). True if anything
    changed."""
    org_dir = rulesets / org
    org_dir.mkdir(parents=True, exist_ok=True)
    changed = False
    wanted: set[str] = set()
    for name, text in files.items():
        if name.startswith("policies/"):
            if Path(name).name != f"{org}.yaml":
                continue  # only the org's own policy travels with it (shared policies are not an org's to change)
            path = policies / f"{org}.yaml"
        else:
            if "/" in name or name.startswith("."):
                continue
            wanted.add(name)
            path = org_dir / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            write_atomic(path, text)
            changed = True
    for path in sorted(org_dir.glob("*.y*ml")):
        if path.name not in wanted:
            path.unlink(missing_ok=True)
            changed = True
    return changed


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
        await asyncio.to_thread(apply_files, self.registry.rulesets_dir, self.registry.policies_dir, org,
                                stored["files"])
        findings = await asyncio.to_thread(self.registry.reload, org)
        now = self.registry.get(org)
        errors = [f for f in findings if f.severity == "error"]
        if errors or now is None or now.revision != stored["revision"]:
            kept = now.revision if now is not None else "none"
            log.error("org '%s': revision %s does not load here (%s); still on %s", org, stored["revision"],
                      "; ".join(map(str, errors)) or "its files differ", kept, extra={"org": org})
        else:
            log.info("org '%s': revision %s active (announced by another worker)", org, now.revision,
                     extra={"org": org})
        if self.on_reload is not None:
            result = self.on_reload(org, findings)
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
