"""`astralis train` (fit an org's model on its labelled examples and test cases, write it under
`rulesets/<org>/model/`) and `astralis eval` (score the org's decisions against labelled events), registered on
the `astralis` parser by `register`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from engine.learning import MODEL_DIR, ModelError, load_model, save_model, with_learning
from server.cli import _compiled_or_exit, _dirs, add_dirs

# --------------------------------------------------------------------------- train

def cmd_train(args: argparse.Namespace) -> int:
    """Fit the org model on `rulesets/<org>/examples/*.jsonl` and the org's test cases; write it beside them.
    Exit 1 when there is nothing to learn from or an examples file is invalid."""
    from engine.training import EXAMPLES_DIR, case_examples, read_examples, train

    rulesets, _ = _dirs(args)
    org_dir = rulesets / args.org
    if not (org_dir / "org.yaml").exists():
        print(f"{org_dir}:0: missing_file: no such org (no org.yaml)", file=sys.stderr)
        return 1
    examples, errors = read_examples(org_dir / EXAMPLES_DIR)
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        return 1
    cases = case_examples(args.org, org_dir / "tests")
    learned: list[Any] = []
    note = f"{org_dir / EXAMPLES_DIR}/*.jsonl and {org_dir / 'tests'}/*.yaml"
    if args.db:
        learned = asyncio.run(_from_store(args.db, args.org, _policy_learning(org_dir, args)))
        note += f", and {len(learned)} labels and LLM answers of the store"
    try:
        arrays, manifest = train([*examples, *cases, *learned], org=args.org, note=note)
    except ValueError as exc:
        print(f"{org_dir / EXAMPLES_DIR}:0: invalid_example: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else org_dir / MODEL_DIR
    try:
        old = load_model(out.parent) if out.name == MODEL_DIR else None
    except ModelError:
        old = None
    save_model(out, arrays, manifest)
    cal = manifest["calibration"]
    summary = {"org": args.org, "version": manifest["version"], "previous": old.version if old else None,
               "examples": manifest["trained_on"]["examples"], "by_origin": manifest["trained_on"]["by_origin"],
               "classes": manifest["classes"], "temperature": manifest["temperature"],
               "out_of_fold": {"accuracy": cal["after"]["accuracy"], "ece_before": cal["before"]["ece"],
                               "ece_after": cal["after"]["ece"]}, "written": str(out)}
    if args.format == "json":
        print(json.dumps(summary, indent=2))
    else:
        print(f"{args.org}: model {summary['version']} from {summary['examples']} examples "
              f"({', '.join(f'{k} {v}' for k, v in summary['by_origin'].items())}) → {out}")
        print(f"out-of-fold accuracy {cal['after']['accuracy']:.1%}; calibration error (ECE) "
              f"{cal['before']['ece']:.3f} → {cal['after']['ece']:.3f} with temperature {manifest['temperature']}")
        if old and old.version == manifest["version"]:
            print("unchanged: the same examples give the same model")
    return 0


def _policy_learning(org_dir: Path, args: argparse.Namespace) -> Any:
    """The org's `learning` policy block (defaults when the org does not load)."""
    from engine.config import Learning

    _, policies = _dirs(args)
    compiled = _compiled_or_exit(org_dir, policies)
    return compiled.bundle.policy.learning if compiled is not None else Learning()


async def _from_store(url: str, org: str, learning: Any) -> list[Any]:
    """The org's labels in the store and, when the policy allows, its confident LLM answers (as examples)."""
    from adapters.stores import open_store
    from engine.training import distilled_examples, label_examples

    store = await open_store(url)
    try:
        out = label_examples(org, await store.list_labels(org))
        if learning.distill_llm:
            pairs = []
            cursor = None
            while True:
                page, cursor = await store.list_decisions(org, decided_by="llm", limit=500, cursor=cursor)
                for d in page:
                    event = await store.get_event(org, d.event_id)
                    pairs.append((d, (event or {}).get("envelope")))
                if cursor is None:
                    break
            out += distilled_examples(org, pairs, learning.distill_min_confidence)
        return out
    finally:
        await store.close()


# --------------------------------------------------------------------------- eval

def cmd_eval(args: argparse.Namespace) -> int:
    """Decide every labelled event in a dry run (LLM off unless --llm live) and score the decisions."""
    from engine.agent import Agent
    from engine.evaluation import read_labelled, render_text, score
    from engine.llm import LLMStage
    from engine.ports import StaticState

    rulesets, policies = _dirs(args)
    compiled = _compiled_or_exit(rulesets / args.org, policies)
    if compiled is None:
        return 1
    if args.learning != "policy":
        compiled = with_learning(compiled, args.learning == "on")
    events, labels, errors = read_labelled(Path(args.events), args.org, Path(args.labels) if args.labels else None)
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        return 1
    state = StaticState.from_json(json.loads(Path(args.state).read_text())) if args.state else StaticState()
    provider: Any = None
    if args.llm == "live":
        from adapters.llm import make_provider  # lazily: importing the SDKs costs ~1.6 s

        provider = make_provider(compiled.bundle.policy.llm.provider)

    async def run() -> list[Any]:
        agent = Agent(lambda o: compiled if o == args.org else None, LLMStage(provider), state=state)
        try:
            return [await agent.process(e, dry_run=True) for e in events]
        finally:
            if provider is not None:
                await provider.aclose()

    report = score(asyncio.run(run()), labels, urgent=compiled.bundle.policy.urgency.priority)
    report = {"org": args.org, "revision": compiled.revision, "learning": compiled.bundle.policy.learning.enabled,
              "llm": args.llm, **report}
    if args.format == "json":
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(f"{args.org} @ {compiled.revision} · learning {'on' if report['learning'] else 'off'} · LLM {args.llm}")
        print(render_text(report, misses=args.show_misses))
    return 0


def register(sub: Any) -> None:
    """Add `train` and `eval` to the `astralis` parser."""
    t = sub.add_parser("train", help="fit the org model on its labelled examples and test cases")
    t.add_argument("--org", required=True, help="the org whose model is trained (its folder under --rulesets)")
    t.add_argument("--out", help="folder to write model.json and model.npz to (default: rulesets/<org>/model)")
    t.add_argument("--format", choices=["text", "json"], default="text",
                   help="text for people, json for scripts (default: text)")
    t.add_argument("--db", help="also learn from the store's labels of the org (approvals, corrections) and, when "
                   "the policy's learning.distill_llm allows, its confident LLM answers: a SQLite file or "
                   "postgresql://…")
    add_dirs(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="score the org's decisions (dry run) against labelled events")
    e.add_argument("--org", required=True, help="the org whose decisions are scored")
    e.add_argument("--events", required=True, help="JSONL: {\"event\": envelope, \"intent\", \"priority\"?, …} a "
                   "line, or envelopes with --labels")
    e.add_argument("--labels", help="JSONL of labels by event id ({\"id\", \"intent\", \"priority\", …})")
    e.add_argument("--state", help="calendar and loads, as for simulate")
    e.add_argument("--llm", choices=["off", "live"], default="off",
                   help="off: ambiguous events go to the model and the fallback rules; live: the provider is asked "
                        "(default: off)")
    e.add_argument("--learning", choices=["policy", "on", "off"], default="policy",
                   help="use the org model as the policy says (default), or force it on or off")
    e.add_argument("--format", choices=["text", "json"], default="text",
                   help="text for people, json for scripts (default: text)")
    e.add_argument("--show-misses", action="store_true", help="list every event decided otherwise than labelled")
    add_dirs(e)
    e.set_defaults(func=cmd_eval)
