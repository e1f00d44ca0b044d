"""Benchmark of `POST /api/agent/process` over HTTP: dry-run and queue mode against a bare aiohttp handler.

Run from the repository root (`make bench` runs it after bench.rules)::

    .venv/bin/python -m bench.http                  # 3 rounds x 5 s per mode, 32 connections (~2-2.5 min)
    .venv/bin/python -m bench.http --quick          # 2 rounds x 3 s, 1 s warm-up (~1 min)
    .venv/bin/python bench/http.py --duration 30 --concurrency 64

Most of the wall time is the queue's drain: the workers decide the backlog the queue slices left behind.

Three servers, each its own subprocess, loaded in turn by a load-generator subprocess (aiohttp client,
`--concurrency` connections over loopback, the same for every server):

* bare    - a one-route aiohttp app: `await request.json()`, then `web.json_response(data)` (the baseline);
* dry_run - `astralis serve` with `?mode=dry_run`: auth, validation, the whole agent, nothing written;
* queue   - the same server with `?mode=queue`: the event is put in the durable inbox (SQLite, WAL,
            synchronous=FULL, group commit) and acknowledged with 202 after the commit; the in-process
            workers decide the backlog at the same time, on the same CPUs.

The bodies are the events of tests/cases/acme/corpus.jsonl without `org`, each request with a fresh `id`.
The modes take turns (`--rounds` slices each), so drift on the machine affects all of them about equally,
and after every queue slice the inbox is drained before the next slice starts. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Run as a file (`python bench/http.py`), bench/ comes first on sys.path and this module would shadow the
# standard library's `http` (which aiohttp and urllib import): put the repository root there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "bench":
    sys.path[0] = str(REPO)

MODES = ("bare", "dry_run", "queue")
TARGETS = {"dry_run": 0.40, "queue": 0.25}  # req/s as a share of the bare handler's
EXPECTED_STATUS = {"bare": 200, "dry_run": 200, "queue": 202}
CORPUS = REPO / "tests" / "cases" / "acme" / "corpus.jsonl"
SLICE_WARMUP_S = 0.5  # per slice: connections open and the loop settles before the window starts
DRAIN_TIMEOUT_S = 300.0


# --------------------------------------------------------------------------- bodies

def body_templates() -> list[tuple[bytes, bytes]]:
    """The corpus events without `org` and `id`, as (prefix, suffix) around a request's id."""
    out = []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        event = json.loads(line)
        rest = json.dumps({k: v for k, v in event.items() if k not in ("org", "id")})
        out.append((b'{"id": "', b'", ' + rest[1:].encode()))
    if not out:
        raise SystemExit(f"{CORPUS}: no events")
    return out


# --------------------------------------------------------------------------- children: servers and load

def run_bare(port: int) -> None:
    """The baseline server: parse the JSON body, answer it back."""
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        data = await request.json()
        return web.json_response(data)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/api/agent/process", echo)
    app.router.add_get("/healthz", healthz)
    from server.app import new_loop

    # The same event loop as `astralis serve` (uvloop when installed), so that the ratios compare handlers.
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=new_loop())


class _Counted:
    """Wraps one `SQLiteStore._write()` transaction (or `_read()`) and counts it by the store method that opened
    it, once it ended without an error: for a write, once it committed."""

    def __init__(self, cm: Any, name: str, counts: Counter[str]) -> None:
        self._cm, self._name, self._counts = cm, name, counts

    async def __aenter__(self) -> Any:
        return await self._cm.__aenter__()

    async def __aexit__(self, *exc: Any) -> Any:
        suppress = await self._cm.__aexit__(*exc)
        if exc[0] is None:
            self._counts[self._name] += 1
        return suppress


