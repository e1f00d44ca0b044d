"""Limits and configuration shared through Redis (issue 6): N worker processes together respect an org's
`per_minute` exactly (over it: held, never dropped), share the LLM circuit breaker, fall back to their own counts
when Redis is away, and load a configuration update made on another machine. The worker tests also check that the
executed decisions' actions ran, once, where they land (issue 13, finding 10; tests/receiver.py).

Against the machine's real Redis (127.0.0.1:6379, or $REDIS_URL); in CI it must be there, elsewhere the tests skip
when it is not."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from adapters.redis_limits import RedisLimits
from adapters.sqlite_store import InboxItem, SQLiteStore
from engine.config import CircuitBreaker as BreakerSettings
from engine.config import RateLimits
from engine.models import Event
from tests.receiver import check_actions_ran_once, settled, sqlite_effects
from tests.server.test_crash import CORPUS, ROOT, drain

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def _redis_up() -> bool:
    host, port = REDIS_URL.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


if not _redis_up():
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI=true but no Redis answers at {REDIS_URL}: these tests must run against it")
    pytest.skip(f"no Redis at {REDIS_URL} (start one, or set REDIS_URL)", allow_module_level=True)


@pytest.fixture
async def prefix():
    """A key prefix of this test's own; its keys are deleted afterwards."""
    p = f"astralis-test-{uuid.uuid4().hex[:10]}"
    yield p
    limits = RedisLimits(REDIS_URL, prefix=p)
    keys = [k async for k in limits.client.scan_iter(f"{p}:*")]
    if keys:
        await limits.client.delete(*keys)
    await limits.close()


async def test_three_processes_worth_of_limiters_count_one_window(prefix):
    workers = [RedisLimits(REDIS_URL, prefix=prefix) for _ in range(3)]  # three pools, as three processes
    limits = RateLimits(per_minute=60, per_hour=1000)
    try:
        results = await asyncio.gather(*(workers[i % 3].rate_limiter.acquire("acme", limits) for i in range(200)))
        assert results.count(None) == 60
        assert set(results) - {None} == {"rate limit of 60 decisions per minute reached"}
        # another org has its own window
        assert await workers[0].rate_limiter.acquire("other", limits) is None
    finally:
        for w in workers:
            await w.close()


async def test_the_hour_limit_holds_too(prefix):
    limits = RedisLimits(REDIS_URL, prefix=prefix)
    try:
        got = [await limits.rate_limiter.acquire("acme", RateLimits(per_minute=100, per_hour=5)) for _ in range(7)]
        assert got[:5] == [None] * 5
        assert got[5:] == ["rate limit of 5 decisions per hour reached"] * 2
    finally:
        await limits.close()


async def test_a_circuit_opened_by_one_worker_is_open_for_the_others(prefix):
    a, b = RedisLimits(REDIS_URL, prefix=prefix), RedisLimits(REDIS_URL, prefix=prefix)
    settings = BreakerSettings(failures=3, reset_seconds=0.3)
    try:
        ba, bb = a.breaker("acme", "openai", settings), b.breaker("acme", "openai", settings)
        assert await ba.allow() and await bb.allow()
        await ba.failure()
        await bb.failure()
        assert await ba.allow()  # two failures: still closed
        await bb.failure()  # the third, from the other worker, opens it for both
        assert not await ba.allow() and not await bb.allow()
        assert ba.consecutive == 3
        await asyncio.sleep(0.35)
        trials = [await ba.allow(), await bb.allow()]
        assert trials == [True, False]  # one trial call among all workers
        await ba.success()
        assert await bb.allow() and bb.consecutive == 0
        assert a.breaker("acme", "anthropic", settings) is not None and await a.breaker("other", "openai", settings).allow()
    finally:
        await a.close()
        await b.close()


async def test_without_redis_each_process_counts_for_itself_and_holds_over_the_limit(caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    limits = RedisLimits(f"redis://127.0.0.1:{port}/0")  # nobody listens there
    try:
        got = [await limits.rate_limiter.acquire("acme", RateLimits(per_minute=3, per_hour=10)) for _ in range(4)]
        assert got == [None, None, None, "rate limit of 3 decisions per minute reached"]
        breaker = limits.breaker("acme", "openai", BreakerSettings(failures=1, reset_seconds=60))
        assert await breaker.allow()
        await breaker.failure()
        assert not await breaker.allow()
    finally:
        await limits.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "astralis.limits"]
    assert len([w for w in warnings if "rate limits are counted in this process only" in w]) == 1


# --------------------------------------------------------------------------- three `astralis worker` processes

