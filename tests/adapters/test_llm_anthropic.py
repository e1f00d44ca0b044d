"""AnthropicProvider with the real anthropic SDK against the local stand-in."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import AsyncIterator

import pytest

from adapters.llm import make_provider
from adapters.llm_anthropic import AnthropicProvider
from engine.ports import LLMError, LLMProvider, LLMRequest
from tests.standin import StandIn, classify

pytestmark = pytest.mark.standin

KEY = "sk-ant-test-S3CRET-value"
EVENT = "Hello, our online store has been down since 9am and customers cannot pay. Please help asap!"
# A current model name: the SDK warns (DeprecationWarning, an error under our pytest config) for retired ones.
MODEL = "claude-haiku-4-5"
REQUEST = LLMRequest(system="You classify business events. Answer JSON only.",
                     user=f"Classify:\n<<<EVENT DATA\n{EVENT}\nEVENT DATA>>>", model=MODEL,
                     temperature=0.0, max_tokens=300, timeout_seconds=5.0)


def closed_port() -> int:
    """A localhost port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def provider(standin: StandIn) -> AsyncIterator[AnthropicProvider]:
    """An AnthropicProvider pointed at the stand-in, closed after the test."""
    p = AnthropicProvider(api_key=KEY, base_url=standin.anthropic_base_url)
    yield p
    await p.aclose()


async def test_success(provider: AnthropicProvider, standin: StandIn) -> None:
    reply = await provider.complete(REQUEST)
    answer = json.loads(reply.text)
    assert answer == classify(REQUEST.system, REQUEST.user)
    assert (answer["intent"], answer["priority"]) == ("SUPPORT_REQUEST", 5)
    assert reply.provider == "anthropic" and reply.model == MODEL
    assert reply.input_tokens > 0 and reply.output_tokens > 0 and reply.latency_ms > 0
    [rec] = standin.requests
    assert rec["path"] == "/v1/messages" and rec["model"] == MODEL
    assert rec["system"] == REQUEST.system and rec["user"] == REQUEST.user
    assert rec["body"]["max_tokens"] == 300 and rec["body"]["messages"][0]["role"] == "user"
    assert "temperature" not in rec["body"]  # anthropic 2.x's messages.create has no sampling parameters
    assert "authorization" not in rec["headers"] and "x-api-key" not in rec["headers"]


async def test_is_an_llm_provider(provider: AnthropicProvider) -> None:
    assert isinstance(provider, LLMProvider) and provider.name == "anthropic"


async def test_timeout(provider: AnthropicProvider, standin: StandIn) -> None:
    standin.mode = "timeout"  # the stand-in would sleep 30 s
    start = time.perf_counter()
    with pytest.raises(LLMError) as info:
        await provider.complete(LLMRequest(system="s", user="u", model=MODEL, timeout_seconds=0.3))
    assert time.perf_counter() - start < 3
    assert info.value.kind == "timeout" and info.value.retryable
    assert len(standin.requests) == 1


async def test_rate_limited_one_attempt(provider: AnthropicProvider, standin: StandIn) -> None:
    standin.mode = "429"
    with pytest.raises(LLMError) as info:
        await provider.complete(REQUEST)
    assert info.value.kind == "rate_limited" and info.value.status == 429
    assert info.value.retry_after == pytest.approx(0.01)
    assert len(standin.requests) == 1


async def test_server_error_one_attempt(provider: AnthropicProvider, standin: StandIn) -> None:
    standin.mode = "500"
    with pytest.raises(LLMError) as info:
        await provider.complete(REQUEST)
    assert info.value.kind == "server" and info.value.status == 500 and info.value.retryable
    assert len(standin.requests) == 1


async def test_fail_first_each_call_is_one_attempt(provider: AnthropicProvider, standin: StandIn) -> None:
    standin.fail_first = 1
    with pytest.raises(LLMError):
        await provider.complete(REQUEST)
    await provider.complete(REQUEST)
    assert [r["status"] for r in standin.requests] == [500, 200]


async def test_malformed_text_is_returned_as_is(provider: AnthropicProvider, standin: StandIn) -> None:
    standin.mode = "malformed"
    reply = await provider.complete(REQUEST)
    assert reply.text.startswith("Sure!")
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply.text)


async def test_empty_content_and_unknown_intent(provider: AnthropicProvider, standin: StandIn) -> None:
    standin.mode = "empty"  # no content blocks at all
    assert (await provider.complete(REQUEST)).text == ""
    standin.mode = "unknown_intent"
    assert json.loads((await provider.complete(REQUEST)).text)["intent"] == "WORLD_DOMINATION"


async def test_text_blocks_are_concatenated(provider: AnthropicProvider, standin: StandIn) -> None:
    standin.responder = lambda system, user: {"intent": "OTHER", "note": "x" * 5}
    reply = await provider.complete(REQUEST)
    assert json.loads(reply.text) == {"intent": "OTHER", "note": "xxxxx"}


async def test_missing_key_is_config(monkeypatch: pytest.MonkeyPatch, standin: StandIn) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    p = AnthropicProvider(base_url=standin.anthropic_base_url)
    with pytest.raises(LLMError) as info:
        await p.complete(REQUEST)
    assert info.value.kind == "config" and not info.value.retryable
    assert "ANTHROPIC_API_KEY is not set" in str(info.value)
    assert standin.requests == []
    await p.aclose()


async def test_wrong_key_is_auth_and_key_never_leaks(standin: StandIn,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    standin.accepted_keys = {"test-anthropic-key"}
    p = AnthropicProvider(api_key=KEY, base_url=standin.anthropic_base_url)
    with pytest.raises(LLMError) as info:
        await p.complete(REQUEST)
    await p.aclose()
    assert info.value.kind == "auth" and info.value.status == 401 and not info.value.retryable
    assert KEY not in str(info.value) and KEY not in repr(info.value) and KEY not in repr(p)
    assert info.value.__cause__ is None
    assert KEY not in caplog.text


async def test_key_is_redacted_from_server_messages(provider: AnthropicProvider, standin: StandIn,
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


async def test_connection_refused() -> None:
    p = AnthropicProvider(api_key=KEY, base_url=f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(LLMError) as info:
        await p.complete(REQUEST)
    await p.aclose()
    assert info.value.kind == "connection" and info.value.retryable and info.value.status is None


async def test_environment_is_honoured(monkeypatch: pytest.MonkeyPatch, standin: StandIn) -> None:
    for k, v in standin.env().items():
        monkeypatch.setenv(k, v)
    p = make_provider("anthropic")
    assert isinstance(p, AnthropicProvider)
    reply = await p.complete(REQUEST)
    await p.aclose()
    assert reply.provider == "anthropic" and len(standin.requests) == 1
