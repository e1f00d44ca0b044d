"""OpenAI Chat Completions behind the engine's `LLMProvider` port (JSON mode, one attempt per call)."""

from __future__ import annotations

import time
from typing import Any

from adapters.llm import SDKProvider
from engine.ports import LLMReply, LLMRequest


class OpenAIProvider(SDKProvider):
    """`LLMProvider` for OpenAI (or any server speaking its Chat Completions API, e.g. the test stand-in).

    The `openai` SDK is imported and the client built on the first call. `api_key` / `base_url` default to
    `OPENAI_API_KEY` / `OPENAI_BASE_URL`. SDK retries are off: the engine owns retries.
    """

    name = "openai"

    key_env = "OPENAI_API_KEY"
    url_env = "OPENAI_BASE_URL"

    def _import_sdk(self) -> Any:
        import openai

        return openai

    def _new_client(self, sdk: Any) -> Any:
        return sdk.AsyncOpenAI(api_key=self._api_key, base_url=self._base_url, max_retries=0)

    async def complete(self, request: LLMRequest) -> LLMReply:
        """Send one chat completion in JSON mode; return the raw text, token counts and latency.

        Raises `LLMError` (timeout, rate_limited, server, connection, bad_request, auth, config).
        The text is not parsed or checked here: the engine does that.
        """
        client = self._get_client()
        start = time.perf_counter()
        try:
            response = await client.chat.completions.create(
                model=request.model,
                messages=[{"role": "system", "content": request.system},
                          {"role": "user", "content": request.user}],
                temperature=request.temperature,
                max_tokens=request.max_tokens,
                response_format={"type": "json_object"},
                timeout=request.timeout_seconds,
            )
        except self._sdk.OpenAIError as exc:
            raise self._error(exc) from None
        latency_ms = (time.perf_counter() - start) * 1000.0
        text = ""
        if response.choices:
            text = response.choices[0].message.content or ""
        usage = response.usage
        return LLMReply(
            provider=self.name,
            model=response.model or request.model,
            text=text,
            input_tokens=int(usage.prompt_tokens or 0) if usage else 0,
            output_tokens=int(usage.completion_tokens or 0) if usage else 0,
            latency_ms=latency_ms,
        )
