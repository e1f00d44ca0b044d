"""Dashboard sessions (issue 7, issue 13 finding 11): signing in with an org API key, the session cookie on the
JSON API, the CSRF header and cross-site checks, logout revoking the session, key revocation, tampering, and org
isolation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from server.app import KEYS, STORE
from server.dashboard import SESSION_COOKIE, SESSION_SECONDS, make_session, read_session
from tests.server.conftest import auth
from tests.server.test_api import HELD


def test_session_tokens_are_signed_and_expire_and_each_has_its_own_id():
    secret = b"s" * 32
    token = make_session(secret, "abc", now=1000.0)
    session = read_session(secret, token, now=1000.0 + SESSION_SECONDS - 1)
    assert session is not None and session.key_hash == "abc" and session.expires == 1000 + SESSION_SECONDS
    assert len(session.sid) >= 20
    other = read_session(secret, make_session(secret, "abc", now=1000.0), now=1000.0)
    assert other is not None and other.sid != session.sid  # two sign-ins of one key: two sessions
    assert read_session(secret, token, now=1000.0 + SESSION_SECONDS + 1) is None
    assert read_session(b"t" * 32, token, now=1000.0) is None
    version, payload, sig = token.split(".")
    assert read_session(secret, f"{version}.{payload}x.{sig}", now=1000.0) is None
    assert read_session(secret, "garbage", now=1000.0) is None


def test_a_well_signed_token_without_a_session_id_is_refused():
    """The tokens made before logout revoked sessions (v1: no session id, so no way to revoke them one by one)."""
    secret = b"s" * 32
    payload = base64.urlsafe_b64encode(json.dumps({"h": "abc", "exp": 2000}).encode()).rstrip(b"=").decode()
    sig = base64.urlsafe_b64encode(hmac.new(secret, payload.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    assert read_session(secret, f"v1.{payload}.{sig}", now=1000.0) is None
    assert read_session(secret, f"v2.{payload}.{sig}", now=1000.0) is None


async def _signed_in(client, key: str) -> None:
    r = await client.post("/login", data={"key": key}, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/"
    assert SESSION_COOKIE in {c.key for c in client.session.cookie_jar}


async def test_signing_in_gives_a_cookie_that_the_api_accepts_for_its_org_only(make_client):
    client, key_for = await make_client()
    acme, bright = await key_for("acme"), await key_for("brightsmile")
    r = await client.post("/api/agent/process?mode=sync", json=HELD, headers=auth(acme))
    assert r.status == 200
    held = await r.json()

    r = await client.post("/login", data={"key": "ak_nope"}, allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/login?error=invalid"
    assert (await client.get("/api/agent/decisions")).status == 401

    await _signed_in(client, bright)
    r = await client.get("/api/agent/decisions")
    assert r.status == 200 and (await r.json())["decisions"] == []  # brightsmile's view: nothing of acme's
    assert (await client.get(f"/api/agent/decisions/{held['id']}")).status == 404

    await _signed_in(client, acme)
    r = await client.get("/api/agent/decisions")
    assert [d["id"] for d in (await r.json())["decisions"]] == [held["id"]]


async def test_a_state_change_with_the_cookie_needs_the_dashboard_header(make_client):
    client, key_for = await make_client()
    key = await key_for("acme")
    held = await (await client.post("/api/agent/process?mode=sync", json=HELD, headers=auth(key))).json()
    await _signed_in(client, key)
    r = await client.post(f"/api/agent/decisions/{held['id']}/approve", json={"by": "kim"})
    assert r.status == 403 and "X-Astralis-Dashboard" in (await r.json())["error"]["message"]
    r = await client.post(f"/api/agent/decisions/{held['id']}/approve", json={"by": "kim"},
                          headers={"X-Astralis-Dashboard": "1"})
    assert r.status == 200 and (await r.json())["status"] == "EXECUTED"


async def test_a_revoked_key_ends_its_sessions_and_a_tampered_cookie_is_refused(make_client):
    client, key_for = await make_client()
    key = await key_for("acme")
    await _signed_in(client, key)
    assert (await client.get("/api/agent/decisions")).status == 200
    cookie = next(c for c in client.session.cookie_jar if c.key == SESSION_COOKIE).value
    version, payload, sig = cookie.split(".")
    forged = sig[:-4] + ("AAAA" if not sig.endswith("AAAA") else "BBBB")
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({SESSION_COOKIE: f"{version}.{payload}.{forged}"})
    assert (await client.get("/api/agent/decisions")).status == 401
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({SESSION_COOKIE: cookie})
    assert (await client.get("/api/agent/decisions")).status == 200

    key_id = key.split("_")[1]
    assert await client.app[STORE].revoke_api_key(key_id)
    client.app[KEYS].forget(key_id)
    assert (await client.get("/api/agent/decisions")).status == 401
    r = await client.get("/analytics", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/login"


async def test_pages_need_a_session_and_the_login_page_does_not(make_client):
    client, key_for = await make_client()
    r = await client.get("/approvals", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/login"
    r = await client.get("/login")
    assert r.status == 200 and "Sign in" in await r.text()
    r = await client.post("/login", data={"key": await key_for("acme")}, allow_redirects=False,
                          headers={"Origin": "https://evil.example"})
    assert r.status == 403
    assert (await client.get("/static/common.js")).status == 200


def use(client, cookie: str) -> None:
    """Make `cookie` the client's only session cookie (as a copy of it pasted into another browser)."""
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({SESSION_COOKIE: cookie})


