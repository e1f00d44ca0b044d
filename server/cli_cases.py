"""`astralis test` (an org's locked decision cases, with `--update` to record them) and `astralis explain`
(the trace of one event through an org's rules), registered on the `astralis` parser by `register`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from engine.loader import org_dirs
from server.cli import _compiled_or_exit, _dirs, add_dirs


def _compiled(org_dir: Path, policies: Path) -> Any:
    """The org's compiled rules; None (its problems printed) when it has no org.yaml or does not compile."""
    if not (org_dir / "org.yaml").exists():
        print(f"{org_dir}:0: missing_file: no such org (no org.yaml)", file=sys.stderr)
        return None
    return _compiled_or_exit(org_dir, policies)


def _short(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v


# --------------------------------------------------------------------------- test

def cmd_test(args: argparse.Namespace) -> int:
    """Run each org's locked decision cases (rulesets/<org>/tests/*.yaml); with --update, record the
    current decisions as the expected ones first. Exit 1 on a failure, an empty suite, or (with
    --fail-on-empty) an org without cases."""
    from engine.cases import case_files, run_cases, update_text

    rulesets, policies = _dirs(args)
    orgs = [rulesets / args.org] if args.org else org_dirs(rulesets)
    as_json = args.format == "json"
    out: list[dict[str, Any]] = []
    total = failed = 0
    empty: list[str] = []
    for org_dir in orgs:
        compiled = _compiled(org_dir, policies)
        if compiled is None:
            return 1
        files = case_files(org_dir / "tests")
        if args.update:
            results = asyncio.run(run_cases(compiled, files, explain=False, record=True))
            for path, text in files:
                mine = [r for r in results if r.file == str(path)]
                try:
                    new, notes = update_text(text, mine)
                except ValueError as exc:
                    print(f"{path}:0: update_failed: {exc}; file left unchanged", file=sys.stderr)
                    return 1
                for note in notes:
                    print(f"{path}:0: not_updated: {note}", file=sys.stderr)
                if new != text:
                    path.write_text(new, encoding="utf-8")
                n = sum(r.observed is not None for r in mine)
                print(f"recorded {n} case{'s' if n != 1 else ''} in {path}", file=sys.stderr)
            files = case_files(org_dir / "tests")
        results = asyncio.run(run_cases(compiled, files))
        if not results:
            empty.append(org_dir.name)
        for r in results:
            total += 1
            failed += not r.ok
            if as_json:
                out.append(r.to_json(org_dir.name))
            else:
                _print_result(org_dir.name, r)
    if as_json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
    if total == 0:
        print("no cases found: an empty suite fails (add rulesets/<org>/tests/*.yaml)", file=sys.stderr)
        return 1
    if args.fail_on_empty and empty:
        print(f"no cases for {', '.join(empty)}: --fail-on-empty (add rulesets/<org>/tests/*.yaml)", file=sys.stderr)
    if not as_json:
        print(f"{total - failed} passed, {failed} failed" + (f", {len(empty)} org(s) without cases" if empty else ""))
    return 1 if failed or (args.fail_on_empty and empty) else 0


def _print_result(org: str, r: Any) -> None:
    if r.ok:
        print(f"PASS {org} {r.file}:{r.line} {r.name}")
        return
    print(f"FAIL {org} {r.file}:{r.line} {r.name}")
    shown = {d["field"] for d in r.diff}
    width = max((len(d["field"]) for d in r.diff), default=0)
    for d in r.diff:
        print(f"       {d['field']:<{width}}  expected {_short(d['expected'])}")
        print(f"       {'':<{width}}  got      {_short(d['got'])}")
    for p in r.problems:
        if p.split(":", 1)[0] not in shown:
            print(f"       {p}")
    for why in r.rules:
        print(f"       because: {why}")


# --------------------------------------------------------------------------- explain

def cmd_explain(args: argparse.Namespace) -> int:
    """Trace one event through an org: each rule and the condition it failed on, the resolution,
    whether the LLM would be asked (never calling it), the plan and the gate."""
    from pydantic import ValidationError

    from engine.explain import explain, render
    from engine.models import Event
    from engine.ports import StaticState

    rulesets, policies = _dirs(args)
    compiled = _compiled(rulesets / args.org, policies)
    if compiled is None:
        return 1
    try:
        raw = json.loads(Path(args.event).read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("expected a JSON object (one event envelope)")
        event = Event.model_validate({"org": args.org, **raw})
    except OSError as exc:
        print(f"{args.event}:0: missing_file: {exc.strerror}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        e = exc.errors()[0]
        print(f"{args.event}:1: invalid_event: {'.'.join(map(str, e['loc']))}: {e['msg']}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"{args.event}:1: invalid_event: {exc}", file=sys.stderr)
        return 1
    if event.org != args.org:
        print(f"{args.event}:1: invalid_event: the event is for org '{event.org}', not '{args.org}'", file=sys.stderr)
        return 1
    state = StaticState()
    if args.state:
        try:
            state = StaticState.from_json(json.loads(Path(args.state).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"{args.state}:0: invalid_state: {exc}", file=sys.stderr)
            return 1
    x = asyncio.run(explain(compiled, event, state))
    if args.format == "json":
        print(json.dumps(x.to_json(), indent=2, ensure_ascii=False, default=str))
    else:
        print(render(x, all_rules=not args.brief))
    return 0


# --------------------------------------------------------------------------- registration

def register(sub: Any) -> None:
    """Add the `test` and `explain` subcommands to the `astralis` subparsers."""

    t = sub.add_parser("test", help="run the org's locked decision cases (rulesets/<org>/tests/*.yaml)")
    t.add_argument("org", nargs="?", help="one org (default: every org under --rulesets)")
    add_dirs(t)
    t.add_argument("--update", action="store_true",
                   help="record the current decisions as each case's `expect` (rewritten in place), then run")
    t.add_argument("--fail-on-empty", action="store_true", help="fail when an org has no cases")
    t.add_argument("--format", choices=["text", "json"], default="text", help="the results as")
    t.set_defaults(func=cmd_test)

    e = sub.add_parser("explain", help="trace one event: each rule, the resolution, the LLM question, plan, gate")
    e.add_argument("--org", required=True, help="the org whose rules decide the event")
    e.add_argument("event", help="a JSON file holding one event envelope (org and id may be left out)")
    add_dirs(e)
    e.add_argument("--state", help='JSON: {"calendar": [{"host","start","end","title"}], "loads": {"user": n}}')
    e.add_argument("--format", choices=["text", "json"], default="text", help="the explanation as")
    e.add_argument("--brief", action="store_true", help="text: only matched rules and the nearest misses")
    e.set_defaults(func=cmd_explain)
