"""Graceful shutdown of `astralis serve`: on SIGTERM the process stops claiming, lets in-flight events finish
for the grace period, gives the rest back to the queue and exits 0. Nothing is left 'processing'."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.server.test_crash import (
    Serve,
    assert_clean_log,
    check_exactly_once,
    connect,
    deliver,
    drain,
    envelopes,
    inbox,
    when_busy,
)

GRACE = 5.0



def leased(db: Path) -> dict[str, tuple[str, str | None, int]]:
    """Events that are processing or leased: id → (status, lease owner, attempts)."""
    with connect(db, readonly=True) as c:
        return {r["id"]: (r["status"], r["lease_owner"], r["attempts"]) for r in c.execute(
            "SELECT id, status, lease_owner, attempts FROM events "
            "WHERE status = 'processing' OR lease_owner IS NOT NULL")}


def states(db: Path, ids: set[str]) -> dict[str, tuple[str, str | None, int]]:
    """id → (status, lease owner, attempts) of the given events."""
    with connect(db) as c:
        rows = c.execute("SELECT id, status, lease_owner, attempts FROM events").fetchall()
    return {r["id"]: (r["status"], r["lease_owner"], r["attempts"]) for r in rows if r["id"] in ids}


def gave_back(server: Serve, run: int) -> int:
    """How many events the run said it gave back to the queue on the way out."""
    for line in server.log_lines(run):
        if '"gave ' in line and "unfinished events back to the queue" in line:
            return int(line.split('"gave ')[1].split()[0])
    return 0


@pytest.mark.timeout(60)
async def test_sigterm_while_deciding_exits_zero_and_decides_everything_once(serve: Callable[..., Serve]) -> None:
    """SIGTERM with a backlog and workers busy: exit 0 within the grace period, nothing left 'processing' or
    leased, a clean log; the next run decides the rest, each event once."""
    server = serve("--shutdown-grace", str(GRACE))
    events = envelopes("term", 100)
    server.start()
    await server.ready()
    sent = await deliver(server.url, server.key, events)
    assert sent.acked == {e["id"] for e in events}, (sent.failed, sent.other)

    busy = await when_busy(server.db)
    held = leased(server.db)
    code, took = server.terminate()
    assert code == 0, server.logs()
    assert took < GRACE, f"SIGTERM took {took:.2f} s, more than the grace period"

    after = inbox(server.db)
    assert after["processing"] == 0, dict(after)
    for event_id, (status, owner, _) in states(server.db, set(held)).items():
        assert status in ("decided", "accepted") and owner is None, (event_id, status, owner)
    with connect(server.db) as c:
        assert c.execute("SELECT count(*) FROM events WHERE lease_owner IS NOT NULL").fetchone()[0] == 0
    assert_clean_log(server, 0)

    server.start()
    await server.ready()
    drained = await drain(server.db)
    code, took_again = server.terminate()
    assert code == 0, server.logs()
    assert_clean_log(server, 1)
    counts = check_exactly_once(server.db, sent.acked)
    assert counts["events"] == len(events)
    print(f"acked {len(sent.acked)}; seen at SIGTERM {dict(busy)} (held {len(held)}); exit 0 after {took:.2f} s; "
          f"left {dict(after)}, given back {gave_back(server, 0)}; restart drained in {drained:.2f} s, "
          f"exit after {took_again:.2f} s; {counts}")


@pytest.mark.standin
@pytest.mark.timeout(60)
async def test_sigterm_gives_back_events_the_grace_period_does_not_finish(serve: Callable[..., Serve],
                                                                         standin) -> None:
    """The LLM answers after 10 s, the grace period is 1 s: the events the workers hold go back to the queue,
    unleased and with that claim not counted as an attempt, and the next run decides them."""
    standin.mode, standin.delay = "timeout", 10.0
    server = serve("--shutdown-grace", "1", "--workers", "4")
    events = envelopes("grace", 40)
    server.start("--llm", "policy", env=standin.env())
    await server.ready()
    sent = await deliver(server.url, server.key, events)
    assert sent.acked == {e["id"] for e in events}, (sent.failed, sent.other)

    t0 = time.monotonic()
    while not (inbox(server.db)["processing"] == 4 and len(standin.requests) >= 4):  # every worker waits on the LLM
        assert time.monotonic() - t0 < 20, f"workers never all waited on the LLM: {dict(inbox(server.db))}"
        await asyncio.sleep(0.05)
    held = leased(server.db)
    assert len(held) == 4 and all(status == "processing" for status, _, _ in held.values()), held
    code, took = server.terminate()
    assert code == 0, server.logs()
    assert took < 1 + 2.0, f"SIGTERM took {took:.2f} s with a 1 s grace period"

    assert states(server.db, set(held)) == {i: ("accepted", None, attempts - 1) for i, (_, _, attempts) in held.items()}
    assert inbox(server.db)["processing"] == 0
    assert gave_back(server, 0) == 4
    assert_clean_log(server, 0)

    server.start()
    await server.ready()
    drained = await drain(server.db)
    code, _ = server.terminate()
    assert code == 0, server.logs()
    assert_clean_log(server, 1)
    counts = check_exactly_once(server.db, sent.acked)
    assert counts["events"] == len(events)
    print(f"held at SIGTERM {sorted(held)}; exit 0 after {took:.2f} s; given back {gave_back(server, 0)}; "
          f"LLM requests {len(standin.requests)}; restart drained in {drained:.2f} s; {counts}")
