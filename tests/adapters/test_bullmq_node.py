"""Interop with the host platform's Node BullMQ over the same Redis queues, both ways.

- Node adds jobs the way the platform's WorkerEventHandler does (name `"intake"`, payload
  `{type, org, data}`); our `EventConsumer` receives them as `WORKER` events.
- Our `DecisionPublisher` publishes decisions; a Node `Worker` consumes them and prints one JSON line each.

Node's `bullmq` and `ioredis` are installed once per version pair into the system temp dir (not the work tree)
and reused. Outside CI the tests skip when npm, the registry or Redis is unavailable; with CI=true they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NoReturn

import pytest

from adapters.bullmq_queue import DecisionPublisher, JobInfo
from engine.config import DecisionType, Intent, Source
from engine.models import Decision, Event
from tests.adapters.test_bullmq_queue import REDIS_URL, Queues, queues, wait_until

__all__ = ["queues"]  # a fixture, used by name

BULLMQ_NODE = "5.81.5"  # same Lua scripts (names and key counts) as bullmq-py 2.25.4
IOREDIS_NODE = "5.11.1"  # the ioredis that bullmq 5.81.5 itself depends on
NPM_TIMEOUT_S = 300

pytestmark = pytest.mark.timeout(NPM_TIMEOUT_S + 60)


def _unavailable(reason: str) -> NoReturn:
    """Skip with `reason`, or fail under CI=true (where Node interop must be tested)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


