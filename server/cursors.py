"""Opaque, per-org paging cursors and live-stream ids.

The stores page by rowid and number stream entries with one sequence for all orgs, so the raw numbers would tell
an org how much every other org did between two of its own pages or events. The API therefore never shows them:
every `next_cursor` of a rowid-paged listing (events, intakes, actions, notifications) and every live-stream id
(`id:` of /api/stream, its `Last-Event-ID`, the `after` of its `ready` event) is the number enciphered under a
key of the org and the listing, with a tag:

- the number goes through a 64-bit Feistel permutation (6 rounds of HMAC-SHA256), so the same position always
  gives the same token (a stream entry sent twice keeps its id) and nothing of the number shows;
- an 8-byte HMAC tag binds the token to the org and the listing: another org's token, a token of another
  listing, or an edited one is refused (400), exactly like garbage.

The key is derived from one server secret kept in the store (`settings`, first writer wins), so every process of a
deployment reads every other's tokens, and tokens survive restarts. Decision cursors (`created_at` and a random
decision id, `adapters.store_common`) and every id (decisions: `dec_` + 80 random bits) already reveal nothing of
other orgs and are left as they are.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from aiohttp import web

from server.app import STORE

SECRET_SETTING = "cursor_secret"
CURSORS = web.AppKey("cursors", dict)
"""Holds the `Cursors` of the app once its secret is read from (or first written to) the store: {"codec": ...}."""

_ROUNDS = 6
_TAG = 8
TOKEN_CHARS = 22
"""Length of every token (16 bytes, base64url without padding)."""
TOKEN_PATTERN = r"^[A-Za-z0-9_-]{22}$"


class Cursors:
    """Seals numbers into per-org, per-listing tokens and opens them again."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError(f"the cursor secret must have at least 16 bytes, not {len(secret)}")
        self._secret = secret

    def _key(self, org: str, kind: str) -> bytes:
        return hmac.new(self._secret, f"cursor\0{org}\0{kind}".encode(), hashlib.sha256).digest()

    @staticmethod
    def _round(key: bytes, i: int, half: int) -> int:
        digest = hmac.new(key, bytes([i]) + half.to_bytes(4, "big"), hashlib.sha256).digest()
        return int.from_bytes(digest[:4], "big")

    def seal(self, org: str, kind: str, n: int) -> str:
        """The token of position `n` (0 ≤ n < 2**64) in `org`'s `kind` listing."""
        if not 0 <= n < 2**64:
            raise ValueError(f"cursor position out of range: {n}")
        key = self._key(org, kind)
        left, right = n >> 32, n & 0xFFFFFFFF
        for i in range(_ROUNDS):
            left, right = right, left ^ self._round(key, i, right)
        body = ((left << 32) | right).to_bytes(8, "big")
        tag = hmac.new(key, b"tag\0" + body, hashlib.sha256).digest()[:_TAG]
        return base64.urlsafe_b64encode(body + tag).rstrip(b"=").decode()

    def open(self, org: str, kind: str, token: str) -> int | None:
        """The position sealed in `token`, or None when it is not a token of `org`'s `kind` listing."""
        if len(token) != TOKEN_CHARS or not token.isascii():
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "==")
        except (binascii.Error, ValueError):
            return None
        if len(raw) != 8 + _TAG or base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != token:
            return None
        key = self._key(org, kind)
        body, tag = raw[:8], raw[8:]
        if not hmac.compare_digest(tag, hmac.new(key, b"tag\0" + body, hashlib.sha256).digest()[:_TAG]):
            return None
        value = int.from_bytes(body, "big")
        left, right = value >> 32, value & 0xFFFFFFFF
        for i in reversed(range(_ROUNDS)):
            left, right = right ^ self._round(key, i, left), left
        return (left << 32) | right


def cursors(app: web.Application) -> Cursors:
    """The app's cursor codec (available once the app has started)."""
    codec: Cursors = app[CURSORS]["codec"]
    return codec


async def _load(app: web.Application) -> None:
    store = app[STORE]
    value = await store.get_setting(SECRET_SETTING)
    if value is None:
        await store.create_setting(SECRET_SETTING, secrets.token_hex(32))
        value = await store.get_setting(SECRET_SETTING)  # whoever wrote first wins, for every process
    app[CURSORS]["codec"] = Cursors(bytes.fromhex(str(value)))


def setup(app: web.Application) -> None:
    """Register the codec's holder and read its secret at start-up (after the store is open)."""
    app[CURSORS] = {}
    app.on_startup.append(_load)
