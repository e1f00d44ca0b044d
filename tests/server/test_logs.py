"""Structured logs: JSON lines, bound context (nesting, asyncio tasks), secrets masked, idempotent set-up."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re

import pytest

from server import logs


@pytest.fixture
def configured():
    """A factory: `configure(...)` onto a fresh StringIO; returns a function giving the lines logged so far.
    The service loggers' handlers and levels are reset afterwards."""

    def make(**kwargs):
        stream = io.StringIO()
        logs.configure(stream=stream, **kwargs)
        return lambda: stream.getvalue().splitlines()

    yield make
    for name in logs.LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, logs._Handler)]:
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


def _records(lines) -> list[dict]:
    return [json.loads(line) for line in lines()]


def test_json_lines_parse_with_standard_fields(configured) -> None:
    lines = configured()
    log = logging.getLogger("astralis.test")
    log.info("decided %s in %d ms", "dec_1", 12, extra={"intent": "SALES_INQUIRY", "execution_ms": 12.5})
    logging.getLogger("engine.rules").debug("below the level: dropped")
    [record] = _records(lines)
    assert record["msg"] == "decided dec_1 in 12 ms"
    assert record["level"] == "INFO"
    assert record["logger"] == "astralis.test"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"])
    assert record["intent"] == "SALES_INQUIRY"
    assert record["execution_ms"] == 12.5


def test_module_named_loggers_are_configured_too(configured) -> None:
    lines = configured(level="debug")
    logging.getLogger("engine.rules").debug("compiled")
    logging.getLogger("server.app").warning("started")
    assert [r["logger"] for r in _records(lines)] == ["engine.rules", "server.app"]


def test_exception_is_formatted_as_exc(configured) -> None:
    lines = configured()
    try:
        raise ValueError("bad field 'priority'")
    except ValueError:
        logging.getLogger("astralis.test").exception("decision failed")
    [record] = _records(lines)
    assert record["msg"] == "decision failed"
    assert "Traceback" in record["exc"]
    assert "ValueError: bad field 'priority'" in record["exc"]


def test_bind_nests_and_restores(configured) -> None:
    lines = configured()
    log = logging.getLogger("astralis.test")
    with logs.bind(org="acme", request_id="req_1"):
        with logs.bind(event_id="evt_1", decision_id="dec_1", request_id="req_2"):
            assert logs.current() == {"org": "acme", "request_id": "req_2", "event_id": "evt_1",
                                      "decision_id": "dec_1"}
            log.info("inner")
        log.info("outer")
    log.info("none")
    inner, outer, none = _records(lines)
    assert (inner["org"], inner["event_id"], inner["decision_id"], inner["request_id"]) == (
        "acme", "evt_1", "dec_1", "req_2")
    assert outer["request_id"] == "req_1"
    assert "event_id" not in outer and "decision_id" not in outer
    assert "org" not in none and logs.current() == {}


def test_bind_skips_none_and_refuses_record_attributes() -> None:
    with logs.bind(org="acme", request_id=None):
        assert logs.current() == {"org": "acme"}
    with pytest.raises(ValueError, match="'msg'"), logs.bind(msg="x"):
        pass


def test_extra_field_wins_over_bound_field(configured) -> None:
    lines = configured()
    with logs.bind(org="acme"):
        logging.getLogger("astralis.test").info("cross-org", extra={"org": "brightsmile"})
    assert _records(lines)[0]["org"] == "brightsmile"


async def test_context_propagates_into_tasks_created_inside_bind(configured) -> None:
    lines = configured()
    log = logging.getLogger("astralis.test")

    async def work() -> None:
        await asyncio.sleep(0)
        log.info("in task")
        with logs.bind(delivery_id="dlv_1"):  # binding inside the task does not leak to its parent
            log.info("delivering")

    with logs.bind(org="acme", decision_id="dec_9"):
        task = asyncio.create_task(work())
    await task
    log.info("after")
    in_task, delivering, after = _records(lines)
    assert in_task["decision_id"] == "dec_9" and in_task["org"] == "acme"
    assert delivering["delivery_id"] == "dlv_1" and delivering["decision_id"] == "dec_9"
    assert "decision_id" not in after and "delivery_id" not in after


def test_secrets_redacted_in_extras_and_message(configured, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "custom-key-0123456789")
    lines = configured()
    logging.getLogger("astralis.test").warning(
        "retrying with Authorization: Bearer eyJhbGciOi.abc-123 key sk-proj-AbCdEf123456 "
        "url=https://x.test/?api_key=q1w2e3r4 env custom-key-0123456789 used input_tokens=120",
        extra={"api_key": "plain", "headers": {"Authorization": "Bearer zzz", "Accept": "application/json"},
               "webhookSecret": "whsec_1", "password": "hunter2", "input_tokens": 120,
               "note": "sent token=abcd1234"})
    [record] = _records(lines)
    raw = lines()[0]
    for secret in ("eyJhbGciOi", "AbCdEf123456", "q1w2e3r4", "custom-key-0123456789", "plain", "zzz",
                   "whsec_1", "hunter2", "abcd1234"):
        assert secret not in raw, secret
    assert "Bearer [redacted]" in record["msg"]
    assert "input_tokens=120" in record["msg"]  # token *counts* are not credentials
    assert record["api_key"] == record["password"] == record["webhookSecret"] == "[redacted]"
    assert record["headers"] == {"Authorization": "[redacted]", "Accept": "application/json"}
    assert record["input_tokens"] == 120
    assert record["note"] == "sent token=[redacted]"


def test_secrets_redacted_in_exception_text(configured) -> None:
    lines = configured()
    try:
        raise RuntimeError("401 for Bearer abcdef123456")
    except RuntimeError:
        logging.getLogger("astralis.test").exception("llm call failed")
    assert "abcdef123456" not in lines()[0]


def test_configure_twice_installs_one_handler(configured) -> None:
    configured()
    lines = configured()
    for name in logs.LOGGERS:
        assert sum(isinstance(h, logs._Handler) for h in logging.getLogger(name).handlers) == 1
    logging.getLogger("astralis.test").info("once")
    assert len(lines()) == 1


def test_plain_text_format(configured) -> None:
    lines = configured(json_format=False)
    with logs.bind(org="acme", event_id="evt_1", decision_id="dec_1"):
        logging.getLogger("astralis.test").info("assigned to u-sam", extra={"pipeline": "sales-inquiries",
                                                                           "api_key": "sk-live-0123456789"})
    [line] = lines()
    assert re.fullmatch(
        r"\S+Z INFO astralis\.test \[org=acme event_id=evt_1 decision_id=dec_1\] assigned to u-sam "
        r"pipeline=sales-inquiries api_key=\[redacted\]", line)


def test_configure_rejects_unknown_level() -> None:
    with pytest.raises(ValueError, match="'LOUD'"):
        logs.configure("LOUD")
