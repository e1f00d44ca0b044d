"""Training the org model with scikit-learn: labelled examples in, plain arrays and a manifest out.

Examples come from the org's files (`rulesets/<org>/examples/*.jsonl`, its `astralis test` cases) and, in the
service, from people's approvals and corrections and (when the policy allows) confident LLM answers. The
fit is deterministic: examples are ordered by id, the solver and the cross-validation folds are fixed.

Calibration: the classifier's probabilities are rescaled by one temperature fitted on out-of-fold logits
(5-fold), so that a confidence of 0.9 is right about 9 times in 10 and can be compared with a rule's.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from engine.config import Intent
from engine.learning import (
    CHAR_NGRAMS,
    FORMAT,
    MAX_CHARS,
    WORD_NGRAMS,
    analyze_chars,
    analyze_words,
    content_hash,
    document,
)
from engine.models import Event
from engine.text import extract

EXAMPLES_DIR = "examples"
C = 10.0
MIN_DF = 2
FOLDS = 5


@dataclass(frozen=True)
class Example:
    """One labelled event: the envelope, the intent a person (or the LLM) gave it, and where it came from."""

    id: str
    envelope: dict[str, Any]
    intent: Intent
    origin: str  # examples file, test case, approval, correction, llm

    def doc(self) -> str:
        """What the model reads of it."""
        return document(self.envelope, extract(self.envelope.get("data") or {}))


def read_examples(folder: Path) -> tuple[list[Example], list[str]]:
    """Every `*.jsonl` under `folder`: `{"event": envelope, "intent": ...}` a line; problems as
    `path:line: invalid_example: ...`."""
    out: list[Example] = []
    errors: list[str] = []
    for path in sorted(folder.glob("*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                event = Event.model_validate(raw["event"])
                out.append(Example(event.id, event.envelope(), Intent(raw["intent"]), f"{path.name}"))
            except (ValueError, KeyError, TypeError, ValidationError) as exc:
                errors.append(f"{path}:{n}: invalid_example: {str(exc).splitlines()[0][:200]}")
    return out, errors


def case_examples(org: str, tests_dir: Path) -> list[Example]:
    """The org's `astralis test` cases that lock an intent, as examples."""
    import yaml

    from engine.cases import case_files  # the cases module imports the agent; only training needs it here

    out: list[Example] = []
    for path, text in case_files(tests_dir):
        doc = yaml.safe_load(text) or {}
        for i, case in enumerate(doc.get("cases") or []):
            intent = (case.get("expect") or {}).get("intent")
            if not intent or not isinstance(case.get("event"), dict):
                continue
            try:
                event = Event.model_validate({"org": org, "id": f"case:{path.name}:{i}", **case["event"]})
                out.append(Example(event.id, event.envelope(), Intent(intent), f"test case {path.name}"))
            except (ValueError, ValidationError):
                continue
    return out


def label_examples(org: str, labels: Iterable[dict[str, Any]]) -> list[Example]:
    """People's approvals and corrections of `org` as examples, the latest label of an event winning (labels of
    another org, and labels whose event is no longer stored, are skipped)."""
    out: dict[str, Example] = {}
    for lab in sorted(labels, key=lambda x: (x["at"], x["id"])):
        env = lab.get("envelope")
        if lab.get("org") != org or not isinstance(env, dict) or env.get("org", org) != org:
            continue
        try:
            out[str(env.get("id") or lab["event_id"])] = Example(str(env.get("id") or lab["event_id"]), env,
                                                                 Intent(lab["intent"]), str(lab["kind"]))
        except ValueError:
            continue
    return list(out.values())


def distilled_examples(org: str, decisions: Iterable[tuple[Any, dict[str, Any] | None]],
                       min_confidence: float) -> list[Example]:
    """The LLM's confident answers as examples: decisions of `org` decided by the LLM at `min_confidence` or more,
    never about a text from which instruction-like passages were removed (an injected text could teach the model
    what its author wants)."""
    out = []
    for d, env in decisions:
        if (d.org != org or d.decided_by != "llm" or d.confidence < min_confidence or not isinstance(env, dict)
                or d.trace.get("injection_removed")):
            continue
        out.append(Example(d.event_id, env, d.intent, "llm"))
    return out


def merge(*groups: Iterable[Example]) -> list[Example]:
    """One example per event id, the later groups winning (a correction overrides the shipped label), ordered
    by id so that the training set, and so the model, do not depend on the order labels arrived in."""
    by_id: dict[str, Example] = {}
    for g in groups:
        for e in g:
            by_id[e.id] = e
    return [by_id[k] for k in sorted(by_id)]