def run_service(argv: list[str], profile: str | None) -> int:
    """`astralis serve ARGV`, with the store's write transactions (commits) and reads counted per store method and
    served on GET /bench/commits (the service itself is unchanged: the same `server.cli.main`, plus one counter
    increment per transaction and one route)."""
    from aiohttp import web

    from adapters.sqlite_store import SQLiteStore
    from server import app as app_module
    from server import cli

    counts: Counter[str] = Counter()
    write, read = SQLiteStore._write, SQLiteStore._read

    def counted_write(self: SQLiteStore) -> _Counted:
        return _Counted(write(self), sys._getframe(1).f_code.co_name, counts)

    def counted_read(self: SQLiteStore) -> _Counted:
        return _Counted(read(self), "read:" + sys._getframe(1).f_code.co_name, counts)

    SQLiteStore._write = counted_write  # type: ignore[assignment,method-assign]
    SQLiteStore._read = counted_read  # type: ignore[assignment,method-assign]
    create_app = app_module.create_app

    async def commits(request: web.Request) -> web.Response:
        return web.json_response(dict(counts))

    def create_counted_app(settings: Any = None) -> web.Application:
        app = create_app(settings)
        app.router.add_get("/bench/commits", commits)
        return app

    app_module.create_app = create_counted_app  # `server.app.run` looks it up at call time
    if not profile:
        return cli.main(argv)
    import cProfile

    prof = cProfile.Profile()
    try:
        return prof.runcall(cli.main, argv)
    finally:
        prof.dump_stats(profile)


