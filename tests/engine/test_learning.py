"""The org model: featurizing, scoring from plain arrays exactly as scikit-learn does, deterministic training,
calibration, and refusing a tampered model (engine/learning.py, engine/training.py)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.config import Intent
from engine.learning import ModelError, OrgModel, document, fold, load_model, save_model, tokens
from engine.loader import validate_org
from engine.registry import Registry
from engine.text import extract
from engine.training import Example, _fit, _logits, read_examples, softmax, train

ROOT = Path(__file__).resolve().parents[2]
ACME = ROOT / "rulesets" / "acme"
DEV2 = ROOT / "tests" / "cases" / "acme" / "dev2.jsonl"


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    """A third of acme's shipped examples (training on all of them takes a few seconds more)."""
    ex, errors = read_examples(ACME / "examples")
    assert not errors
    return ex[::3]


@pytest.fixture(scope="module")
def trained(examples):
    return train(examples, org="acme")


def test_accents_and_case_fold_to_one_word():
    assert tokens("Cotización página — URGENTE") == ["cotizacion", "pagina", "urgente"]
    assert fold("Straße Ünïcode") == "strasse unicode"
    assert tokens("Invoice #4410 due 12/01") == ["invoice", "0000", "due", "00", "00"]


def test_scores_from_arrays_equal_scikit_learns(examples, trained):
    """The stored vocabulary, idf and coefficients give scikit-learn's own calibrated probabilities."""
    from scipy.sparse import hstack

    arrays, manifest = trained
    model = OrgModel(arrays, manifest)
    classes = manifest["classes"]
    docs = [e.doc() for e in examples]
    word, char, clf = _fit(docs, np.array([classes.index(str(e.intent)) for e in examples]))
    held = [json.loads(line) for line in DEV2.read_text().splitlines()[:60]]
    held_docs = [document(e, extract(e["data"])) for e in held]
    want = softmax(np.asarray(clf.decision_function(hstack([word.transform(held_docs), char.transform(held_docs)]))),
                   manifest["temperature"])
    got = np.array([model.probabilities(d)[0] for d in held_docs])
    assert np.abs(want - got).max() < 1e-9
    assert _logits(word, char, clf, held_docs).shape == (60, len(classes))


def test_training_is_deterministic_whatever_the_order(examples, trained):
    arrays, manifest = trained
    shuffled = list(examples)
    random.Random(7).shuffle(shuffled)
    arrays2, manifest2 = train(shuffled, org="acme")
    assert manifest2["sha256"] == manifest["sha256"] and manifest2["version"] == manifest["version"]
    assert all(np.array_equal(arrays[k], arrays2[k]) for k in arrays)


def test_calibration_is_measured_and_improves(trained):
    _, manifest = trained
    cal = manifest["calibration"]
    assert cal["after"]["ece"] < cal["before"]["ece"]
    assert cal["after"]["log_loss"] <= cal["before"]["log_loss"]
    assert cal["before"]["n"] == manifest["trained_on"]["examples"]


def test_prediction_names_its_version_and_terms(trained):
    model = OrgModel(*trained)
    env = {"type": "email:received", "source": "EMAIL", "data": {"subject": "Refund", "text": "I was charged twice "
           "for the invoice, please refund the duplicate charge."}}
    pred = model.predict(env, extract(env["data"]))
    assert pred.intent == Intent.BILLING_QUESTION and 0.5 < pred.confidence <= 1
    assert pred.version == model.version and model.version.startswith("m-")
    terms = model.terms(pred)
    assert terms and any(t in ("refund", "charged", "invoice", "charge") for t in terms)


def test_saved_model_loads_and_is_never_pickled(tmp_path, trained):
    org = tmp_path / "acme"
    save_model(org / "model", *trained)
    model = load_model(org)
    assert model is not None and model.version == trained[1]["version"]
    with np.load(org / "model" / "model.npz", allow_pickle=False) as npz:  # would raise on an object array
        assert set(npz.files) == {"vocab", "idf", "coef", "intercept", "n_word"}


def test_a_tampered_model_is_refused(tmp_path, trained):
    arrays, manifest = trained
    arrays = dict(arrays, coef=arrays["coef"].copy())
    arrays["coef"][0, 0] += 1.0  # the arrays change, the manifest keeps the old hash
    save_model(tmp_path / "acme" / "model", arrays, manifest)
    with pytest.raises(ModelError) as err:
        load_model(tmp_path / "acme")
    assert err.value.code == "model_tampered" and "retrain" in str(err.value)
    assert str(err.value).startswith(f"{tmp_path / 'acme' / 'model' / 'model.npz'}:0: model_tampered:")


