"""A local LLM stand-in that speaks the OpenAI Chat Completions and Anthropic Messages wire protocols.

It runs aiohttp on 127.0.0.1 (a free port) in a daemon thread with its own event loop, so sync tests,
async tests and CLI subprocesses (through `StandIn.env()`) can all use it. Its default `responder` is a
deterministic keyword classifier that plays the part of a good model: it answers the engine's JSON
shape and ignores instructions embedded in the event data.

Run it by hand with `python -m tests.standin` (prints the environment to export, serves until Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

MODES = ("ok", "timeout", "429", "500", "malformed", "unknown_intent", "empty")
MALFORMED_TEXT = "Sure! Here is the answer: {intent: SALES"
TEST_OPENAI_KEY = "test-openai-key"
TEST_ANTHROPIC_KEY = "test-anthropic-key"

_SECRET_HEADERS = frozenset({"authorization", "x-api-key"})

Responder = Callable[[str, str], dict[str, Any]]


# --------------------------------------------------------------------------------------------------
# The default responder: a keyword classifier standing in for a good model
# --------------------------------------------------------------------------------------------------

_EVENT_RE = re.compile(r"^[ \t]*<<<EVENT DATA[ \t]*\r?\n(.*?)^[ \t]*EVENT DATA>>>[ \t]*$", re.S | re.M)

_LABELS = r"(urgent|high|critical|important|priority|spam|sales|support|billing|partnership|project|" \
          r"scheduling|other|intent|p[1-5])"
_INJECTION = [
    re.compile(r"\b(ignore|disregard|forget|override|bypass)\b[^.!?\n]{0,60}"
               r"\b(instructions?|prompts?|rules?|previous|above|prior|guidelines?)\b"),
    re.compile(r"\b(mark|classify|label|tag|treat|flag|categori[sz]e|route|escalate|consider)\b[^.!?\n]{0,40}"
               r"\bas\b[^.!?\n]{0,20}\b" + _LABELS + r"\b"),
    re.compile(r"\b(set|change|raise|make)\b[^.!?\n]{0,20}\bpriority\b"),
    re.compile(r"\bpriority\s*[:=]\s*\d"),
    re.compile(r"\byou are (now|an?)\b|\bact as\b|\bsystem prompt\b|\bnew instructions\b"),
    re.compile(r"\b(respond|reply|answer|output|return)\b[^.!?\n]{0,30}\bjson\b"),
    re.compile(r"\b(sales_inquiry|support_request|billing_question|world_domination)\b"),
]

_P = tuple[str, int]
_SIGNALS: dict[str, list[_P]] = {
    "BILLING_QUESTION": [
        (r"\binvoices?\b", 3), (r"\brefund(s|ed)?\b", 3), (r"\b(over|double[- ]?)?charg(e|es|ed|ing)\b", 3),
        (r"\bbill(ing|ed)?\b", 3), (r"\bpayments?\b", 2), (r"\breceipts?\b", 2), (r"\bcredit card\b", 2),
        (r"\boverdue\b", 2), (r"\bsubscription\b", 1), (r"\bpaid\b", 1), (r"\bvat\b", 1),
        (r"\bstatement\b", 1),
    ],
    "SALES_INQUIRY": [
        (r"\bpric(e|es|ing)\b", 3), (r"\bquot(e|es|ation)\b", 3), (r"\bdemo\b", 4), (r"\bbuy(ing)?\b", 3),
        (r"\bpurchas(e|ing)\b", 3), (r"\bhow much\b", 3), (r"\bcosts?\b", 2), (r"\bplans?\b", 1),
        (r"\blicen[cs]es?\b", 2), (r"\b(free )?trial\b", 2), (r"\binterested in\b", 2), (r"\bdiscount\b", 2),
        (r"\bsales\b", 2), (r"\benterprise\b", 1), (r"\bseats\b", 1),
    ],
    "SUPPORT_REQUEST": [
        (r"\bbroken\b|\bbroke\b", 3), (r"\berrors?\b", 3),
        (r"\b(can'?t|cannot|can not|unable to|not able to)\s+(log ?in|login|sign ?in|access|open|connect|"
         r"upload|download|save|reset)\b", 4),
        (r"\b(not|isn'?t|doesn'?t|don'?t|stopped|won'?t) work(ing)?\b", 3), (r"\bhelp\b", 1),
        (r"\bbugs?\b", 3), (r"\bcrash(es|ed|ing)?\b", 3), (r"\bissues?\b", 1), (r"\bproblems?\b", 2),
        (r"\bfix\b", 2), (r"\b(password reset|reset (my )?password|locked out)\b", 3),
        (r"\b(is|are|went|was|goes) (completely |totally |still )?down\b", 3), (r"\boutage\b", 3),
        (r"\bsupport\b", 1), (r"\btroubleshoot\w*\b", 3), (r"\bfail(s|ed|ing|ure)?\b", 2),
    ],
    "PARTNERSHIP": [
        (r"\bpartner(s|ship|ships|ing)?\b", 3), (r"\bresell(er|ers|ing)?\b", 3), (r"\baffiliates?\b", 3),
        (r"\bcollaborat\w*", 3), (r"\bjoint venture\b", 3), (r"\bco-?marketing\b", 3),
        (r"\breferral (program|partner)\b", 2), (r"\bwhite[- ]label\b", 2),
    ],
    "PROJECT": [
        (r"\bweb ?sites?\b", 1), (r"\bapps?\b", 1), (r"\bbuild(ing)?\b", 2), (r"\bredesign\w*\b", 3),
        (r"\bnew (web ?site|site|app|platform|store|shop|portal)\b", 2), (r"\bprojects?\b", 3),
        (r"\bproposals?\b", 3), (r"\b(scope|statement of work|sow|rfp)\b", 3), (r"\bdevelop(ment)?\b", 2),
        (r"\bmigrat(e|ion)\b", 1), (r"\be-?commerce\b", 1), (r"\blanding pages?\b", 2), (r"\btimeline\b", 1),
        (r"\bbudget\b", 1),
    ],
    "SCHEDULING": [
        (r"\bmeet(ing|ings)?\b", 2), (r"\bschedul(e|ed|ing)\b", 2), (r"\breschedul\w*", 4),
        (r"\bappointments?\b", 3), (r"\bcall (on|at|next|this|tomorrow|today)\b", 3),
        (r"\b(availability|available)\b", 2), (r"\bcalendar\b", 2),
        (r"\bbook (a|an|some) (time|slot|call|meeting|session)\b", 3), (r"\btime ?slots?\b", 2),
        (r"\b(monday|tuesday|wednesday|thursday|friday|saturday|sunday)\b", 1),
        (r"\btomorrow at\b", 2), (r"\b\d{1,2}(:\d\d)? ?(am|pm)\b", 1),
        (r"\b(zoom|google meet|teams call)\b", 2),
    ],
    "SPAM": [
        (r"\bunsubscribe\b", 4), (r"\bnewsletter\b", 3), (r"\bout of (the )?office\b", 5),
        (r"\bauto(matic)?[- ]?repl(y|ies)\b", 5), (r"\blottery\b", 5), (r"\bcrypto(currency)?\b", 4),
        (r"\bbitcoin\b", 4), (r"\bseo (services?|agency|experts?|packages?)\b", 5),
        (r"\bfirst page of google\b", 5), (r"\brank(ing)? (higher|#1|number one|on google)\b", 4),
        (r"\byou (have |'ve )?won\b", 4), (r"\bclaim your (prize|reward|winnings)\b", 5),
        (r"\bguaranteed (results|traffic|returns|ranking)\b", 4), (r"\bclick here\b", 2),
        (r"\blimited[- ]time offer\b", 3), (r"\b(viagra|casino)\b", 5), (r"\binheritance\b", 4),
        (r"\bbacklinks?\b", 4), (r"\b(i will be|i'll be|i am) (back|returning) on\b", 3),
    ],
}
_COMPILED = {intent: [(re.compile(p), w) for p, w in pats] for intent, pats in _SIGNALS.items()}
_TIE_ORDER = ["SPAM", "BILLING_QUESTION", "SUPPORT_REQUEST", "SALES_INQUIRY", "PARTNERSHIP", "PROJECT",
              "SCHEDULING"]

_URGENT = re.compile(
    r"\b(urgent(ly)?|emergency|asap|a\.s\.a\.p|immediately|right away|as soon as possible|critical|outage)\b"
    r"|\b(is|are|was|went|been|goes|be) (completely |totally |still )?down\b"
    r"|\b(site|website|server|system|app|store|checkout|email) (is )?down\b"
    r"|\bdown (since|for (hours|days|the|over)|again)\b")
_NEGATION = re.compile(r"\b(not|no|nothing|never|non|without)\b|n't\b")

_ENTITY_RES = {
    "emails": re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    "urls": re.compile(r"https?://[^\s<>\"')]+"),
    "phones": re.compile(r"(?<![\w/])\+?\d[\d ()-]{7,}\d(?![\w/])"),
    "amounts": re.compile(r"[$€£]\s?\d[\d,]*(?:\.\d+)?(?:k\b|m\b)?"
                          r"|\b\d[\d,]*(?:\.\d+)?\s?(?:usd|eur|gbp|dollars|euros)\b", re.I),
    "invoice_numbers": re.compile(r"\b(?:invoice|inv)\s*(?:#|no\.?|number)?\s*:?\s*([A-Z]*-?\d[\w-]*)", re.I),
    "dates": re.compile(
        r"\b\d{4}-\d{2}-\d{2}\b|\b\d{1,2}/\d{1,2}(?:/\d{2,4})?\b"
        r"|\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.? \d{1,2}(?:st|nd|rd|th)?\b"
        r"|\b(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday|tomorrow|today)\b", re.I),
}


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def event_text(user: str) -> str:
    """The event's text: what sits between the `<<<EVENT DATA` and `EVENT DATA>>>` lines, else `user`."""
    m = _EVENT_RE.search(user)
    return m.group(1) if m else user


