"""Benchmark of a replay from the service's log with the recorded LLM answers (`astralis simulate --from-db
... --llm replay`), against the rules stage alone on the same events, in the same run.

Run from the repository root::

    .venv/bin/python -m bench.simulate                 # 100,000 logged events
    .venv/bin/python -m bench.simulate --events 10000  # while developing
    .venv/bin/python -m bench.simulate --profile       # and where the replay's time goes (cProfile)

1. The log: `tests/cases/acme/corpus.jsonl` cycled to N events with unique ids, written to a fresh service
   database through `SQLiteStore.accept_events` / `complete_events` (batches of 2,000). Each corpus event is
   decided once by the Agent with the LLM off; every copy gets a copy of that decision. The ambiguous ones get a
   synthetic `llm` trace as if the model had answered: the real prompt, a JSON answer with the fallback's intent
   at confidence 0.9, 600 input and 60 output tokens, 800 ms, and are recorded as decided by the LLM.
2. (a) the replay, timed end to end: `load_replay` (read-only) + `ReplayProvider` + every event decided in a dry
   run by the Agent (`replay_decisions`, stage from `replay_stage`), in worker processes as `astralis simulate`
   runs it by default (`engine.parallel.default_jobs`: one per CPU here); (a1) the same in one process
   (`--jobs 1`), for the cost per event.
3. (b) the rules stage alone on the same events: extract + `compiled.features` + `compiled.match_fact` +
   `resolve` (bench/rules.py row "a"; turning an Event into its envelope is not timed, as there).

Targets: (a) under 60 s; (a) within 1.5x of (b). Exit status 1 when one is missed. The one-process ratio (a1)/(b)
is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "cases" / "acme" / "corpus.jsonl"
TARGET_SECONDS = 60.0
TARGET_RATIO = 1.5
BATCH = 2000


def _compiled() -> Any:
    from engine.registry import build

    compiled, findings = build(REPO / "rulesets" / "acme", REPO / "policies")
    if compiled is None:
        sys.exit("\n".join(str(f) for f in findings))
    return compiled


async def _originals(compiled: Any) -> list[tuple[Any, Any]]:
    """Each corpus event with its original decision (LLM off; ambiguous ones given a synthetic LLM answer)."""
    from engine.agent import Agent
    from engine.llm import LLMStage, user_prompt
    from engine.models import Event, LLMTrace
    from engine.ports import StaticState
    from engine.resolve import resolve
    from engine.text import extract

    policy, org = compiled.bundle.policy, compiled.bundle.org
    agent = Agent(lambda o: compiled if o == org.org else None, LLMStage(None), state=StaticState())
    out = []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        event = Event.model_validate_json(line)
        d = await agent.process(event, dry_run=True)
        d.dry_run = False
        if d.decided_by != "rules":
            env, text = event.envelope(), extract(event.data)
            res = resolve(compiled.match_fact(compiled.features(env, text))[0], policy.ambiguity)
            answer = {"intent": str(d.intent), "confidence": 0.9, "priority": d.priority,
                      "reasoning": "synthetic answer recorded by bench/simulate.py"}
            d.llm = LLMTrace(provider="openai", model=policy.llm.model, prompt=user_prompt(org, env, text, res),
                             response=json.dumps(answer), input_tokens=600, output_tokens=60, latency_ms=800.0,
                             attempts=1)
            d.decided_by = "llm"
        out.append((event, d))
    return out


async def build_log(db: Path, n: int, compiled: Any) -> dict[str, int]:
    """Write `n` events and their decisions into a new service database at `db`."""
    from adapters.sqlite_inbox import InboxItem
    from adapters.sqlite_store import SQLiteStore
    from engine.models import new_id

    originals = await _originals(compiled)
    counts = {"events": 0, "with_llm": 0}
    store = await SQLiteStore.open(db, synchronous="NORMAL")
    try:
        for start in range(0, n, BATCH):
            events, decisions = [], []
            for i in range(start, min(n, start + BATCH)):
                event, d = originals[i % len(originals)]
                copy = event.model_copy(update={"id": f"{event.id}~{i:06d}"})
                events.append(InboxItem(copy, channel="bench"))
                decisions.append(d.model_copy(update={"id": new_id("dec"), "event_id": copy.id}))
                counts["with_llm"] += d.llm is not None
            await store.accept_events(events)
            await store.complete_events(decisions)
            counts["events"] += len(events)
    finally:
        await store.close()
    return counts


def replay_run(db: Path, compiled: Any, jobs: int = 1) -> tuple[float, list[Any], Any]:
    """(a): load the log read-only and decide every event with its recorded answers, in `jobs` processes, as
    `astralis simulate --from-db --llm replay [--jobs N]` does."""
    from adapters.replay import ReplayProvider, load_replay, replay_decisions, replay_stage
    from engine.agent import Agent
    from engine.parallel import in_chunks
    from engine.ports import StaticState

    t0 = time.perf_counter()
    replay = load_replay(db, "acme", None, None, originals=False)  # as `astralis simulate --from-db` loads it
    provider = ReplayProvider(replay.recorded)
    agent = Agent(lambda o: compiled if o == "acme" else None, replay_stage(provider), state=StaticState())

    def work(lo: int, hi: int) -> list[Any]:
        return asyncio.run(replay_decisions(agent, replay.events[lo:hi], provider))

    decisions = [d for chunk in in_chunks(work, len(replay.events), jobs) for d in chunk]
    return time.perf_counter() - t0, decisions, replay


def rules_run(compiled: Any, events: list[Any]) -> float:
    """(b): the rules stage alone on the same events (envelopes made outside the timing, as in bench/rules)."""
    from engine.resolve import resolve
    from engine.text import extract

    ambiguity = compiled.bundle.policy.ambiguity
    envelopes = [e.envelope() for e in events]
    t0 = time.perf_counter()
    for env in envelopes:
        text = extract(env.get("data") or {})
        matches, _ = compiled.match_fact(compiled.features(env, text))
        resolve(matches, ambiguity)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """Build the log, time (a) and (b), print the table; 1 when a target is missed."""
    ap = argparse.ArgumentParser(prog="python -m bench.simulate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000, help="logged events to replay (default 100,000)")
    ap.add_argument("--profile", action="store_true", help="also profile the replay (cProfile, top 25)")
    ap.add_argument("--keep", metavar="DIR", help="write the log database into DIR and keep it")
    args = ap.parse_args(argv)

    compiled = _compiled()
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="astralis-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    db = tmp / "astralis.db"
    try:
        t = time.perf_counter()
        counts = asyncio.run(build_log(db, args.events, compiled))
        build_s = time.perf_counter() - t
        size_mb = db.stat().st_size / 1e6
        print(f"log: {counts['events']:,} events, {counts['with_llm']:,} with a recorded LLM answer, "
              f"{size_mb:,.0f} MB, written in {build_s:.1f} s")
        gc.collect()
        from engine.parallel import default_jobs

        jobs = default_jobs(args.events)
        a_s, decisions, replay = replay_run(db, compiled, jobs)
        n = len(replay.events)
        from adapters.replay import load_replay

        originals = load_replay(db, "acme", None, None).decisions  # untimed: only for the check below
        flips = sum(d.intent != originals[d.event_id].intent
                    or d.decision_type != originals[d.event_id].decision_type
                    or d.decided_by != originals[d.event_id].decided_by for d in decisions)
        del originals
        replayed_llm = sum(d.decided_by == "llm" for d in decisions)
        events = replay.events
        del decisions, replay
        gc.collect()
        one_s = replay_run(db, compiled, 1)[0] if jobs > 1 else a_s
        gc.collect()
        b_s = rules_run(compiled, events)
        load_s = _time_load(db)
        ratio = a_s / b_s
        rows = [
            ("a", f"replay: load_replay + Agent dry run with ReplayProvider, {jobs} process(es)", n / a_s, a_s),
            ("a1", "the same in 1 process (--jobs 1)", n / one_s, one_s),
            ("a2", "  of which load_replay alone (timed separately)", n / load_s, load_s),
            ("b", "rules stage alone (1 process): extract + features + match_fact + resolve", n / b_s, b_s),
        ]
        ok_time, ok_ratio = a_s < TARGET_SECONDS, ratio <= TARGET_RATIO
        print(f"\n{n:,} logged acme events; {replayed_llm:,} decided by their recorded LLM answer; "
              f"{flips} differ from the original (intent, type or decided_by)\n")
        print("| row | what | events/s | seconds |\n|---|---|---:|---:|")
        for row, what, rate, secs in rows:
            print(f"| {row} | {what} | {rate:,.0f} | {secs:.2f} |")
        print(f"\n| target | measured | result |\n|---|---|---|\n"
              f"| (a) under {TARGET_SECONDS:.0f} s | {a_s:.1f} s | {'PASS' if ok_time else 'FAIL'} |\n"
              f"| (a) within {TARGET_RATIO}x of (b) | {ratio:.2f}x | {'PASS' if ok_ratio else 'FAIL'} |\n"
              f"| (a1) within {TARGET_RATIO}x of (b), one process (for information) | {one_s / b_s:.2f}x | "
              f"{'pass' if one_s / b_s <= TARGET_RATIO else 'miss'} |")
        if args.profile:
            _profile(db, compiled)
        return 0 if ok_time and ok_ratio and flips == 0 else 1
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _time_load(db: Path) -> float:
    from adapters.replay import load_replay

    t0 = time.perf_counter()
    load_replay(db, "acme", None, None, originals=False)
    return time.perf_counter() - t0


def _profile(db: Path, compiled: Any) -> None:
    prof = cProfile.Profile()
    prof.enable()
    replay_run(db, compiled)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    print("\nprofile of (a), by own time:\n" + out.getvalue())


if __name__ == "__main__":
    sys.exit(main())
