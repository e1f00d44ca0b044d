"""Issue 13, the runtime findings: one org's broken file never stops the service (finding 9, start-up and
reload), scale-out runs its actions (finding 10: see also tests/server/test_bullmq_service.py and
test_pg_service.py, which count every action on the receiver's side) and dashboard sessions (finding 11).

The start-up and reload tests run a real `astralis serve` subprocess on a private copy of the rulesets."""

# ruff: noqa: F811  (the service fixtures are imported from tests/server/conftest.py, then named as arguments)
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine import registry as registry_module
from engine.registry import Registry
from server.dashboard import SESSION_COOKIE
from tests.receiver import (
    REDIS_URL,
    Receiver,
    check_actions_ran_once,
    redis_prefix,  # noqa: F401  (a fixture, used by name)
    settled,
    sqlite_effects,
    wire_policy,
)
from tests.server.conftest import auth, config_dirs, make_client, make_settings, service_env  # noqa: F401
from tests.server.test_api import HELD
from tests.server.test_crash import CORPUS, ROOT, deliver, drain, envelopes, free_port

BROKEN_REGEX = 'matches: "(unclosed"'
"""The finding's reproduction: a `fields[].matches` regex that does not compile."""
OPERATOR_TOKEN = "op-token-runtime-0123456789"
OPERATOR = {"ASTRALIS_OPERATOR_TOKEN": OPERATOR_TOKEN}
"""The operator token the serve tests set, for the detailed /healthz."""


class Server:
    """`astralis serve` on a private copy of the rulesets and policies, with an acme API key; its output (JSON
    lines) in a log file."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.rulesets, self.policies = tmp / "rulesets", tmp / "policies"
        shutil.copytree(ROOT / "rulesets", self.rulesets)
        shutil.copytree(ROOT / "policies", self.policies)
        self.db = tmp / "astralis.db"
        self.log = tmp / "serve.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        out = subprocess.run([sys.executable, "-m", "server.cli", "keys", "create", "--org", "acme", "--db",
                              str(self.db)], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        self.key = out.stdout.strip()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *extra: str, env: dict[str, str] | None = None) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve", "--db", str(self.db), "--port", str(self.port),
                 "--rulesets", str(self.rulesets), "--policies", str(self.policies), "--llm", "off",
                 "--no-schedules", "--workers", "2", *extra],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def messages(self) -> list[str]:
        """The `msg` of every JSON log line (a line that is not JSON — a bare traceback — as it is)."""
        out = []
        for line in self.text().splitlines():
            try:
                out.append(str(json.loads(line).get("msg", "")))
            except ValueError:
                out.append(line)
        return out

    async def health(self, within: float = 30.0, *, operator: bool = False) -> tuple[int, dict[str, Any]]:
        """The first answer of GET /healthz (any status), once the server listens; with `operator`, the detailed
        one (the operator token of `OPERATOR`)."""
        assert self.proc is not None
        t0 = time.monotonic()
        headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"} if operator else {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as s:
            while True:
                assert self.proc.poll() is None, f"serve exited with {self.proc.returncode}\n{self.text()}"
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with s.get(f"{self.url}/healthz", headers=headers) as r:
                        return r.status, await r.json()
                assert time.monotonic() - t0 < within, f"serve did not answer within {within} s\n{self.text()}"
                await asyncio.sleep(0.05)

    async def decide(self, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST one acme event in sync mode."""
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s,
                    s.post(f"{self.url}/api/agent/process", params={"mode": "sync"}, json=event,
                           headers={"Authorization": f"Bearer {self.key}"}) as r):
            return r.status, await r.json()

    def terminate(self, within: float = 5.0) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds until gone). Fails when the process outlives `within` seconds."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"serve ignored SIGTERM for {within} s\n{self.text()}") from None
        return code, time.monotonic() - t0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    yield s
    s.stop()
    print(s.text()[-5000:])


def break_regex(rulesets: Path) -> Path:
    """brightsmile's spam rules with the finding's regex in a `fields[].matches`; the file changed."""
    spam = rulesets / "brightsmile" / "spam.yaml"
    text = spam.read_text(encoding="utf-8")
    broken = re.sub(r"matches: '[^']*'", BROKEN_REGEX, text, count=1)
    assert broken != text, "brightsmile/spam.yaml has no fields[].matches to break"
    spam.write_text(broken, encoding="utf-8")
    return spam


