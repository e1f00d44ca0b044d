"""`astralis train` and `astralis eval` (server/cli_learning.py), run in-process."""

from __future__ import annotations

import json
from pathlib import Path

from engine.learning import load_model
from server.cli import main

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "tests" / "cases" / "acme"


def test_train_writes_a_model_that_loads_and_is_the_shipped_one(tmp_path, capsys):
    out = tmp_path / "acme" / "model"
    assert main(["train", "--org", "acme", "--out", str(out), "--format", "json",
                 "--rulesets", str(ROOT / "rulesets"), "--policies", str(ROOT / "policies")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["examples"] >= 450 and summary["out_of_fold"]["ece_after"] < summary["out_of_fold"]["ece_before"]
    model = load_model(tmp_path / "acme")
    assert model is not None and model.version == summary["version"]
    # the same examples give the same model: the one shipped in rulesets/acme/model
    assert summary["version"] == load_model(ROOT / "rulesets" / "acme").version


def test_eval_reports_tiers_confusion_and_rule_precision(capsys):
    events = CASES / "dev2.jsonl"  # held out: never trained on
    args = ["eval", "--org", "acme", "--events", str(events), "--labels", str(CASES / "dev2_labels.jsonl"),
            "--state", str(CASES / "state.json"), "--format", "json",
            "--rulesets", str(ROOT / "rulesets"), "--policies", str(ROOT / "policies")]
    assert main([*args, "--learning", "off"]) == 0
    off = json.loads(capsys.readouterr().out)
    assert main([*args, "--learning", "on"]) == 0
    on = json.loads(capsys.readouterr().out)
    assert off["labelled"] == on["labelled"] == 200
    assert set(off["intent_by_tier"]) <= {"rules", "fallback"} and "model" in on["intent_by_tier"]
    assert on["intent"]["correct"] > off["intent"]["correct"] and on["llm_share"] < off["llm_share"]
    labels = on["confusion"]["labels"]
    assert sum(sum(on["confusion"]["matrix"][r][c] for c in labels) for r in labels) == 200
    assert all(0 <= r["precision"] <= 1 and r["matched"] > 0 for r in on["rule_precision"].values())
    assert on["model_versions"] and not off["model_versions"]
    assert main([*args[:-10], "--events", str(events), "--labels", str(CASES / "dev2_labels.jsonl"),
                 "--rulesets", str(ROOT / "rulesets"), "--policies", str(ROOT / "policies")]) == 0
    text = capsys.readouterr().out
    assert "by model" in text and "confusion (rows: label, columns: decided)" in text and "rule precision" in text
