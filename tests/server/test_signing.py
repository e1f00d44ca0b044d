"""Webhook signatures: round trip, tolerance both ways, rotation on both ends, malformed headers, compare_digest."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from server import signing
from server.signing import SignatureError, sign, verify

SECRET = "whsec_current"
OLD_SECRET = "whsec_previous"
BODY = b'{"type":"email:received","id":"evt_0001","subject":"Caf\xc3\xa9 order"}'
T = 1_772_366_400  # 2026-03-01T12:00:00Z


def _v1(secret: str, body: bytes, timestamp: int) -> str:
    """The v1 signature computed independently of the module under test."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def _refused(header: str | None, body: bytes = BODY, secrets: tuple[str, ...] = (SECRET,), now: float = T) -> str:
    """Verify, expect a SignatureError, and return its code."""
    with pytest.raises(SignatureError) as caught:
        verify(header, body, secrets, now=now)
    assert str(caught.value)  # every refusal explains itself
    return caught.value.code


def test_sign_produces_the_documented_header_value() -> None:
    assert sign(SECRET, BODY, T) == f"t={T},v1={_v1(SECRET, BODY, T)}"


def test_round_trip_returns_the_timestamp() -> None:
    assert verify(sign(SECRET, BODY, T), BODY, [SECRET], now=T) == T


def test_empty_body_round_trips() -> None:
    assert verify(sign(SECRET, b"", T), b"", [SECRET], now=T + 1) == T


def test_wrong_secret_is_a_mismatch() -> None:
    assert _refused(sign("whsec_someone_else", BODY, T)) == "signature_mismatch"


@pytest.mark.parametrize("tampered", [
    BODY[:-1] + b"!",             # last byte changed
    b" " + BODY,                  # one byte added
    BODY[:-1],                    # one byte removed
    BODY.replace(b"0001", b"0002"),
])
def test_body_changed_by_one_byte_is_a_mismatch(tampered: bytes) -> None:
    assert _refused(sign(SECRET, BODY, T), body=tampered) == "signature_mismatch"


def test_signature_for_another_timestamp_is_a_mismatch() -> None:
    # The timestamp is signed: moving it forward to dodge the tolerance breaks the signature.
    assert _refused(f"t={T + 60},v1={_v1(SECRET, BODY, T)}") == "signature_mismatch"


@pytest.mark.parametrize("offset", [300, -300, 0, 299.5, -299.5])
def test_timestamp_within_tolerance_is_accepted_both_ways(offset: float) -> None:
    assert verify(sign(SECRET, BODY, T), BODY, [SECRET], now=T + offset) == T


@pytest.mark.parametrize("offset", [301, -301, 300.001, -300.001, 86_400])
def test_timestamp_outside_tolerance_is_refused_both_ways(offset: float) -> None:
    assert _refused(sign(SECRET, BODY, T), now=T + offset) == "timestamp_out_of_tolerance"


def test_tolerance_is_configurable() -> None:
    header = sign(SECRET, BODY, T)
    assert verify(header, BODY, [SECRET], now=T + 10, tolerance=10) == T
    with pytest.raises(SignatureError) as caught:
        verify(header, BODY, [SECRET], now=T + 11, tolerance=10)
    assert caught.value.code == "timestamp_out_of_tolerance"


def test_tolerance_is_checked_even_when_the_signature_is_valid() -> None:
    # A replayed request carries a perfectly good signature; only its age gives it away.
    old = T - 3600
    assert _refused(sign(SECRET, BODY, old)) == "timestamp_out_of_tolerance"


@pytest.mark.parametrize("digits", [400, 5000, 200_000])  # too large for a float; past int()'s 4,300 digits
def test_absurdly_large_timestamp_is_out_of_tolerance_not_a_crash(digits: int) -> None:
    assert _refused(f"t={'9' * digits},v1={'0' * 64}") == "timestamp_out_of_tolerance"


def test_several_v1_values_one_valid_is_accepted() -> None:
    good = _v1(SECRET, BODY, T)
    for header in (
        f"t={T},v1={_v1(OLD_SECRET, BODY, T)},v1={good}",
        f"t={T},v1={good},v1={'0' * 64}",
        f"v1={'f' * 64}, v1={good}, t={T}",  # order and spaces after commas do not matter
    ):
        assert verify(header, BODY, [SECRET], now=T) == T


def test_several_v1_values_none_valid_is_a_mismatch() -> None:
    assert _refused(f"t={T},v1={'0' * 64},v1={_v1('nope', BODY, T)}") == "signature_mismatch"


def test_receiver_with_two_secrets_accepts_either() -> None:
    # During rotation the receiver holds the new and the previous secret; senders may still use either.
    secrets = [SECRET, OLD_SECRET]
    assert verify(sign(OLD_SECRET, BODY, T), BODY, secrets, now=T) == T
    assert verify(sign(SECRET, BODY, T), BODY, secrets, now=T) == T
    assert verify(sign(SECRET, BODY, T), BODY, tuple(reversed(secrets)), now=T) == T


def test_receiver_that_dropped_the_old_secret_refuses_it() -> None:
    assert _refused(sign(OLD_SECRET, BODY, T), secrets=(SECRET,)) == "signature_mismatch"


