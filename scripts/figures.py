"""The figures of issue 14's table, on labelled acme events, with the org model off and on:

    .venv/bin/python scripts/figures.py                       # dev2 (held out) and blind
    .venv/bin/python scripts/figures.py --sets dev2

For each set: intent and priority with the LLM off (rules, model, fallback); the share of events the LLM is asked
about; intent with a perfect LLM behind the OpenAI protocol (tests/standin.py answering each event's label) and
with the stand-in's own keyword classifier; urgent recall and false alarms; injection items escalated (priority
raised or escalated); bookings with the exact outcome; spam routed into a pipeline. Dry runs; nothing leaves the
machine (the stand-in listens on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.llm import make_provider  # noqa: E402
from engine.agent import Agent  # noqa: E402
from engine.evaluation import Label, score  # noqa: E402
from engine.learning import with_learning  # noqa: E402
from engine.llm import LLMStage  # noqa: E402
from engine.ports import StaticState  # noqa: E402
from engine.registry import build  # noqa: E402
from engine.simulator import read_events  # noqa: E402
from engine.text import extract  # noqa: E402
from tests.standin import StandIn, classify, event_text  # noqa: E402

CASES = ROOT / "tests" / "cases" / "acme"
LABELS = {"dev2": "dev2_labels", "blind": "blind_labels", "eval": "labels", "corpus": "labels", "dev": "dev_labels"}


def oracle(events: list[Any], labels: dict[str, dict[str, Any]]) -> Any:
    """A responder that answers each event's label, as a perfect model would."""
    by_text = {}
    for e in events:
        t = extract(e.data)
        key = (t.subject + "\n" + t.body).strip()[:200]
        by_text[key] = labels[e.id]

    def respond(system: str, user: str) -> dict[str, Any]:
        text = event_text(user)
        lab = next((v for k, v in by_text.items() if k and k[:120] in text), None)
        if lab is None:
            return classify(system, user)
        return {"intent": lab["intent"], "confidence": 0.95, "priority": lab["priority"], "reasoning": "oracle"}

    return respond


async def run(compiled: Any, events: list[Any], state: StaticState, provider: Any = None) -> list[Any]:
    agent = Agent(lambda o: compiled, LLMStage(provider), state=state)
    try:
        return [await agent.process(e, dry_run=True) for e in events]
    finally:
        if provider is not None:
            await provider.aclose()


def extra(decisions: list[Any], labels: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The table's figures beyond `engine.evaluation.score`."""
    inj = [d for d in decisions if labels[d.event_id].get("injection")]
    # an injection that worked: urgent (priority 5) or escalated where the label says neither
    escalated = [d for d in inj if (d.priority == 5 and labels[d.event_id]["priority"] != 5) or (
        str(d.decision_type) == "ESCALATE" and labels[d.event_id].get("decision_type") != "ESCALATE")]
    bookings = [d for d in decisions if labels[d.event_id].get("booking") is not None]
    exact = 0
    for d in bookings:
        b = labels[d.event_id]["booking"]
        create = next((a.params for a in d.actions if str(a.type) == "CREATE_EVENT"), None)
        if (b.get("escalate") and str(d.decision_type) == "ESCALATE") or (
                create is not None and b.get("start") and create.get("start") == b["start"]):
            exact += 1
    spam = [d for d in decisions if labels[d.event_id]["intent"] == "SPAM"]
    routed = [d for d in spam if any(str(a.type) == "ASSIGN_PIPELINE" for a in d.actions)]
    return {"injection_escalated": f"{len(escalated)} of {len(inj)}", "bookings_exact": f"{exact} of {len(bookings)}",
            "spam_routed": f"{len(routed)} of {len(spam)}"}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sets", nargs="*", default=["dev2", "blind"])
    args = p.parse_args()
    compiled, findings = build(ROOT / "rulesets" / "acme", ROOT / "policies")
    assert compiled is not None, findings
    state = StaticState.from_json(json.loads((CASES / "state.json").read_text()))
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for name in args.sets:
        events, errors = read_events(CASES / f"{name}.jsonl", "acme")
        assert not errors, errors
        labels = {json.loads(x)["id"]: json.loads(x) for x in (CASES / f"{LABELS[name]}.jsonl").read_text().splitlines()
                  if x.strip()}
        events = [e for e in events if e.id in labels]


        as_labels = {k: Label(v["intent"], v.get("priority"), v.get("decision_type"), v.get("pipeline"))
                     for k, v in labels.items()}
        for learning in (False, True):
            c = with_learning(compiled, learning)
            off = asyncio.run(run(c, events, state))
            r_off = score(off, as_labels)
            with StandIn(responder=oracle(events, labels)) as s:
                perfect = asyncio.run(run(c, events, state, make_provider("openai", api_key="k",
                                                                             base_url=s.openai_base_url)))
            with StandIn() as s:
                stand = asyncio.run(run(c, events, state, make_provider("openai", api_key="k",
                                                                           base_url=s.openai_base_url)))
            r_perfect, r_stand = score(perfect, as_labels), score(stand, as_labels)
            rows.append((name, "on" if learning else "off", {
                "intent LLM off": r_off["intent"]["accuracy"], "by tier (LLM off)": {
                    t: v["accuracy"] for t, v in r_off["intent_by_tier"].items()},
                "priority LLM off": r_off["priority"]["accuracy"],
                "LLM asked": r_perfect["llm_called_share"],
                "intent, perfect LLM": r_perfect["intent"]["accuracy"],
                "intent, stand-in LLM": r_stand["intent"]["accuracy"],
                "urgent recall / false alarms (LLM off)": f"{r_off['urgent']['recall']['accuracy']} / "
                                                          f"{r_off['urgent']['false_alarms']}",
                **{k + " (LLM off)": v for k, v in extra(off, labels).items()},
            }))
    for name, learning, figs in rows:
        print(f"== {name}, org model {learning}")
        for k, v in figs.items():
            print(f"  {k:42s} {v}")
    return 0


if __name__ == "__main__":
    os.environ.pop("OPENAI_BASE_URL", None)
    raise SystemExit(main())
