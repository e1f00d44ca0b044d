"""The outbox runner: retries with backoff and jitter, dead letters, the failure notice, ordering within a decision,
crash loops, restarts — against a real SQLite store and a local receiver that behaves like an n8n Webhook node."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters import egress
from adapters.stores import open_store
from engine.config import DecisionType, Execution, Intent
from engine.models import Action, Decision, new_id
from engine.registry import Registry
from server.app import SERVICE, bundles_of
from server.metrics import Metrics
from server.outbox import OutboxRunner, backoff_delay, build_executors
from server.service import Processing

BASE = 0.2  # backoff_seconds in the test policy


class Receiver:
    """An n8n-like webhook receiver: `plan[path]` is the list of statuses to answer, in order (then 200)."""

    def __init__(self) -> None:
        self.plan: dict[str, list[int]] = {}
        self.delay: dict[str, float] = {}
        self.calls: list[tuple[str, float, dict[str, str], Any]] = []
        self.successes: dict[str, int] = {}
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        body = await request.json()
        self.calls.append((path, time.monotonic(), dict(request.headers), body))
        await asyncio.sleep(self.delay.get(path, 0))
        statuses = self.plan.get(path) or []
        status = statuses.pop(0) if statuses else 200
        if status == 200:
            key = request.headers["Idempotency-Key"]
            self.successes[key] = self.successes.get(key, 0) + 1
            return web.json_response({"message": "Workflow was started"})
        return web.json_response({"message": f"failing with {status}"}, status=status)

    def keys(self, path: str) -> list[str]:
        return [h["Idempotency-Key"] for p, _, h, _ in self.calls if p == path]

    def times(self, path: str) -> list[float]:
        return [t for p, t, _, _ in self.calls if p == path]


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/webhook/{path}", rec.handle)
    server = await aiohttp_server(app)
    rec.url = str(server.make_url("")).rstrip("/")
    return rec


class Harness:
    """A store, the active configs and a runner over them."""

    def __init__(self, store: Any, registry: Registry, session: aiohttp.ClientSession) -> None:
        self.store = store
        self.registry = registry
        self.session = session
        self.bundles = bundles_of(registry)
        self.runners: list[OutboxRunner] = []

    def runner(self, owner: str = "host:1:test", *, store: Any = None, **kw: Any) -> OutboxRunner:
        """A runner over the harness's store (or `store`, a wrapper of it), whose executors write to the store."""
        r = OutboxRunner(store or self.store, build_executors(self.store, self.bundles, lambda: self.session),
                         self.bundles, Metrics(), owner=owner, poll_seconds=0.05, **kw)
        self.runners.append(r)
        return r

    async def decide(self, *workflows: str, status: str = "EXECUTED") -> Decision:
        """A stored decision whose actions trigger `workflows`, in order."""
        decision = Decision(
            event_id=new_id("evt"), org="acme", input={"source": "API", "type": "form:submitted"},
            intent=Intent.SALES_INQUIRY, priority=3, decision_type=DecisionType.TRIGGER_AUTOMATION, confidence=0.9,
            decided_by="rules", reasoning="test", status=status)  # type: ignore[arg-type]
        decision.actions = [Action(type=DecisionType.TRIGGER_AUTOMATION, params={"workflow": w},
                                   idempotency_key=f"{decision.id}:{i}") for i, w in enumerate(workflows)]
        await self.store.complete_events([decision])
        return decision

    async def actions(self, decision: Decision) -> list[dict[str, Any]]:
        return await self.store.list_actions("acme", decision.id)


class StoreAway:
    """The real store, whose methods named in `failing` raise `OSError` on their next n calls, as a store that is
    away (restarting, failing over) does; every other call, and every call after those, goes to the store."""

    def __init__(self, store: Any, failing: dict[str, int]) -> None:
        self._store = store
        self.failing = dict(failing)
        self.raised: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)
        if name not in self.failing:
            return method

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.failing[name] > 0:
                self.failing[name] -= 1
                self.raised[name] += 1
                raise OSError(f"connection to the store lost during {name}")
            return await method(*args, **kwargs)

        return call


@pytest.fixture
async def harness(store_url: str, receiver: Receiver, config_dirs: tuple[Path, Path]) -> AsyncIterator[Harness]:
    rulesets, policies = config_dirs
    acme = policies / "acme.yaml"
    acme.write_text(acme.read_text() + f"""
execution: {{max_attempts: 5, backoff_seconds: {BASE}, backoff_max_seconds: 5, timeout_seconds: 2}}
automations:
  crm: {{url: "{receiver.url}/webhook/crm", timeout_seconds: 0.5}}
  flaky: {{url: "{receiver.url}/webhook/flaky", timeout_seconds: 0.5}}
  broken: {{url: "{receiver.url}/webhook/broken"}}
  slow: {{url: "{receiver.url}/webhook/slow", timeout_seconds: 0.2}}
""")
    registry = Registry(rulesets, policies)
    errors = registry.load_all()
    assert not any(errors.values()), errors
    store = await open_store(store_url)
    # the service's kind of session (egress-guarded); the receiver is on loopback, which the operator allows here
    async with egress.session(egress.EgressPolicy.from_text("127.0.0.1/32")) as session:
        h = Harness(store, registry, session)
        yield h
        for r in h.runners:
            await r.stop(1)
    await store.close()


