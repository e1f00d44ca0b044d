"""`astralis simulate`: dry-run an org's rules over past events, optionally against a baseline revision of
its rules (other folders, or a git revision), and report what would change.

Nothing is executed, stored or published; with `--from-db` the service's database is only read.
Exit status: 0; 3 with `--fail-on-change` when any decision differs from the baseline; 1 on bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.agent import Agent
from engine.compare import Side, compare, consults_llm, prompt_chars
from engine.llm import LLMStage
from engine.models import Decision, Event
from engine.parallel import MIN_EVENTS_PER_JOB, default_jobs, in_chunks
from engine.ports import LLMReply, LLMRequest, StaticState
from engine.registry import build
from engine.rules import CompiledRules
from engine.simulator import read_events
from server.cli import _dirs, _print_findings
from server.reports import FORMATS, render

EXIT_CHANGED = 3


class InputError(Exception):
    """Bad input on the command line or in a file it names; the message is printed as is, exit 1."""


# --------------------------------------------------------------------------- config and baselines

def _compiled(org_dir: Path, policies: Path) -> CompiledRules:
    compiled, findings = build(org_dir, policies)
    if compiled is None:
        _print_findings(findings)
        raise InputError(f"{org_dir}:0: invalid_org: the rules of '{org_dir.name}' do not validate (errors above)")
    return compiled


def _git(cwd: Path, *argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *argv], cwd=cwd, capture_output=True, check=False)


def git_baseline(rev: str, rulesets: Path, policies: Path, into: Path) -> tuple[Path, Path]:
    """Extract the rulesets and policies folders as they were at git revision `rev` of the repository that
    holds them, under `into`; return their paths there. Raises InputError naming what is wrong."""
    where = f"--baseline git:{rev}"
    rulesets, policies = rulesets.resolve(), policies.resolve()
    if not rulesets.is_dir():
        raise InputError(f"{where}: {rulesets} is not a folder")
    top = _git(rulesets, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise InputError(f"{where}: {rulesets} is not in a git repository "
                         f"({top.stderr.decode(errors='replace').strip() or 'git rev-parse failed'})")
    root = Path(top.stdout.decode().strip()).resolve()
    try:
        rel = [str(p.relative_to(root)) for p in (rulesets, policies)]
    except ValueError:
        raise InputError(f"{where}: {rulesets} and {policies} must both be inside the repository {root}") from None
    if _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").returncode != 0:
        raise InputError(f"{where}: unknown revision '{rev}' in {root}")
    archive = _git(root, "archive", "--format=tar", rev, "--", *rel)
    if archive.returncode != 0:
        raise InputError(f"{where}: {archive.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / rel[0], into / rel[1]


# --------------------------------------------------------------------------- events and state

def _when(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"{name}: not an ISO 8601 date or date-time: '{value}'") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


@dataclass
class _Input:
    events: list[Event]
    state: Any
    recorded: dict[str, Any] | None = None


def _read_input(args: argparse.Namespace, org: Any) -> _Input:
    if args.events:
        if not Path(args.events).is_file():
            raise InputError(f"{args.events}:0: missing_file: no such events file (JSONL, one event envelope a line)")
        events, errors = read_events(Path(args.events), args.org)
        for e in errors:
            print(e, file=sys.stderr)
        if errors:
            raise InputError(f"{args.events}:0: invalid_event: {len(errors)} bad line(s)")
        return _Input(events, _state_file(args.state))
    db = Path(args.from_db)
    if not db.is_file():
        raise InputError(f"{db}:0: missing_file: no such database")
    since, until = _when(args.since, "--since"), _when(args.until, "--until")
    if since and until and since >= until:
        raise InputError(f"--since {args.since} is not before --until {args.until}")
    from adapters.replay import ReplayError, load_replay, state_at

    try:
        replay = load_replay(db, args.org, since, until, originals=False)
        state = _state_file(args.state) if args.state else None
        if state is None:
            # Loads and calendars as they stood when the window opened: the bookings it holds came after.
            starts = [e.occurred_at for e in replay.events if e.occurred_at is not None]
            at = since or (min(starts) if starts else datetime.now(UTC))
            state = state_at(db, args.org, at, closed_stages={p.id: p.closed_stages for p in org.pipelines})
    except ReplayError as exc:
        raise InputError(f"{db}:0: invalid_database: {exc}") from None
    if replay.missing:
        print(f"{db}: {len(replay.missing)} of {len(replay.events)} events have no recorded decision "
              f"(e.g. {', '.join(replay.missing[:3])}): their LLM answers cannot be replayed", file=sys.stderr)
    return _Input(list(replay.events), state, dict(replay.recorded))


def _state_file(path: str | None) -> StaticState:
    if not path:
        return StaticState()
    try:
        return StaticState.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}:0: invalid_state: {exc}") from None


# --------------------------------------------------------------------------- LLM providers

class _Memo:
    """A provider that answers a request it has seen before from memory, so that a live baseline and
    candidate asking the same question cost one call."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self._seen: dict[LLMRequest, LLMReply] = {}

    async def complete(self, request: LLMRequest) -> LLMReply:
        """The inner provider's reply, remembered per identical request."""
        if request not in self._seen:
            self._seen[request] = await self.inner.complete(request)
        return self._seen[request]

    async def aclose(self) -> None:
        """Close the inner provider's client, if it has one."""
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()


