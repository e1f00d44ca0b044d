"""The `astralis` command: serve, keys, validate, schema, simulate, test."""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from engine.config_schemas import schema_texts
from engine.errors import ConfigError
from engine.loader import org_dirs
from engine.registry import build
from engine.rules import CompiledRules

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def version() -> str:
    """The installed package's version (the source tree's when not installed)."""
    try:
        return metadata.version("astralis-orchestrator")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class Help(argparse.HelpFormatter):
    """Every option's help ends with its default, when it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"astralis: ${name} has value {raw!r}: not a whole number") from None


def _level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def _log_level(args: argparse.Namespace) -> str:
    """--log-level, else $ASTRALIS_LOG_LEVEL, else INFO — moved by -v (DEBUG) and -q (WARNING)."""
    if args.log_level:
        return str(args.log_level)
    env = os.environ.get("ASTRALIS_LOG_LEVEL")
    if env:
        try:
            return _level(env)
        except argparse.ArgumentTypeError as exc:
            raise SystemExit(f"astralis: $ASTRALIS_LOG_LEVEL: {exc}") from None
    if getattr(args, "verbose", 0):
        return "DEBUG"
    return "WARNING" if getattr(args, "quiet", False) else "INFO"


def add_dirs(sp: argparse.ArgumentParser) -> None:
    """The --rulesets and --policies options every command that reads an org's configuration takes (`_dirs`)."""
    sp.add_argument("--rulesets", help="rulesets folder (default: ./rulesets or $ASTRALIS_RULESETS)")
    sp.add_argument("--policies", help="policies folder (default: ./policies or $ASTRALIS_POLICIES)")


def _dirs(args: argparse.Namespace) -> tuple[Path, Path]:
    rulesets = Path(args.rulesets or os.environ.get("ASTRALIS_RULESETS") or "rulesets")
    policies = Path(args.policies or os.environ.get("ASTRALIS_POLICIES") or "policies")
    return rulesets, policies


def _print_findings(findings: list[ConfigError]) -> None:
    for f in findings:
        print(str(f) if f.severity == "error" else f"{f} (warning)", file=sys.stderr)


# --------------------------------------------------------------------------- validate

def cmd_validate(args: argparse.Namespace) -> int:
    """Validate org folders (all under --rulesets by default, or those the given paths belong to)."""
    rulesets, policies = _dirs(args)
    targets: list[Path] = []
    for p in map(Path, args.paths or []):
        if not p.exists() and len(p.parts) == 1 and (rulesets / p.name / "org.yaml").exists():
            targets.append(rulesets / p.name)  # an org's name, as `astralis test acme` takes it
        elif p.is_dir() and (p / "org.yaml").exists():
            targets.append(p)
        elif p.is_dir():
            targets += org_dirs(p)
        elif p.parent.resolve() == policies.resolve() and (rulesets / p.stem).is_dir():
            targets.append(rulesets / p.stem)
        elif p.exists() and (p.parent / "org.yaml").exists():
            targets.append(p.parent)
        else:
            print(f"{p}:0: missing_file: not an org's name (under {rulesets}), an org folder, a file in one, "
                  "or an org's policy", file=sys.stderr)
            return 1
    if not args.paths:
        targets = org_dirs(rulesets)
        if not targets:
            print(f"{rulesets}:0: missing_file: no org folders (with org.yaml) found", file=sys.stderr)
            return 1
    failed = False
    for org_dir in dict.fromkeys(targets):
        compiled, findings = build(org_dir, policies, load_engine=True)
        _print_findings(findings)
        if compiled is None:
            failed = True
            n = sum(f.severity == "error" for f in findings)
            print(f"FAIL {org_dir.name}: {n} error{'s' if n != 1 else ''}")
        else:
            if not getattr(args, "quiet", False):
                print(f"ok   {org_dir.name}: revision {compiled.revision}, {len(compiled.rules)} rules, "
                      f"{len(compiled.text_features)} text features"
                      + (f", model {m.version} (learning {'on' if compiled.bundle.policy.learning.enabled else 'off'})"
                         if (m := compiled.bundle.model) is not None else ""))
    return 1 if failed else 0


# --------------------------------------------------------------------------- schema

