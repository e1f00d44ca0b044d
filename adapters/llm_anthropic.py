"""Anthropic Messages API behind the engine's `LLMProvider` port (one attempt per call)."""

from __future__ import annotations

import time
from typing import Any

from adapters.llm import SDKProvider
from engine.ports import LLMReply, LLMRequest


class AnthropicProvider(SDKProvider):
    """`LLMProvider` for Anthropic (or any server speaking its Messages API, e.g. the test stand-in).

    The `anthropic` SDK is imported and the client built on the first call. `api_key` / `base_url` default
    to `ANTHROPIC_API_KEY` / `ANTHROPIC_BASE_URL`; the key is always passed explicitly, so the SDK never
    falls back to profiles on disk. SDK retries are off: the engine owns retries.
    """

    name = "anthropic"

    key_env = "ANTHROPIC_API_KEY"
    url_env = "ANTHROPIC_BASE_URL"

    def _import_sdk(self) -> Any:
        import anthropic

        return anthropic

    def _new_client(self, sdk: Any) -> Any:
        return sdk.AsyncAnthropic(api_key=self._api_key, base_url=self._base_url, max_retries=0)

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
            raise self._error(exc) from None
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