def strip_injections(text: str) -> str:
    """Drop the sentences of `text` that try to instruct the model (a good model classifies, never obeys)."""
    parts = re.split(r"(?<=[.!?])\s+|\n+", text)
    return "\n".join(p for p in parts if not any(rx.search(p.lower()) for rx in _INJECTION))


def is_urgent(text: str) -> bool:
    """True when `text` has an urgency word (urgent, asap, down, outage, ...) not negated in its clause."""
    low = text.lower()
    for m in _URGENT.finditer(low):
        clause = re.split(r"[,.;:!?\n]", low[:m.start()])[-1]
        if not _NEGATION.search(" ".join(clause.split()[-4:])):
            return True
    return False


def extract_entities(text: str) -> dict[str, list[str]]:
    """Emails, URLs, phones, amounts, invoice numbers and dates found in `text` (only the kinds present)."""
    found: dict[str, list[str]] = {}
    for kind, rx in _ENTITY_RES.items():
        values: list[str] = []
        for m in rx.finditer(text):
            value = (m.group(1) if rx.groups else m.group(0)).strip()
            if kind == "urls":
                value = value.rstrip(".,;:!?")
            if kind == "phones" and (_ISO_DATE.fullmatch(value) or sum(c.isdigit() for c in value) < 7):
                continue
            if value and value not in values:
                values.append(value)
        if values:
            found[kind] = values
    return found