def cmd_schema(args: argparse.Namespace) -> int:
    """Write (or with --check, verify) the JSON Schemas for org, ruleset and policy files."""
    out = Path(args.out)
    stale = []
    for name, text in schema_texts().items():
        path = out / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print("stale schemas (run `astralis schema`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- simulate

def _compiled_or_exit(org_dir: Path, policies: Path) -> CompiledRules | None:
    compiled, findings = build(org_dir, policies)
    if compiled is None:
        _print_findings(findings)
    return compiled


# --------------------------------------------------------------------------- serve and keys

def _db(args: argparse.Namespace) -> str:
    """The store: `--db`, else $DATABASE_URL (e.g. postgresql://…), else $ASTRALIS_DB, else ./astralis.db."""
    return str(args.db or os.environ.get("DATABASE_URL") or os.environ.get("ASTRALIS_DB", "astralis.db"))


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP service on the embedded defaults (SQLite file, in-process workers)."""
    from server import logs
    from server.app import Settings, run
    from server.service import Processing

    _require_rulesets(args)
    logs.configure(_log_level(args), json_format=args.log_format == "json")
    settings = _settings(args, Settings, Processing)
    return run(settings, args.host, args.port, loop=args.loop)


def _require_rulesets(args: argparse.Namespace) -> None:
    """Refuse to start without any org folder: a service with no rulesets answers 503 forever. The message names
    the folders looked in and how each was chosen; nothing (no database) is created."""
    rulesets, policies = _dirs(args)
    if org_dirs(rulesets):
        return
    how = ("--rulesets" if args.rulesets else "$ASTRALIS_RULESETS" if os.environ.get("ASTRALIS_RULESETS")
           else "the default, ./rulesets")
    raise SystemExit(f"astralis: no rulesets found: {rulesets.resolve()} ({how}) has no org folder with an org.yaml. "
                     f"Policies would be read from {policies.resolve()}. Point --rulesets/--policies (or "
                     "$ASTRALIS_RULESETS/$ASTRALIS_POLICIES) at your config, or run from the folder that holds them.")


def _egress_allow(args: argparse.Namespace) -> str:
    """The egress allow-list (`--egress-allow`, else $ASTRALIS_EGRESS_ALLOW), checked now: a bad entry stops the
    start with the entry named."""
    from adapters.egress import ENV, parse_allow

    flag = getattr(args, "egress_allow", None)
    text = flag if flag is not None else os.environ.get(ENV, "")
    try:
        parse_allow(text, source="--egress-allow" if flag is not None else ENV)
    except ValueError as exc:
        raise SystemExit(f"astralis: {exc}") from None
    return str(text)


def _settings(args: argparse.Namespace, settings_cls: Any, processing_cls: Any) -> Any:
    rulesets, policies = _dirs(args)
    return settings_cls(db=_db(args), rulesets=rulesets, policies=policies, llm=args.llm,
                        synchronous=args.synchronous, requests_per_minute=getattr(args, "rate_limit", 600),
                        webhook_requests_per_minute=getattr(args, "webhook_rate_limit", 1200),
                        max_body_bytes=getattr(args, "max_body", 1024 * 1024), watch=not args.no_watch,
                        schedules=not args.no_schedules,
                        workers=args.workers > 0 and not getattr(args, "no_workers", False),
                        public_url=args.public_url or os.environ.get("ASTRALIS_PUBLIC_URL", ""),
                        redis_url=args.redis_url or os.environ.get("REDIS_URL") or None,
                        queue=args.queue, publish_decisions=args.publish_decisions,
                        redis_prefix=args.redis_prefix or os.environ.get("ASTRALIS_REDIS_PREFIX") or "astralis",
                        egress_allow=_egress_allow(args),
                        processing=processing_cls(workers=max(1, args.workers), lease_seconds=args.lease,
                                                  max_attempts=args.max_attempts,
                                                  shutdown_grace_seconds=args.shutdown_grace))


def cmd_worker(args: argparse.Namespace) -> int:
    """Decide queued events from the inbox, without HTTP (next to `astralis serve --workers 0`)."""
    from server import logs
    from server.app import Settings
    from server.service import Processing
    from server.worker import run_worker

    logs.configure(_log_level(args), json_format=args.log_format == "json")
    if args.workers < 1:
        print("--workers must be at least 1 for a worker process", file=sys.stderr)
        return 2
    from server.app import new_loop

    with asyncio.Runner(loop_factory=lambda: new_loop(args.loop)) as runner:
        runner.run(run_worker(_settings(args, Settings, Processing)))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """Create, list or revoke API keys (stored hashed; a new key is printed once)."""
    from adapters.stores import open_store
    from server.auth import new_key

    db = _db(args)
    if "://" not in db and args.action in ("revoke", "list") and not Path(db).is_file():
        print(f"{db}:0: missing_file: no such database (nothing was created; pass --db or $ASTRALIS_DB)",
              file=sys.stderr)
        return 1
    if "://" not in db and not Path(db).resolve().parent.is_dir():
        print(f"{db}:0: missing_file: the folder {Path(db).resolve().parent} does not exist", file=sys.stderr)
        return 1

    async def go() -> int:
        async with await open_store(db) as store:
            if args.action == "create":
                rulesets, _ = _dirs(args)
                if not (rulesets / args.org / "org.yaml").exists() and not args.force:
                    print(f"{rulesets / args.org}: no such org (use --force to create a key anyway)", file=sys.stderr)
                    return 1
                key_id, key, key_hash = new_key()
                await store.add_api_key(key_id, args.org, args.name or f"{args.org}-{key_id}", key_hash)
                print(key)
                print(f"key {key_id} for org {args.org}: shown once, stored hashed; "
                      f"revoke with `astralis keys revoke {key_id}`", file=sys.stderr)
                return 0
            if args.action == "revoke":
                key_id = args.key_id.removeprefix("ak_").split("_")[0]
                if await store.revoke_api_key(key_id):
                    print(f"revoked {key_id}")
                    return 0
                print(f"no active key {key_id}", file=sys.stderr)
                return 1
            for k in await store.list_api_keys(args.org):
                state = f"revoked {k['revoked_at']}" if k["revoked_at"] else "active"
                print(f"{k['id']}  {k['org']:<16} {k['name']:<24} created {k['created_at']}  {state}")
            return 0

    try:
        return asyncio.run(go())
    except (OSError, sqlite3.Error) as exc:
        print(f"{db}:0: store_unavailable: {exc}", file=sys.stderr)
        return 1


# --------------------------------------------------------------------------- main

def parser() -> argparse.ArgumentParser:
    """The argument parser of the `astralis` command."""
    def shared(default: bool) -> argparse.ArgumentParser:
        """-v/-q, before the command or after it (after it, unset flags must not undo the ones before)."""
        holder = argparse.ArgumentParser(add_help=False)
        holder.add_argument("-v", "--verbose", action="count", default=0 if default else argparse.SUPPRESS,
                            help="more output: debug logs for serve and worker")
        holder.add_argument("-q", "--quiet", action="store_true", default=False if default else argparse.SUPPRESS,
                            help="less output: warnings and errors only (validate prints only what fails)")
        return holder

    common = shared(True)
    p = argparse.ArgumentParser(prog="astralis", description="Astralis Orchestrator: rules first, an LLM only when "
                                "they are unsure; every decision recorded.", formatter_class=Help, parents=[common])
    p.add_argument("--version", action="version", version=f"astralis {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_parser = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        kw.setdefault("formatter_class", Help)
        kw.setdefault("parents", [shared(False)])
        if "help" in kw:
            kw.setdefault("description", kw["help"])
        return _add_parser(name, **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]  # every command: the shared flags and the help style

    v = sub.add_parser("validate", help="check rulesets and policies; errors as path:line: code: message")
    v.add_argument("paths", nargs="*", help="org names (acme), org folders, files in them, or policy files "
                   "(default: every org under --rulesets)")
    add_dirs(v)
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("schema", help="write the JSON Schemas of org, ruleset and policy files")
    s.add_argument("--out", default="schemas", help="folder to write org/ruleset/policy .schema.json into")
    s.add_argument("--check", action="store_true", help="exit 1 if the files under --out are stale")
    s.set_defaults(func=cmd_schema)

    from server.cli_simulate import register as register_simulate

    register_simulate(sub)

    def deciding(sp: argparse.ArgumentParser, workers_help: str) -> None:
        sp.add_argument("--db", help="the store: a SQLite file, or postgresql://user@host/db (default: $DATABASE_URL, "
                        "else $ASTRALIS_DB, else ./astralis.db)")
        add_dirs(sp)
        sp.add_argument("--llm", choices=["policy", "off"], default="policy",
                        help="policy (default): each org's policy provider when its API key is set; off: never")
        sp.add_argument("--workers", type=int, default=_env_int("ASTRALIS_WORKERS", 16),
                        help=f"{workers_help} (or $ASTRALIS_WORKERS)")
        sp.add_argument("--lease", type=float, default=30.0, help="seconds a claim on an event or an outbox action lasts unrenewed")
        sp.add_argument("--max-attempts", type=int, default=5, help="failed attempts before an event is dead-lettered")
        sp.add_argument("--shutdown-grace", type=float, default=10.0,
                        help="seconds in-flight events get to finish on SIGTERM before going back to the queue")
        sp.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL",
                        help="SQLite durability: FULL (default) survives power loss; NORMAL may lose the last commits")
        sp.add_argument("--no-watch", action="store_true", help="do not hot-reload ruleset and policy files")
        sp.add_argument("--no-schedules", action="store_true", help="do not emit the policies' SCHEDULE events")
        sp.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto",
                        help="event loop: uvloop when installed (auto, the default), or the standard asyncio one")
        sp.add_argument("--public-url", help="the service's address as others reach it, e.g. https://agent.example "
                        "(for the callback URL sent to automations and calendar feed links; or $ASTRALIS_PUBLIC_URL)")
        sp.add_argument("--redis-url", help="Redis shared by every worker process (default: $REDIS_URL): the "
                        "orgs' rate limits and the LLM circuit breakers count across processes")
        sp.add_argument("--queue", choices=["auto", "inprocess", "bullmq"], default="auto",
                        help="where accepted events wait for a worker: the inbox claimed in-process, or BullMQ on "
                        "the Redis (auto: BullMQ when --redis-url/REDIS_URL is set)")
        sp.add_argument("--publish-decisions", action="store_true",
                        help="publish each new decision as a BullMQ job on <prefix>-decisions for Node workers "
                        "(needs --redis-url)")
        sp.add_argument("--redis-prefix", help="prefix of this deployment's Redis keys (default: astralis or "
                        "$ASTRALIS_REDIS_PREFIX)")
        sp.add_argument("--egress-allow", metavar="RANGES",
                        help="addresses and CIDR ranges actions may reach besides public ones, comma-separated, e.g. "
                        "10.0.0.0/8,127.0.0.1 (default: $ASTRALIS_EGRESS_ALLOW; loopback, private and link-local "
                        "addresses and this service's own are refused otherwise)")
        sp.add_argument("--log-level", type=_level, metavar="LEVEL",
                        help="DEBUG, INFO, WARNING, ERROR or CRITICAL (default: $ASTRALIS_LOG_LEVEL, else INFO; "
                        "-v: DEBUG, -q: WARNING)")
        sp.add_argument("--log-format", choices=["json", "text"], default="json", help="log lines as")

    sv = sub.add_parser("serve", help="run the HTTP service (SQLite file, in-process workers)")
    sv.add_argument("--host", default=os.environ.get("ASTRALIS_HOST", "127.0.0.1"),
                    help="address to listen on (or $ASTRALIS_HOST)")
    sv.add_argument("--port", type=int, default=_env_int("ASTRALIS_PORT", 8080), help="port (or $ASTRALIS_PORT)")
    sv.add_argument("--no-workers", action="store_true",
                    help="the API alone: accept events and answer queries; `astralis worker` processes decide")
    deciding(sv, "events decided concurrently by in-process workers; 0: none (run `astralis worker` beside it)")
    sv.add_argument("--rate-limit", type=int, default=600, help="requests per minute per API key")
    sv.add_argument("--webhook-rate-limit", type=int, default=1200,
                    help="webhook deliveries per minute per org and sender address (429 beyond, before the body "
                         "is read)")
    sv.add_argument("--max-body", type=int, default=1024 * 1024, help="request body limit in bytes")
    sv.set_defaults(func=cmd_serve)

    wk = sub.add_parser("worker", help="decide queued events without HTTP (beside `serve --workers 0`)")
    deciding(wk, "events decided concurrently by this process")
    wk.set_defaults(func=cmd_worker)

    k = sub.add_parser("keys", help="API keys: create (printed once, stored hashed), list, revoke")
    ksub = k.add_subparsers(dest="action", required=True)
    kc = ksub.add_parser("create", help="print a new API key for an org")
    kc.add_argument("--org", required=True, help="the org the key acts for (a folder under --rulesets)")
    kc.add_argument("--name", help="a label for the key (shown in logs and as the default approver)")
    kc.add_argument("--force", action="store_true", help="create even if the org has no folder yet")
    kl = ksub.add_parser("list", help="list keys (never their secrets)")
    kl.add_argument("--org", help="only this org's keys")
    kr = ksub.add_parser("revoke", help="revoke a key by its id (or the key itself)")
    kr.add_argument("key_id", help="the key's id (as `keys list` shows it) or the whole key")
    for sp in (kc, kl, kr):
        sp.add_argument("--db", help="the store: a SQLite file, or postgresql://user@host/db (default: $DATABASE_URL, "
                        "else $ASTRALIS_DB, else ./astralis.db)")
        add_dirs(sp)
    k.set_defaults(func=cmd_keys)

    from server.cli_cases import register as register_cases

    register_cases(sub)

    from server.cli_learning import register as register_learning

    register_learning(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `astralis` command."""
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
