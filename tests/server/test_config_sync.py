"""server.config_sync without Redis: applying a stored configuration to a process's own folders, and catching up
after missed notices without overwriting a later hand edit."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from adapters.sqlite_store import SQLiteStore
from engine.registry import Registry, build
from server.config_sync import ConfigSync, apply_files

ROOT = Path(__file__).resolve().parents[2]


def _copy(tmp: Path, name: str) -> tuple[Path, Path]:
    rulesets, policies = tmp / name / "rulesets", tmp / name / "policies"
    shutil.copytree(ROOT / "rulesets", rulesets)
    shutil.copytree(ROOT / "policies", policies)
    return rulesets, policies


def _age(paths: list[Path], seconds: float) -> None:
    for p in paths:
        t = time.time() - seconds
        os.utime(p, (t, t))


def test_apply_files_makes_the_folder_hold_exactly_the_stored_files(tmp_path):
    rulesets, policies = _copy(tmp_path, "m")
    files = {"org.yaml": (rulesets / "acme" / "org.yaml").read_text(), "policies/acme.yaml": "extends: default\n",
             "policies/default.yaml": "never: written\n", "../escape.yaml": "x"}
    assert apply_files(rulesets, policies, "acme", files)
    assert sorted(p.name for p in (rulesets / "acme").glob("*.yaml")) == ["org.yaml"]
    assert (policies / "acme.yaml").read_text() == "extends: default\n"
    assert (policies / "default.yaml").read_text() == (ROOT / "policies" / "default.yaml").read_text()
    assert (rulesets / "acme" / "tests").is_dir()  # the org's test cases are not configuration
    assert not apply_files(rulesets, policies, "acme", files)  # nothing differs: nothing written


async def test_catch_up_loads_a_newer_stored_revision_but_not_over_a_later_hand_edit(tmp_path):
    # Machine A made an update and stored it; machine B (this registry) missed the notice.
    a_rules, a_policies = _copy(tmp_path, "a")
    policy = (a_policies / "acme.yaml").read_text() + "\n# tuned\n"
    (a_policies / "acme.yaml").write_text(policy)
    compiled, findings = build(a_rules / "acme", a_policies)
    assert compiled is not None, findings
    files = {p.name: p.read_text() for p in (a_rules / "acme").glob("*.yaml")} | {"policies/acme.yaml": policy}

    b_rules, b_policies = _copy(tmp_path, "b")
    _age([*(b_rules / "acme").glob("*.yaml"), b_policies / "acme.yaml"], 3600)
    registry = Registry(b_rules, b_policies)
    registry.load_all()
    old = registry.get("acme").revision
    store = await SQLiteStore.open(tmp_path / "astralis.db")
    try:
        await store.save_agent_config("acme", compiled.revision, files)
        sync = ConfigSync("redis://127.0.0.1:1/0", registry, store)  # no Redis needed to catch up
        await sync.catch_up()
        assert registry.get("acme").revision == compiled.revision != old
        assert (b_policies / "acme.yaml").read_text() == policy

        # A hand edit on B after that update wins over the store at the next catch-up.
        hand = policy + "# edited on b\n"
        (b_policies / "acme.yaml").write_text(hand)
        registry.reload("acme")
        edited = registry.get("acme").revision
        await sync.catch_up()
        assert (b_policies / "acme.yaml").read_text() == hand and registry.get("acme").revision == edited
        await sync.close()
    finally:
        await store.close()
