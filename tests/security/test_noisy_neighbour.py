"""Issue 13, finding 4 (one org stalls all), measured across orgs: while org A (acme, on a private copy of the
rulesets) runs each pathological input of the finding, org B's (brightsmile's) sync decisions keep p99 under 250 ms,
and the event loop's worst stall is recorded.

The attacks, as the issue describes them: a rule regex `(a+)+$` with long events; a notification template with
nested `range` loops, rendered by the outbox for urgent events; a 340-byte YAML alias bomb sent to config validate;
a 1 MiB raw email of repeated headers sent to the email webhook by an outside sender. The service runs in this
test's event loop (aiohttp's test server), so a loop-lag sampler measures the service's own loop.

`ASTRALIS_NOISY_REPORT=1` prints each attack's figures (B's p50/p99/max, the loop's worst lag, attacks sent).
"""

# ruff: noqa: F401, F811  (the service fixtures are imported from tests/server/conftest.py, then named as arguments)
from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from server.signing import HEADER, sign
from tests.security.test_bounded import ALIAS_BOMB, NESTED_RANGE
from tests.server.conftest import (
    SECRET,
    auth,
    config_dirs,
    make_client,
    make_settings,
    service_env,
)

NOW = 1_900_000_000
P99_LIMIT = 0.250
B_REQUESTS = 60
ATTACKERS = int(os.environ.get("ASTRALIS_NOISY_ATTACKERS", "1"))
"""Concurrent attack requests org A keeps in flight (one: each attack back to back)."""
B_EVENT = {"type": "email:received", "source": "EMAIL",
           "data": {"from": "pat@patient.example", "subject": "Cleaning appointment",
                    "text": "Hello, I would like to book a cleaning next week. Thanks!"}}
URGENT = "URGENT: our site is down, customers cannot order. "


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """One store: a SQLite file."""
    return str(tmp_path / "astralis.db")