def acme_event(event_id: str) -> dict[str, Any]:
    """A corpus event of acme that the rules decide and execute (an intake routed to a pipeline)."""
    sample = next(e for e in CORPUS if e["id"] == "acme-c-001")
    return {k: v for k, v in sample.items() if k != "org"} | {"id": event_id}


def finding_lines(messages: list[str], path: Path) -> list[str]:
    """The log lines that report a finding of `path` as `path:line: code: message`."""
    return [m for m in messages if re.match(rf"{re.escape(str(path))}:\d+: [a-z_]+: .+", m)]


# --------------------------------------------------------------------------- finding 9: start-up

@pytest.mark.timeout(90)
async def test_finding_9_an_uncompilable_regex_in_one_org_at_start_up_leaves_the_others_serving_and_sigterm_stops_it(
        server: Server) -> None:
    spam = break_regex(server.rulesets)
    server.start(env=OPERATOR)
    status, body = await server.health()
    assert status == 503 and body["status"] != "ok", body  # not ok: one org is not served
    status, body = await server.health(operator=True)
    orgs = body["checks"]["rulesets"]["orgs"]
    assert orgs["acme"]["ok"] and orgs["acme"]["loaded"], orgs
    assert not orgs["brightsmile"]["ok"] and not orgs["brightsmile"]["loaded"], orgs
    assert all(re.match(r".+:\d+: [a-z_]+: .+", e) for e in orgs["brightsmile"]["errors"]), orgs
    assert orgs["brightsmile"]["errors"], orgs

    # The other org is served: its events are decided (and executed) as usual.
    code, decision = await server.decide(acme_event("contained-1"))
    assert code == 200 and decision["status"] == "EXECUTED" and decision["intent"], decision

    messages = server.messages()
    assert finding_lines(messages, server.rulesets / "brightsmile") or finding_lines(messages, spam), messages
    assert any("orgs not loaded" in m and "brightsmile" in m for m in messages), messages
    assert "Traceback" not in server.text()

    exit_code, seconds = server.terminate(within=5.0)
    assert exit_code == 0, server.text()
    print(f"SIGTERM to exit: {seconds:.2f} s")


@pytest.mark.timeout(60)
async def test_finding_9_sigterm_while_the_rulesets_load_stops_serve(server: Server) -> None:
    break_regex(server.rulesets)
    server.start()
    t0 = time.monotonic()
    while "serving on" not in server.text():  # the first line, written before the rulesets load
        assert time.monotonic() - t0 < 30, server.text()
        await asyncio.sleep(0.01)
    exit_code, seconds = server.terminate(within=5.0)
    assert exit_code == 0, server.text()
    assert "Traceback" not in server.text()
    print(f"SIGTERM during start-up to exit: {seconds:.2f} s")