@dataclass
class _LLM:
    """How each run consults the LLM: a fresh stage per run (its own circuit breakers), and what to do
    around each event (a replay answers with that event's recording)."""

    stage: Callable[[], LLMStage]
    around: Callable[[Event], Any]
    providers: list[Any]
    replay: Any = None  # the ReplayProvider of --llm replay


def _llm(mode: str, compiled: list[CompiledRules], recorded: dict[str, Any] | None) -> _LLM:
    if mode == "off":
        return _LLM(lambda: LLMStage(None), lambda e: contextlib.nullcontext(), [])
    if mode == "replay":
        from adapters.replay import ReplayProvider, replay_stage

        replay = ReplayProvider(recorded or {})
        return _LLM(lambda: replay_stage(replay), lambda e: replay.event(e.id), [], replay)
    from adapters.llm import make_provider  # lazily: importing the SDKs costs ~1.6 s

    names = {c.bundle.policy.llm.provider for c in compiled} - {"none"}
    by_name = {n: _Memo(p) for n in sorted(names) if (p := make_provider(n)) is not None}
    return _LLM(lambda: LLMStage(by_name), lambda e: contextlib.nullcontext(), list(by_name.values()))


async def _close(providers: list[Any]) -> None:
    for p in providers:
        close = getattr(p, "aclose", None)
        if close is not None:
            await close()


# --------------------------------------------------------------------------- running

async def _run(runs: list[tuple[CompiledRules, Any]], org: str, events: list[Event], llm: _LLM,
               tick: Callable[[], None]) -> list[list[Decision]]:
    out = []
    try:
        for compiled, state in runs:
            agent = Agent(lambda o, c=compiled: c if o == org else None, llm.stage(), state=state)
            if llm.replay is not None:
                from adapters.replay import replay_decisions

                out.append(await replay_decisions(agent, events, llm.replay, tick=tick))
                continue
            decisions = []
            for e in events:
                with llm.around(e):
                    decisions.append(await agent.process(e, dry_run=True))
                tick()
            out.append(decisions)
    finally:
        await _close(llm.providers)
    return out


def _progress(enabled: bool, total: int) -> tuple[Any, Callable[[int], None]]:
    if not enabled:
        return None, lambda _k: None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=Console(file=sys.stderr), transient=True)
    task = progress.add_task("simulate", total=total)
    return progress, lambda k: progress.advance(task, k)


def _side(compiled: CompiledRules, decisions: Sequence[Decision], events: list[Event]) -> Side:
    by_id = {e.id: e for e in events}
    chars = {d.event_id: prompt_chars(compiled, by_id[d.event_id]) for d in decisions
             if consults_llm(d) and not (d.llm and (d.llm.input_tokens or d.llm.output_tokens))}
    return Side(decisions, compiled.bundle.policy.llm, chars, compiled.revision)


def _check(args: argparse.Namespace) -> None:
    if args.llm is None:
        args.llm = "replay" if args.from_db else "off"
    if args.llm == "replay" and not args.from_db:
        raise InputError("--llm replay answers from the recorded decisions: it needs --from-db")
    if (args.since or args.until) and not args.from_db:
        raise InputError("--since/--until select events from the database: they need --from-db")
    if args.baseline and not args.baseline.startswith("git:"):
        raise InputError(f"--baseline {args.baseline}: expected git:REV (e.g. git:HEAD, git:main~1)")
    if args.baseline and args.baseline_policies:
        raise InputError("--baseline git:REV takes both rulesets and policies from git: drop --baseline-policies")
    has_baseline = bool(args.baseline or args.baseline_rulesets or args.baseline_policies)
    if args.jobs is not None and args.jobs > 1 and args.llm == "live":
        raise InputError("--jobs: a run with --llm live stays in one process (its time is spent waiting for "
                         "the provider, and identical questions are asked once); drop --jobs")
    if args.fail_on_change and not has_baseline:
        raise InputError("--fail-on-change compares with a baseline: add --baseline-rulesets/--baseline-policies "
                         "or --baseline git:REV")


def _jobs(args: argparse.Namespace, events: int) -> int:
    """Worker processes: `--jobs`, else one per CPU for long runs (`engine.parallel.default_jobs`). A live LLM
    run stays in one process: its calls wait on the network, not on a CPU, and share one answer memo."""
    if args.llm == "live":
        return 1
    return max(1, args.jobs) if args.jobs is not None else default_jobs(events)


def cmd_simulate(args: argparse.Namespace) -> int:
    """Dry-run an org's rules over past events (a JSONL file or the service's database), optionally against
    a baseline; print the decisions or the diff and the aggregate changes."""
    try:
        _check(args)
        with tempfile.TemporaryDirectory(prefix="astralis-baseline-") as tmp:
            return _simulate(args, Path(tmp))
    except InputError as exc:
        print(exc, file=sys.stderr)
        return 1


