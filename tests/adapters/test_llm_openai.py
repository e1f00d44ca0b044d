"""OpenAIProvider with the real openai SDK against the local stand-in; make_provider and shared helpers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path

import pytest

from adapters.llm import make_provider, parse_retry_after, redact
from adapters.llm_anthropic import AnthropicProvider
from adapters.llm_openai import OpenAIProvider
from engine.ports import LLMError, LLMProvider, LLMRequest
from tests.standin import StandIn, classify

pytestmark = pytest.mark.standin

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-test-0penai-S3CRET-value"
EVENT = "Hi! Could you send me a quote for 12 seats of your premium plan?"
REQUEST = LLMRequest(system="You classify business events. Answer JSON only.",
                     user=f"Classify:\n<<<EVENT DATA\n{EVENT}\nEVENT DATA>>>", model="gpt-4o-mini",
                     temperature=0.0, max_tokens=300, timeout_seconds=5.0)


def closed_port() -> int:
    """A localhost port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def provider(standin: StandIn) -> AsyncIterator[OpenAIProvider]:
    """An OpenAIProvider pointed at the stand-in, closed after the test."""
    p = OpenAIProvider(api_key=KEY, base_url=standin.openai_base_url)
    yield p
    await p.aclose()


async def test_success(provider: OpenAIProvider, standin: StandIn) -> None:
    reply = await provider.complete(REQUEST)
    assert json.loads(reply.text) == classify(REQUEST.system, REQUEST.user)
    assert json.loads(reply.text)["intent"] == "SALES_INQUIRY"
    assert reply.provider == "openai" and reply.model == "gpt-4o-mini"
    assert reply.input_tokens > 0 and reply.output_tokens > 0 and reply.latency_ms > 0
    [rec] = standin.requests
    assert rec["path"] == "/v1/chat/completions" and rec["model"] == "gpt-4o-mini"
    assert rec["system"] == REQUEST.system and rec["user"] == REQUEST.user
    body = rec["body"]
    assert body["response_format"] == {"type": "json_object"}
    assert body["temperature"] == 0.0 and body["max_tokens"] == 300
    assert [m["role"] for m in body["messages"]] == ["system", "user"]


async def test_is_an_llm_provider(provider: OpenAIProvider) -> None:
    assert isinstance(provider, LLMProvider) and provider.name == "openai"


async def test_timeout(provider: OpenAIProvider, standin: StandIn) -> None:
    standin.mode = "timeout"  # the stand-in would sleep 30 s
    start = time.perf_counter()
    with pytest.raises(LLMError) as info:
        await provider.complete(LLMRequest(system="s", user="u", model="m", timeout_seconds=0.3))
    assert time.perf_counter() - start < 3
    assert info.value.kind == "timeout" and info.value.retryable
    assert len(standin.requests) == 1


async def test_rate_limited_one_attempt(provider: OpenAIProvider, standin: StandIn) -> None:
    standin.mode = "429"
    with pytest.raises(LLMError) as info:
        await provider.complete(REQUEST)
    assert info.value.kind == "rate_limited" and info.value.status == 429
    assert info.value.retry_after == pytest.approx(0.01)
    assert "429" in str(info.value)
    assert len(standin.requests) == 1


async def test_server_error_one_attempt(provider: OpenAIProvider, standin: StandIn) -> None:
    standin.mode = "500"
    with pytest.raises(LLMError) as info:
        await provider.complete(REQUEST)
    assert info.value.kind == "server" and info.value.status == 500 and info.value.retryable
    assert len(standin.requests) == 1


async def test_fail_first_each_call_is_one_attempt(provider: OpenAIProvider, standin: StandIn) -> None:
    standin.fail_first = 1
    with pytest.raises(LLMError):
        await provider.complete(REQUEST)
    reply = await provider.complete(REQUEST)
    assert json.loads(reply.text)["intent"] == "SALES_INQUIRY"
    assert [r["status"] for r in standin.requests] == [500, 200]


async def test_malformed_text_is_returned_as_is(provider: OpenAIProvider, standin: StandIn) -> None:
    standin.mode = "malformed"
    reply = await provider.complete(REQUEST)
    assert reply.text.startswith("Sure!")
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply.text)


async def test_empty_and_unknown_intent(provider: OpenAIProvider, standin: StandIn) -> None:
    standin.mode = "empty"
    assert (await provider.complete(REQUEST)).text == ""
    standin.mode = "unknown_intent"
    assert json.loads((await provider.complete(REQUEST)).text)["intent"] == "WORLD_DOMINATION"