@pytest.mark.timeout(60)
def test_a_start_up_that_fails_after_the_store_opened_exits_instead_of_hanging(server: Server) -> None:
    """`--queue bullmq` without a Redis fails in the service's set-up, after the SQLite store (and its thread) is
    open: the reason is logged and the process exits 1, instead of hanging on that thread deaf to SIGTERM."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    assert server.proc is None
    with server.log.open("wb") as out:
        server.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--db", str(server.db), "--port", str(server.port),
             "--rulesets", str(server.rulesets), "--policies", str(server.policies), "--llm", "off", "--no-watch",
             "--queue", "bullmq"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        code = server.proc.wait(20)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"serve did not exit after a failed start-up\n{server.text()}") from None
    assert code == 1, server.text()
    assert any(m.startswith("the service could not start: ValueError: --queue bullmq needs a Redis")
               for m in server.messages()), server.text()


# --------------------------------------------------------------------------- finding 9: hot reload

@pytest.mark.timeout(90)
async def test_finding_9_a_failed_hot_reload_turns_healthz_not_ok_and_fixing_the_file_clears_it(
        server: Server) -> None:
    spam = server.rulesets / "brightsmile" / "spam.yaml"
    good = spam.read_text(encoding="utf-8")
    server.start(env=OPERATOR)  # with the file watcher (hot reload)
    status, body = await server.health()
    assert status == 200 and body["status"] == "ok", body
    revision = (await server.health(operator=True))[1]["checks"]["rulesets"]["orgs"]["brightsmile"]["revision"]

    break_regex(server.rulesets)
    t0 = time.monotonic()
    while (await server.health())[0] == 200:
        assert time.monotonic() - t0 < 20, f"healthz still ok 20 s after a failed reload\n{server.text()}"
        await asyncio.sleep(0.1)
    status, body = await server.health()
    assert status == 503 and body["status"] != "ok", body
    assert finding_lines(server.messages(), spam) or finding_lines(server.messages(), server.rulesets / "brightsmile")
    org = (await server.health(operator=True))[1]["checks"]["rulesets"]["orgs"]["brightsmile"]
    assert not org["ok"] and org["loaded"] and org["revision"] == revision and org["errors"], org  # last good kept

    code, decision = await server.decide(acme_event("during-broken-reload"))
    assert code == 200 and decision["status"] == "EXECUTED", decision

    spam.write_text(good, encoding="utf-8")  # fixed: the reload clears the error
    t0 = time.monotonic()
    while (await server.health())[0] != 200:
        assert time.monotonic() - t0 < 20, f"healthz not ok 20 s after the file was fixed\n{server.text()}"
        await asyncio.sleep(0.1)

    exit_code, _ = server.terminate(within=5.0)
    assert exit_code == 0, server.text()
    assert "Traceback" not in server.text()


# --------------------------------------------------------------------------- finding 9: any exception

def test_finding_9_any_exception_loading_one_org_is_that_orgs_load_failed_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only a bad regex: whatever a loader or compiler bug raises for one org (here a RecursionError, injected
    into the real compiler for brightsmile alone) stays with that org; the others load, nothing raises."""
    rulesets, policies = tmp_path / "rulesets", tmp_path / "policies"
    shutil.copytree(ROOT / "rulesets", rulesets)
    shutil.copytree(ROOT / "policies", policies)
    real = registry_module.compile_rules

    def compile_rules(bundle: Any, **kw: Any) -> Any:
        if bundle.org.org == "brightsmile":
            raise RecursionError(f"maximum recursion depth exceeded while compiling {rulesets}/brightsmile")
        return real(bundle, **kw)

    monkeypatch.setattr(registry_module, "compile_rules", compile_rules)
    registry = Registry(rulesets, policies)
    findings = registry.load_all()

    assert registry.orgs == ["acme"] and registry.known == ["acme", "brightsmile"]
    state = registry.state("brightsmile")
    assert state is not None and not state.ok and state.active is None
    assert [str(e) for e in findings["brightsmile"]] == [
        f"{rulesets}/brightsmile:0: load_failed: loading org 'brightsmile' failed: RecursionError: maximum "
        "recursion depth exceeded while compiling rulesets/brightsmile; it is not served from these files"]
    acme = registry.state("acme")
    assert acme is not None and acme.ok

    # On reload the last good revision stays active, yet the org is reported not ok until its files load again.
    monkeypatch.setattr(registry_module, "compile_rules", real)
    registry.reload("brightsmile")
    good = registry.get("brightsmile")
    assert good is not None and registry.state("brightsmile").ok  # type: ignore[union-attr]
    monkeypatch.setattr(registry_module, "compile_rules", compile_rules)
    assert [e.code for e in registry.reload("brightsmile")] == ["load_failed"]
    assert registry.get("brightsmile") is good and not registry.state("brightsmile").ok  # type: ignore[union-attr]


# --------------------------------------------------------------------------- finding 10: scale-out actions

