"""Fixtures for the service: an app on a temporary database with API keys, and a signed-webhook client."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.app import STORE, Settings, create_app
from server.auth import new_key
from server.service import Processing

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec-acme-test-0123456789"
OPERATOR_TOKEN = "op-test-token-0123456789"
"""The operator token of test apps (`Settings.operator_token`): /metrics and the detailed /healthz."""


def operator() -> dict[str, str]:
    """The headers of an operator request (/metrics, the detailed /healthz)."""
    return {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@pytest.fixture
def config_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of rulesets/ and policies/ (tests may edit them), acme's org model off: the service tests
    rely on events the rules and fallback hold for approval (tests/server/test_corrections.py turns it on)."""
    rulesets, policies = tmp_path / "rulesets", tmp_path / "policies"
    shutil.copytree(ROOT / "rulesets", rulesets)
    shutil.copytree(ROOT / "policies", policies)
    acme = policies / "acme.yaml"
    acme.write_text(acme.read_text(encoding="utf-8").replace("  enabled: true\n", "  enabled: false\n", 1),
                    encoding="utf-8")
    return rulesets, policies


@pytest.fixture
def make_settings(tmp_path: Path, config_dirs: tuple[Path, Path], store_url: str) -> Callable[..., Settings]:
    """Settings for a test app on each store (`store_url`), LLM off, no file watcher or cron, fast workers."""

    def make(**overrides: Any) -> Settings:
        rulesets, policies = config_dirs
        processing = overrides.pop("processing", Processing(workers=4, lease_seconds=5, poll_seconds=0.05,
                                                            retry_base_seconds=0.05, shutdown_grace_seconds=2))
        base: dict[str, Any] = {"db": store_url, "rulesets": rulesets, "policies": policies,
                                "llm": "off", "watch": False, "schedules": False, "timers_poll_seconds": 0.05,
                                "key_cache_seconds": 0.0, "processing": processing, "operator_token": OPERATOR_TOKEN}
        base.update(overrides)
        return Settings(**base)

    return make


@pytest.fixture
def service_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The acme webhook secret in the environment."""
    monkeypatch.setenv("ACME_WEBHOOK_SECRET", SECRET)


@pytest.fixture
async def make_client(aiohttp_client: Any, make_settings: Callable[..., Settings], service_env: None):
    """`await make_client(**settings)` → (test client, key_for(org, name) → API key)."""

    async def make(**overrides: Any) -> tuple[Any, Callable[..., Any]]:
        client = await aiohttp_client(create_app(make_settings(**overrides)))

        async def key_for(org: str = "acme", name: str | None = None) -> str:
            key_id, key, key_hash = new_key()
            await client.app[STORE].add_api_key(key_id, org, name or f"{org}-tester", key_hash)
            return key

        return client, key_for

    return make


def auth(key: str) -> dict[str, str]:
    """The Authorization header for an API key."""
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def serve(tmp_path: Path, config_dirs: tuple[Path, Path]):
    """`serve(*args)` → `astralis serve` as a child process on a temporary database (tests/server/test_crash.py's
    `Serve`), stopped after the test with its logs printed. It reads `config_dirs` (acme's org model off) unless
    the test names its own --rulesets / --policies."""
    from tests.server.test_crash import servers

    runs = servers(tmp_path)
    make = next(runs)
    rulesets, policies = config_dirs
    yield lambda *args: make("--rulesets", str(rulesets), "--policies", str(policies), *args)
    yield from runs


async def raw_rows(store: Any, sql: str) -> list[dict[str, Any]]:
    """The rows of `sql` (no parameters) read straight from the tables of either store, as dicts."""
    async with store._read() as db:
        if hasattr(db, "execute_fetchall"):  # aiosqlite
            return [dict(r) for r in await db.execute_fetchall(sql)]
        return [dict(r) for r in await db.fetch(sql)]  # asyncpg


async def post_event(url: str, key: str, event: dict[str, Any], mode: str) -> tuple[int, dict[str, Any]]:
    """POST an event to a running server's /api/agent/process in `mode`: (status, JSON answer)."""
    import aiohttp

    async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s,
                s.post(f"{url}/api/agent/process", params={"mode": mode}, json=event,
                       headers={"Authorization": f"Bearer {key}"}) as r):
        return r.status, await r.json()
