"""Red-team findings on tenant configuration (issue 13, F4, F5 and the YAML part of F7): template amplifiers are
refused before they allocate; YAML numbers are YAML 1.2's (no sexagesimal), bounded in length, documents bounded
in values, and a scalar Python cannot build is a finding at its line (422), never a 500."""

# ruff: noqa: F811  (the service fixtures are imported from tests/server/conftest.py, then named as arguments)
from __future__ import annotations

import time
import tracemalloc
from typing import Any

import pytest

from engine.loader import MAX_YAML_NODES, MAX_YAML_NUMBER_CHARS
from engine.templates import MAX_VALUE, _compile, render
from tests.server.conftest import auth, config_dirs, make_client, make_settings, service_env  # noqa: F401 (fixtures)


@pytest.fixture
def store_url(tmp_path: Any) -> str:
    """These tests need one store: a SQLite file."""
    return str(tmp_path / "astralis.db")


# --------------------------------------------------------------------------- F4: template amplifiers

AMPLIFIERS = [
    # the finding's own forms
    '{{ "%(a)1000000000s" % {"a": 1} }}',
    '{{ "{:>99999999}".format(1) }}',
    '{{ ("\t"*99999).expandtabs(10000) }}',
    '{{ ("x\n"*49999)|indent(9999) }}',
    # the same amplifiers in their other spellings
    '{{ "%(a)99999s" % {"a": 1} }}', '{{ "%(a(b)s)999999999s" % {"a(b)s)": 1} }}', '{{ "%*d" % (9999, 1) }}',
    '{{ "%.*f" % (9999, 1.0) }}', '{{ "%(a)999999s"|format(a=1) }}', '{{ ("%(a)s" * 20000) % {"a": "x"*99999} }}',
    '{{ "{:>{w}}".format(1, w=9999) }}', '{{ "{a:>99999}".format_map({"a": 1}) }}',
    '{{ ("{0}" * 20000).format("x"*99999) }}', '{{ ("{0!r}" * 2000).format("\\x00"*9999) }}',
    '{{ ("\t"*99999).expandtabs(tabsize=9999) }}', '{{ ("x\n"*49999)|indent("y"*9999) }}',
    '{{ ("a "*4999)|wordwrap(1, wrapstring="y"*99999) }}', '{{ ("a"*99999).translate({97: "x"*99999}) }}',
    '{{ ["x"*99999] * 1000 }}', '{% set s = "x"*99999 %}{{ [s,s,s,s,s,s,s,s,s,s] }}',
    '{% set s = "x"*99999 %}{{ [s,s,s]|string }}', '{% set s = "x"*9999 %}{{ [s,s,s]|tojson(9999) }}',
    '{{ range(1000)|map("string")|map("center", 9999)|join }}',
    '{{ "".join(range(1000)|map("string")|map("center", 9999)) }}',
]


@pytest.mark.parametrize("source", AMPLIFIERS)
def test_template_amplifiers_are_refused_before_they_allocate(source: str) -> None:
    """F4: `{{ "%(a)1000000000s" % {"a": 1} }}` in a notification body built 300,000,000 characters (holding the
    GIL 2.6 s) before the size check; `.format`, `expandtabs` and `indent` were not checked at all. Each form is
    now refused from its inputs' sizes: a limit error naming it, in milliseconds, with no large allocation."""
    errors: list[str] = []
    _compile(source)  # compiled (and Jinja imported) outside the measurement, as the dispatcher's cache does
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        subject, _ = render("notice", {"notice": {"subject": "s", "body": source}},
                               {"org": {"name": "Acme"}, "data": {}}, errors)
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(errors) == 1 and "TemplateLimitError" in errors[0], errors
    assert "at most" in errors[0] or "refused before it was made" in errors[0], errors
    assert peak < 50 * MAX_VALUE, f"{peak} bytes allocated at the peak"
    assert elapsed < 0.5, f"{elapsed * 1000:.0f} ms"
    assert subject.startswith("[Acme] notice")  # the built-in text was sent instead


@pytest.mark.parametrize(("source", "text"), [
    ('{{ "%5.1f|%-3s|%(n)s" % {"n": 2} if false else "%.2f|%-3s|" % (1.5, "a") ~ "%(n)03d" % {"n": 7} }}',
     "1.50|a  |007"),
    ('{{ "{:>4}|{:.2f}|{n:03d}".format("a", 2.5, n=7) }}', "a|2.50|007"),
    ('{{ "{a}-{b!r}".format_map({"a": 1, "b": "x"}) }}', "1-'x'"),
    ('{{ "a\tb".expandtabs(4) }}', "a   b"),
    ('{{ "a\nb"|indent(2, true) }}', "a\n  b"),
    ('{{ "one two"|wordwrap(3) }}', "one\ntwo"),
    ('{{ ["x", "y"]|join(", ") ~ ";" ~ [1, 2] ~ ";" ~ ["ab"] * 2 }}', "x, y;[1, 2];['ab', 'ab']"),
    ('{{ "abc".translate({97: "A"}) }}', "Abc"),
])
def test_ordinary_formatting_still_renders(source: str, text: str) -> None:
    """The checks refuse only what would pass the limits: widths, formats and joins of ordinary size render."""
    errors: list[str] = []
    _, body = render("t", {"t": {"subject": "s", "body": source}}, {"data": {}}, errors)
    assert errors == [] and body == text