async def test_missing_key_is_config(monkeypatch: pytest.MonkeyPatch, standin: StandIn) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    p = OpenAIProvider(base_url=standin.openai_base_url)
    with pytest.raises(LLMError) as info:
        await p.complete(REQUEST)
    assert info.value.kind == "config" and not info.value.retryable
    assert "OPENAI_API_KEY is not set" in str(info.value)
    assert standin.requests == []
    await p.aclose()


async def test_wrong_key_is_auth_and_key_never_leaks(standin: StandIn,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    standin.accepted_keys = {"test-openai-key"}
    p = OpenAIProvider(api_key=KEY, base_url=standin.openai_base_url)
    with pytest.raises(LLMError) as info:
        await p.complete(REQUEST)
    await p.aclose()
    assert info.value.kind == "auth" and info.value.status == 401 and not info.value.retryable
    assert KEY not in str(info.value) and KEY not in repr(info.value) and KEY not in repr(p)
    assert info.value.__cause__ is None
    assert KEY not in caplog.text


async def test_key_is_redacted_from_server_messages(provider: OpenAIProvider, standin: StandIn,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def leaky(system: str, user: str) -> dict:
        raise RuntimeError(f"bad key {KEY}")  # the stand-in puts this in its 500 message

    standin.responder = leaky
    with pytest.raises(LLMError) as info:
        await provider.complete(REQUEST)
    assert info.value.kind == "server"
    assert "bad key ***" in str(info.value) and KEY not in str(info.value)
    assert KEY not in caplog.text
    assert standin.requests and "authorization" not in standin.requests[0]["headers"]


async def test_connection_refused() -> None:
    p = OpenAIProvider(api_key=KEY, base_url=f"http://127.0.0.1:{closed_port()}/v1")
    with pytest.raises(LLMError) as info:
        await p.complete(REQUEST)
    await p.aclose()
    assert info.value.kind == "connection" and info.value.retryable and info.value.status is None


async def test_environment_is_honoured(monkeypatch: pytest.MonkeyPatch, standin: StandIn) -> None:
    for k, v in standin.env().items():
        monkeypatch.setenv(k, v)
    p = make_provider("openai")
    assert isinstance(p, OpenAIProvider)
    reply = await p.complete(REQUEST)
    await p.aclose()
    assert reply.provider == "openai" and len(standin.requests) == 1


async def test_aclose_twice_and_before_use(provider: OpenAIProvider) -> None:
    await provider.aclose()
    await provider.complete(REQUEST)
    await provider.aclose()
    await provider.aclose()


# ------------------------------------------------------------------------------------- make_provider

def test_make_provider_names() -> None:
    assert make_provider("none") is None
    assert isinstance(make_provider("openai", api_key="k"), OpenAIProvider)
    assert isinstance(make_provider("anthropic", api_key="k"), AnthropicProvider)


def test_make_provider_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"unknown LLM provider 'gemini'.*openai, anthropic, none"):
        make_provider("gemini", api_key=KEY)


def test_make_provider_imports_no_sdk_until_first_call() -> None:
    code = ("import sys\nfrom adapters.llm import make_provider\n"
            "make_provider('openai', api_key='k'); make_provider('anthropic', api_key='k')\n"
            "make_provider('none')\n"
            "assert 'openai' not in sys.modules and 'anthropic' not in sys.modules, 'SDK imported eagerly'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------- helpers

def test_parse_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "10"}) == pytest.approx(0.01)
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == pytest.approx(0.25)
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    http_date = formatdate(time.time() + 30, usegmt=True)
    assert parse_retry_after({"retry-after": http_date}) == pytest.approx(30, abs=2)
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_redact() -> None:
    assert redact(f"key={KEY}!", KEY) == "key=***!"
    assert redact("nothing", None) == "nothing" and redact("nothing", "") == "nothing"


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_provider_reused_across_event_loops(standin: StandIn, name: str) -> None:
    base = standin.openai_base_url if name == "openai" else standin.anthropic_base_url
    p = make_provider(name, api_key=KEY, base_url=base)
    assert p is not None

    async def once() -> str:
        try:
            return (await p.complete(REQUEST)).text
        finally:
            await p.aclose()  # type: ignore[attr-defined]

    assert asyncio.run(once()) == asyncio.run(once())
    assert len(standin.requests) == 2
