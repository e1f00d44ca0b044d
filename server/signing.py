"""Webhook signatures: `X-Astralis-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.

The timestamp is part of the signed payload so that a captured request cannot be replayed once it is older than
the tolerance. Secrets rotate without downtime from both ends: a sender may put several `v1=` values in one header
(signed with the old and the new secret), and a receiver may hold several secrets (current and previous); the
request is accepted when any signature matches any secret. Unknown schemes (`v0=`, a future `v2=`) are ignored so
that senders can add one before receivers understand it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Sequence

HEADER = "X-Astralis-Signature"
"""The HTTP header that carries the signature."""

SCHEME = "v1"

CODES = frozenset({"missing_signature", "malformed_signature", "timestamp_out_of_tolerance", "signature_mismatch"})
"""Every value `SignatureError.code` can take."""

# ASCII digits only: int() would also accept "+5", " 5", "1_000" and non-ASCII digits, none of which a sender
# produces, and the text signed must be exactly the text received.
_TIMESTAMP = re.compile(r"[0-9]+")
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class SignatureError(Exception):
    """Why a signature was refused; `code` is stable: missing_signature | malformed_signature | timestamp_out_of_tolerance | signature_mismatch."""

    def __init__(self, code: str, message: str) -> None:
        if code not in CODES:
            raise ValueError(f"{code!r} is not a signature error code; expected one of {sorted(CODES)}.")
        super().__init__(message)
        self.code = code


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The `X-Astralis-Signature` value for `body` sent at `timestamp` (for clients and tests)."""
    if not secret:
        raise ValueError("The signing secret is empty; configure a non-empty webhook secret.")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError(f"The timestamp must be a non-negative integer number of Unix seconds, not {timestamp!r}.")
    return f"t={timestamp},{SCHEME}={_digest(secret, str(timestamp), body)}"


def verify(header: str | None, body: bytes, secrets: Sequence[str], *, now: float, tolerance: int = 300) -> int:
    """Check a signature header against the raw request body; return the signed timestamp or raise SignatureError.

    `body` must be the bytes exactly as received (before any JSON parsing). `|now - t| <= tolerance` must hold,
    in both directions, so that a sender whose clock runs ahead is treated like one whose clock runs behind.
    """
    # Configuration errors first, and as ValueError: they are the receiver's fault, and reporting them to the
    # client as a bad signature would hide them.
    if isinstance(secrets, str) and secrets:
        # A lone string is a sequence of one-character "secrets"; refuse it rather than verify against those.
        raise ValueError("The webhook secrets must be a list of strings, not a single string; wrap it in a list.")
    secrets = list(secrets or ())  # iterated twice below; a one-shot iterable would be empty the second time
    if not secrets:
        raise ValueError("No webhook secret is configured; pass a non-empty list of secrets to verify against.")
    if any(not isinstance(secret, str) or not secret for secret in secrets):
        raise ValueError("One of the configured webhook secrets is empty; every secret must be a non-empty string.")
    if tolerance < 0:
        raise ValueError(f"The timestamp tolerance must be zero or more seconds, not {tolerance}.")

    if header is None or not header.strip():
        raise SignatureError("missing_signature", f"The {HEADER} header is missing or empty.")
    timestamp_text, candidates = _parse(header)

    # More than 20 digits is far past any clock, and int() refuses 4,300 or more: out of tolerance, not a crash.
    timestamp = int(timestamp_text) if len(timestamp_text) <= 20 else 10**20
    try:
        delta = float(now - timestamp)
    except OverflowError:
        # An integer too large for a float is certainly not a current time.
        delta = -math.inf
    if not abs(delta) <= tolerance:  # written this way round so that a NaN `now` is refused too
        raise SignatureError(
            "timestamp_out_of_tolerance",
            f"The signature timestamp {_shorten(timestamp_text)} is {_describe_skew(delta)}; at most {tolerance} s either way is accepted.",
        )

    # Compare every candidate against every secret without stopping at the first match, so that neither the
    # position of the valid signature nor which secret matched shows in the response time.
    matched = False
    for secret in secrets:
        expected = _digest(secret, timestamp_text, body).encode("ascii")
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError(
            "signature_mismatch",
            f"None of the {len(candidates)} {SCHEME} signature(s) in the {HEADER} header matches the request body "
            f"for any configured secret.",
        )
    return timestamp


def _digest(secret: str, timestamp_text: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of `<timestamp>.<body>` under `secret`."""
    payload = timestamp_text.encode("ascii") + b"." + bytes(body)
    return hmac.new(secret.encode("utf-8"), payload, hashlib.sha256).hexdigest()


def _parse(header: str) -> tuple[str, list[bytes]]:
    """The timestamp text and the v1 signatures (lower-case hex, as bytes) of a header; raises malformed_signature."""
    timestamp_text: str | None = None
    candidates: list[bytes] = []
    for item in header.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise SignatureError(
                "malformed_signature", f"The {HEADER} header has an element {_shorten(item.strip())!r} that is not key=value."
            )
        if key == "t":
            if timestamp_text is not None:
                raise SignatureError("malformed_signature", f"The {HEADER} header has more than one timestamp (t=).")
            if not _TIMESTAMP.fullmatch(value):
                raise SignatureError(
                    "malformed_signature",
                    f"The {HEADER} timestamp t={_shorten(value)!r} is not an integer number of Unix seconds.",
                )
            timestamp_text = value
        elif key == SCHEME:
            if not _HEX_SHA256.fullmatch(value):
                raise SignatureError(
                    "malformed_signature",
                    f"A {SCHEME} signature in the {HEADER} header is not 64 hexadecimal characters.",
                )
            candidates.append(value.lower().encode("ascii"))
        # Any other key is a scheme this receiver does not know; ignoring it lets senders add schemes first.
    if timestamp_text is None:
        raise SignatureError("malformed_signature", f"The {HEADER} header has no timestamp (t=).")
    if not candidates:
        raise SignatureError("malformed_signature", f"The {HEADER} header has no {SCHEME} signature.")
    return timestamp_text, candidates


def _describe_skew(delta: float) -> str:
    """'N s old' or 'N s in the future' for `now - t`, for error messages."""
    if math.isnan(delta):
        return "not comparable with the current time"
    if math.isinf(delta):
        return "far in the future" if delta < 0 else "far in the past"
    return f"{delta:.0f} s old" if delta >= 0 else f"{-delta:.0f} s in the future"


def _shorten(text: str, limit: int = 20) -> str:
    """`text` cut to `limit` characters, so that a hostile header cannot flood error messages and logs."""
    return text if len(text) <= limit else text[:limit] + "…"
