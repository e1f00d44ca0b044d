"""Choosing an LLM provider by name, and the helpers the provider adapters share.

The SDKs are imported lazily by the adapters (importing both costs ~1.6 s), so importing this module is
cheap and `make_provider("none")` never touches an SDK.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from collections.abc import Mapping
from typing import Any

from engine.ports import LLMError, LLMErrorKind, LLMProvider

PROVIDERS = ("openai", "anthropic", "none")


def make_provider(name: str, *, api_key: str | None = None,
                  base_url: str | None = None) -> LLMProvider | None:
    """The provider called `name` ("openai", "anthropic"), or None for "none".

    `api_key` / `base_url` default to the SDK's environment variables. Nothing is imported or checked
    until the first call; a missing key then raises `LLMError("config", ...)`.
    """
    if name == "openai":
        from adapters.llm_openai import OpenAIProvider

        return OpenAIProvider(api_key=api_key, base_url=base_url)
    if name == "anthropic":
        from adapters.llm_anthropic import AnthropicProvider

        return AnthropicProvider(api_key=api_key, base_url=base_url)
    if name == "none":
        return None
    raise ValueError(f"unknown LLM provider {name!r}; expected one of: {', '.join(PROVIDERS)}")


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced by `***` (no-op for an empty secret)."""
    return text.replace(secret, "***") if secret else text


def parse_retry_after(headers: Mapping[str, str] | Any) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date); None if absent."""
    if headers is None:
        return None
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        if seconds == seconds and seconds not in (float("inf"), float("-inf")):
            return max(0.0, seconds)
    value = headers.get("retry-after")
    if value:
        try:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return max(0.0, float(email.utils.mktime_tz(parsed)) - time.time())
        except (TypeError, ValueError, OverflowError):
            return None
    return None


def map_sdk_error(provider: str, sdk: Any, exc: BaseException, api_key: str | None) -> LLMError:
    """Translate an openai/anthropic SDK exception (`sdk` is the imported module) into an `LLMError`.

    Both SDKs share the exception names. The key is scrubbed from the message.
    """
    detail = redact(str(exc), api_key) or type(exc).__name__
    if isinstance(exc, sdk.APITimeoutError):
        return LLMError("timeout", f"{provider}: request timed out: {detail}")
    if isinstance(exc, sdk.APIConnectionError):
        return LLMError("connection", f"{provider}: connection failed: {detail}")
    if isinstance(exc, sdk.APIStatusError):
        status = int(exc.status_code)
        kind: LLMErrorKind
        if status in (401, 403) or isinstance(exc, sdk.AuthenticationError | sdk.PermissionDeniedError):
            kind = "auth"
        elif status == 429 or isinstance(exc, sdk.RateLimitError):
            return LLMError("rate_limited", f"{provider}: rate limited (HTTP {status}): {detail}",
                            status=status, retry_after=parse_retry_after(exc.response.headers))
        elif status == 408:
            kind = "timeout"
        elif status >= 500:
            kind = "server"
        else:
            kind = "bad_request"
        return LLMError(kind, f"{provider}: {kind} error (HTTP {status}): {detail}", status=status)
    if isinstance(exc, sdk.APIResponseValidationError):
        status = getattr(exc, "status_code", None)
        return LLMError("server", f"{provider}: unexpected response body: {detail}", status=status)
    if isinstance(exc, sdk.APIError):
        return LLMError("server", f"{provider}: API error: {detail}")
    return LLMError("config", f"{provider}: client error: {detail}")


class SDKProvider:
    """What the OpenAI and Anthropic providers share: keys and base URLs from the SDKs' own
    environment variables, a lazily imported SDK, one client per event loop, SDK errors mapped to
    `LLMError` with the key redacted. Subclasses name the SDK and build its client."""

    name = ""
    key_env = ""
    url_env = ""

    def __init__(self, api_key: str | None = None, base_url: str | None = None) -> None:
        self._api_key = api_key if api_key is not None else os.environ.get(self.key_env)
        self._base_url = base_url if base_url is not None else (os.environ.get(self.url_env) or None)
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._sdk: Any = None

    def __repr__(self) -> str:
        key = "set" if self._api_key else "missing"
        return f"{type(self).__name__}(base_url={self._base_url!r}, api_key={key})"

    def _import_sdk(self) -> Any:
        """The SDK module (imported here, on first use: importing both SDKs costs ~1.6 s)."""
        raise NotImplementedError

    def _new_client(self, sdk: Any) -> Any:
        """A client of the SDK with its own retries off (the engine owns retries)."""
        raise NotImplementedError

    def _error(self, exc: BaseException) -> LLMError:
        return map_sdk_error(self.name, self._sdk, exc, self._api_key)

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
                raise LLMError("config", f"{self.key_env} is not set: set it in the environment or pass "
                                         f"api_key to use the {self.name} provider.")
            self._sdk = self._import_sdk()
            try:
                self._client = self._new_client(self._sdk)
                self._client_loop = loop
            except Exception as exc:  # the SDK's own configuration errors
                raise self._error(exc) from None
        return self._client

    async def aclose(self) -> None:
        """Close the SDK's HTTP client if one was built (safe to call more than once)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()