def _simulate(args: argparse.Namespace, tmp: Path) -> int:
    rulesets, policies = _dirs(args)
    candidate = _compiled(rulesets / args.org, policies)
    baseline: CompiledRules | None = None
    if args.baseline:
        b_rulesets, b_policies = git_baseline(args.baseline.removeprefix("git:"), rulesets, policies, tmp)
        if args.baseline_rulesets:
            b_rulesets = Path(args.baseline_rulesets)
        baseline = _compiled(b_rulesets / args.org, b_policies)
    elif args.baseline_rulesets or args.baseline_policies:
        baseline = _compiled(Path(args.baseline_rulesets or rulesets) / args.org,
                             Path(args.baseline_policies or policies))
    data = _read_input(args, candidate.bundle.org)
    runs = ([(baseline, data.state)] if baseline is not None else []) + [(candidate, data.state)]
    llm = _llm(args.llm, [c for c, _ in runs], data.recorded)
    jobs = _jobs(args, len(data.events))
    progress, advance = _progress(args.progress or sys.stderr.isatty(), len(runs) * len(data.events))
    tick = (lambda: advance(1)) if jobs <= 1 else (lambda: None)

    def work(lo: int, hi: int) -> list[list[Decision]]:
        return asyncio.run(_run(runs, args.org, data.events[lo:hi], llm, tick))

    try:
        chunks = in_chunks(work, len(data.events), jobs,
                           on_done=None if jobs <= 1 else lambda k: advance(len(runs) * k),
                           on_started=progress.start if progress is not None else None)
    finally:
        if progress is not None:
            progress.stop()
    results = [[d for chunk in chunks for d in chunk[r]] for r in range(len(runs))]
    cand = results[-1]
    base = results[0] if baseline is not None else None
    report = compare(_side(candidate, cand, data.events),
                     _side(baseline, base, data.events) if baseline is not None and base is not None else None,
                     org=args.org)
    to_tty = not args.out and sys.stdout.isatty()
    width = shutil.get_terminal_size((160, 40)).columns if to_tty else 160
    text = render(args.format, report, cand, base, color=to_tty, width=width,
                  events={e.id: e.data for e in data.events}, timing=args.timing)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    if args.fail_on_change and report.changed_events:
        return EXIT_CHANGED
    return 0


# --------------------------------------------------------------------------- the subcommand

def register(sub: Any) -> None:
    """Add `simulate` to the `astralis` subcommands (`sub`: argparse's subparsers object)."""
    m = sub.add_parser("simulate", help="dry run: decisions for past events, with no side effects; "
                       "with a baseline, what a rules change would change",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("--org", required=True, help="the org whose rules decide the events")
    src = m.add_mutually_exclusive_group(required=True)
    src.add_argument("--events", help="JSONL file of event envelopes")
    src.add_argument("--from-db", metavar="PATH", help="the service's SQLite file: replay its logged events (read only)")
    m.add_argument("--since", help="with --from-db: events received at or after this ISO date-time (UTC if no offset)")
    m.add_argument("--until", help="with --from-db: events received before this ISO date-time")
    m.add_argument("--rulesets", help="rulesets folder (default: ./rulesets or $ASTRALIS_RULESETS)")
    m.add_argument("--policies", help="policies folder (default: ./policies or $ASTRALIS_POLICIES)")
    m.add_argument("--baseline-rulesets", metavar="DIR", help="compare with the org's rules in this rulesets folder")
    m.add_argument("--baseline-policies", metavar="DIR", help="compare with the org's policy in this policies folder")
    m.add_argument("--baseline", metavar="git:REV",
                   help="compare with the rulesets and policies folders as they are at a git revision of their repo")
    m.add_argument("--state", help='JSON: {"calendar": [{"host","start","end","title"}], "loads": {"user": n}} '
                   "(default: from the database with --from-db, else empty)")
    m.add_argument("--llm", choices=["off", "live", "replay"], default=None,
                   help="off (default for --events): fallback rules; live: ask the policy's provider; "
                   "replay (default for --from-db): the answers recorded with the original decisions")
    m.add_argument("--format", choices=list(FORMATS), default="table",
                   help="table (terminal), json, jsonl (one decision a line) or html (a self-contained page)")
    m.add_argument("--out", metavar="FILE", help="write the output here instead of stdout")
    m.add_argument("--timing", action="store_true",
                   help="html: show the decision timings as a section (default: folded away, they are noise here)")
    m.add_argument("--fail-on-change", action="store_true",
                   help=f"exit {EXIT_CHANGED} when any decision differs from the baseline (for CI of rulesets)")
    m.add_argument("--jobs", type=int, metavar="N",
                   help="decide in N worker processes (default: one per CPU when there are at least "
                   f"{MIN_EVENTS_PER_JOB:,} events per worker; 1 with --llm live); the output is the same")
    m.add_argument("--progress", action="store_true", help="show a progress bar on stderr even when it is not a terminal")
    m.set_defaults(func=cmd_simulate)
