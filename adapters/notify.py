"""NotificationDispatcher: the executor of SEND_NOTIFICATION and ESCALATE actions — in-app rows, SMTP email and
a signed outbound webhook.

Delivery is at-least-once and recognisable as such: in-app rows are unique per (action key, user), so a re-run
inserts nothing new; an email carries a Message-ID made from the action key and the recipient's position, so a
message sent again after a crash is the same message to any client that de-duplicates; the webhook carries the
action key as `Idempotency-Key`. Configuration that cannot work (a missing secret or SMTP password variable) is
checked before anything is delivered, so a permanent failure never leaves half a notification behind.

Non-urgent notifications wait for `notifications.delay_minutes` after the decision and, with
`business_hours_only`, for the org's next opening (`ActionDeferred`); priority 5, `immediate` and escalations go
at once.

The SMTP host, the webhook URL and the secrets are tenant input: secrets resolve under the org's own prefix only
(adapters/secrets.py); the SMTP server and the webhook are reached through the egress policy (adapters/egress.py),
which checks the address actually connected to. A refusal is a permanent failure, recorded on the action.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import aiosmtplib

from adapters import egress
from adapters.automations import classify, retry_after
from adapters.secrets import SecretRefused, SecretResolver
from engine.config import EmailSettings, OrgConfig, Policy, User
from engine.loader import OrgBundle
from engine.plan import work_hours
from engine.ports import ActionDeferred, ActionFailed, ActionJob
from engine.templates import build_context, render
from server.signing import HEADER, sign  # stdlib-only module: importing it does not pull in the server

log = logging.getLogger("astralis.notify")

TYPES = ("SEND_NOTIFICATION", "ESCALATE")
RENDER_TIMEOUT = 5.0
"""Seconds to wait for one rendering in its thread (compiling a template included); the template's own deadline
(engine.templates.RENDER_SECONDS) ends the work long before."""
CALENDAR_TYPES = ("CREATE_EVENT", "UPDATE_EVENT", "CANCEL_EVENT")
_EMAIL = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+$")


def notification_id(key: str, user_id: str) -> str:
    """The in-app notification id of one user under one action: stable, so a re-run finds the same row."""
    return "ntf_" + hashlib.sha256(f"{key}|{user_id}".encode()).hexdigest()[:20]


def message_id(key: str, index: int) -> str:
    """The Message-ID of the `index`-th email of an action. ':' is not allowed in a Message-ID (mail parsers cut
    the id there), so the key's separator becomes '.'."""
    return f"<{key.replace(':', '.')}.{index}@astralis>"


def next_opening(when: datetime, org: OrgConfig) -> datetime:
    """`when` if the org is open then, else the start of its next business hours (UTC)."""
    hours = work_hours(org)
    tz = ZoneInfo(org.timezone)
    local = when.astimezone(tz)
    for offset in range(8):
        day = local.date() + timedelta(days=offset)
        if day.weekday() not in hours.days:
            continue
        start, end = hours.window(day.weekday())
        opens = datetime.combine(day, start, tz)
        closes = datetime.combine(day, end, tz)
        if offset == 0 and opens <= local < closes:
            return when
        if local < opens:
            return opens.astimezone(UTC)
    raise ValueError(f"org '{org.org}' has no business hours in the coming week")  # days is never empty


def due(job: ActionJob, policy: Policy, org: OrgConfig, now: datetime) -> tuple[datetime, str] | None:
    """When a notification may go and why it waits, or None when it goes now. Priority 5, `immediate` and
    escalations never wait."""
    priority = job.params.get("priority", 3)
    if job.type == "ESCALATE" or job.params.get("immediate") or (isinstance(priority, int) and priority >= 5):
        return None
    settings = policy.notifications
    created = getattr(job.decision, "created_at", None) or now
    target = max(now, created + timedelta(minutes=settings.delay_minutes))
    reasons = []
    if target > now:
        reasons.append(f"non-urgent notifications wait {settings.delay_minutes} min after the decision")
    if settings.business_hours_only:
        opening = next_opening(target, org)
        if opening > target:
            reasons.append(f"non-urgent notifications wait for business hours ({org.timezone})")
        target = opening
    if target <= now:
        return None
    return target, f"priority {priority}: " + "; ".join(reasons)


