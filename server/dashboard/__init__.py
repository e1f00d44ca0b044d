"""The dashboard: pages served by the same aiohttp app at `/`, for the people who run an org's operations.

Log in with an org API key (`POST /login`): the key is checked like a Bearer key, and the browser gets a session
cookie — signed with a server secret kept in the store, valid for `SESSION_SECONDS`, carrying the key's stored
hash (never the key) and a random session id — so a revoked key ends its sessions at once. Logging out
(`POST /logout`) revokes that session id in the store: a copy of the cookie taken before stops working in every
process. With that cookie the pages call the same JSON API as any client (`/api/agent/*`, `/api/stream`), scoped
to the key's org exactly as a Bearer request.

Cross-site requests (CSRF): every state-changing request that a session cookie authenticates — `/login`,
`/logout`, and POSTs to the JSON API — is refused when the browser says it comes from another site
(`Sec-Fetch-Site` other than same-origin, or an `Origin` that is not this host); API calls must also carry the
header `X-Astralis-Dashboard: 1`, which a page of another site cannot send. The cookie is `SameSite=Strict` too.

The pages are plain HTML files with their own small scripts and one style sheet (`pages/`, `static/`), and two
vendored libraries built from npm with a pinned lockfile (`frontend/` → `static/vendor/`: CodeMirror 6 for the
rules editor, uPlot for the charts; `npm ci && npm run build` remakes them). Nothing is fetched from elsewhere at
run time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from engine.config_schemas import schema_texts
from engine.models import identifier_problem
from server.auth import Principal, hash_key
from server.door import load_json
from server.errors import ApiError

HERE = Path(__file__).resolve().parent
PAGES = HERE / "pages"
STATIC = HERE / "static"

SESSION_COOKIE = "astralis_session"
SESSION_SECONDS = 12 * 3600
CSRF_HEADER = "X-Astralis-Dashboard"
_SECRET_SETTING = "dashboard_session_secret"
_REVOKED_SETTING = "dashboard_session_revoked:"
"""Prefix of the store setting that marks one session id as logged out (its value: the session's expiry)."""
SECRET = web.AppKey("dashboard_secret", dict)
"""Holds the session secret once read from (or first written to) the store: {"key": bytes}."""
REVOKED = web.AppKey("dashboard_revoked", set)
"""Session ids logged out through this process (the store holds them for every process)."""

PAGE_ROUTES = {
    "/": "decisions.html",
    "/decisions": "decisions.html",
    "/decisions/{id}": "decision.html",
    "/approvals": "approvals.html",
    "/analytics": "analytics.html",
    "/rules": "rules.html",
    "/calendar": "calendar.html",
    "/pipelines": "pipelines.html",
}
"""Path → page file. A page whose file does not exist yet answers 404."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    """A valid session token's content: the API key's stored hash, the session's own id and its expiry."""

    key_hash: str
    sid: str
    expires: int


def make_session(secret: bytes, key_hash: str, *, now: float | None = None) -> str:
    """A new session token: the key's hash, a random session id and an expiry, signed (HMAC-SHA256)."""
    data = {"h": key_hash, "sid": secrets.token_urlsafe(16), "exp": int((now or time.time()) + SESSION_SECONDS)}
    payload = _b64(json.dumps(data).encode())
    return f"v2.{payload}.{_b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())}"


def read_session(secret: bytes, token: str, *, now: float | None = None) -> Session | None:
    """The content of a well-signed, unexpired session token, else None (revocation is checked by
    `session_principal`). Tokens without a session id (v1, before logout revoked sessions) are refused."""
    try:
        version, payload, sig = token.split(".")
        if version != "v2":
            return None
        good = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(good, _unb64(sig)):
            return None
        data = json.loads(_unb64(payload))
        expires = int(data["exp"])
        if expires < (now or time.time()):
            return None
        return Session(str(data["h"]), str(data["sid"]), expires)
    except (ValueError, KeyError, TypeError):
        return None


async def _secret(app: web.Application) -> bytes:
    holder = app[SECRET]
    if "key" not in holder:
        from server.app import STORE

        store = app[STORE]
        value = await store.get_setting(_SECRET_SETTING)
        if value is None:
            await store.create_setting(_SECRET_SETTING, secrets.token_hex(32))
            value = await store.get_setting(_SECRET_SETTING)  # whoever wrote first wins, for every process
        holder["key"] = bytes.fromhex(str(value))
    return bytes(holder["key"])


async def _session(request: web.Request) -> Session | None:
    """The request's session, if its cookie is valid and the session was not logged out."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    session = read_session(await _secret(request.app), token)
    if session is None or session.sid in request.app[REVOKED]:
        return None
    from server.app import STORE

    if await request.app[STORE].get_setting(_REVOKED_SETTING + session.sid) is not None:
        request.app[REVOKED].add(session.sid)
        return None
    return session


async def session_principal(request: web.Request) -> Principal | None:
    """The principal of the request's dashboard session, if it has a valid one (not logged out, and its key not
    revoked)."""
    session = await _session(request)
    if session is None:
        return None
    from server.app import KEYS

    return await request.app[KEYS].principal_by_hash(session.key_hash)


def cross_site(request: web.Request) -> str | None:
    """Why a browser's request comes from another site, or None when it does not (or is not a browser's: a
    client without the cookie gains nothing). Browsers send `Sec-Fetch-Site` (modern ones) and `Origin` (on every
    POST); either saying "another site" is enough to refuse."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {site!r}, not same-origin"
    origin = request.headers.get("Origin")
    if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != request.host.lower()):
        return f"Origin {origin!r} is not this site ({request.host})"
    return None