async def test_logout_revokes_the_session_for_every_copy_of_the_cookie_and_only_that_session(make_client):
    client, key_for = await make_client()
    key = await key_for("acme")
    await _signed_in(client, key)
    copied = next(c for c in client.session.cookie_jar if c.key == SESSION_COOKIE).value
    await _signed_in(client, key)  # a second session of the same key (another browser)
    second = next(c for c in client.session.cookie_jar if c.key == SESSION_COOKIE).value
    assert copied != second

    use(client, copied)
    r = await client.post("/logout", allow_redirects=False, headers={"Origin": f"http://{client.server.host}:"
                                                                              f"{client.server.port}"})
    assert r.status == 303 and r.headers["Location"] == "/login"
    assert "astralis_session=\"\"" in r.headers["Set-Cookie"] or "Max-Age=0" in r.headers["Set-Cookie"]

    use(client, copied)  # the copy taken before logging out
    assert (await client.get("/api/agent/decisions")).status == 401
    r = await client.get("/analytics", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/login"
    use(client, second)
    assert (await client.get("/api/agent/decisions")).status == 200  # the other session is untouched


async def test_logout_holds_in_another_process_sharing_the_store(make_client):
    """Two apps on one store (two `serve` processes behind a balancer): logging out on one ends the session on
    the other, which has never seen the logout."""
    one, key_for = await make_client()
    other, _ = await make_client()
    key = await key_for("acme")
    await _signed_in(one, key)
    cookie = next(c for c in one.session.cookie_jar if c.key == SESSION_COOKIE).value
    use(other, cookie)
    assert (await other.get("/api/agent/decisions")).status == 200
    assert (await one.post("/logout", allow_redirects=False)).status == 303
    assert (await other.get("/api/agent/decisions")).status == 401


async def test_a_cross_site_logout_is_refused_and_the_session_stays(make_client):
    client, key_for = await make_client()
    await _signed_in(client, await key_for("acme"))
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site"}):
        r = await client.post("/logout", allow_redirects=False, headers=headers)
        assert r.status == 403 and "cross-site logout refused" in await r.text(), headers
    assert (await client.get("/api/agent/decisions")).status == 200


async def test_a_cross_site_state_change_with_the_cookie_is_refused_even_with_the_dashboard_header(make_client):
    client, key_for = await make_client()
    key = await key_for("acme")
    held = await (await client.post("/api/agent/process?mode=sync", json=HELD, headers=auth(key))).json()
    await _signed_in(client, key)
    for foreign in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        r = await client.post(f"/api/agent/decisions/{held['id']}/approve", json={"by": "kim"},
                              headers={"X-Astralis-Dashboard": "1", **foreign})
        body = await r.json()
        assert r.status == 403 and "cross-site POST is refused" in body["error"]["message"], body
    decision = await (await client.get(f"/api/agent/decisions/{held['id']}")).json()
    assert decision["status"] == "REQUIRES_APPROVAL"  # nothing changed
    same = {"Origin": f"http://{client.server.host}:{client.server.port}", "Sec-Fetch-Site": "same-origin"}
    r = await client.post(f"/api/agent/decisions/{held['id']}/approve", json={"by": "kim"},
                          headers={"X-Astralis-Dashboard": "1", **same})
    assert r.status == 200 and (await r.json())["status"] == "EXECUTED"
