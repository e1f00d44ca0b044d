"""Hot reload: a changed file reloads the orgs it belongs to; a broken one keeps the last good revision
and reports where it broke; fixing it clears the error (server/watcher.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.registry import Registry
from server.watcher import ConfigWatcher
from tests.orgs import copy_org

ROOT = Path(__file__).resolve().parents[2]
SPAM_INTENT = "    then: {intent: SPAM, confidence: 0.95, decision_type: NO_ACTION, priority: 1}\n"


class Tree:
    """A private copy of the acme and brightsmile orgs and the policies, loaded in a registry."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for org in ("acme", "brightsmile"):
            shutil.copytree(ROOT / "rulesets" / org, root / "rulesets" / org)
        shutil.copytree(ROOT / "policies", root / "policies")
        self.registry = Registry(root / "rulesets", root / "policies")
        assert self.registry.load_all() == {"acme": [], "brightsmile": []}
        self.reloads: list[tuple[str, list[ConfigError]]] = []

    def path(self, rel: str) -> Path:
        return self.root / rel

    def write(self, rel: str, text: str) -> None:
        """Replace a file atomically, as editors do: a reload never reads it half-written."""
        p = self.path(rel)
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)

    def edit(self, rel: str, old: str, new: str, count: int = 1) -> None:
        text = self.path(rel).read_text(encoding="utf-8")
        assert old in text, f"{rel}: {old!r} not found"
        self.write(rel, text.replace(old, new, count))

    def line_of(self, rel: str, needle: str) -> int:
        return next(i for i, line in enumerate(self.path(rel).read_text().splitlines(), 1) if needle in line)

    def revision(self, org: str) -> str:
        active = self.registry.get(org)
        assert active is not None
        return active.revision

    def errors(self, org: str) -> list[str]:
        state = self.registry.state(org)
        assert state is not None
        return [str(e).replace(str(self.root) + "/", "") for e in state.errors]

    async def on_reload(self, org: str, findings: list[ConfigError]) -> None:
        self.reloads.append((org, findings))


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


async def eventually(condition: Callable[[], bool], within: float = 4.0, step: float = 0.02) -> None:
    """Wait until `condition()` holds, failing after `within` seconds."""
    for _ in range(int(within / step)):
        if condition():
            return
        await asyncio.sleep(step)
    assert condition(), f"not true within {within} s"


@pytest.fixture
async def watching(tree: Tree) -> AsyncIterator[ConfigWatcher]:
    """The watcher running (polling, short debounce) and seen to react; cancelled after the test."""
    watcher = ConfigWatcher(tree.registry, on_reload=tree.on_reload, debounce_ms=50, force_polling=True,
                            poll_delay_ms=50)
    task = asyncio.create_task(watcher.run())
    # The watcher takes its first snapshot once the task runs: from then on, rewriting a file (unchanged)
    # reloads its org. brightsmile's is used so that the tests' own org, acme, is never reloaded by this.
    await asyncio.sleep(0.05)
    text = tree.path("rulesets/brightsmile/org.yaml").read_text()
    for _ in range(3):
        tree.write("rulesets/brightsmile/org.yaml", text)
        try:
            await eventually(lambda: bool(tree.reloads), within=1.5)
            break
        except AssertionError:
            continue
    assert tree.reloads, "the watcher never reacted"
    tree.reloads.clear()
    yield watcher
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --------------------------------------------------------------------------- which orgs a change reloads