@dataclass
class _Delivery:
    """Who one action reaches, per channel, and who it skips."""

    in_app: list[User] = field(default_factory=list)
    email: list[tuple[str, User | None]] = field(default_factory=list)  # (address, user or None for a guest)
    webhook: bool = False
    users: list[User] = field(default_factory=list)  # the org's users among the recipients
    skipped: list[dict[str, str]] = field(default_factory=list)
    address: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.in_app or self.email or self.webhook)


class NotificationDispatcher:
    """Runs SEND_NOTIFICATION and ESCALATE: renders the template per recipient and delivers it through the
    policy's channels (in_app, email, webhook)."""

    types = TYPES

    def __init__(self, store: Any, bundles: Callable[[str], OrgBundle | None],
                 session: Callable[[], aiohttp.ClientSession], *, env: Mapping[str, str] = os.environ,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC), secrets: SecretResolver | None = None) -> None:
        self.store = store
        self.bundles = bundles
        self.session = session
        self.secrets = secrets or SecretResolver(env)
        self.clock = clock

    async def run(self, job: ActionJob) -> dict[str, Any]:
        """Deliver once per recipient and channel; `ActionDeferred` when it is too early, `ActionFailed`
        (permanent or not) when a delivery fails."""
        if job.type not in TYPES:
            raise ActionFailed(f"NotificationDispatcher cannot run {job.type} actions", permanent=True)
        bundle = self.bundles(job.org)
        if bundle is None:
            raise ActionFailed(f"org '{job.org}' has no configuration loaded")
        org, policy = bundle.org, bundle.policy
        now = self.clock()
        wait = due(job, policy, org, now)
        if wait is not None:
            raise ActionDeferred(*wait)

        template = self._template(job)
        plan = self._plan(job, org, policy)
        if plan.empty:
            why = "; ".join(f"{s['recipient']}: {s['reason']}" for s in plan.skipped) or "no recipients given"
            raise ActionFailed(f"notification '{template}' of {job.key} has no deliverable recipient ({why})",
                               permanent=True, result={"template": template, "skipped": plan.skipped})
        guard = egress.policy_of(self.session()) if plan.webhook or plan.email else None
        if (plan.webhook or plan.email) and guard is None:
            raise ActionFailed(f"notification '{template}' of {job.key}: {egress.UNGUARDED}", permanent=True,
                               result={"template": template, "skipped": plan.skipped})
        secret = self._webhook_secret(job.org, policy) if plan.webhook else None
        credentials = self._smtp_credentials(job.org, policy.notifications.email) if plan.email else (None, None)

        earlier = await self.store.list_actions(job.org, job.decision_id) if job.decision_id else []
        booking, calendar_row = _booking(earlier, job.params)
        invite = await self._invitation(job, bundle, calendar_row) if plan.email and job.params.get("attach_ics") else None
        ctx = build_context(org, params=job.params, decision=job.decision, event=job.event, booking=booking,
                            assignment=_assignment(earlier),
                            threshold=policy.threshold(job.decision.decision_type) if job.decision else None,
                            extra={k: job.params[k] for k in ("reason", "failed_action", "error") if k in job.params})
        errors: list[str] = []

        async def text(user: User | None, *, email: bool, guest: str | None = None) -> tuple[str, str]:
            who = {"id": user.id, "name": user.name, "email": user.email, "role": user.role} if user else None
            extra = {"user": who, "attached": email and invite is not None}
            if guest:
                extra["recipient"] = guest
            # A tenant's template renders in a worker thread, never on the event loop; its own limits (operations,
            # deadline, sizes: engine/templates.py) end it, the timeout here only stops waiting for it.
            try:
                return await asyncio.wait_for(asyncio.to_thread(
                    render, template, policy.notifications.templates, {**ctx, **extra}, errors), RENDER_TIMEOUT)
            except TimeoutError:
                raise ActionFailed(f"template '{template}' did not render within {RENDER_TIMEOUT:g} s") from None

        result: dict[str, Any] = {"template": template, "in_app": [], "email": [], "webhook": None,
                                  "skipped": plan.skipped}
        if plan.in_app:
            rows = []
            for user in plan.in_app:
                subject, body = await text(user, email=False)
                rows.append({"org": job.org, "id": notification_id(job.key, user.id), "user_id": user.id,
                             "template": template, "subject": subject, "body": body,
                             "priority": _priority(job.params), "decision_id": job.decision_id})
            stored = await self.store.add_notifications(rows, job.key)
            result["in_app"] = [r["id"] for r in stored]
        if plan.email:
            assert policy.notifications.email is not None  # _plan only lists emails when it is configured
            messages = []
            for i, (address, user) in enumerate(plan.email):
                subject, body = await text(user, email=True, guest=None if user else address)
                messages.append(self._message(job, policy.notifications.email, address, i, subject, body, invite))
            assert guard is not None
            result["email"] = await self._send(guard, policy.notifications.email, credentials, messages, result)
            if invite is not None:
                result["attachment"] = "invite.ics"
        if plan.webhook:
            assert policy.notifications.webhook is not None and secret is not None
            subject, body = await text(None, email=False)
            result["webhook"] = await self._post(job, policy, secret, template, subject, body, plan, result)
        if errors:
            result["template_errors"] = list(dict.fromkeys(errors))
        log.info("notification %s (%s) delivered: %d in-app, %d email, webhook %s", job.key, template,
                 len(result["in_app"]), len(result["email"]), result["webhook"])
        return result

    # ---- who and what ---------------------------------------------------------------------------------------

    @staticmethod
    def _template(job: ActionJob) -> str:
        if job.type == "ESCALATE":
            return str(job.params.get("template") or ("action_failed" if job.params.get("failed_action") else "escalation"))
        return str(job.params.get("template") or "notice")

    @staticmethod
    def _plan(job: ActionJob, org: OrgConfig, policy: Policy) -> _Delivery:
        settings = policy.notifications
        channels = set(settings.channels)
        if job.type == "ESCALATE":
            channels.add("in_app")  # an escalation always shows in the app, whatever else is configured
        plan = _Delivery()
        users: list[User] = []
        for uid in dict.fromkeys(str(u) for u in job.params.get("to") or []):
            user = org.user(uid)
            if user is None:
                plan.skipped.append({"recipient": uid, "reason": f"not a user of org '{org.org}'"})
            else:
                users.append(user)
        if "in_app" in channels:
            plan.in_app = list(users)
        if "email" in channels and settings.email is not None:
            plan.email = [(u.email, u) for u in users]
        plan.users = users
        # The webhook stands for the org's people: it hears of what reaches users (and every escalation),
        # not of a confirmation that goes to a guest only.
        plan.webhook = "webhook" in channels and settings.webhook is not None and bool(users or job.type == "ESCALATE")
        extra = [str(a) for a in job.params.get("to_email") or []]
        if job.type == "ESCALATE" and job.params.get("address"):
            plan.address = str(job.params["address"])
            extra.insert(0, plan.address)
        taken = {a.lower() for a, _ in plan.email}
        for address in dict.fromkeys(extra):
            if not _EMAIL.match(address):
                plan.skipped.append({"recipient": address, "reason": "not an email address"})
            elif settings.email is None:
                plan.skipped.append({"recipient": address, "reason": "the policy configures no email "
                                     "(notifications.email)"})
            elif address.lower() not in taken:
                plan.email.append((address, None))
                taken.add(address.lower())
        return plan

    async def _invitation(self, job: ActionJob, bundle: OrgBundle,
                          row: dict[str, Any] | None) -> tuple[bytes, str] | None:
        """The calendar invitation of the decision's calendar action and its method (REQUEST, or CANCEL), or
        None when the decision booked nothing."""
        if row is None or not isinstance(row.get("result"), dict) or not row["result"].get("event_id"):
            return None
        get = getattr(self.store, "get_calendar_event", None)
        try:
            from adapters.ics import event_ics
        except ImportError:
            event_ics = None  # type: ignore[assignment]
        if get is None or event_ics is None:
            raise ActionFailed("attach_ics needs store.get_calendar_event and adapters.ics.event_ics, which this "
                               "installation does not have", permanent=True)
        event_id = str(row["result"]["event_id"])
        event = await get(job.org, event_id)
        if event is None:
            raise ActionFailed(f"calendar event {event_id} (booked by {row.get('key')}) does not exist, so there "
                               "is no invitation to attach", permanent=True)
        cancelled = row.get("type") == "CANCEL_EVENT" or getattr(event, "status", "") == "cancelled"
        method = "CANCEL" if cancelled else "REQUEST"
        return bytes(event_ics(event, org=bundle.org, method=method)), method

    # ---- email ----------------------------------------------------------------------------------------------

    def _smtp_credentials(self, org: str, settings: EmailSettings | None) -> tuple[str | None, str | None]:
        if settings is None:
            return None, None
        values: list[str | None] = []
        for key in ("username_env", "password_env"):
            name = getattr(settings, key)
            if name is None:
                values.append(None)
                continue
            try:
                values.append(self.secrets.resolve(org, name, field=f"notifications.email.{key} (SMTP login)"))
            except SecretRefused as exc:
                raise ActionFailed(str(exc), permanent=True) from None
        return values[0], values[1]

    def _message(self, job: ActionJob, settings: EmailSettings, to: str, index: int, subject: str, body: str,
                 invite: tuple[bytes, str] | None) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = settings.from_address
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = format_datetime(self.clock())
        msg["Message-ID"] = message_id(job.key, index)
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: out-of-office robots must not answer
        msg["X-Astralis-Decision"] = job.decision_id
        if _priority(job.params) >= 5:
            msg["X-Priority"] = "1"
            msg["Importance"] = "high"
        msg.set_content(body)
        if invite is not None:
            data, method = invite
            msg.add_attachment(data, maintype="text", subtype="calendar", filename="invite.ics",
                               params={"method": method, "charset": "utf-8"})
        return msg

    async def _send(self, guard: egress.EgressPolicy, settings: EmailSettings,
                    credentials: tuple[str | None, str | None], messages: list[EmailMessage],
                    result: dict[str, Any]) -> list[str]:
        """Send every message over one SMTP connection (to an address the egress policy checked; the host name is
        kept for TLS); the addresses delivered to."""
        sent: list[str] = []
        where = f"SMTP server {settings.host}:{settings.port}"
        try:
            async with asyncio.timeout(settings.timeout_seconds):
                sock = await egress.connect(guard, settings.host, settings.port)
        except egress.EgressRefused as exc:
            raise ActionFailed(f"{where}: {exc}", permanent=True, result=result) from None
        except (OSError, TimeoutError) as exc:
            raise ActionFailed(f"{where}: {type(exc).__name__}: {exc}", result=result) from None
        try:
            smtp = aiosmtplib.SMTP(hostname=settings.host, sock=sock, username=credentials[0],
                                   password=credentials[1], use_tls=settings.use_tls,
                                   start_tls=settings.starttls if not settings.use_tls else False,
                                   timeout=settings.timeout_seconds)
        except BaseException:
            sock.close()
            raise
        try:
            async with smtp:
                for msg in messages:
                    await smtp.send_message(msg)
                    sent.append(str(msg["To"]))
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
            raise ActionFailed(f"{where} refused the recipient ({detail})", permanent=any(c >= 500 for c in codes),
                               result={**result, "email": sent}) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise ActionFailed(f"{where} answered {exc.code} {exc.message}", permanent=exc.code >= 500,
                               result={**result, "email": sent}) from None
        except (aiosmtplib.SMTPNotSupported, aiosmtplib.SMTPException, OSError) as exc:
            # Connection refused, timeouts, a dropped connection: worth another try. A missing STARTTLS is a
            # configuration error that no retry fixes.
            permanent = isinstance(exc, aiosmtplib.SMTPNotSupported)
            raise ActionFailed(f"{where}: {type(exc).__name__}: {exc}", permanent=permanent,
                               result={**result, "email": sent}) from None
        return sent

    # ---- webhook --------------------------------------------------------------------------------------------

    def _webhook_secret(self, org: str, policy: Policy) -> str:
        hook = policy.notifications.webhook
        assert hook is not None
        try:
            return self.secrets.resolve(org, hook.secret_env, field="notifications.webhook.secret_env (signing secret)")
        except SecretRefused as exc:
            raise ActionFailed(str(exc), permanent=True) from None

    async def _post(self, job: ActionJob, policy: Policy, secret: str, template: str, subject: str, body: str,
                    plan: _Delivery, result: dict[str, Any]) -> int:
        hook = policy.notifications.webhook
        assert hook is not None
        payload: dict[str, Any] = {"id": job.key, "org": job.org, "type": job.type, "template": template,
                                   "subject": subject, "body": body, "priority": _priority(job.params),
                                   "to": [u.id for u in plan.users], "decision_id": job.decision_id}
        if plan.address:
            payload["address"] = plan.address
        raw = json.dumps(payload, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", HEADER: sign(secret, raw, int(self.clock().timestamp())),
                   "Idempotency-Key": job.key, "User-Agent": "astralis-orchestrator"}
        try:
            async with self.session().post(hook.url, data=raw, headers=headers, allow_redirects=False,
                                           timeout=aiohttp.ClientTimeout(total=hook.timeout_seconds)) as resp:
                text = await resp.text(errors="replace")
                status = resp.status
                wait = retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            raise ActionFailed(f"notification webhook {hook.url} did not answer within {hook.timeout_seconds:g} s",
                               result=result) from None
        except aiohttp.ClientError as exc:
            refused = egress.refusal_in(exc)
            if refused is not None:  # the destination is not allowed: no retry changes that
                raise ActionFailed(f"notification webhook {hook.url}: {refused}", permanent=True, result=result) from None
            raise ActionFailed(f"notification webhook {hook.url} could not be reached: {type(exc).__name__}: {exc}",
                               permanent=isinstance(exc, aiohttp.InvalidURL), result=result) from None
        kind = classify(status)
        if kind == "ok":
            return status
        message = f"notification webhook {hook.url} answered HTTP {status}: {text[:300] or '(empty body)'}"
        raise ActionFailed(message, permanent=kind == "permanent", retry_after=wait,
                           result={**result, "webhook": status})