def _config(tmp: Path, per_minute: int) -> tuple[Path, Path]:
    rulesets, policies = tmp / "rulesets", tmp / "policies"
    shutil.copytree(ROOT / "rulesets", rulesets)
    shutil.copytree(ROOT / "policies", policies)
    acme = policies / "acme.yaml"
    acme.write_text(acme.read_text(encoding="utf-8") + f"\nrate_limits: {{per_minute: {per_minute}, per_hour: 5000}}\n",
                    encoding="utf-8")
    return rulesets, policies


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.timeout(120)
async def test_three_workers_execute_exactly_per_minute_and_hold_the_rest(tmp_path, prefix):
    rulesets, policies = _config(tmp_path, per_minute=60)
    db = tmp_path / "astralis.db"
    # One corpus event that the rules decide and auto-execute (an intake routed to a pipeline), 200 times.
    sample = next(e for e in CORPUS if e["id"] == "acme-c-001")
    store = await SQLiteStore.open(db)
    try:
        items = [InboxItem(Event.model_validate({**sample, "id": f"rl-{i:03d}"}), priority=3, channel="api")
                 for i in range(200)]
        assert all(a.new for a in await store.accept_events(items))
    finally:
        await store.close()

    argv = [sys.executable, "-m", "server.cli", "worker", "--db", str(db), "--rulesets", str(rulesets),
            "--policies", str(policies), "--llm", "off", "--no-watch", "--no-schedules", "--lease", "5",
            "--redis-url", REDIS_URL, "--redis-prefix", prefix, "--log-level", "WARNING"]
    logs = [tmp_path / f"worker-{i}.log" for i in range(3)]
    procs = [_start(argv, log) for log in logs]
    try:
        seconds = await drain(db, within=60)
        effects = await settled(lambda: sqlite_effects(db), within=60)  # the 60 executed decisions' actions
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            assert p.wait(20) == 0
    assert seconds < 50, "the 200 events must be decided within one minute window for this check"
    ran = check_actions_ran_once(effects)  # the held ones have none in the outbox; the executed ones ran, once
    assert ran["assign"] == 60, ran
    with sqlite3.connect(db) as c:
        records = [json.loads(r[0]) for r in c.execute("SELECT record FROM decisions WHERE org = 'acme'")]
    assert len(records) == 200
    statuses = [r["status"] for r in records]
    assert statuses.count("EXECUTED") == 60 and statuses.count("PENDING") == 140
    held = [r for r in records if r["status"] == "PENDING"]
    assert all(r["trace"]["gate"]["outcome"] == "rate_limited" for r in held)
    assert all("rate limit of 60 decisions per minute reached" in r["reasoning"] for r in held)
    for log in logs:
        assert "Traceback" not in log.read_text(), log.read_text()


# --------------------------------------------------------------------------- hot reload across machines

@pytest.mark.timeout(120)
async def test_a_config_update_reaches_a_worker_with_folders_of_its_own(tmp_path, prefix, serve):
    import aiohttp

    front_dir, worker_dir = tmp_path / "front", tmp_path / "worker"  # two "machines", one shared store
    front_dir.mkdir()
    worker_dir.mkdir()
    f_rules, f_policies = _config(front_dir, per_minute=1000)
    w_rules, w_policies = _config(worker_dir, per_minute=1000)
    redis = ["--redis-url", REDIS_URL, "--redis-prefix", prefix]
    front = serve("--no-workers", "--rulesets", str(f_rules), "--policies", str(f_policies), *redis)
    front.start()
    await front.ready()
    log = tmp_path / "worker.log"
    worker = _start([sys.executable, "-m", "server.cli", "worker", "--db", str(front.db), "--rulesets", str(w_rules),
                     "--policies", str(w_policies), "--llm", "off", "--no-watch", "--no-schedules", "--lease", "5",
                     *redis, "--log-format", "text"], log)
    headers = {"Authorization": f"Bearer {front.key}"}
    try:
        async with aiohttp.ClientSession(headers=headers) as s:
            async with s.get(f"{front.url}/api/agent/config") as r:
                before = (await r.json())["revision"]
            for _ in range(100):  # the worker is subscribed once its start-up line is out
                if "deciding for" in log.read_text():
                    break
                await asyncio.sleep(0.1)
            policy = (f_policies / "acme.yaml").read_text() + "\n# tuned from the dashboard\n"
            async with s.post(f"{front.url}/api/agent/config", json={"policy": policy}) as r:
                assert r.status == 200, await r.text()
                revision = (await r.json())["revision"]
            assert revision != before
            for _ in range(100):  # the files are swapped in, then loaded: wait for the worker to say it is active
                if f"revision {revision} active" in log.read_text():
                    break
                await asyncio.sleep(0.1)
            assert (w_policies / "acme.yaml").read_text() == policy  # written into the worker's own folder
            event = {k: v for k, v in CORPUS[0].items() if k != "org"} | {"id": "after-reload"}
            async with s.post(f"{front.url}/api/agent/process", params={"mode": "queue"}, json=event) as r:
                assert r.status == 202, await r.text()
        await drain(front.db, within=30)
        with sqlite3.connect(front.db) as c:
            record = json.loads(c.execute("SELECT record FROM decisions WHERE event_id = 'after-reload'").fetchone()[0])
        assert record["revision"] == revision  # decided by the worker, with the announced revision
        ran = check_actions_ran_once(await settled(lambda: sqlite_effects(front.db), within=30))
        assert ran["actions"] == len(record["actions"]) > 0, (ran, record["status"])
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0
        print(log.read_text())
    assert f"revision {revision} active (announced by another worker)" in log.read_text()