async def _load(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp
    import psutil

    templates = body_templates()
    headers = {"Content-Type": "application/json"}
    if args.key:
        headers["Authorization"] = f"Bearer {args.key}"
    server = psutil.Process(args.server_pid) if args.server_pid else None
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    every: Counter[str] = Counter()  # all responses, warm-up and after the window included
    errors: Counter[str] = Counter()
    seq = 0
    window: dict[str, dict[str, Any]] = {}
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    t0, t1 = t_start + args.warmup, t_start + args.warmup + args.duration

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal seq
        while True:
            now = loop.time()
            if now >= t1:
                return
            seq += 1
            prefix, suffix = templates[seq % len(templates)]
            body = prefix + f"{args.id_prefix}-{seq}".encode() + suffix
            start = time.perf_counter()
            try:
                async with session.post(args.url, data=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
                    duplicate = "X-Astralis-Duplicate" in resp.headers
            except (aiohttp.ClientError, OSError) as exc:
                errors[type(exc).__name__] += 1
                await asyncio.sleep(0.01)
                continue
            end = time.perf_counter()
            label = f"{status}{' duplicate' if duplicate else ''}"
            every[label] += 1
            if t0 <= loop.time() <= t1:
                latencies.append(end - start)
                statuses[label] += 1

    async def stats(session: aiohttp.ClientSession) -> dict[str, Any]:
        out: dict[str, Any] = {"t": loop.time()}
        if server is not None:
            cpu = server.cpu_times()
            out["server_cpu"] = cpu.user + cpu.system
        me = os.times()
        out["load_cpu"] = me.user + me.system
        for name, url in (("commits", args.commits_url), ("health", args.health_url)):
            if url:
                async with session.get(url) as resp:
                    out[name] = await resp.json()
        return out

    async def probe(session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(max(0.0, t0 - loop.time()))
        window["start"] = await stats(session)
        await asyncio.sleep(max(0.0, t1 - loop.time()))
        window["end"] = await stats(session)

    connector = aiohttp.TCPConnector(limit=args.concurrency + 2)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(probe(session), *(worker(session) for _ in range(args.concurrency)))
    start, end = window["start"], window["end"]
    return {"requests": len(latencies), "seconds": end["t"] - start["t"], "latencies": latencies,
            "statuses": dict(statuses), "every": dict(every), "errors": dict(errors), "start": start, "end": end}


def run_load(args: argparse.Namespace) -> None:
    """The load generator: `--concurrency` connections for `--warmup` + `--duration` seconds; one JSON line out."""
    print(json.dumps(asyncio.run(_load(args))))


# --------------------------------------------------------------------------- the parent

def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout: float = 5.0) -> Any:
    """GET `url` and parse its JSON body (a 503 body too)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def wait_ready(proc: subprocess.Popen[bytes], url: str, name: str, timeout: float = 60.0) -> None:
    """Until GET `url` answers 200 (the server is up and, for the service, its rulesets are loaded)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"{name}: {url} did not answer 200 within {timeout:.0f} s")


def create_key(db: str) -> str:
    """A fresh API key for acme in `db` (`astralis keys create`)."""
    proc = subprocess.run([sys.executable, "-m", "server.cli", "keys", "create", "--org", "acme", "--db", db],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"astralis keys create failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip().splitlines()[-1]


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load(url: str, *, key: str | None, pid: int, id_prefix: str, duration: float, warmup: float,
         concurrency: int, commits_url: str | None = None, health_url: str | None = None) -> dict[str, Any]:
    """Run one load-generator subprocess against `url` and return its result."""
    cmd = [sys.executable, "-m", "bench.http", "--child", "load", "--url", url, "--server-pid", str(pid),
           "--id-prefix", id_prefix, "--duration", str(duration), "--warmup", str(warmup),
           "--concurrency", str(concurrency)]
    if key:
        cmd += ["--key", key]
    if commits_url:
        cmd += ["--commits-url", commits_url]
    if health_url:
        cmd += ["--health-url", health_url]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=warmup + duration + 120,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"load generator failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def drain(health_url: str) -> tuple[float, dict[str, int]]:
    """Wait until the service's inbox has nothing accepted or processing; (seconds waited, inbox counts)."""
    t = time.perf_counter()
    while True:
        inbox = get_json(health_url)["checks"]["database"]["inbox"]
        if inbox["accepted"] + inbox["processing"] == 0 or time.perf_counter() - t > DRAIN_TIMEOUT_S:
            return time.perf_counter() - t, inbox
        time.sleep(0.25)


def drain_outbox(health_url: str) -> tuple[float, dict[str, int]]:
    """Wait until the service's outbox has nothing pending or running (the actions of the decisions a queue slice
    left behind), so that the next slice does not compete with them; (seconds waited, outbox counts)."""
    t = time.perf_counter()
    while True:
        outbox = get_json(health_url)["checks"]["database"].get("outbox") or {}
        if outbox.get("pending", 0) + outbox.get("running", 0) == 0 or time.perf_counter() - t > DRAIN_TIMEOUT_S:
            return time.perf_counter() - t, outbox
        time.sleep(0.25)


class Tally:
    """One mode's slices, summed."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = 0
        self.seconds = 0.0
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.server_cpu = 0.0
        self.load_cpu = 0.0
        self.commits: Counter[str] = Counter()  # write transactions in the windows, by store method
        self.reads: Counter[str] = Counter()  # read-only store calls in the windows, by store method
        self.decided_in_window = 0
        self.accepted_left = 0
        self.drain_seconds = 0.0
        self.decided_in_drain = 0
        self.outbox_seconds = 0.0
        self.actions_done = 0
        self.slice_commits: Counter[str] = Counter()  # queue: from before a slice's load to its drained inbox
        self.slice_accepted = 0

    def add(self, r: dict[str, Any]) -> None:
        """Add one load-generator result."""
        self.requests += r["requests"]
        self.seconds += r["seconds"]
        self.latencies += r["latencies"]
        self.statuses.update(r["statuses"])
        self.errors.update(r["errors"])
        s, e = r["start"], r["end"]
        self.server_cpu += e.get("server_cpu", 0.0) - s.get("server_cpu", 0.0)
        self.load_cpu += e["load_cpu"] - s["load_cpu"]
        if "commits" in e:
            commits, reads = split_counts(Counter(e["commits"]) - Counter(s["commits"]))
            self.commits.update(commits)
            self.reads.update(reads)
        if "health" in e:
            si, ei = s["health"]["checks"]["database"]["inbox"], e["health"]["checks"]["database"]["inbox"]
            self.decided_in_window += ei["decided"] - si["decided"]
            self.accepted_left += ei["accepted"] + ei["processing"]

    @property
    def rps(self) -> float:
        """Requests per second over the measured windows."""
        return self.requests / self.seconds if self.seconds else 0.0

    def pct_ms(self, q: float) -> float:
        """The q-quantile of the latencies, in ms (nearest rank)."""
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, max(0, round(q * len(xs)) - 1))] * 1000

    def unexpected(self) -> int:
        """Responses other than the mode's expected status (duplicates included), and client errors."""
        want = str(EXPECTED_STATUS[self.mode])
        return sum(n for s, n in self.statuses.items() if s != want) + sum(self.errors.values())


def fmt_table(tallies: dict[str, Tally]) -> str:
    """The results as a markdown table."""
    bare = tallies["bare"].rps
    lines = ["| mode | requests | req/s | p50 ms | p99 ms | ratio to bare | target | result |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for mode, t in tallies.items():
        ratio = t.rps / bare if bare else 0.0
        target = TARGETS.get(mode)
        verdict = "—" if target is None else ("PASS" if ratio >= target and not t.unexpected() else "FAIL")
        lines.append(f"| {mode} | {t.requests:,} | {t.rps:,.0f} | {t.pct_ms(0.5):.2f} | {t.pct_ms(0.99):.2f} | "
                     f"{'1.00 (baseline)' if mode == 'bare' else f'{ratio:.2f}'} | "
                     f"{'—' if target is None else f'≥ {target:.2f}'} | {verdict} |")
    return "\n".join(lines)


def split_counts(counts: Counter[str]) -> tuple[Counter[str], Counter[str]]:
    """The service's transaction counts, split into commits and reads (named `read:<method>`)."""
    commits = Counter({k: v for k, v in counts.items() if not k.startswith("read:")})
    reads = Counter({k.removeprefix("read:"): v for k, v in counts.items() if k.startswith("read:")})
    return commits, reads


def commits_line(label: str, commits: Counter[str], accepted: int) -> str:
    """Write transactions per accepted event, with the methods that made them."""
    total = sum(commits.values())
    parts = ", ".join(f"{name} {n:,} ({n / accepted:.3f})" for name, n in commits.most_common())
    return f"{label}: {total:,} commits for {accepted:,} accepted events = **{total / accepted:.3f} per event** ({parts})"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (`python -m bench.http`)."""
    ap = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=None,
                    help="measured seconds per mode, split over the rounds (default 15; 6 with --quick)")
    ap.add_argument("--concurrency", type=int, default=32, help="connections of the load generator (default 32)")
    ap.add_argument("--rounds", type=int, default=None, help="slices per mode, taken in turns (default 3; 2 with --quick)")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up seconds per mode before the rounds (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="a short run: 2 rounds x 3 s, 1 s warm-up")
    ap.add_argument("--plain", action="store_true",
                    help="run the unmodified `astralis serve` (no commit counting, no /bench/commits)")
    ap.add_argument("--profile", metavar="FILE", help="run the service under cProfile and dump its stats to FILE")
    ap.add_argument("--split", action="store_true",
                    help="the service accepts only (`serve --workers 0`) and a separate `astralis worker` process "
                         "decides; default: the embedded layout, workers inside the serving process")
    ap.add_argument("--child", choices=["bare", "service", "load"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    ap.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--id-prefix", default="bench", help=argparse.SUPPRESS)
    ap.add_argument("--commits-url", help=argparse.SUPPRESS)
    ap.add_argument("--health-url", help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args(argv)
    if args.child == "service":
        return run_service([a for a in rest if a != "--"], args.profile)
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.child == "bare":
        run_bare(args.port)
        return 0
    if args.child == "load":
        run_load(args)
        return 0

    duration = args.duration or (6.0 if args.quick else 15.0)
    rounds = args.rounds or (2 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    slice_s = duration / rounds
    conc = args.concurrency
    t_start = time.perf_counter()
    import psutil

    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        db = str(Path(tmp) / "astralis.db")
        fs = next((p.fstype for p in sorted(psutil.disk_partitions(all=True), key=lambda p: -len(p.mountpoint))
                   if tmp.startswith(p.mountpoint)), "?")
        print(f"# HTTP benchmark: POST /api/agent/process, {conc} connections, {rounds} rounds x {slice_s:g} s per "
              f"mode after a {warmup:g} s warm-up; Python {sys.version.split()[0]}, {psutil.cpu_count()} CPUs "
              f"(server and load generator share them), load average {os.getloadavg()[0]:.2f} at start; "
              f"database on {fs} ({tmp})\n")
        key = create_key(db)
        bare_port, svc_port = free_port(), free_port()
        serve_args = ["serve", "--db", db, "--llm", "off", "--no-watch", "--no-schedules", "--rate-limit",
                      "100000000", "--log-level", "WARNING", "--port", str(svc_port),
                      *(["--workers", "0"] if args.split else [])]
        if args.plain:
            svc_cmd = [sys.executable, "-m", "server.cli", *serve_args]
        else:
            svc_cmd = [sys.executable, "-m", "bench.http", "--child", "service",
                       *(["--profile", str(Path(args.profile).resolve())] if args.profile else []), "--", *serve_args]
        bare = subprocess.Popen([sys.executable, "-m", "bench.http", "--child", "bare", "--port", str(bare_port)],
                                cwd=REPO)
        svc = subprocess.Popen(svc_cmd, cwd=REPO)
        workers = [subprocess.Popen([sys.executable, "-m", "server.cli", "worker", "--db", db, "--llm", "off",
                                     "--no-watch", "--no-schedules", "--log-level", "WARNING"], cwd=REPO)
                   ] if args.split else []
        print(f"# layout: {'split: serve --workers 0 + one astralis worker process' if args.split else 'embedded: in-process workers'}\n")
        try:
            base = f"http://127.0.0.1:{svc_port}"
            health = f"{base}/healthz"
            wait_ready(bare, f"http://127.0.0.1:{bare_port}/healthz", "bare server")
            wait_ready(svc, health, "astralis serve")
            urls = {"bare": f"http://127.0.0.1:{bare_port}/api/agent/process",
                    "dry_run": f"{base}/api/agent/process?mode=dry_run",
                    "queue": f"{base}/api/agent/process?mode=queue"}
            pids = {"bare": bare.pid, "dry_run": svc.pid, "queue": svc.pid}
            commits_url = None if args.plain else f"{base}/bench/commits"
            tallies = {m: Tally(m) for m in MODES}
            for mode in MODES:
                load(urls[mode], key=key, pid=pids[mode], id_prefix=f"warm-{mode}", duration=warmup, warmup=0.0,
                     concurrency=conc)
                if mode == "queue":
                    drain(health)
                    drain_outbox(health)
            for rnd in range(rounds):
                for mode in MODES:
                    before = get_json(commits_url) if commits_url and mode == "queue" else {}
                    r = load(urls[mode], key=key, pid=pids[mode], id_prefix=f"r{rnd}-{mode}", duration=slice_s,
                             warmup=SLICE_WARMUP_S, concurrency=conc,
                             commits_url=commits_url if mode != "bare" else None,
                             health_url=health if mode == "queue" else None)
                    t = tallies[mode]
                    t.add(r)
                    if mode == "queue":
                        seconds, inbox = drain(health)
                        t.drain_seconds += seconds
                        t.decided_in_drain += inbox["decided"] - r["end"]["health"]["checks"]["database"]["inbox"][
                            "decided"]
                        t.slice_accepted += r["every"].get("202", 0)
                        if commits_url:
                            t.slice_commits.update(split_counts(Counter(get_json(commits_url)) - Counter(before))[0])
                        done_before = get_json(health)["checks"]["database"].get("outbox", {}).get("done", 0)
                        seconds, outbox = drain_outbox(health)
                        t.outbox_seconds += seconds
                        t.actions_done += outbox.get("done", 0) - done_before
            inbox = drain(health)[1]
        finally:
            for p in (bare, svc, *workers):
                stop(p)

    print(fmt_table(tallies))
    print()
    failed = False
    for mode, t in tallies.items():
        per = t.seconds or 1.0
        print(f"- {mode}: {t.requests:,} requests in {t.seconds:.1f} s; statuses {dict(t.statuses)}"
              + (f"; client errors {dict(t.errors)}" if t.errors else "")
              + f"; CPU: server {t.server_cpu / per:.0%} of a core ({t.server_cpu / max(1, t.requests) * 1000:.3f} ms "
              f"per request), load generator {t.load_cpu / per:.0%}")
        if t.unexpected():
            failed = True
            print(f"  - **{t.unexpected():,} unexpected responses** (want {EXPECTED_STATUS[mode]} for every request)")
    q = tallies["queue"]
    accepted = q.statuses.get("202", 0)
    print(f"- queue: the workers decided {q.decided_in_window:,} events during the measured windows "
          f"({q.decided_in_window / (q.seconds or 1):,.0f}/s, {q.decided_in_window / max(1, accepted):.0%} of the "
          f"{accepted:,} accepted); {q.accepted_left:,} were still queued at the windows' ends; draining took "
          f"{q.drain_seconds:.1f} s ({q.decided_in_drain / (q.drain_seconds or 1):,.0f} decisions/s with no requests "
          "coming in)")
    if q.outbox_seconds >= 0.5:
        print(f"- queue: then the outbox ran the actions of those decisions: {q.actions_done:,} more in "
              f"{q.outbox_seconds:.1f} s ({q.actions_done / q.outbox_seconds:,.0f} actions/s), before the next slice")
    else:
        print("- queue: the outbox had run the actions of those decisions by the time the inbox was drained (most "
              "decisions of a burst are held as PENDING by the policy's rate limit, and hold no actions)")
    if q.commits:
        print("- " + commits_line("queue, SQLite commits during the windows", q.commits, max(1, accepted)))
        print("- " + commits_line("queue, whole slices until drained (every accepted event decided)", q.slice_commits,
                                  max(1, q.slice_accepted)))
        batches = q.commits.get("accept_events", 0)
        if batches:
            print(f"- queue: group commit put {accepted / batches:.1f} events in each inbox transaction on average")
    d = tallies["dry_run"]
    if d.commits:
        print(f"- dry_run: {sum(d.commits.values()):,} commits during the windows (idle worker polls: "
              f"{dict(d.commits)}); a dry run writes nothing")
    for t in (d, q):
        if t.reads:
            print(f"- {t.mode}: store reads during the windows: {dict(t.reads.most_common())} (api_key_by_hash: the "
                  "API key cache's misses, one a second per key at best; inbox_depth: the benchmark's /healthz probes)")
    print(f"- inbox at the end: {inbox}")
    bare_rps = tallies["bare"].rps
    for mode, target in TARGETS.items():
        ratio = tallies[mode].rps / bare_rps if bare_rps else 0.0
        ok = ratio >= target and not tallies[mode].unexpected()
        failed = failed or not ok
        print(f"- target: {mode} ≥ {target:.0%} of the bare handler's req/s: {ratio:.0%} → {'PASS' if ok else 'FAIL'}")
    print(f"\n(total {time.perf_counter() - t_start:.0f} s; load average {os.getloadavg()[0]:.2f} at the end — "
          "other work on the machine inflates every row; compare rows of one run)")
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