@pytest.mark.timeout(120)
async def test_finding_10_serve_with_redis_url_runs_the_actions_of_its_decisions(server: Server,
                                                                                  redis_prefix: str) -> None:
    """The finding: with REDIS_URL set (BullMQ), `astralis serve` decided events as EXECUTED and their actions
    stayed `pending` forever. Now every action ends done, once, at the receiver (an n8n workflow and the
    notification webhook standing in) and in the intake, calendar and notification tables. (`astralis worker` on
    BullMQ: tests/server/test_bullmq_service.py, test_pg_service.py and test_redis_shared.py.)"""
    receiver = await Receiver().start()
    try:
        env = wire_policy(server.policies, receiver.url) | {"REDIS_URL": REDIS_URL,
                                                            "ASTRALIS_REDIS_PREFIX": redis_prefix}
        server.start("--no-watch", "--rate-limit", "100000000", env=env)
        status, body = await server.health()
        assert status == 200, body
        events = envelopes("rt", 121)  # the whole acme corpus once: every kind of action
        got = await deliver(server.url, server.key, events)
        assert len(got.acked) == 121 and not got.failed and not got.other, (got.failed, got.other)
        await drain(server.db, within=60)
        effects = await settled(lambda: sqlite_effects(server.db), within=60)
        ran = check_actions_ran_once(effects, receiver)
        assert ran["automations"] > 0 and ran["create_event"] > 0 and ran["assign"] > 0 and ran["notify"] > 0
        started = [m for m in server.messages() if m.startswith("service ")]
        assert len(started) == 1 and "queue bullmq" in started[0] and f"prefix '{redis_prefix}'" in started[0]
        assert "2 event runners, 8 action runners" in started[0], started
        exit_code, _ = server.terminate(within=15.0)
        assert exit_code == 0
        print(f"actions: {ran}")
    finally:
        await receiver.close()


def test_finding_10_the_start_up_line_names_queue_store_and_prefix_without_credentials() -> None:
    from server.app import Settings, describe
    from server.service import Processing

    settings = Settings(db="postgresql://astralis:pg-secret-1@db.internal:5432/ops?schema=prod&password=pg-secret-2",
                        redis_url="redis://default:redis-secret@cache.internal:6380/2", redis_prefix="prod",
                        processing=Processing(workers=12, action_workers=6))
    line = describe(settings, deciding=True)
    assert line == ("queue bullmq, store postgresql://db.internal:5432/ops?schema=prod, Redis "
                    "redis://cache.internal:6380/2 with prefix 'prod'; 12 event runners, 6 action runners")
    assert describe(settings, deciding=False).endswith(
        "no event or action runners (accepting only: `astralis worker` decides)")


# --------------------------------------------------------------------------- finding 11: sessions

async def _sign_in(client: Any, key: str) -> str:
    r = await client.post("/login", data={"key": key}, allow_redirects=False)
    assert r.status == 303, await r.text()
    return str(next(c for c in client.session.cookie_jar if c.key == SESSION_COOKIE).value)


def _only_cookie(client: Any, cookie: str) -> None:
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({SESSION_COOKIE: cookie})


async def test_finding_11_logging_out_revokes_the_session_cookie(make_client: Any) -> None:
    """The finding: a copy of the cookie kept from before logging out still worked. Now it is refused."""
    client, key_for = await make_client()
    cookie = await _sign_in(client, await key_for("acme"))
    assert (await client.get("/api/agent/decisions")).status == 200
    r = await client.post("/logout", allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/login"
    _only_cookie(client, cookie)  # the attacker's (or a shared machine's) copy
    r = await client.get("/api/agent/decisions")
    assert r.status == 401, await r.text()
    r = await client.get("/decisions", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/login"


async def test_finding_11_a_cross_site_post_to_logout_or_with_the_session_cookie_is_refused(make_client: Any) -> None:
    """The finding: /logout had no Origin check. A page of another site posting to /logout, or posting a state
    change with the victim's cookie (even if it could add the dashboard header), is refused and changes nothing."""
    client, key_for = await make_client()
    key = await key_for("acme")
    held = await (await client.post("/api/agent/process?mode=sync", json=HELD, headers=auth(key))).json()
    assert held["status"] == "REQUIRES_APPROVAL", held
    await _sign_in(client, key)
    evil = {"Origin": "https://evil.example"}
    r = await client.post("/logout", allow_redirects=False, headers=evil)
    assert r.status == 403 and "Origin 'https://evil.example' is not this site" in (await r.json())["error"]["message"]
    assert (await client.get("/api/agent/decisions")).status == 200  # still signed in
    r = await client.post(f"/api/agent/decisions/{held['id']}/approve", json={"by": "evil"},
                          headers={"X-Astralis-Dashboard": "1", **evil})
    assert r.status == 403, await r.text()
    decision = await (await client.get(f"/api/agent/decisions/{held['id']}")).json()
    assert decision["status"] == "REQUIRES_APPROVAL"
