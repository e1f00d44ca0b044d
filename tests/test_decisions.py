"""The full decision for every event of the acme corpus, locked by snapshots: with the LLM off, and
with the real OpenAI and Anthropic SDKs against the local stand-in."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from syrupy.extensions.json import JSONSnapshotExtension

from adapters.llm import make_provider
from engine.agent import Agent
from engine.learning import with_learning
from engine.llm import LLMStage
from engine.models import Decision
from engine.ports import StaticState
from engine.registry import build
from engine.simulator import read_events

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "cases" / "acme"


@pytest.fixture
def snapshot_json(snapshot):
    """Snapshots as JSON files, one per test."""
    return snapshot.use_extension(JSONSnapshotExtension)


@pytest.fixture(scope="module")
def acme_on():
    """acme compiled from the repository's YAML, its org model on as its policy says."""
    compiled, findings = build(ROOT / "rulesets" / "acme", ROOT / "policies")
    assert compiled is not None, [str(f) for f in findings]
    assert compiled.bundle.policy.learning.enabled and compiled.bundle.model is not None
    return compiled


@pytest.fixture(scope="module")
def acme(acme_on):
    """acme with `learning.enabled: false`: the decisions (and snapshots) from before the org model."""
    return with_learning(acme_on, False)


def stable(d: Decision) -> dict[str, Any]:
    """The decision without what changes from run to run (ids, clocks, durations)."""
    out = d.model_dump(mode="json")
    for key in ("id", "created_at", "execution_ms", "executed_at", "revision"):
        out.pop(key)
    for a in out["actions"]:
        a["idempotency_key"] = a["idempotency_key"].replace(d.id, "<decision>")
    out["trace"].pop("timings_ms")
    out["trace"].pop("revision")
    for r in out["trace"]["rules"]:
        r["at"] = r["at"].replace(f"{ROOT}/", "")  # the clone's location differs between machines
    if out["llm"]:
        out["llm"]["latency_ms"] = "<ms>"
    return out


def run_corpus(compiled, provider=None) -> dict[str, Any]:
    """Every corpus event through the agent in a dry run."""
    events, errors = read_events(CASES / "corpus.jsonl", "acme")
    assert not errors
    state = StaticState.from_json(json.loads((CASES / "state.json").read_text()))

    async def go():
        agent = Agent(lambda org: compiled, LLMStage(provider, sleep=_no_sleep), state=state)
        try:
            return [await agent.process(e, dry_run=True) for e in events]
        finally:
            if provider is not None:
                await provider.aclose()

    return {d.event_id: stable(d) for d in asyncio.run(go())}


async def _no_sleep(_: float) -> None:
    return None


def test_corpus_is_large_and_varied():
    """At least 80 events, across every channel of the brief."""
    events, _ = read_events(CASES / "corpus.jsonl", "acme")
    assert len(events) >= 80
    assert {e.type for e in events} >= {"email:received", "form:submitted", "booking:created", "intake:created"}


def test_decisions_llm_off(acme, snapshot_json):
    decisions = run_corpus(acme)
    assert all(d["decided_by"] in ("rules", "fallback") and d["llm"] is None for d in decisions.values())
    assert decisions == snapshot_json


@pytest.mark.standin
@pytest.mark.parametrize("provider_name", ["openai", "anthropic"])
def test_decisions_with_llm(acme, standin, provider_name, snapshot_json):
    base = standin.openai_base_url if provider_name == "openai" else standin.anthropic_base_url
    provider = make_provider(provider_name, api_key=f"test-{provider_name}-key", base_url=base)
    decisions = run_corpus(acme, provider)
    consulted = [d for d in decisions.values() if d["llm"] is not None]
    # the LLM is asked exactly for the ambiguous events, and only those
    assert consulted and len(consulted) == len(standin.requests)
    assert all(d["trace"]["resolution"]["ambiguous"] for d in consulted)
    assert all(d["llm"]["provider"] == provider_name and d["llm"]["input_tokens"] > 0 for d in consulted)
    assert decisions == snapshot_json


def test_decisions_with_the_org_model(acme, acme_on, snapshot_json):
    """Learning on (acme's policy): the events the rules could not place are decided by the model when it is
    sure enough; every other decision is the one made without it."""
    labels = {json.loads(x)["id"]: json.loads(x) for x in (CASES / "labels.jsonl").read_text().splitlines() if x}
    before = run_corpus(acme)
    after = run_corpus(acme_on)
    changed = [k for k in after if {**after[k], "model_version": None, "trace": None, "reasoning": None}
               != {**before[k], "model_version": None, "trace": None, "reasoning": None}]
    assert changed
    for k in changed:
        assert after[k]["decided_by"] == "model" and before[k]["decided_by"] == "fallback"
        assert after[k]["intent"] == labels[k]["intent"]  # the corpus is labelled: every change is right
    assert all(d["model_version"] == acme_on.bundle.model.version for d in after.values())
    assert after == snapshot_json


@pytest.mark.standin
def test_the_org_model_spares_llm_calls(acme, acme_on, standin):
    """With a live LLM behind the OpenAI protocol, the model takes over events the LLM was asked about."""
    def provider():
        return make_provider("openai", api_key="test-openai-key", base_url=standin.openai_base_url)

    without = run_corpus(acme, provider())
    asked_before = len(standin.requests)
    with_model = run_corpus(acme_on, provider())
    asked_after = len(standin.requests) - asked_before
    assert 0 < asked_after < asked_before
    assert sum(d["decided_by"] == "model" for d in with_model.values()) >= asked_before - asked_after
    assert all(d["llm"] is None for d in with_model.values() if d["decided_by"] == "model")
    assert sum(d["decided_by"] == "llm" for d in without.values()) == asked_before
