"""Anthropic Messages API behind the engine's `LLMProvider` port (one attempt per call)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from adapters.llm import map_sdk_error
from engine.ports import LLMError, LLMReply, LLMRequest


class AnthropicProvider:
    """`LLMProvider` for Anthropic (or any server speaking its Messages API, e.g. the test stand-in).

    The `anthropic` SDK is imported and the client built on the first call. `api_key` / `base_url` default
    to `ANTHROPIC_API_KEY` / `ANTHROPIC_BASE_URL`; the key is always passed explicitly, so the SDK never
    falls back to profiles on disk. SDK retries are off: the engine owns retries.
    """

    name = "anthropic"

    def __init__(self, api_key: str | None = None, base_url: str | None = None) -> None:
        self._api_key = api_key if api_key is not None else os.environ.get("ANTHROPIC_API_KEY")
        self._base_url = base_url if base_url is not None else (os.environ.get("ANTHROPIC_BASE_URL") or None)
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._sdk: Any = None

    def __repr__(self) -> str:
        key = "set" if self._api_key else "missing"
        return f"AnthropicProvider(base_url={self._base_url!r}, api_key={key})"

    def _get_client(self) -> Any:
        """The SDK client, built (and the SDK imported) on first use and again under a new event loop.

        The SDK's connection pool belongs to the loop it was first used in; reusing it from another loop
        fails with connection errors, so a provider used from a second loop gets a fresh client.
        """
        loop = asyncio.get_running_loop()
        if self._client is not None and self._client_loop is not loop:
            self._client = None
        if self._client is None:
            if not self._api_key:
                raise LLMError("config", "ANTHROPIC_API_KEY is not set: set it in the environment or pass "
                                         "api_key to use the anthropic provider.")
            import anthropic

            self._sdk = anthropic
            try:
                self._client = anthropic.AsyncAnthropic(api_key=self._api_key, base_url=self._base_url,
                                                        max_retries=0)
                self._client_loop = loop
            except anthropic.AnthropicError as exc:
                raise map_sdk_error(self.name, anthropic, exc, self._api_key) from None
        return self._client

    async def complete(self, request: LLMRequest) -> LLMReply:
        """Send one Messages request; return the concatenated text blocks, token counts and latency.

        `request.temperature` is not sent: anthropic 2.x's `messages.create` has no sampling parameters.

        Raises `LLMError` (timeout, rate_limited, server, connection, bad_request, auth, config).
        The text is not parsed or checked here: the engine does that.
        """
        client = self._get_client()
        start = time.perf_counter()
        try:
            response = await client.messages.create(
                model=request.model,
                system=request.system,
                messages=[{"role": "user", "content": request.user}],
                max_tokens=request.max_tokens,
                timeout=request.timeout_seconds,
            )
        except self._sdk.AnthropicError as exc:
            raise map_sdk_error(self.name, self._sdk, exc, self._api_key) from None
        latency_ms = (time.perf_counter() - start) * 1000.0
        blocks = response.content or []
        text = "".join(block.text for block in blocks if getattr(block, "type", "") == "text")
        usage = response.usage
        return LLMReply(
            provider=self.name,
            model=response.model or request.model,
            text=text,
            input_tokens=int(usage.input_tokens or 0) if usage else 0,
            output_tokens=int(usage.output_tokens or 0) if usage else 0,
            latency_ms=latency_ms,
        )

    async def aclose(self) -> None:
        """Close the SDK's HTTP client if one was built (safe to call more than once)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()
