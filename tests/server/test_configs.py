"""server.configs: staging an update beside the org folder, swapping it in at once, and putting it back."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from server import configs
from server.configs import stage, swap
from server.errors import ApiError
from server.schemas import ConfigUpdate
from tests.server.conftest import ROOT


def _tree(tmp: Path) -> tuple[Path, Path]:
    rulesets, policies = tmp / "rulesets", tmp / "policies"
    shutil.copytree(ROOT / "rulesets", rulesets)
    shutil.copytree(ROOT / "policies", policies)
    return rulesets, policies


def _snapshot(rulesets: Path, policies: Path) -> dict[str, bytes]:
    # bytes: the org folder holds its model's arrays (model/model.npz) beside the YAML
    files = {str(p.relative_to(rulesets)): p.read_bytes() for p in (rulesets / "acme").rglob("*") if p.is_file()}
    files["policy"] = (policies / "acme.yaml").read_bytes()
    return files


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_swap_replaces_the_folder_and_policy_at_once_and_undo_puts_them_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool) -> None:
    if not exchange:  # a system without renameat2(RENAME_EXCHANGE)
        monkeypatch.setattr(configs, "_exchange", lambda a, b: False)
    rulesets, policies = _tree(tmp_path)
    before = _snapshot(rulesets, policies)
    body = ConfigUpdate(files={"extra.yaml": "ruleset: extra\nrules: []\n"}, delete=["spam.yaml"],
                        policy=before["policy"].decode() + "# tuned\n")
    staged = stage(rulesets, policies, "acme", body)
    assert _snapshot(rulesets, policies) == before  # staging writes nothing in place
    done = swap(rulesets, policies, "acme", staged, policy_changed=True)
    after = _snapshot(rulesets, policies)
    assert after["acme/extra.yaml"] == b"ruleset: extra\nrules: []\n" and "acme/spam.yaml" not in after
    assert after["policy"].endswith(b"# tuned\n")
    assert {k for k in after if k.startswith("acme/tests/")} == {k for k in before if k.startswith("acme/tests/")}
    done.undo()
    staged.discard()
    assert _snapshot(rulesets, policies) == before
    assert list((rulesets / ".staging").iterdir()) == []
    assert [p.name for p in policies.iterdir() if p.name.startswith(".")] == []


def test_an_unchanged_file_is_never_written_through_its_staged_link(tmp_path: Path) -> None:
    rulesets, policies = _tree(tmp_path)
    original = (rulesets / "acme" / "intake.yaml").read_text()
    staged = stage(rulesets, policies, "acme", ConfigUpdate(files={"intake.yaml": original + "# new\n"}))
    try:
        assert (rulesets / "acme" / "intake.yaml").read_text() == original
        assert (staged.org_dir / "intake.yaml").read_text() == original + "# new\n"
    finally:
        staged.discard()


def test_a_delete_of_a_missing_file_fails_the_stage_and_leaves_nothing(tmp_path: Path) -> None:
    rulesets, policies = _tree(tmp_path)
    with pytest.raises(ApiError) as info:
        stage(rulesets, policies, "acme", ConfigUpdate(files={"extra.yaml": "x: 1\n"}, delete=["nope.yaml"]))
    assert info.value.status == 422 and "there is no file 'nope.yaml'" in str(info.value.text)
    assert list((rulesets / ".staging").iterdir()) == []


def test_findings_are_shown_without_host_paths(tmp_path: Path) -> None:
    from engine.registry import Registry

    rulesets, policies = _tree(tmp_path)
    registry = Registry(rulesets, policies)
    text = f"{rulesets}/acme/intake.yaml:3: duplicate_id: also defined in {tmp_path}/scratch/rulesets/acme/x.yaml"
    shown = configs.tenant_text(text, registry, tmp_path / "scratch")
    assert shown == "rulesets/acme/intake.yaml:3: duplicate_id: also defined in rulesets/acme/x.yaml"


@pytest.mark.parametrize("polling", [False, True], ids=["native", "polling"])
async def test_another_process_sharing_the_folder_reloads_a_swapped_in_update(tmp_path: Path, polling: bool) -> None:
    from engine.registry import Registry
    from server.watcher import ConfigWatcher
    from tests.server.test_watcher import eventually

    rulesets, policies = _tree(tmp_path)
    here, there = Registry(rulesets, policies), Registry(rulesets, policies)  # two processes, one folder
    here.load_all()
    there.load_all()
    watcher = ConfigWatcher(there, debounce_ms=50, force_polling=polling, poll_delay_ms=50)
    task = asyncio.create_task(watcher.run())
    try:
        await asyncio.sleep(0.3)  # the watcher's first look at the folders
        body = ConfigUpdate(files={"extra.yaml": "ruleset: extra\nrules:\n  - id: kiosk\n    when: {text: {any: "
                                                 "[kiosk quotation]}}\n    then: {intent: SALES_INQUIRY, "
                                                 "confidence: 0.9}\n"})
        done = await asyncio.to_thread(configs.install, here, "acme", body)
        assert done.revision is not None and done.errors == [], done
        await eventually(lambda: (c := there.get("acme")) is not None and c.revision == done.revision, within=8.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