def classify(system: str, user: str) -> dict[str, Any]:
    """The default responder: classify the event in `user` as a good model would, as the engine's JSON.

    Returns `{"intent", "confidence", "priority", "reasoning", "entities"}`. Deterministic; `system` is
    ignored, and so are instructions inside the event data.
    """
    text = strip_injections(event_text(user))
    low = text.lower()
    scores: dict[str, int] = {}
    hits: dict[str, list[str]] = {}
    for intent, pats in _COMPILED.items():
        for rx, weight in pats:
            found = [m.group(0) for m in rx.finditer(low)]
            if found:
                scores[intent] = scores.get(intent, 0) + weight * min(len(found), 2)
                hits.setdefault(intent, []).extend(dict.fromkeys(found))
    ranked = sorted(scores, key=lambda i: (-scores[i], _TIE_ORDER.index(i)))
    urgent = is_urgent(text)
    if not ranked:
        intent, confidence = "OTHER", 0.35
        reasoning = "The message has no clear sales, support, billing, partnership, project, scheduling or " \
                    "spam signals."
    else:
        intent = ranked[0]
        top = scores[intent]
        second = scores[ranked[1]] if len(ranked) > 1 else 0
        strength = min(1.0, top / 6)
        separation = (top - second) / top
        confidence = round(0.45 + 0.5 * strength * (0.4 + 0.6 * separation), 2)
        words = ", ".join(f"'{w}'" for w in hits[intent][:3])
        reasoning = f"The message mentions {words}, which points to {intent}"
        reasoning += " and it asks for urgent attention." if urgent and intent != "SPAM" else "."
    priority = 5 if urgent and intent != "SPAM" else 3
    return {"intent": intent, "confidence": confidence, "priority": priority, "reasoning": reasoning,
            "entities": extract_entities(text)}


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------