class LagSampler:
    """Measures how late a 5 ms sleep on the loop wakes: the longest the loop was held by something else."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.005)
            self.lags.append(time.perf_counter() - t0 - 0.005)

    def __enter__(self) -> LagSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def _arm(client: Any, key: str, attack: str, config_dirs: tuple[Path, Path]) -> None:
    """Give org A what its attack needs (through the API, as a hostile org admin would)."""
    rulesets, policies = config_dirs
    if attack == "regex":
        spam = (rulesets / "acme" / "spam.yaml").read_text()
        spam = spam.replace(r"- '\b(out of office|ooo)\b'", r"- '\b(out of office|ooo)\b'" + "\n          - '(a+)+$'", 1)
        spam += ("\n  - id: evil-field\n    when:\n      fields:\n        - {field: data.text, matches: '(a+)+$'}\n"
                 "    then: {intent: SPAM, confidence: 0.95, decision_type: NO_ACTION, priority: 1}\n")
        files: dict[str, Any] = {"files": {"spam.yaml": spam}}
    elif attack == "template":
        policy = (policies / "acme.yaml").read_text()
        assert "\nnotifications:" not in policy
        policy += ("\nnotifications:\n  templates:\n    new_support_request:\n      subject: down\n"
                   f"      body: \"{NESTED_RANGE}\"\n")
        files = {"policy": policy}
    else:
        return
    r = await client.post("/api/agent/config", json=files, headers=auth(key))
    assert r.status == 200, await r.text()


def _attack(base: str, key: str, attack: str) -> tuple[str, bytes, dict[str, str]]:
    """The attack request: (path, body, headers)."""
    if attack == "regex":
        event = {"type": "email:received", "source": "EMAIL",
                 "data": {"from": "x@evil.example", "subject": "a" * 100_000 + "!", "text": "a" * 900_000 + "!"}}
        return "/api/agent/process?mode=sync", json.dumps(event).encode(), {**auth(key), "Content-Type": "application/json"}
    if attack == "template":
        event = {"type": "email:received", "source": "EMAIL",
                 "data": {"from": "x@evil.example", "subject": "URGENT: site down", "text": URGENT * 3}}
        return "/api/agent/process?mode=sync", json.dumps(event).encode(), {**auth(key), "Content-Type": "application/json"}
    if attack == "yaml":
        return ("/api/agent/config/validate", json.dumps({"files": {"bomb.yaml": ALIAS_BOMB}}).encode(),
                {**auth(key), "Content-Type": "application/json"})
    if attack == "none":
        return "/healthz", b"", {}
    raw = b"From: a@evil.example\r\nSubject: hi\r\n" + b"X-A: b\r\n" * ((1 << 20) // 8 - 8) + b"\r\nbody\r\n"
    return "/api/webhooks/acme/email", raw, {"Content-Type": "message/rfc822", HEADER: sign(SECRET, raw, NOW)}


ATTACKER = """
import json, sys, urllib.request, urllib.error, pathlib
url, body_file, headers, stop, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
body = pathlib.Path(body_file).read_bytes() or None
statuses = []
while not pathlib.Path(stop).exists():
    req = urllib.request.Request(url, data=body, headers=headers, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read(); statuses.append(r.status)
    except urllib.error.HTTPError as e:
        e.read(); statuses.append(e.code)
pathlib.Path(out).write_text(json.dumps(statuses))
"""


EXPECTED = {"regex": {200}, "template": {200}, "yaml": {422}, "email": {413, 429}, "none": {200}}
"""What A's attacks are answered. The email flood (one sender, back to back) is refused for its headers (413) until
its webhook bucket is empty, then 429 before its body is read (`--webhook-rate-limit`, per org and sender)."""


@pytest.mark.parametrize("attack", ["none", "regex", "template", "yaml", "email"])
async def test_org_b_keeps_p99_under_250_ms_while_org_a_attacks(make_client, config_dirs, attack: str) -> None:
    client, key_for = await make_client(clock=lambda: float(NOW), requests_per_minute=100_000)
    key_a, key_b = await key_for("acme"), await key_for("brightsmile")
    await _arm(client, key_a, attack, config_dirs)
    # warm up B (first-request costs are not the neighbour's fault); "none" is the baseline: A only asks /healthz
    for i in range(3):
        r = await client.post("/api/agent/process", params={"mode": "sync"}, json={**B_EVENT, "id": f"warm-{i}"},
                              headers=auth(key_b))
        assert r.status == 200, await r.text()

    # Org A attacks from another process (an outside client), ATTACKERS requests at a time, back to back.
    path, body, headers = _attack(str(client.make_url("")), key_a, attack)
    tmp = config_dirs[0].parent
    (tmp / "body").write_bytes(body)
    stop, outs = tmp / "stop", [tmp / f"statuses-{w}" for w in range(ATTACKERS)]
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-c", ATTACKER, str(client.make_url(path)),
                                                  str(tmp / "body"), json.dumps(headers), str(stop), str(out))
             for out in outs]
    latencies: list[float] = []
    try:
        with LagSampler() as lag:
            await asyncio.sleep(1.0)  # the attack is under way before B starts
            for i in range(B_REQUESTS):
                t0 = time.perf_counter()
                r = await client.post("/api/agent/process", params={"mode": "sync"},
                                      json={**B_EVENT, "id": f"b-{i}"}, headers=auth(key_b))
                latencies.append(time.perf_counter() - t0)
                assert r.status == 200, await r.text()
                assert (await r.json())["org"] == "brightsmile"
            stop.touch()
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 30)  # their last requests
    finally:
        stop.touch()
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    statuses = [s for out in outs for s in json.loads(out.read_text())]

    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    worst_lag = max(lag.lags)
    if os.environ.get("ASTRALIS_NOISY_REPORT"):
        print(f"\n{attack}: B p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
              f"max {latencies[-1] * 1000:.1f} ms; loop worst lag {worst_lag * 1000:.1f} ms, "
              f"p99 lag {sorted(lag.lags)[int(len(lag.lags) * 0.99)] * 1000:.1f} ms; "
              f"{len(statuses)} attacks, statuses {sorted(set(statuses))}")
    assert statuses and set(statuses) <= EXPECTED[attack] and EXPECTED[attack] & {statuses[0]}, statuses
    assert p99 < P99_LIMIT, f"{attack}: org B's p99 was {p99 * 1000:.0f} ms"