def _vectorizers() -> tuple[Any, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    word = TfidfVectorizer(analyzer=analyze_words, sublinear_tf=True, min_df=MIN_DF, dtype=np.float64)
    char = TfidfVectorizer(analyzer=analyze_chars, sublinear_tf=True, min_df=MIN_DF, dtype=np.float64)
    return word, char


def _fit(docs: list[str], y: np.ndarray) -> tuple[Any, Any, Any]:
    from scipy.sparse import hstack
    from sklearn.linear_model import LogisticRegression

    word, char = _vectorizers()
    x = hstack([word.fit_transform(docs), char.fit_transform(docs)]).tocsr()
    clf = LogisticRegression(C=C, solver="newton-cg", max_iter=1000)
    clf.fit(x, y)
    return word, char, clf


def _logits(word: Any, char: Any, clf: Any, docs: list[str]) -> np.ndarray:
    from scipy.sparse import hstack

    x = hstack([word.transform(docs), char.transform(docs)]).tocsr()
    return np.asarray(clf.decision_function(x))


def softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits divided by a temperature."""
    z = z / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimizes the log loss of out-of-fold predictions."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        p = softmax(logits, math.exp(log_t))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded", options={"xatol": 1e-6})
    return round(math.exp(float(res.x)), 6)


def calibration(p: np.ndarray, y: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Accuracy, expected calibration error, log loss, and accuracy by confidence band."""
    conf = p.max(axis=1)
    pred = p.argmax(axis=1)
    right = pred == y
    ece = 0.0
    bands = []
    edges = np.linspace(0.0, 1.0, bins + 1)
    for lo, hi in itertools.pairwise(edges):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(right[m].mean() - conf[m].mean())
            bands.append({"from": round(float(lo), 2), "to": round(float(hi), 2), "n": int(m.sum()),
                          "accuracy": round(float(right[m].mean()), 4), "confidence": round(float(conf[m].mean()), 4)})
    logloss = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))
    return {"n": len(y), "accuracy": round(float(right.mean()), 4), "ece": round(float(ece), 4),
            "log_loss": round(logloss, 4), "bands": bands}


def train(examples: list[Example], *, org: str, note: str = "") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Fit the model on `examples`; the arrays to store and the manifest (with its content hash, the
    out-of-fold calibration before and after the temperature, and what it was trained on)."""
    from sklearn.model_selection import StratifiedKFold

    examples = merge(examples)
    counts = Counter(str(e.intent) for e in examples)
    classes = sorted(c for c in counts)
    if len(classes) < 2:
        raise ValueError(f"training needs at least two intents among the examples; got {classes or 'none'}")
    docs = [e.doc() for e in examples]
    y = np.array([classes.index(str(e.intent)) for e in examples])

    # out-of-fold logits for the temperature (classes too rare for every fold are left out of the folds' split)
    folds = max(2, min(FOLDS, min(counts.values())))
    oof = np.zeros((len(y), len(classes)))
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    for tr, te in skf.split(docs, y):
        w, c, clf = _fit([docs[i] for i in tr], y[tr])
        z = _logits(w, c, clf, [docs[i] for i in te])
        full = np.full((len(te), len(classes)), -1e3)
        full[:, clf.classes_] = z if z.ndim == 2 else np.column_stack([-z, z])
        oof[te] = full
    temperature = fit_temperature(oof, y)

    word, char, clf = _fit(docs, y)
    wv = sorted(word.vocabulary_.items(), key=lambda kv: kv[1])
    cv = sorted(char.vocabulary_.items(), key=lambda kv: kv[1])
    coef = np.asarray(clf.coef_, dtype=np.float64)
    intercept = np.asarray(clf.intercept_, dtype=np.float64)
    if len(classes) == 2:  # binary logistic regression has one row; as two classes, the softmax is the same
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    arrays = {
        "vocab": np.array(["w" + k for k, _ in wv] + ["c" + k for k, _ in cv]),
        "idf": np.concatenate([word.idf_, char.idf_]).astype(np.float64),
        "coef": np.ascontiguousarray(coef.T),
        "intercept": intercept,
        "n_word": np.array(len(wv)),
    }
    sha = content_hash(arrays, classes, temperature)
    import sklearn

    manifest = {
        "format": FORMAT, "org": org, "version": "m-" + sha[:12], "sha256": sha,
        "classes": classes, "temperature": temperature,
        "features": {"word_ngrams": list(WORD_NGRAMS), "char_wb_ngrams": list(CHAR_NGRAMS), "sublinear_tf": True,
                     "min_df": MIN_DF, "max_chars": MAX_CHARS, "n_word": len(wv), "n_char": len(cv)},
        "classifier": {"kind": "LogisticRegression", "C": C, "scikit_learn": sklearn.__version__},
        "trained_on": {"examples": len(examples), "by_intent": dict(sorted(counts.items())),
                       "by_origin": dict(sorted(Counter(e.origin for e in examples).items())), "note": note},
        "calibration": {"method": f"temperature, {folds}-fold out-of-fold logits",
                        "before": calibration(softmax(oof), y), "after": calibration(softmax(oof, temperature), y)},
    }
    return arrays, manifest