def test_upper_case_hex_is_accepted() -> None:
    assert verify(f"t={T},v1={_v1(SECRET, BODY, T).upper()}", BODY, [SECRET], now=T) == T


def test_unknown_schemes_are_ignored() -> None:
    header = f"t={T},v0=legacy-whatever,v1={_v1(SECRET, BODY, T)},v2={'a' * 128}"
    assert verify(header, BODY, [SECRET], now=T) == T


def test_unknown_schemes_alone_are_not_enough() -> None:
    assert _refused(f"t={T},v0={_v1(SECRET, BODY, T)}") == "malformed_signature"


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_header(header: str | None) -> None:
    assert _refused(header) == "missing_signature"


@pytest.mark.parametrize("header", [
    pytest.param(f"v1={'a' * 64}", id="no-t"),
    pytest.param(f"t=,v1={'a' * 64}", id="empty-t"),
    pytest.param(f"t=abc,v1={'a' * 64}", id="non-integer-t"),
    pytest.param(f"t={T}.5,v1={'a' * 64}", id="fractional-t"),
    pytest.param(f"t=-{T},v1={'a' * 64}", id="negative-t"),
    pytest.param(f"t=+{T},v1={'a' * 64}", id="signed-t"),
    pytest.param(f"t=١٢٣,v1={'a' * 64}", id="non-ascii-digits-t"),
    pytest.param(f"t={T},t={T},v1={'a' * 64}", id="two-t"),
    pytest.param(f"t={T}", id="no-v1"),
    pytest.param(f"t={T},v1=", id="empty-v1"),
    pytest.param(f"t={T},v1={'g' * 64}", id="non-hex-v1"),
    pytest.param(f"t={T},v1={'a' * 63}", id="short-v1"),
    pytest.param(f"t={T},v1={'a' * 65}", id="long-v1"),
    pytest.param(f"t={T},v1=0x{'a' * 62}", id="prefixed-v1"),
    pytest.param("garbage", id="garbage"),
    pytest.param("Bearer abc.def", id="bearer"),
    pytest.param(",,,", id="only-commas"),
    pytest.param(f"t={T};v1={'a' * 64}", id="semicolon"),
    pytest.param(f"t={T},=v1", id="empty-key"),
])
def test_malformed_headers(header: str) -> None:
    assert _refused(header) == "malformed_signature"


def test_malformed_is_reported_before_tolerance_and_mismatch() -> None:
    # A header that cannot be read is refused as such, whatever its timestamp says.
    assert _refused(f"t={T - 9999},v1=zz", now=T) == "malformed_signature"


@pytest.mark.parametrize("secrets", [[], (), None, ""])
def test_no_secret_configured_is_a_value_error(secrets: object) -> None:
    with pytest.raises(ValueError, match="No webhook secret is configured"):
        verify(sign(SECRET, BODY, T), BODY, secrets, now=T)  # type: ignore[arg-type]


def test_secrets_may_be_any_iterable_but_not_a_single_string() -> None:
    assert verify(sign(SECRET, BODY, T), BODY, iter([OLD_SECRET, SECRET]), now=T) == T  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a single string"):
        verify(sign(SECRET, BODY, T), BODY, SECRET, now=T)


def test_configuration_errors_come_before_client_errors() -> None:
    # A missing header with no secrets configured is the receiver's fault first.
    with pytest.raises(ValueError):
        verify(None, BODY, [], now=T)


def test_an_empty_secret_in_the_list_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        verify(sign(SECRET, BODY, T), BODY, [SECRET, ""], now=T)


def test_sign_refuses_an_empty_secret_and_a_bad_timestamp() -> None:
    with pytest.raises(ValueError, match="secret is empty"):
        sign("", BODY, T)
    with pytest.raises(ValueError, match="non-negative integer"):
        sign(SECRET, BODY, -1)
    with pytest.raises(ValueError, match="non-negative integer"):
        sign(SECRET, BODY, 1.5)  # type: ignore[arg-type]


def test_signature_error_codes_are_checked() -> None:
    assert SignatureError("signature_mismatch", "x").code == "signature_mismatch"
    with pytest.raises(ValueError):
        SignatureError("nope", "x")


def test_every_candidate_pair_is_compared_with_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(signing.hmac, "compare_digest", recording)
    good = _v1(SECRET, BODY, T)
    header = f"t={T},v1={good},v1={'0' * 64},v1={'1' * 64}"

    assert verify(header, BODY, [SECRET, OLD_SECRET], now=T) == T
    # 2 secrets x 3 candidates, and no early exit after the first (matching) pair.
    assert len(calls) == 6
    assert (good.encode(), good.encode()) in calls


def test_mismatch_also_goes_through_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(signing.hmac, "compare_digest", recording)

    assert _refused(f"t={T},v1={'0' * 64}") == "signature_mismatch"
    assert len(calls) == 1


def test_no_plain_equality_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    # If compare_digest says no, the signature is refused even though the strings are equal: nothing else
    # (such as ==) is consulted.
    monkeypatch.setattr(signing.hmac, "compare_digest", lambda a, b: False)
    assert _refused(sign(SECRET, BODY, T)) == "signature_mismatch"