def _text_of(content: Any) -> str:
    """Text of a message `content`: a string, or a list of blocks/parts with `text`."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return ""


def _words(text: str) -> int:
    return len(text.split())


class StandIn:
    """Context manager: `with StandIn() as s: ...` starts aiohttp on 127.0.0.1:0 in a daemon thread.

    Attributes are settable at any time from the test's thread: `mode` (see `MODES`), `fail_first`
    (the next N authorised requests get a 500), `delay` (seconds slept in "timeout" mode), `responder`
    ((system, user) -> the JSON object the model answers) and `accepted_keys` (None: any non-empty key).
    `requests` records every request: path, model, system, user, headers (minus credentials), body, status.
    """

    def __init__(self, *, mode: str = "ok", delay: float = 30.0, responder: Responder | None = None) -> None:
        self.mode = mode
        self.fail_first = 0
        self.delay = delay
        self.responder: Responder = responder or classify
        self.accepted_keys: set[str] | None = None
        self.requests: list[dict[str, Any]] = []
        self.port = 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    # -- configuration -----------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """How the next requests are answered: one of `MODES`."""
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"unknown stand-in mode {value!r}; expected one of {', '.join(MODES)}")
        self._mode = value

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`, the server's root."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """Base URL for the OpenAI SDK (with `/v1`)."""
        return f"{self.base_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """Base URL for the Anthropic SDK (without `/v1`: the SDK adds it)."""
        return self.base_url

    def env(self) -> dict[str, str]:
        """Environment variables pointing both SDKs at this stand-in, with test keys (for subprocesses)."""
        return {"OPENAI_BASE_URL": self.openai_base_url, "OPENAI_API_KEY": TEST_OPENAI_KEY,
                "ANTHROPIC_BASE_URL": self.anthropic_base_url, "ANTHROPIC_API_KEY": TEST_ANTHROPIC_KEY}

    def reset(self) -> None:
        """Back to mode "ok": no failures queued, default responder, any key accepted, nothing recorded."""
        self.mode, self.fail_first, self.responder, self.accepted_keys = "ok", 0, classify, None
        with self._lock:
            self.requests.clear()

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> StandIn:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server thread and wait until it listens."""
        if self._thread is not None:
            raise RuntimeError("stand-in already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(ready, failure), name="llm-standin",
                                        daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("LLM stand-in did not start within 10 s")
        if failure:
            self._thread.join(5)
            self._thread = None
            raise RuntimeError("LLM stand-in failed to start") from failure[0]

    def stop(self) -> None:
        """Stop the server (wakes requests sleeping in "timeout" mode) and join its thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self._loop = None

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._startup())
            except BaseException as exc:
                failure.append(exc)
                return
            self._loop = loop
            ready.set()
            loop.run_forever()
        finally:
            ready.set()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()

    async def _startup(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def _shutdown(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers ----------------------------------------------------------------------------------
    async def _openai(self, request: web.Request) -> web.Response:
        return await self._handle(request, "openai")

    async def _anthropic(self, request: web.Request) -> web.Response:
        return await self._handle(request, "anthropic")

    async def _handle(self, request: web.Request, api: str) -> web.Response:
        n = next(self._ids)
        record: dict[str, Any] = {
            "path": request.path, "model": None, "system": "", "user": "",
            "headers": {k.lower(): v for k, v in request.headers.items() if k.lower() not in _SECRET_HEADERS},
            "body": None, "status": None,
        }
        with self._lock:
            self.requests.append(record)
        response = await self._respond(request, api, n, record)
        record["status"] = response.status
        return response

    async def _respond(self, request: web.Request, api: str, n: int, record: dict[str, Any]) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("body is not a JSON object")
        except ValueError as exc:
            return _error(api, 400, f"request body is not valid JSON: {exc}", n)
        record["body"] = body
        record["model"] = body.get("model")
        record["system"], record["user"] = _prompts(api, body)

        key = _credential(api, request)
        if not key or (self.accepted_keys is not None and key not in self.accepted_keys):
            return _error(api, 401, "missing API key" if not key else "invalid API key", n)
        with self._lock:
            failing = self.fail_first > 0
            if failing:
                self.fail_first -= 1
        mode = self.mode
        if failing or mode == "500":
            return _error(api, 500, "the stand-in failed on purpose", n)
        if mode == "429":
            return _error(api, 429, "rate limited by the stand-in", n,
                          headers={"retry-after-ms": "10"})
        if mode == "timeout":
            assert self._stopping is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.delay)
        if mode == "malformed":
            text = MALFORMED_TEXT
        elif mode == "empty":
            text = ""
        else:
            try:
                answer = dict(self.responder(record["system"], record["user"]))
            except Exception as exc:
                return _error(api, 500, f"stand-in responder failed: {exc!r}", n)
            if mode == "unknown_intent":
                answer["intent"] = "WORLD_DOMINATION"
            text = json.dumps(answer)
        model = str(body.get("model") or "standin-model")
        prompt_words = max(1, _words(record["system"]) + _words(record["user"]))
        return _ok(api, n, model, text, prompt_words, _words(text))


def _prompts(api: str, body: dict[str, Any]) -> tuple[str, str]:
    """(system, user) prompts from a request body of either API."""
    messages = body.get("messages") or []
    if not isinstance(messages, list):
        messages = []
    system_parts = [] if api == "openai" else [_text_of(body.get("system", ""))]
    user_parts: list[str] = []
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        if role in ("system", "developer"):
            system_parts.append(_text_of(msg.get("content")))
        elif role == "user":
            user_parts.append(_text_of(msg.get("content")))
    return "\n".join(p for p in system_parts if p), "\n".join(user_parts)


def _credential(api: str, request: web.Request) -> str:
    """The API key the client sent: `Authorization: Bearer KEY`, or `x-api-key` for Anthropic."""
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    if api == "anthropic":
        return request.headers.get("x-api-key", "").strip()
    return ""


_OPENAI_ERROR_TYPES = {400: ("invalid_request_error", None),
                       401: ("invalid_request_error", "invalid_api_key"),
                       429: ("requests", "rate_limit_exceeded"), 500: ("server_error", None)}
_ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error",
                          500: "api_error"}


def _error(api: str, status: int, message: str, n: int,
           headers: dict[str, str] | None = None) -> web.Response:
    """An error response in the API's own JSON shape."""
    hdrs = dict(headers or {})
    if api == "openai":
        etype, code = _OPENAI_ERROR_TYPES.get(status, ("server_error", None))
        payload: dict[str, Any] = {"error": {"message": message, "type": etype, "param": None, "code": code}}
        hdrs["x-request-id"] = f"req_standin_{n}"
    else:
        payload = {"type": "error", "error": {"type": _ANTHROPIC_ERROR_TYPES.get(status, "api_error"),
                                              "message": message}, "request_id": f"req_standin_{n}"}
        hdrs["request-id"] = f"req_standin_{n}"
    return web.json_response(payload, status=status, headers=hdrs)


def _ok(api: str, n: int, model: str, text: str, prompt_tokens: int, completion_tokens: int) -> web.Response:
    """A successful completion in the API's own JSON shape."""
    if api == "openai":
        payload: dict[str, Any] = {
            "id": f"chatcmpl-standin-{n}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": text, "refusal": None}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        return web.json_response(payload, headers={"x-request-id": f"req_standin_{n}"})
    # Anthropic returns no content block at all for an empty answer.
    content = [{"type": "text", "text": text}] if text else []
    payload = {
        "id": f"msg_standin_{n}", "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
    }
    return web.json_response(payload, headers={"request-id": f"req_standin_{n}"})


def main() -> None:
    """Serve until interrupted, printing the environment that points the SDKs here."""
    with StandIn() as s:
        for k, v in s.env().items():
            print(f"export {k}={v}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