def test_orgs_for(tree: Tree) -> None:
    watcher = ConfigWatcher(tree.registry)
    r, p = tree.path("rulesets"), tree.path("policies")
    (r / "draft").mkdir()
    (p / "shared.yaml").write_text("llm: {provider: none}\n")
    cases = {
        r / "acme" / "intake.yaml": ["acme"],
        r / "acme" / "tests" / "cases.yaml": [],  # test cases are not part of the revision
        r / "acme" / "notes.txt": [],
        r / "draft" / "rules.yaml": [],  # not an org until it holds org.yaml
        r / "top.yaml": [],
        p / "acme.yaml": ["acme"],
        p / "default.yaml": ["acme", "brightsmile"],
        p / "shared.yaml": ["acme", "brightsmile"],
        p / "gone.yml": ["acme", "brightsmile"],
        tree.root / "elsewhere.yaml": [],
    }
    for path, orgs in cases.items():
        assert watcher.orgs_for([path]) == orgs, path
    assert watcher.orgs_for([r / "acme" / "spam.yaml", r / "brightsmile" / "office.yaml"]) == ["acme", "brightsmile"]
    (r / "draft" / "org.yaml").write_text("org: draft\n")
    assert watcher.orgs_for([r / "draft" / "rules.yaml"]) == ["draft"]


async def test_an_org_policy_is_never_extended_so_its_change_reloads_only_its_org(tree: Tree) -> None:
    # `extends` takes `default` or a shared policy of the operator's, never another org's (issue 13, finding 7).
    watcher = ConfigWatcher(tree.registry)
    copy_org(tree.path("rulesets/acme"), tree.path("rulesets/beta"), "beta")
    tree.path("policies/beta.yaml").write_text("extends: acme\n")
    found = (await watcher.reload_paths([tree.path("policies/beta.yaml")]))["beta"]
    assert "unknown_policy" in {f.code for f in found} and tree.registry.get("beta") is None
    assert watcher.orgs_for([tree.path("policies/acme.yaml")]) == ["acme"]
    assert watcher.orgs_for([tree.path("policies/brightsmile.yaml")]) == ["brightsmile"]


# --------------------------------------------------------------------------- reload_paths, without a file watcher

async def test_a_broken_file_keeps_the_last_good_revision_and_fixing_it_clears_the_error(
        tree: Tree, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="astralis.config")
    watcher = ConfigWatcher(tree.registry, on_reload=tree.on_reload)
    good, other = tree.revision("acme"), tree.revision("brightsmile")
    tree.edit("rulesets/acme/spam.yaml", SPAM_INTENT, SPAM_INTENT.replace("intent: SPAM", "intent: JUNK"))
    line = tree.line_of("rulesets/acme/spam.yaml", "intent: JUNK")

    found = await watcher.reload_paths([tree.path("rulesets/acme/spam.yaml")])
    assert list(found) == ["acme"] and [e.code for e in found["acme"]] == ["schema"]
    assert tree.revision("acme") == good and tree.revision("brightsmile") == other
    assert tree.errors("acme") == [f"rulesets/acme/spam.yaml:{line}: schema: rules[0].then.intent: 'JUNK' is not one of "
                                   "['SALES_INQUIRY', 'SUPPORT_REQUEST', 'BILLING_QUESTION', 'PARTNERSHIP', 'PROJECT', "
                                   "'SCHEDULING', 'SPAM', 'OTHER']"]
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert warning.getMessage() == str(found["acme"][0]) and warning.org == "acme"  # type: ignore[attr-defined]
    assert f"org 'acme': reload rejected with 1 error(s); still on revision {good}" in caplog.text
    assert tree.reloads == [("acme", found["acme"])]

    caplog.clear()
    tree.edit("rulesets/acme/spam.yaml", "intent: JUNK, confidence: 0.95", "intent: SPAM, confidence: 0.9")
    assert await watcher.reload_paths([tree.path("rulesets/acme/spam.yaml")]) == {"acme": []}
    assert tree.errors("acme") == [] and tree.revision("acme") != good
    [info] = caplog.records
    assert info.levelno == logging.INFO and info.getMessage() == f"org 'acme': revision {tree.revision('acme')} active"
    assert info.org == "acme"  # type: ignore[attr-defined]