def _installed(folder: Path) -> bool:
    """Whether `folder` holds the pinned bullmq and ioredis."""
    try:
        versions = {name: json.loads((folder / "node_modules" / name / "package.json").read_text())["version"]
                    for name in ("bullmq", "ioredis")}
    except (OSError, ValueError, KeyError):
        return False
    return versions == {"bullmq": BULLMQ_NODE, "ioredis": IOREDIS_NODE}


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """A folder with the pinned Node bullmq and ioredis, installed on first use and kept for later runs."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        _unavailable("node and npm are needed for the Node interop tests")
    base = Path(tempfile.gettempdir())
    cache = base / f"astralis-node-bullmq-{BULLMQ_NODE}-ioredis-{IOREDIS_NODE}"
    if _installed(cache):
        return cache / "node_modules"
    staging = Path(tempfile.mkdtemp(prefix="astralis-node-bullmq-", dir=base))
    try:
        (staging / "package.json").write_text(json.dumps({"name": "astralis-bullmq-interop", "private": True}))
        try:
            subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", "--save-exact",
                 f"bullmq@{BULLMQ_NODE}", f"ioredis@{IOREDIS_NODE}"],
                cwd=staging, check=True, capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
        except subprocess.CalledProcessError as exc:
            _unavailable(f"npm install failed (registry unreachable?): {exc.stderr.strip()[-500:]}")
        except subprocess.TimeoutExpired:
            _unavailable(f"npm install took over {NPM_TIMEOUT_S}s")
        try:
            staging.rename(cache)  # atomic: a concurrent run either wins the same rename or reuses ours
        except OSError:
            if not _installed(cache):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cache / "node_modules"


async def run_node(node_modules: Path, script: str, *args: str, within: float = 60) -> list[str]:
    """Run a CommonJS `script` with the cached modules; its stdout lines (failing on a non-zero exit)."""
    proc = await asyncio.create_subprocess_exec(
        "node", "-e", script, "--", *args, env={**os.environ, "NODE_PATH": str(node_modules)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()
    return out.decode().splitlines()


# What the platform's WorkerEventHandler does: name "intake", payload {type, org, data} (and at times an id).
_PLATFORM_PRODUCER = """
const { Queue } = require('bullmq');
const IORedis = require('ioredis');
const [url, name] = process.argv.slice(1);
(async () => {
  const connection = new IORedis(url, { maxRetriesPerRequest: null });
  const queue = new Queue(name, { connection });
  const payloads = [
    { type: 'intake:created', org: 'acme', data: { intake_id: 'in_1', email: 'ana@example.com' } },
    { type: 'intake:updated', org: 'acme', data: { intake_id: 'in_1', status: 'qualified' } },
    { type: 'intake:created', org: 'acme', id: 'intake-in_2', data: { intake_id: 'in_2' } },
  ];
  const ids = [];
  for (const payload of payloads) {
    const job = await queue.add('intake', payload, { attempts: 3, backoff: { type: 'exponential', delay: 1000 } });
    ids.push(job.id);
  }
  console.log(JSON.stringify(ids));
  await queue.close();
  await connection.quit();
})().catch((err) => { console.error(err); process.exit(1); });
"""

_DECISION_WORKER = """
const { Worker } = require('bullmq');
const IORedis = require('ioredis');
const [url, name, expected] = process.argv.slice(1);
const connection = new IORedis(url, { maxRetriesPerRequest: null });
let done = 0;
const worker = new Worker(name, async (job) => {
  console.log(JSON.stringify({ job_id: job.id, name: job.name, id: job.data.id, intent: job.data.intent,
                               event_id: job.data.event_id }));
}, { connection });
worker.on('completed', async () => {
  done += 1;
  if (done === Number(expected)) {
    await worker.close();
    await connection.quit();
    process.exit(0);
  }
});
setTimeout(() => { console.error(`only ${done} of ${expected} decisions within 30s`); process.exit(2); }, 30000);
"""


async def test_jobs_added_by_node_arrive_as_worker_events(node_modules: Path, queues: Queues) -> None:
    lines = await run_node(node_modules, _PLATFORM_PRODUCER, REDIS_URL, queues.name)
    job_ids = json.loads(lines[-1])
    got: list[tuple[Event, JobInfo]] = []

    async def handler(ev: Event, info: JobInfo) -> None:
        got.append((ev, info))

    queues.consumer(handler, concurrency=1)
    await wait_until(lambda: len(got) == 3, within=20)
    by_job = {info.id: (ev, info) for ev, info in got}
    assert sorted(by_job) == sorted(job_ids)
    expected = [
        (f"{queues.name}:{job_ids[0]}", "intake:created", {"intake_id": "in_1", "email": "ana@example.com"}),
        (f"{queues.name}:{job_ids[1]}", "intake:updated", {"intake_id": "in_1", "status": "qualified"}),
        ("intake-in_2", "intake:created", {"intake_id": "in_2"}),
    ]
    for job_id, (event_id, type_, data) in zip(job_ids, expected, strict=True):
        ev, info = by_job[job_id]
        assert (ev.id, ev.org, ev.source, ev.type, ev.data) == (event_id, "acme", Source.WORKER, type_, data)
        assert (info.name, info.attempts_made) == ("intake", 0)


def decision(n: int, intent: Intent) -> Decision:
    return Decision(id=f"dec_node_{n}", event_id=f"evt_{n}", org="acme", input={"subject": f"s{n}"},
                    intent=intent, priority=3, decision_type=DecisionType.ASSIGN_PIPELINE, confidence=0.9,
                    decided_by="rules", reasoning="matched a rule", status="EXECUTED")


async def test_decisions_published_here_are_consumed_by_a_node_worker(node_modules: Path, queues: Queues) -> None:
    pub = DecisionPublisher(REDIS_URL, name=queues.name)
    queues.closables.append(pub)
    decisions = [decision(1, Intent.SALES_INQUIRY), decision(2, Intent.SUPPORT_REQUEST)]
    for d in decisions:
        await pub.publish(d.model_dump(mode="json"))
    lines = await run_node(node_modules, _DECISION_WORKER, REDIS_URL, queues.name, "2")
    consumed = sorted((json.loads(line) for line in lines), key=lambda r: r["id"])
    assert consumed == [
        {"job_id": d.id, "name": "decision", "id": d.id, "intent": str(d.intent), "event_id": d.event_id}
        for d in decisions
    ]