def test_backoff_is_exponential_with_equal_jitter_and_capped() -> None:
    ex = Execution(backoff_seconds=1, backoff_max_seconds=10)
    assert [backoff_delay(ex, n, rand=lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]
    assert [backoff_delay(ex, n, rand=lambda: 0.0) for n in (1, 2, 3)] == [0.5, 1, 2]
    # a server's Retry-After wins when longer, but never beyond the cap
    assert backoff_delay(ex, 1, rand=lambda: 0.0, retry_after=7) == 7
    assert backoff_delay(ex, 1, rand=lambda: 0.0, retry_after=70) == 10


async def test_three_failures_then_success_is_four_attempts_with_one_key(harness: Harness, receiver: Receiver) -> None:
    receiver.plan["flaky"] = [500, 503, 500]
    decision = await harness.decide("flaky")
    runner = harness.runner()
    await runner.start()
    assert await runner.idle(15)
    [row] = await harness.actions(decision)
    assert row["status"] == "done" and row["attempts"] == 4
    assert receiver.keys("flaky") == [f"{decision.id}:0"] * 4
    assert receiver.successes == {f"{decision.id}:0": 1}
    assert [e["outcome"] for e in row["attempt_log"]] == ["failed", "failed", "failed", "done"]
    # each wait lies within its backoff bounds: [BASE·2^(n-1)/2, BASE·2^(n-1)] (plus the loop's scheduling slack)
    times = receiver.times("flaky")
    for n, (a, b) in enumerate(itertools.pairwise(times), start=1):
        ceiling = BASE * 2 ** (n - 1)
        assert ceiling / 2 - 0.02 <= b - a <= ceiling + 0.5, (n, b - a)
    stored = await harness.store.get_decision("acme", decision.id)
    assert stored is not None and stored.status == "EXECUTED" and stored.error is None


async def test_permanent_4xx_is_one_attempt_then_failed_and_escalated(harness: Harness, receiver: Receiver) -> None:
    receiver.plan["broken"] = [400]
    decision = await harness.decide("broken", "crm")
    runner = harness.runner()
    await runner.start()
    assert await runner.idle(10)
    rows = {r["key"]: r for r in await harness.actions(decision)}
    broken, crm = rows[f"{decision.id}:0"], rows[f"{decision.id}:1"]
    assert broken["status"] == "dead" and broken["attempts"] == 1 and "HTTP 400" in broken["error"]
    # the decision's later action never runs: the first one failed
    assert crm["status"] == "cancelled" and crm["attempts"] == 0 and receiver.keys("crm") == []
    stored = await harness.store.get_decision("acme", decision.id)
    assert stored is not None and stored.status == "FAILED"
    assert stored.error is not None and "HTTP 400" in stored.error and "TRIGGER_AUTOMATION" in stored.error
    # the failure notice goes to the escalation address and the ADMIN users, with the reason
    notice = rows[f"{decision.id}:failure"]
    assert notice["type"] == "ESCALATE" and notice["index"] == -1
    assert notice["params"]["address"] == "ops@acme.example"
    assert set(notice["params"]["to"]) == {"u-omar", "u-ana"}
    assert "HTTP 400" in notice["params"]["reason"] and notice["params"]["failed_action"] == f"{decision.id}:0"
    # ... and was sent: the ADMIN users have it in the app, naming the failed action and what to do
    assert notice["status"] == "done" and notice["attempts"] == 1
    for admin in ("u-omar", "u-ana"):
        rows, _ = await harness.store.list_notifications("acme", admin)
        [note] = rows
        assert note["template"] == "action_failed" and decision.id in note["body"] and "HTTP 400" in note["body"]
    # and the live stream says so
    kinds = [k for _, k, _ in await harness.store.stream_after("acme", 0)]
    assert kinds == ["executed", "failed"]


async def test_transient_failures_exhaust_the_attempts(harness: Harness, receiver: Receiver) -> None:
    receiver.plan["flaky"] = [500] * 10
    decision = await harness.decide("flaky")
    runner = harness.runner()
    await runner.start()
    assert await runner.idle(20)
    [row, *_] = [r for r in await harness.actions(decision) if r["index"] == 0]
    assert row["status"] == "dead" and row["attempts"] == 5 and len(receiver.keys("flaky")) == 5
    assert "attempt 5 of 5" in row["error"]


async def test_a_timeout_is_transient(harness: Harness, receiver: Receiver) -> None:
    receiver.delay["slow"] = 0.5
    decision = await harness.decide("slow")
    runner = harness.runner()
    await runner.start()
    for _ in range(100):
        [row] = [r for r in await harness.actions(decision) if r["index"] == 0]
        if row["attempts"] >= 2:
            break
        await asyncio.sleep(0.05)
    assert row["attempts"] >= 2 and "did not answer within 0.2 s" in (row["error"] or "")


async def test_actions_of_a_decision_run_in_order(harness: Harness, receiver: Receiver) -> None:
    receiver.plan["flaky"] = [500]
    decision = await harness.decide("flaky", "crm")
    runner = harness.runner()
    await runner.start()
    assert await runner.idle(10)
    assert [p for p, *_ in receiver.calls] == ["flaky", "flaky", "crm"]
    assert all(r["status"] == "done" for r in await harness.actions(decision))


async def test_awaiting_and_rejected_decisions_run_nothing_until_approved(harness: Harness, receiver: Receiver) -> None:
    held = await harness.decide("crm", status="REQUIRES_APPROVAL")
    rejected = await harness.decide("crm", status="REQUIRES_APPROVAL")
    runner = harness.runner()
    await runner.start()
    assert await runner.idle(5)
    assert receiver.calls == [] and await harness.actions(held) == []
    await harness.store.resolve_decision("acme", rejected.id, "reject", "pat", "no")
    await harness.store.resolve_decision("acme", held.id, "approve", "pat", None)
    await harness.store.resolve_decision("acme", held.id, "approve", "pat", None)  # idempotent
    runner.wake()
    assert await runner.idle(5)
    assert receiver.keys("crm") == [f"{held.id}:0"]
    assert await harness.actions(rejected) == []


async def test_a_restart_resumes_pending_and_interrupted_actions(harness: Harness, receiver: Receiver) -> None:
    receiver.delay["crm"] = 0.3
    decision = await harness.decide("crm", "crm")
    first = harness.runner(owner="host:1:first", lease_seconds=0.6)
    await first.start()
    for _ in range(500):
        if receiver.calls:
            break
        await asyncio.sleep(0.01)
    # the runner dies mid-action: its tasks vanish without recording anything, its lease runs out
    for t in [*first._tasks, *first._inflight.values()]:
        t.cancel()
    harness.runners.remove(first)
    # A long lease for the one that stays: on a loaded machine a 0.6 s lease can lapse between two renewals, and
    # an action whose lease lapsed is (by design) run again with its key; here only the first runner's must lapse.
    second = harness.runner(owner="host:2:second", lease_seconds=10)
    await second.start()
    await asyncio.sleep(0.8)  # past the first runner's lease
    assert await second.idle(10)
    rows = await harness.actions(decision)
    assert [r["status"] for r in rows] == ["done", "done"]
    assert rows[0]["attempts"] == 2 and [e["outcome"] for e in rows[0]["attempt_log"]] == ["interrupted", "done"]
    # the receiver saw the first action twice with the same key (at-least-once), the second once
    assert receiver.keys("crm") == [f"{decision.id}:0", f"{decision.id}:0", f"{decision.id}:1"]


async def test_an_action_that_keeps_killing_its_runner_is_dead_lettered(harness: Harness, receiver: Receiver) -> None:
    decision = await harness.decide("crm")
    # five earlier claims that never finished (each runner died mid-attempt)
    for n in range(5):
        [job] = await harness.store.claim_actions(f"host:{n}:dead", lease_seconds=0)
        assert job.attempt == n + 1
        await harness.store.recover_actions(dead_owners=[f"host:{n}:dead"])
    runner = harness.runner()
    await runner.start()
    assert await runner.idle(5)
    [row] = [r for r in await harness.actions(decision) if r["index"] == 0]
    assert row["status"] == "dead" and "gave up after 5 attempts" in row["error"]
    assert receiver.calls == []


async def test_unknown_workflow_is_permanent(harness: Harness, receiver: Receiver) -> None:
    decision = await harness.decide("nope")
    runner = harness.runner()
    await runner.start()
    assert await runner.idle(5)
    [row] = [r for r in await harness.actions(decision) if r["index"] == 0]
    assert row["status"] == "dead" and row["attempts"] == 1
    assert "automation 'nope' is not defined" in row["error"] and receiver.calls == []


async def test_retrying_a_dead_action(harness: Harness, receiver: Receiver) -> None:
    receiver.plan["broken"] = [400]
    decision = await harness.decide("broken", "crm")
    runner = harness.runner()
    await runner.start()
    assert await runner.idle(5)
    retried = await harness.store.retry_dead_action("acme", f"{decision.id}:0", by="pat")
    assert retried is not None and retried.status == "EXECUTED"
    assert await harness.store.retry_dead_action("acme", f"{decision.id}:0", by="pat") is None  # not dead now
    runner.wake()
    assert await runner.idle(5)
    rows = {r["index"]: r for r in await harness.actions(decision)}
    assert rows[0]["status"] == "done" and rows[1]["status"] == "done"
    stored = await harness.store.get_decision("acme", decision.id)
    assert stored is not None and stored.status == "EXECUTED" and stored.trace["action_retries"][0]["by"] == "pat"


# --------------------------------------------------------------------------- the store away

async def test_an_outcome_the_store_refuses_once_is_written_again_and_the_action_runs_once(
        harness: Harness, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    # The store fails while the runner records that the action succeeded. Its task used to die with the exception
    # ("Task exception was never retrieved") and the action stayed `running` until its lease ran out.
    caplog.set_level(logging.WARNING, logger="astralis.outbox")
    away = StoreAway(harness.store, {"finish_action": 1})
    decision = await harness.decide("crm")
    runner = harness.runner(store=away)
    await runner.start()
    assert await runner.idle(10)
    [row] = await harness.actions(decision)
    assert away.raised == {"finish_action": 1}
    assert row["status"] == "done" and row["attempts"] == 1 and [e["outcome"] for e in row["attempt_log"]] == ["done"]
    assert receiver.successes == {f"{decision.id}:0": 1} and len(receiver.calls) == 1  # done once, at the receiver
    assert any("writing its success failed (OSError: connection to the store lost" in r.message for r in caplog.records)
    # ... and the runner is still running: the next decision's action runs too
    assert not any(t.done() for t in runner._tasks)
    later = await harness.decide("crm")
    runner.wake()
    assert await runner.idle(10)
    assert [r["status"] for r in await harness.actions(later)] == ["done"]
    assert receiver.successes == {f"{decision.id}:0": 1, f"{later.id}:0": 1}


async def test_a_failure_or_dead_letter_the_store_refuses_once_is_written_again(
        harness: Harness, receiver: Receiver) -> None:
    receiver.plan["flaky"] = [500]
    receiver.plan["broken"] = [400]
    away = StoreAway(harness.store, {"retry_action": 1, "kill_action": 1})
    flaky, broken = await harness.decide("flaky"), await harness.decide("broken")
    runner = harness.runner(store=away)
    await runner.start()
    assert await runner.idle(15)
    assert away.raised == {"retry_action": 1, "kill_action": 1}
    [flaky_row] = await harness.actions(flaky)
    assert flaky_row["status"] == "done" and [e["outcome"] for e in flaky_row["attempt_log"]] == ["failed", "done"]
    assert receiver.keys("flaky") == [f"{flaky.id}:0"] * 2
    rows = {r["key"]: r for r in await harness.actions(broken)}
    assert rows[f"{broken.id}:0"]["status"] == "dead" and rows[f"{broken.id}:0"]["attempts"] == 1
    assert receiver.keys("broken") == [f"{broken.id}:0"]  # a permanent failure: never sent again
    assert rows[f"{broken.id}:failure"]["status"] == "done"  # the failure notice, queued once
    stored = await harness.store.get_decision("acme", broken.id)
    assert stored is not None and stored.status == "FAILED"


async def test_an_outcome_the_store_does_not_take_within_the_lease_runs_the_action_again_under_its_key(
        harness: Harness, receiver: Receiver) -> None:
    # Writing the outcome fails again and again (waits 0.1, 0.2, 0.4, 0.8 s): past the 2 s lease the runner gives
    # up, the lease runs out, and the action runs again with the same key — at least once, as after a crash.
    away = StoreAway(harness.store, {"finish_action": 5})
    decision = await harness.decide("crm")
    runner = harness.runner(store=away, lease_seconds=2, rand=lambda: 1.0)
    await runner.start()
    for _ in range(300):
        [row] = await harness.actions(decision)
        if row["status"] == "done":
            break
        await asyncio.sleep(0.05)
    assert row["status"] == "done" and row["attempts"] == 2, row
    assert [e["outcome"] for e in row["attempt_log"]] == ["interrupted", "done"]
    assert receiver.keys("crm") == [f"{decision.id}:0"] * 2
    assert away.raised["finish_action"] == 5 and not any(t.done() for t in runner._tasks)


async def test_the_action_lease_is_the_services_lease(make_client: Any) -> None:
    # It was 60 s whatever `--lease` said (server.app.make_outbox).
    client, _ = await make_client(processing=Processing(workers=2, lease_seconds=7, poll_seconds=0.05))
    outbox = client.app[SERVICE].outbox
    assert outbox is not None and outbox.lease_seconds == 7