def refuse_cross_site(request: web.Request, what: str) -> None:
    """403 for a cross-site `what` (see `cross_site`), naming why."""
    why = cross_site(request)
    if why is not None:
        raise ApiError(403, "forbidden", f"cross-site {what} refused: {why}")


async def login(request: web.Request) -> web.StreamResponse:
    """POST /login with `key` (form or JSON): a session cookie and a redirect to the decision log."""
    refuse_cross_site(request, "login")
    if request.content_type == "application/json":
        body = load_json(await request.read())  # depth, numbers and text checked at the door (400/422, never 500)
        key = str(body.get("key", "")) if isinstance(body, dict) else ""
    else:
        key = str((await request.post()).get("key", ""))
    from server.app import KEYS

    key = key if len(key) <= 200 and identifier_problem(key) is None else ""  # no key has control characters
    principal = await request.app[KEYS].principal(key.strip()) if key.strip() else None
    if principal is None:
        raise web.HTTPFound("/login?error=invalid")
    response = web.HTTPSeeOther("/")
    response.set_cookie(SESSION_COOKIE, make_session(await _secret(request.app), hash_key(key.strip())),
                        max_age=SESSION_SECONDS, httponly=True, samesite="Strict", path="/",
                        secure=request.secure)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    """POST /logout: the session is revoked in the store (a copy of the cookie no longer works, in any process)
    and the cookie cleared. Refused from another site."""
    refuse_cross_site(request, "logout")
    session = await _session(request)
    if session is not None:
        from server.app import STORE

        await request.app[STORE].create_setting(_REVOKED_SETTING + session.sid, str(session.expires))
        request.app[REVOKED].add(session.sid)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


async def login_page(request: web.Request) -> web.StreamResponse:
    """GET /login."""
    return web.FileResponse(PAGES / "login.html", headers={"Cache-Control": "no-store"})


def _page(name: str):  # type: ignore[no-untyped-def]
    async def page(request: web.Request) -> web.StreamResponse:
        if await session_principal(request) is None:
            raise web.HTTPFound("/login")
        path = PAGES / name
        if not path.exists():
            raise web.HTTPNotFound(text=f"{name}: this page is not built yet")
        return web.FileResponse(path, headers={"Cache-Control": "no-store"})
    return page


async def schema(request: web.Request) -> web.StreamResponse:
    """GET /schemas/{name}: a config file's JSON Schema (org, ruleset, policy), for the editor's completion and hover
    and for any editor that follows a YAML file's `$schema` line to this server. Public: it holds no org's data."""
    text = schema_texts().get(request.match_info["name"])
    if text is None:
        raise ApiError(404, "not_found", f"no schema {request.match_info['name']!r}: one of {', '.join(schema_texts())}",
                       {"name": request.match_info["name"]})
    return web.Response(text=text, content_type="application/schema+json", headers={"Cache-Control": "max-age=3600"})


async def favicon(request: web.Request) -> web.StreamResponse:
    """GET /favicon.ico (browsers ask for it on every site): the dashboard's icon."""
    return web.FileResponse(STATIC / "favicon.svg", headers={"Content-Type": "image/svg+xml",
                                                             "Cache-Control": "max-age=86400"})


def setup(app: web.Application) -> None:
    """Register the dashboard's routes."""
    app[SECRET] = {}
    app[REVOKED] = set()
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/schemas/{name}", schema)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    for route, name in PAGE_ROUTES.items():
        app.router.add_get(route, _page(name))
    app.router.add_static("/static/", STATIC, append_version=False)
