"""Benchmark of the org model (issue 14): what it adds to an event it decides, beside the rules stage.

Run from the repository root::

    .venv/bin/python -m bench.model              # acme's corpora (~640 events), 5 rounds
    .venv/bin/python -m bench.model --rounds 9

Rows, per event, on the same events in one run (the ratio column divides by row r):

* r   - the rules stage as the product runs it: extract + features + durable-rules match + resolve;
* m   - the org model on the extracted text: `predict` + `terms` (everything a decision by the model costs);
* m0  - `predict` alone on a freshly loaded model (its per-word cache cold: the first sight of every word);
* m*  - row m on just the events the model decides (they are longer than most);
* d   - in `Agent.process` (dry run, learning on): the model's time each decision it made records
        (`trace.timings_ms.model_ms`);
* D   - the whole of those decisions (`execution_ms`), for scale.

Each event's time is its best of `--rounds` calls (the machine is shared; an interrupted call measures the
scheduler). Target: m and d ≤ 200 µs per event (mean). Exit 1 on a miss.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CORPORA = ("corpus", "eval", "dev", "dev2", "blind")
TARGET_US = 200.0


def _time(fn: Callable[[Any], Any], items: list[Any], rounds: int) -> tuple[float, float]:
    """Per item the best of `rounds` calls (a call the scheduler interrupted says nothing about its cost, on a
    shared machine); the mean and p99 of those, in µs."""
    best = [float("inf")] * len(items)
    for _ in range(rounds):
        for i, x in enumerate(items):
            t = time.perf_counter()
            fn(x)
            best[i] = min(best[i], (time.perf_counter() - t) * 1e6)
    ordered = sorted(best)
    return statistics.fmean(best), ordered[int(0.99 * (len(ordered) - 1))]


def main(argv: list[str] | None = None) -> int:
    """Measure and print the rows; exit 1 when a target is missed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)

    from engine.agent import Agent
    from engine.learning import load_model, with_learning
    from engine.llm import LLMStage
    from engine.models import Event
    from engine.ports import StaticState
    from engine.registry import build
    from engine.resolve import resolve
    from engine.text import extract

    compiled, findings = build(REPO / "rulesets" / "acme", REPO / "policies")
    assert compiled is not None and compiled.bundle.model is not None, findings
    model = compiled.bundle.model
    policy = compiled.bundle.policy
    envs = [json.loads(x) for c in CORPORA for x in (REPO / "tests/cases/acme" / f"{c}.jsonl").read_text().splitlines()
            if x.strip()]
    texts = [(e, extract(e["data"])) for e in envs]

    def rules(env: dict[str, Any]) -> Any:
        text = extract(env["data"])
        matches, _ = compiled.match_fact(compiled.features(env, text))
        return resolve(matches, policy.ambiguity)

    def decide(pair: tuple[dict[str, Any], Any]) -> Any:
        pred = model.predict(*pair)
        return model.terms(pred)

    cold_model = load_model(REPO / "rulesets" / "acme")
    assert cold_model is not None
    t = time.perf_counter()
    for pair in texts:
        cold_model.predict(*pair)
    cold = (time.perf_counter() - t) * 1e6 / len(texts)

    r_mean, r_p99 = _time(rules, envs, args.rounds)
    m_mean, m_p99 = _time(decide, texts, args.rounds)

    # whole decisions: the model's own time as each decision records it (timings_ms.model_ms)
    on = with_learning(compiled, True)
    state = StaticState.from_json(json.loads((REPO / "tests/cases/acme/state.json").read_text()))
    events = [Event.model_validate(e) for e in envs]

    async def decisions() -> list[Any]:
        agent = Agent(lambda o: on, LLMStage(None), state=state)
        best: dict[str, tuple[float, float, str, str]] = {}
        for _ in range(args.rounds):
            for e in events:
                d = await agent.process(e, dry_run=True)
                cur = (d.trace["timings_ms"].get("model_ms", 0.0) * 1000, d.execution_ms * 1000, d.decided_by, e.id)
                best[e.id] = min(best.get(e.id, cur), cur)
        return list(best.values())

    timed = asyncio.run(decisions())
    by_model = [t for t in timed if t[2] == "model"]
    in_process = statistics.fmean(t[0] for t in by_model)
    whole = statistics.fmean(t[1] for t in by_model)
    decided_ids = {t[3] for t in by_model}
    same, _ = _time(decide, [p for p in texts if p[0]["id"] in decided_ids], args.rounds)
    rows = [("r", "rules stage (extract, features, match, resolve)", r_mean, r_p99),
            ("m", "org model: predict + terms", m_mean, m_p99),
            ("m0", "org model: predict, cold word cache (one pass)", cold, float("nan")),
            ("m*", f"row m on the {len(by_model)} events the model decides", same, float("nan")),
            ("d", f"model_ms recorded by the {len(by_model)} decisions it made", in_process, float("nan")),
            ("D", "the whole of those decisions (execution_ms)", whole, float("nan"))]
    print(f"acme · model {model.version} · {len(model.vocab)} features · {len(envs)} events · best of {args.rounds} rounds")
    print(f"{'row':4s} {'what':58s} {'mean µs':>9s} {'p99 µs':>8s} {'÷ r':>6s}")
    for key, what, mean, p99 in rows:
        print(f"{key:4s} {what:58s} {mean:9.1f} {p99:8.1f} {mean / r_mean:6.2f}")
    print(f"the model adds {m_mean:.0f} µs to an event it decides ({in_process:.0f} µs as recorded in the decisions; "
          f"target ≤ {TARGET_US:.0f}), {m_mean / r_mean:.2f} × the rules stage in the same run")
    return 0 if m_mean <= TARGET_US and in_process <= TARGET_US else 1


if __name__ == "__main__":
    sys.exit(main())