# --------------------------------------------------------------------------- F5 and F7: YAML scalars

async def _policy(client: Any, key: str) -> str:
    return str((await (await client.get("/api/agent/config", headers=auth(key))).json())["policy"])


async def _refused(client: Any, key: str, body: dict[str, Any], code: str, line: int) -> float:
    """POST body to validate, to the config itself and to simulate: a finding `code` at `line` on every route,
    never a 500 (validate answers 200 `valid: false` for findings after the YAML limits, 422 for those; the others
    answer 422). Returns the slowest route's time."""
    slowest = 0.0
    routes = [("/api/agent/config/validate", body), ("/api/agent/config", body),
              ("/api/agent/simulate", {"events": [{"source": "EMAIL", "type": "email:received",
                                                   "data": {"subject": "hi"}}], "config": body})]
    for route, payload in routes:
        t0 = time.perf_counter()
        r = await client.post(route, json=payload, headers=auth(key))
        slowest = max(slowest, time.perf_counter() - t0)
        out = await r.json()
        if route.endswith("/validate") and r.status == 200:
            assert out["valid"] is False and any(e["code"] == code and e["line"] == line for e in out["errors"]), (
                str(out)[:500])
            continue
        assert r.status == 422, (route, r.status, str(out)[:500])
        message = out["error"]["message"]
        assert code in message and f":{line}:" in message, (route, message[:500])
    return slowest


async def test_sexagesimal_number_is_text_not_a_huge_integer(make_client) -> None:
    """F5: `per_minute: 59:59:…` of 80,000 parts (~240 KiB) made PyYAML build a huge integer by repeated big-number
    multiplication (3.9 s to validate) and was accepted. Sexagesimal scalars are now text, as in YAML 1.2: the
    rate limit is a schema finding at its line, in well under a second, on validate, save and simulate."""
    client, key_for = await make_client()
    key = await key_for("acme")
    policy = await _policy(client, key)
    huge = ":".join(["59"] * 80_000)
    text = policy + f"\nrate_limits: {{per_minute: {huge}}}\n"
    assert 230_000 < len(text.encode()) < 256 * 1024
    line = text.count("\n")
    elapsed = await _refused(client, key, {"policy": text}, "schema", line)
    assert elapsed < 1.0, f"{elapsed * 1000:.0f} ms"
    assert (await _policy(client, key)) == policy  # nothing was saved


async def test_a_flow_list_of_60000_items_is_refused_before_it_is_built(make_client) -> None:
    """F5: a flow list of 60,000 items took 2.7 s to validate. A document of more than `MAX_YAML_NODES` values is
    `yaml_too_many_nodes` at the line where it passes the cap, found in the streaming pass before construction."""
    client, key_for = await make_client()
    key = await key_for("acme")
    text = "x: [" + ",".join(["1"] * 60_000) + "]\n"
    assert MAX_YAML_NODES < 60_000
    elapsed = await _refused(client, key, {"files": {"big.yaml": text}}, "yaml_too_many_nodes", 1)
    assert elapsed < 1.0, f"{elapsed * 1000:.0f} ms"


@pytest.mark.parametrize(("name", "make", "code"), [
    ("policy int of 5,000 digits", lambda p: p + "\nrate_limits: {per_minute: " + "9" * 5000 + "}\n", "yaml_number"),
    ("rule-file int of 5,000 digits", lambda p: "rate_limits: {per_minute: " + "9" * 5000 + "}\n", "yaml_number"),
    ("key of 200,000 digits", lambda p: p + "\n? " + "9" * 200_000 + "\n: 1\n", "yaml_number"),
    ("timestamp with a bad offset", lambda p: p + "\nx: 2001-12-14t21:59:43.10-99:99\n", "yaml_value"),
    ("sexagesimal float past float range", lambda p: p + "\nx: " + ":".join(["59"] * 400) + ".5\n", "schema"),
])
async def test_yaml_scalars_python_cannot_build_are_findings_not_500s(make_client, name: str, make: Any,
                                                                       code: str) -> None:
    """F7 (YAML): an int of 5,000 digits (policy or rule file), a key of 200,000 digits, a timestamp with offset
    -99:99 and a sexagesimal float past float range each answered 500 (ValueError, OverflowError). Each is now a
    422 finding at its line on validate, save and simulate."""
    client, key_for = await make_client()
    key = await key_for("acme")
    policy = await _policy(client, key)
    text = make(policy)
    line = text.count("\n") - (1 if "\n: 1\n" in text else 0)
    body = {"files": {"rules.yaml": text}} if name.startswith("rule-file") else {"policy": text}
    await _refused(client, key, body, code, line)
    assert (await _policy(client, key)) == policy


def test_number_caps_are_the_documented_ones() -> None:
    assert (MAX_YAML_NODES, MAX_YAML_NUMBER_CHARS) == (20_000, 100)
