"""What the service's actions did, counted where they land: a local HTTP receiver standing in for an n8n Webhook
node and for a notification webhook (requests per `Idempotency-Key`), and the tables of the effects inside
Astralis (intake histories, calendar events, in-app notifications, each unique per action key).

`check_actions_ran_once` is the assertion the scale-out tests (BullMQ, PostgreSQL, shared Redis) make after their
events are decided: every action of every executed decision is in the outbox, ended `done`, and took effect once
on the receiving side. The fixtures `receiver` (one running `Receiver`) and `redis_prefix` (a key prefix of the
test's own on the machine's Redis) are imported by name where used."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
HOOK_SECRET_ENV = "ACME_NOTIFY_HOOK_SECRET"
"""The signing secret of acme's notification webhook in `wire_policy`'s policy (set in the processes' env)."""
NOTIFYING = ("SEND_NOTIFICATION", "ESCALATE")


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that answers 200 like an n8n Webhook node (`{"message": "Workflow was
    started"}`) and counts every request per `Idempotency-Key` and per path."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.paths: Counter[str] = Counter()
        self.without_key = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _take(self, request: web.Request) -> web.Response:
        await request.read()
        key = request.headers.get("Idempotency-Key")
        if key is None:
            self.without_key += 1
        else:
            self.received[key] += 1
        self.paths[request.path] += 1
        return web.json_response({"message": "Workflow was started"})

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._take)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def receiver() -> Any:
    """A running `Receiver`, closed after the test."""
    r = await Receiver().start()
    yield r
    await r.close()


@pytest.fixture
async def redis_prefix() -> Any:
    """A key prefix of the test's own on the machine's Redis (`REDIS_URL`; skipped, or under CI failed, without
    one); its keys (ours and BullMQ's `bull:<prefix>-…`) are deleted afterwards."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, aioredis.ConnectionError) as exc:
        await client.aclose()
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but no Redis answers at {REDIS_URL}: {exc}")
        pytest.skip(f"no Redis at {REDIS_URL}")
    prefix = f"astralis-t-{uuid.uuid4().hex[:10]}"
    yield prefix
    keys = [k async for k in client.scan_iter(f"*{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def wired_copy(tmp: Path, receiver: Receiver) -> tuple[list[str], dict[str, str]]:
    """A private copy of the shipped rulesets and policies under `tmp`, acme's wired to the receiver
    (`wire_policy`): (the CLI flags naming the copy, the environment the processes need)."""
    rulesets, policies = tmp / "wired" / "rulesets", tmp / "wired" / "policies"
    shutil.copytree(ROOT / "rulesets", rulesets)
    shutil.copytree(ROOT / "policies", policies)
    # acme's org model off, as in every service test's copy (tests/server/conftest.py `config_dirs`)
    acme = policies / "acme.yaml"
    acme.write_text(acme.read_text(encoding="utf-8").replace("  enabled: true\n", "  enabled: false\n", 1),
                    encoding="utf-8")
    env = wire_policy(policies, receiver.url)
    return ["--rulesets", str(rulesets), "--policies", str(policies)], env


def wire_policy(policies: Path, receiver_url: str, *, org: str = "acme") -> dict[str, str]:
    """Point `org`'s policy (a private copy) at the receiver: every notification also goes to its webhook, sales
    inquiries trigger the `new-lead` workflow there, and the decision rate limits are out of the way. Returns the
    environment the service processes need for it (the webhook's secret; loopback allowed by the egress policy)."""
    path = policies / f"{org}.yaml"
    policy = yaml.safe_load(path.read_text(encoding="utf-8"))
    policy["notifications"] = {"channels": ["in_app", "webhook"],
                               "webhook": {"url": f"{receiver_url}/hook", "secret_env": HOOK_SECRET_ENV}}
    policy["automations"] = {"new-lead": {"url": f"{receiver_url}/webhook/new-lead"}}
    policy["routing"]["SALES_INQUIRY"]["automations"] = ["new-lead"]
    policy["rate_limits"] = {"per_minute": 1_000_000, "per_hour": 10_000_000}
    path.write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")
    return {HOOK_SECRET_ENV: "whsec-receiver-0123456789", "ASTRALIS_EGRESS_ALLOW": "127.0.0.1"}


@dataclass
class Effects:
    """The outbox and the effects of its actions, as read from a store's tables."""

    actions: dict[str, dict[str, Any]]
    """Action key → {type, status, error, result, decision_id}."""
    executed: dict[str, list[str]]
    """Decision id → the keys its actions must have in the outbox (EXECUTED decisions)."""
    assigned: Counter[str] = field(default_factory=Counter)
    """ASSIGN_PIPELINE key → times it appears in the intakes' histories."""
    booked: Counter[str] = field(default_factory=Counter)
    """CREATE_EVENT key → calendar events recording it."""
    notified: Counter[str] = field(default_factory=Counter)
    """Action key → in-app notification rows recording it."""

    @property
    def unsettled(self) -> int:
        """Actions still waiting or running."""
        return sum(a["status"] in ("pending", "running") for a in self.actions.values())


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _effects(actions: list[dict[str, Any]], decisions: list[dict[str, Any]], histories: list[Any],
             booked: list[Any], notified: list[Any]) -> Effects:
    executed = {}
    for row in decisions:
        d = _json(row["record"])
        if d["status"] == "EXECUTED":
            executed[row["id"]] = [a.get("idempotency_key") or f"{row['id']}:{i}" for i, a in enumerate(d["actions"])]
    assigned: Counter[str] = Counter()
    for history in histories:
        assigned.update(h["action"] for h in _json(history) if h.get("what") == "assigned" and h.get("action"))
    return Effects(
        actions={a["key"]: {"type": a["type"], "status": a["status"], "error": a["error"],
                            "result": _json(a["result"]) or {}, "decision_id": a["decision_id"]} for a in actions},
        executed=executed, assigned=assigned, booked=Counter(k for k in booked if k),
        notified=Counter(k for k in notified if k))


_ACTIONS = "SELECT key, type, status, error, result, decision_id FROM actions"
_DECISIONS = "SELECT id, record FROM decisions"


def sqlite_effects(db: Path) -> Effects:
    """The effects in a SQLite store (read-only: the service may be running)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return _effects([dict(r) for r in conn.execute(_ACTIONS)], [dict(r) for r in conn.execute(_DECISIONS)],
                        [r[0] for r in conn.execute("SELECT history FROM intakes")],
                        [r[0] for r in conn.execute("SELECT action_key FROM calendar_events")],
                        [r[0] for r in conn.execute("SELECT action_key FROM notifications")])
    finally:
        conn.close()


async def pg_connect(url: str) -> Any:
    """An asyncpg connection to a store URL, which may name its schema (`?schema=name`, as the service takes it)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    import asyncpg

    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    schema = next((v for k, v in query if k == "schema"), None)
    dsn = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "schema"])))
    return await asyncpg.connect(dsn, server_settings={"search_path": schema} if schema else None)