async def test_a_failing_callback_or_reload_is_logged_not_raised(tree: Tree, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def callback(org: str, findings: list[ConfigError]) -> None:  # a plain function works too
        calls.append(org)
        raise RuntimeError("listener broke")

    watcher = ConfigWatcher(tree.registry, on_reload=callback)
    assert await watcher.reload_paths([tree.path("policies/default.yaml")]) == {"acme": [], "brightsmile": []}
    assert calls == ["acme", "brightsmile"]
    assert "on_reload callback failed for org 'acme'" in caplog.text
    tree.path("rulesets/acme/spam.yaml").write_bytes(b"ruleset: \xff\xfe\n")  # not UTF-8: a config error
    [error] = (await watcher.reload_paths([tree.path("rulesets/acme/spam.yaml")]))["acme"]
    assert error.code == "yaml_syntax" and "not UTF-8" in error.message and error.line == 1

    def crash(org: str) -> list[ConfigError]:
        raise RuntimeError("compiler crashed")

    tree.registry.reload = crash  # type: ignore[method-assign]
    assert await watcher.reload_paths([tree.path("rulesets/acme/spam.yaml")]) == {}
    assert "reloading org 'acme' failed; it stays on its last good revision" in caplog.text


# --------------------------------------------------------------------------- the running watcher

async def test_watcher_reloads_a_broken_then_fixed_rule_file(tree: Tree, watching: ConfigWatcher) -> None:
    good, other = tree.revision("acme"), tree.revision("brightsmile")
    spam = "rulesets/acme/spam.yaml"
    tree.edit(spam, "ruleset: spam\n", "ruleset: [spam\n")
    await eventually(lambda: bool(tree.errors("acme")))
    assert tree.revision("acme") == good
    [error] = tree.errors("acme")
    assert error.startswith(f"{spam}:") and ": yaml_syntax: " in error
    assert int(error.split(":")[1]) >= tree.line_of(spam, "ruleset: [spam")

    tree.edit(spam, "ruleset: [spam\n", "ruleset: spam\n")
    tree.edit(spam, "confidence: 0.95, decision_type: NO_ACTION", "confidence: 0.9, decision_type: NO_ACTION")
    await eventually(lambda: not tree.errors("acme"))
    assert tree.revision("acme") != good
    assert tree.revision("brightsmile") == other and tree.errors("brightsmile") == []  # left alone


async def test_watcher_reloads_every_org_when_the_default_policy_changes(tree: Tree, watching: ConfigWatcher) -> None:
    before = {org: tree.revision(org) for org in ("acme", "brightsmile")}
    tree.write("policies/default.yaml", tree.path("policies/default.yaml").read_text() + "# reviewed\n")
    await eventually(lambda: all(tree.revision(org) != rev for org, rev in before.items()))
    assert {org for org, _ in tree.reloads} == {"acme", "brightsmile"}


async def test_watcher_loads_a_new_org_folder(tree: Tree, watching: ConfigWatcher) -> None:
    copy_org(tree.path("rulesets/acme"), tree.path("rulesets/beta"), "beta")  # org.yaml written last, atomically
    await eventually(lambda: tree.registry.get("beta") is not None
                     and {r.ruleset for r in tree.registry.get("beta").bundle.rules}  # type: ignore[union-attr]
                     == {"bookings", "intake", "languages", "spam"})
    assert tree.registry.orgs == ["acme", "beta", "brightsmile"]


async def test_watcher_sees_a_file_rewritten_within_the_second_of_its_last_change(
        tree: Tree, watching: ConfigWatcher) -> None:
    # Polling compares modification times in whole seconds: stamp the fix in the same second as the break
    # so that only the watcher's own re-check of recently changed files can notice it.
    spam = tree.path("rulesets/acme/spam.yaml")
    good = tree.revision("acme")
    tree.edit("rulesets/acme/spam.yaml", "ruleset: spam\n", "ruleset: [spam\n")
    await eventually(lambda: bool(tree.errors("acme")))
    broken_ns = spam.stat().st_mtime_ns
    tree.edit("rulesets/acme/spam.yaml", "ruleset: [spam\n", "ruleset: spam\n")
    same_second = broken_ns - broken_ns % 10**9 + (broken_ns % 10**9 + 1) % 10**9
    os.utime(spam, ns=(same_second, same_second))
    await eventually(lambda: not tree.errors("acme"))
    assert tree.revision("acme") == good  # the original text again: the original revision
