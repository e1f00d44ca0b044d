"""The dashboard: pages served by the same aiohttp app at `/`, for the people who run an org's operations.

Log in with an org API key (`POST /login`): the key is checked like a Bearer key, and the browser gets a session
cookie — signed with a server secret kept in the store, valid for `SESSION_SECONDS`, carrying the key's stored
hash and never the key — so a revoked key ends its sessions at once. With that cookie the pages call the same
JSON API as any client (`/api/agent/*`, `/api/stream`), scoped to the key's org exactly as a Bearer request;
a state-changing API call made with the cookie must also carry the header `X-Astralis-Dashboard: 1`, which a
page of another site cannot send (CSRF).

The pages are plain HTML files with their own small scripts and one style sheet (`pages/`, `static/`): no build
step, nothing fetched from elsewhere at run time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path

from aiohttp import web

from server.auth import Principal, hash_key

HERE = Path(__file__).resolve().parent
PAGES = HERE / "pages"
STATIC = HERE / "static"

SESSION_COOKIE = "astralis_session"
SESSION_SECONDS = 12 * 3600
CSRF_HEADER = "X-Astralis-Dashboard"
_SECRET_SETTING = "dashboard_session_secret"
SECRET = web.AppKey("dashboard_secret", dict)
"""Holds the session secret once read from (or first written to) the store: {"key": bytes}."""

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


def make_session(secret: bytes, key_hash: str, *, now: float | None = None) -> str:
    """A session token: the key's hash and an expiry, signed (HMAC-SHA256)."""
    payload = _b64(json.dumps({"h": key_hash, "exp": int((now or time.time()) + SESSION_SECONDS)}).encode())
    return f"v1.{payload}.{_b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())}"


def read_session(secret: bytes, token: str, *, now: float | None = None) -> str | None:
    """The key hash of a valid, unexpired session token, else None."""
    try:
        version, payload, sig = token.split(".")
        if version != "v1":
            return None
        good = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(good, _unb64(sig)):
            return None
        data = json.loads(_unb64(payload))
        if int(data["exp"]) < (now or time.time()):
            return None
        return str(data["h"])
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


async def session_principal(request: web.Request) -> Principal | None:
    """The principal of the request's dashboard session, if it has a valid one (and its key is not revoked)."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    key_hash = read_session(await _secret(request.app), token)
    if key_hash is None:
        return None
    from server.app import KEYS

    return await request.app[KEYS].principal_by_hash(key_hash)


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    return origin is None or origin.split("://", 1)[-1] == request.host


async def login(request: web.Request) -> web.StreamResponse:
    """POST /login with `key` (form or JSON): a session cookie and a redirect to the decision log."""
    if not _same_origin(request):
        raise web.HTTPForbidden(text="cross-site login refused")
    if request.content_type == "application/json":
        body = await request.json()
        key = str(body.get("key", "")) if isinstance(body, dict) else ""
    else:
        key = str((await request.post()).get("key", ""))
    from server.app import KEYS

    principal = await request.app[KEYS].principal(key.strip()) if key.strip() else None
    if principal is None:
        raise web.HTTPFound("/login?error=invalid")
    response = web.HTTPSeeOther("/")
    response.set_cookie(SESSION_COOKIE, make_session(await _secret(request.app), hash_key(key.strip())),
                        max_age=SESSION_SECONDS, httponly=True, samesite="Strict", path="/",
                        secure=request.secure)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    """POST /logout: the session cookie is cleared."""
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


async def favicon(request: web.Request) -> web.StreamResponse:
    """GET /favicon.ico (browsers ask for it on every site): the dashboard's icon."""
    return web.FileResponse(STATIC / "favicon.svg", headers={"Content-Type": "image/svg+xml",
                                                             "Cache-Control": "max-age=86400"})


def setup(app: web.Application) -> None:
    """Register the dashboard's routes."""
    app[SECRET] = {}
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    for route, name in PAGE_ROUTES.items():
        app.router.add_get(route, _page(name))
    app.router.add_static("/static/", STATIC, append_version=False)