def test_a_half_written_model_is_invalid(tmp_path, trained):
    save_model(tmp_path / "acme" / "model", *trained)
    (tmp_path / "acme" / "model" / "model.npz").unlink()
    with pytest.raises(ModelError) as err:
        load_model(tmp_path / "acme")
    assert err.value.code == "model_invalid"


def test_tampered_model_keeps_the_org_on_its_last_good_revision(org_copy, trained):
    """The model's hash is part of the revision; a model file changed after training is refused like a broken
    rule file, and the org stays on its last good revision."""
    arrays, manifest = trained
    shutil.rmtree(org_copy.org_dir() / "model", ignore_errors=True)
    bare, _ = validate_org(org_copy.org_dir(), org_copy.policies)
    save_model(org_copy.org_dir() / "model", arrays, manifest)
    reg = Registry(org_copy.rulesets, org_copy.policies)
    reg.reload("acme")
    good = reg.get("acme")
    assert good is not None and good.bundle.model is not None and good.revision != bare.revision
    bad = dict(arrays, idf=arrays["idf"] * 1.01)
    save_model(org_copy.org_dir() / "model", bad, manifest)
    findings = reg.reload("acme")
    assert [f.code for f in findings if f.severity == "error"] == ["model_tampered"]
    assert reg.get("acme") is good


def test_labels_are_learned_per_org_and_injected_llm_answers_never(examples):
    from engine.models import Decision
    from engine.training import distilled_examples, label_examples

    env = {"id": "e1", "org": "acme", "source": "EMAIL", "type": "email:received", "data": {"text": "refund please"}}
    labels = [
        {"org": "acme", "id": "d1:approval", "event_id": "e1", "kind": "approval", "intent": "SALES_INQUIRY",
         "at": "2026-12-01T10:00:00+00:00", "envelope": env},
        {"org": "acme", "id": "d1:correction:1", "event_id": "e1", "kind": "correction", "intent": "BILLING_QUESTION",
         "at": "2026-12-01T11:00:00+00:00", "envelope": env},
        {"org": "brightsmile", "id": "d2:approval", "event_id": "e2", "kind": "approval", "intent": "SPAM",
         "at": "2026-12-01T12:00:00+00:00", "envelope": {**env, "id": "e2", "org": "brightsmile"}},
        {"org": "acme", "id": "d3:approval", "event_id": "e3", "kind": "approval", "intent": "SPAM",
         "at": "2026-12-01T12:00:00+00:00", "envelope": None},  # the event was pruned
    ]
    [ex] = label_examples("acme", labels)
    assert (ex.id, ex.intent, ex.origin) == ("e1", Intent.BILLING_QUESTION, "correction")

    def decision(event_id: str, confidence: float, injected: list[str]) -> Decision:
        return Decision(event_id=event_id, org="acme", input={}, intent=Intent.PROJECT, priority=3,
                        decision_type="ASSIGN_PIPELINE", confidence=confidence, decided_by="llm", reasoning="",
                        status="EXECUTED", trace={"injection_removed": injected})

    pairs = [(decision("a", 0.95, []), {**env, "id": "a"}), (decision("b", 0.95, ["ignore previous instructions"]),
             {**env, "id": "b"}), (decision("c", 0.6, []), {**env, "id": "c"})]
    assert [e.id for e in distilled_examples("acme", pairs, 0.9)] == ["a"]


def test_a_bad_learning_block_is_refused_at_its_line(org_copy):
    org_copy.replace("policies/acme.yaml", "  fallback_confidence: 0.5\n", "  fallback_confidence: 0.9\n")
    bundle, errors = org_copy.errors()
    line = org_copy.line_of("policies/acme.yaml", "fallback_confidence: 0.9")
    assert bundle is None
    assert any(e.startswith("policies/acme.yaml:") and "invalid_value" in e and "fallback_confidence 0.9 is above "
               "min_confidence 0.8" in e for e in errors), errors
    assert line > 0
    org_copy.replace("policies/acme.yaml", "  fallback_confidence: 0.9\n", "  fallback_confidence: lots\n")
    _, errors = org_copy.errors()
    assert any(f"policies/acme.yaml:{org_copy.line_of('policies/acme.yaml', 'fallback_confidence: lots')}: schema:"
               in e for e in errors), errors