async def pg_effects(url: str) -> Effects:
    """The effects in a PostgreSQL store (`url` as `pg_connect` takes it)."""
    conn = await pg_connect(url)
    try:
        return _effects([dict(r) for r in await conn.fetch(_ACTIONS)], [dict(r) for r in await conn.fetch(_DECISIONS)],
                        [r[0] for r in await conn.fetch("SELECT history FROM intakes")],
                        [r[0] for r in await conn.fetch("SELECT action_key FROM calendar_events")],
                        [r[0] for r in await conn.fetch("SELECT action_key FROM notifications")])
    finally:
        await conn.close()


async def settled(read: Callable[[], Effects | Awaitable[Effects]], within: float) -> Effects:
    """Poll `read` until no action is pending or running; those effects (fails after `within` seconds)."""
    t0 = time.monotonic()
    while True:
        got = read()
        effects = await got if not isinstance(got, Effects) else got
        if effects.unsettled == 0:
            return effects
        assert time.monotonic() - t0 < within, (
            f"{effects.unsettled} actions still pending or running after {within} s: "
            f"{Counter(a['status'] for a in effects.actions.values())}")
        await asyncio.sleep(0.2)


def check_actions_ran_once(effects: Effects, receiver: Receiver | None = None, *,
                           repeats_allowed: int = 0) -> dict[str, int]:
    """Every action of every executed decision is in the outbox (and nothing else is), ended `done`, and took
    effect exactly once where it lands: an intake assignment, a calendar event, in-app notifications (one row per
    recipient), and — with a `receiver` — one request per key to the notification webhook and the workflow.

    `repeats_allowed`: requests the receiver may see again with a key it has seen, for a test that SIGKILLs a
    runner between the receiver's answer and the record of it (the README's one documented repeat: the same
    `Idempotency-Key`, so a receiver drops it). Returns counts for the test's report."""
    actions = effects.actions
    expected = {k for keys in effects.executed.values() for k in keys}
    assert not expected - actions.keys(), f"executed actions missing from the outbox: {sorted(expected - actions.keys())[:5]}"
    assert not actions.keys() - expected, f"outbox rows of no executed decision: {sorted(actions.keys() - expected)[:5]}"
    not_done = {k: (a["status"], a["error"]) for k, a in actions.items() if a["status"] != "done"}
    assert not not_done, f"{len(not_done)} actions did not end done: {dict(list(not_done.items())[:5])}"

    def keys(*types: str) -> set[str]:
        return {k for k, a in actions.items() if a["type"] in types}

    assign = keys("ASSIGN_PIPELINE")
    assert set(effects.assigned) == assign, "ASSIGN_PIPELINE actions and intake assignments differ"
    assert all(n == 1 for n in effects.assigned.values()), "an intake assignment applied twice"
    create = keys("CREATE_EVENT")
    assert set(effects.booked) == create, "CREATE_EVENT actions and calendar events differ"
    assert all(n == 1 for n in effects.booked.values()), "a booking made twice"
    notify = keys(*NOTIFYING)
    assert set(effects.notified) <= notify, "in-app notifications of no notification action"
    for k in notify:
        assert effects.notified.get(k, 0) == len(actions[k]["result"].get("in_app") or []), f"in-app rows of {k}"
    counts = {"actions": len(actions), "assign": len(assign), "create_event": len(create), "notify": len(notify),
              "in_app_rows": sum(effects.notified.values())}
    if receiver is not None:
        hooked = {k for k in notify if actions[k]["result"].get("webhook") is not None} | keys("TRIGGER_AUTOMATION")
        assert hooked, "no action reached the receiver: the test does not exercise it"
        assert receiver.without_key == 0, f"{receiver.without_key} requests without an Idempotency-Key"
        assert set(receiver.received) == hooked, (
            f"receiver keys differ from the actions that call it: missing {sorted(hooked - set(receiver.received))[:5]}, "
            f"unexpected {sorted(set(receiver.received) - hooked)[:5]}")
        repeats = sum(n - 1 for n in receiver.received.values())
        assert repeats <= repeats_allowed, f"{repeats} repeated requests: {receiver.received.most_common(5)}"
        counts |= {"webhook_and_workflow_keys": len(hooked), "automations": len(keys("TRIGGER_AUTOMATION")),
                   "receiver_requests": sum(receiver.received.values()), "receiver_repeats": repeats}
    return counts
