"""The `astralis` command as an engineer installing and wiring the service meets it (issue 16, items 9–11):
--version, -q/-v, help text with defaults for every option, a plain message and a non-zero exit (never a
traceback) for each mistake the issue lists, `validate` taking an org's name like `test`, no database created by
a typo, a refusal to serve with no rulesets found (naming the folders looked in, creating nothing), environment
variables for host, port, log level and workers, and API answers that end with a newline."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from server import cli
from tests.server.conftest import auth

ROOT = Path(__file__).resolve().parents[2]
DIRS = ["--rulesets", str(ROOT / "rulesets"), "--policies", str(ROOT / "policies")]


def astralis(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr


def test_version() -> None:
    r = astralis("--version")
    assert r.returncode == 0 and r.stdout.startswith("astralis ") and r.stdout.split()[1][0].isdigit()


def test_every_option_has_help_and_its_default_is_shown() -> None:
    p = cli.parser()
    subs = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sp in subs.choices.items():
        for a in sp._actions:
            if a.option_strings and a.help in (None, "") and a.dest != "help":
                missing.append(f"{name} {a.option_strings[0]}")
    assert missing == []
    text = astralis("serve", "--help", env={"COLUMNS": "300"}).stdout
    assert "(default: 8080)" in text and "(default: 127.0.0.1)" in text and "(default: 16)" in text
    assert "-q, --quiet" in text and "-v, --verbose" in text


def test_quiet_and_verbose(monkeypatch: pytest.MonkeyPatch) -> None:
    quiet = astralis("-q", "validate", "acme", *DIRS)
    assert quiet.returncode == 0 and quiet.stdout == ""
    assert astralis("validate", "acme", *DIRS).stdout.startswith("ok   acme:")
    monkeypatch.delenv("ASTRALIS_LOG_LEVEL", raising=False)
    assert cli._log_level(cli.parser().parse_args(["-v", "serve"])) == "DEBUG"
    assert cli._log_level(cli.parser().parse_args(["serve", "-v"])) == "DEBUG"
    assert cli._log_level(cli.parser().parse_args(["serve", "-q"])) == "WARNING"
    assert cli._log_level(cli.parser().parse_args(["-v", "serve", "--log-level", "error"])) == "ERROR"


def test_validate_takes_an_org_name_like_test() -> None:
    r = astralis("validate", "acme", *DIRS)
    assert r.returncode == 0 and "ok   acme" in r.stdout and "brightsmile" not in r.stdout
    r = astralis("validate", "nosuchorg", *DIRS)
    assert r.returncode == 1 and "nosuchorg:0: missing_file: not an org's name" in r.stderr
    no_traceback(r)


def test_simulate_with_a_missing_events_file(tmp_path: Path) -> None:
    r = astralis("simulate", "--org", "acme", "--events", "/nonexistent", *DIRS)
    assert r.returncode == 1 and "/nonexistent:0: missing_file: no such events file" in r.stderr
    no_traceback(r)


def test_serve_with_a_bogus_log_level(tmp_path: Path) -> None:
    r = astralis("serve", "--log-level", "bogus", "--db", str(tmp_path / "a.db"), *DIRS)
    assert r.returncode == 2 and "'bogus' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL" in r.stderr
    no_traceback(r)
    assert not (tmp_path / "a.db").exists()
    r = astralis("serve", "--db", str(tmp_path / "a.db"), *DIRS, env={"ASTRALIS_LOG_LEVEL": "loud"})
    assert r.returncode == 1 and "$ASTRALIS_LOG_LEVEL" in r.stderr
    no_traceback(r)


def test_keys_with_a_database_that_cannot_be() -> None:
    r = astralis("keys", "create", "--org", "acme", "--db", "/proc/nope/x.db", *DIRS)
    assert r.returncode == 1 and "/proc/nope/x.db:0: missing_file: the folder /proc/nope does not exist" in r.stderr
    no_traceback(r)


@pytest.mark.parametrize("action", [["revoke", "zzz"], ["list"]])
def test_keys_revoke_or_list_with_a_typo_creates_nothing(tmp_path: Path, action: list[str]) -> None:
    r = astralis("keys", *action, "--db", "typo.db", cwd=tmp_path)
    assert r.returncode == 1 and "typo.db:0: missing_file: no such database (nothing was created" in r.stderr
    no_traceback(r)
    assert list(tmp_path.iterdir()) == []


def test_serve_refuses_to_start_with_no_rulesets_and_creates_nothing(tmp_path: Path) -> None:
    r = astralis("serve", cwd=tmp_path, env={"ASTRALIS_RULESETS": "", "ASTRALIS_POLICIES": ""})
    assert r.returncode == 1
    assert f"no rulesets found: {tmp_path / 'rulesets'} (the default, ./rulesets)" in r.stderr
    assert f"Policies would be read from {tmp_path / 'policies'}" in r.stderr
    no_traceback(r)
    assert list(tmp_path.iterdir()) == []  # no astralis.db
    r = astralis("serve", "--rulesets", str(tmp_path / "conf"), cwd=tmp_path)
    assert r.returncode == 1 and f"{tmp_path / 'conf'} (--rulesets)" in r.stderr


def test_serve_on_a_port_in_use_says_so(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = astralis("serve", "--port", str(port), "--db", str(tmp_path / "a.db"), "--log-format", "text", *DIRS,
                     env={"ACME_WEBHOOK_SECRET": "whsec-acme-test-0123456789"}, timeout=90)
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in r.stdout + r.stderr
    no_traceback(r)


def test_host_port_log_level_and_workers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"ASTRALIS_HOST": "0.0.0.0", "ASTRALIS_PORT": "9090", "ASTRALIS_WORKERS": "3",
                        "ASTRALIS_LOG_LEVEL": "warning"}.items():
        monkeypatch.setenv(name, value)
    args = cli.parser().parse_args(["serve"])
    assert (args.host, args.port, args.workers, cli._log_level(args)) == ("0.0.0.0", 9090, 3, "WARNING")
    args = cli.parser().parse_args(["serve", "--port", "7070", "--workers", "2", "--log-level", "debug"])
    assert (args.port, args.workers, cli._log_level(args)) == (7070, 2, "DEBUG")  # flags win
    monkeypatch.setenv("ASTRALIS_PORT", "eighty")
    with pytest.raises(SystemExit, match=r"\$ASTRALIS_PORT has value 'eighty': not a whole number"):
        cli.parser()


async def test_api_answers_end_with_a_newline(make_client) -> None:
    client, key_for = await make_client()
    key = await key_for("acme")
    for path in ("/api/agent/decisions", "/api/agent/org", "/api/agent/nope", "/api/agent/calendar",
                 "/schemas/nope.json"):
        r = await client.get(path, headers=auth(key))
        text = await r.text()
        assert text.endswith("}\n"), (path, r.status, text[-40:])
    r = await client.get("/api/agent/decisions")  # 401
    assert (await r.text()).endswith("}\n")


async def test_the_config_schemas_are_served_from_the_package(make_client) -> None:
    import json

    from engine.config_schemas import schema_texts

    client, _ = await make_client()
    for name, text in schema_texts().items():
        r = await client.get(f"/schemas/{name}")  # no key: a schema holds no org's data
        assert r.status == 200 and r.content_type == "application/schema+json"
        assert json.loads(await r.text()) == json.loads(text)
    await asyncio.sleep(0)


def test_validate_reports_every_independent_mistake_in_one_run(config_dirs) -> None:
    rulesets, policies = config_dirs
    acme = rulesets / "acme"
    # 1. a YAML syntax error in one file; 2. an unknown intent (schema) in another; 3. a route to a pipeline the org
    # does not define (a reference, once checked only when every file was clean)
    (acme / "spam.yaml").write_text((acme / "spam.yaml").read_text() + "\n  - id: [unclosed\n")
    intake = (acme / "intake.yaml").read_text()
    (acme / "intake.yaml").write_text(intake.replace("intent: BILLING_QUESTION,", "intent: BILLING_QUESTIONS,", 1))
    policy = (policies / "acme.yaml").read_text()
    (policies / "acme.yaml").write_text(policy.replace("pipeline: sales-inquiries", "pipeline: sales-team", 1))
    r = astralis("validate", "acme", "--rulesets", str(rulesets), "--policies", str(policies))
    assert r.returncode == 1
    codes = [line.split(": ")[1] for line in r.stderr.splitlines() if ": " in line]
    assert "yaml_syntax" in codes and "schema" in codes and "unknown_pipeline" in codes, r.stderr
    assert "FAIL acme" in r.stdout
    no_traceback(r)


async def test_start_up_names_an_org_whose_webhook_secret_is_missing(make_settings, monkeypatch, caplog) -> None:
    import logging

    from server.app import load_registry
    from server.metrics import Metrics

    monkeypatch.delenv("ACME_WEBHOOK_SECRET", raising=False)
    with caplog.at_level(logging.INFO, logger="astralis.app"):
        await load_registry(make_settings(), Metrics())
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("ACME_WEBHOOK_SECRET is not set: the signed webhooks of org acme") for m in said), said
    caplog.clear()
    monkeypatch.setenv("ACME_WEBHOOK_SECRET", "whsec-acme-test-0123456789")
    with caplog.at_level(logging.INFO, logger="astralis.app"):
        await load_registry(make_settings(), Metrics())
    assert not any("ACME_WEBHOOK_SECRET" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("prefix", ["AGENT_", "ASTRALIS_"])
def test_policy_overrides_read_either_prefix(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    from engine.loader import load_policy

    for n in ("AGENT_", "ASTRALIS_"):
        for v in ("DEFAULT_PROVIDER", "AUTO_EXECUTE_THRESHOLD", "REQUIRE_APPROVAL_THRESHOLD"):
            monkeypatch.delenv(n + v, raising=False)
    monkeypatch.setenv(prefix + "AUTO_EXECUTE_THRESHOLD", "0.97")
    policy, errors, _ = load_policy(ROOT / "policies", "acme", orgs={"acme", "brightsmile"})
    assert errors == [] and policy is not None
    assert {t.auto_execute for k, t in policy.thresholds.items() if k != "ESCALATE"} == {0.97}
