"""AutomationTrigger: the executor of TRIGGER_AUTOMATION actions — a POST to a named n8n workflow's webhook.

Only the URLs written in the org's policy are ever called: an action names a workflow, never a URL, so
nothing an event or an LLM says can point the agent anywhere else (and redirects are not followed). Every
attempt carries the action's idempotency key in `Idempotency-Key`, so a workflow can drop a repeat; the
workflow reports back through the n8n webhook (`automation:completed`).

The URL and the auth secret are tenant input: the secret is resolved under the org's own prefix only
(adapters/secrets.py), and the connection goes through the egress-guarded session (adapters/egress.py); a refusal
of either is a permanent failure whose reason is recorded on the action.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from adapters.egress import UNGUARDED, policy_of, refusal_in
from adapters.secrets import SecretRefused, SecretResolver
from engine.loader import OrgBundle
from engine.ports import ActionFailed, ActionJob

TRANSIENT_STATUSES = frozenset({408, 429})
MAX_ANSWER_BYTES = 64 * 1024  # what is kept of a workflow's answer


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _decode(raw: bytes, charset: str | None) -> str:
    try:
        return raw.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return raw.decode("utf-8", errors="replace")


def classify(status: int) -> str:
    """'ok' for 2xx; 'transient' for 408, 429 and 5xx; 'permanent' for the rest (other 4xx, 3xx)."""
    if 200 <= status < 300:
        return "ok"
    if status in TRANSIENT_STATUSES or status >= 500:
        return "transient"
    return "permanent"


class AutomationTrigger:
    """Runs TRIGGER_AUTOMATION: POSTs the decision to the workflow's configured webhook URL."""

    def __init__(self, bundles: Callable[[str], OrgBundle | None], session: Callable[[], aiohttp.ClientSession], *,
                 env: Mapping[str, str] = os.environ, callback_base: str = "",
                 secrets: SecretResolver | None = None) -> None:
        self.bundles = bundles
        self.session = session
        self.secrets = secrets or SecretResolver(env)
        self.callback_base = callback_base.rstrip("/")

    async def run(self, job: ActionJob) -> dict[str, Any]:
        """Call the workflow once; raise `ActionFailed` (permanent or not) unless it answers 2xx."""
        bundle = self.bundles(job.org)
        if bundle is None:
            raise ActionFailed(f"org '{job.org}' has no configuration loaded")
        name = str(job.params.get("workflow") or "")
        automation = bundle.policy.automations.get(name)
        if automation is None:
            known = ", ".join(sorted(bundle.policy.automations)) or "none are defined"
            raise ActionFailed(f"automation '{name}' is not defined in the policy of org '{job.org}' ({known})",
                               permanent=True)
        secret: str | None = None
        headers = {"Content-Type": "application/json", "Idempotency-Key": job.key,
                   "X-Astralis-Decision": job.decision_id, "User-Agent": "astralis-orchestrator"}
        if automation.auth_env:
            try:
                secret = self.secrets.resolve(job.org, automation.auth_env, field=f"automations.{name}.auth_env")
            except SecretRefused as exc:
                raise ActionFailed(f"automation '{name}': {exc}", permanent=True) from None
            headers[automation.auth_header] = secret
        http = self.session()
        if policy_of(http) is None:
            raise ActionFailed(f"automation '{name}': {UNGUARDED}", permanent=True)
        body = json.dumps(self.payload(job, name), default=str)
        started = asyncio.get_running_loop().time()
        try:
            async with http.post(automation.url, data=body, headers=headers, allow_redirects=False,
                                           timeout=aiohttp.ClientTimeout(total=automation.timeout_seconds)) as resp:
                raw = await resp.content.read(MAX_ANSWER_BYTES)
                text = _decode(raw, resp.charset)
                status = resp.status
                wait = retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            raise ActionFailed(f"automation '{name}' did not answer within {automation.timeout_seconds:g} s") from None
        except aiohttp.ClientError as exc:
            refused = refusal_in(exc)
            if refused is not None:  # the destination is not allowed: no retry changes that
                raise ActionFailed(f"automation '{name}' at {automation.url}: {refused}", permanent=True) from None
            # A URL aiohttp cannot use (`http://0`, `http://2130706433`) will not become usable by waiting.
            raise ActionFailed(f"automation '{name}' could not be reached: {type(exc).__name__}: {exc}",
                               permanent=isinstance(exc, aiohttp.InvalidURL)) from None
        if secret:
            # A workflow that echoes its request (n8n's "respond with the first entry") would hand the auth header
            # back: it must not reach the outbox row, the decision's error or the logs.
            text = text.replace(secret, "[redacted]")
        ms = round((asyncio.get_running_loop().time() - started) * 1000, 1)
        kind = classify(status)
        excerpt = text[:500]
        if kind == "ok":
            try:
                answer: Any = json.loads(text) if text else None
            except json.JSONDecodeError:
                answer = excerpt
            return {"workflow": name, "status": status, "answer": answer, "ms": ms}
        message = f"automation '{name}' answered HTTP {status}: {excerpt or '(empty body)'}"
        result = {"workflow": name, "status": status, "answer": excerpt, "ms": ms}
        if kind == "permanent":
            raise ActionFailed(message, permanent=True, result=result)
        raise ActionFailed(message, retry_after=wait, result=result)

    def payload(self, job: ActionJob, name: str) -> dict[str, Any]:
        """What the workflow receives: the decision (without its internal trace), the event, and where to
        report back."""
        decision = job.decision
        summary = None
        if decision is not None:
            summary = decision.model_dump(mode="json", exclude={"trace", "llm"})
        return {"idempotency_key": job.key, "org": job.org, "workflow": name, "decision_id": job.decision_id,
                "decision": summary, "event": job.event, "params": job.params,
                "callback": {"url": f"{self.callback_base}/api/webhooks/{job.org}/n8n",
                             "correlation": {"decision_id": job.decision_id, "action": job.key}}}