def _priority(params: Mapping[str, Any]) -> int:
    p = params.get("priority", 3)
    return p if isinstance(p, int) and not isinstance(p, bool) else 3


def _booking(earlier: list[dict[str, Any]], params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """What the decision's calendar action actually booked (its params overlaid with its result: the time may
    have moved), and its outbox row; from the action's own `start` when there is none."""
    row = next((r for r in reversed(earlier) if r.get("type") in CALENDAR_TYPES and r.get("status") == "done"), None)
    if row is None:
        return ({"start": params["start"], "status": "booked"} if params.get("start") else {}), None
    booked = {k: v for k, v in (row.get("params") or {}).items() if k in ("host", "start", "end", "title")}
    if row.get("type") == "UPDATE_EVENT" and (row.get("params") or {}).get("previous_start"):
        booked["previous_start"] = row["params"]["previous_start"]
    booked.update(row.get("result") or {})
    booked.setdefault("status", {"UPDATE_EVENT": "updated", "CANCEL_EVENT": "cancelled"}.get(row["type"], "booked"))
    return booked, row


def _assignment(earlier: list[dict[str, Any]]) -> dict[str, Any]:
    row = next((r for r in earlier if r.get("type") == "ASSIGN_PIPELINE"), None)
    if row is None:
        return {}
    return {**(row.get("params") or {}), **(row.get("result") or {})}
