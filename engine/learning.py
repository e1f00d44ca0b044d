"""The org model: a linear classifier over TF-IDF word and character n-grams, read from plain arrays.

Training happens elsewhere (`engine/training.py`, with scikit-learn); this module only featurizes an event
and scores it from the stored arrays, so a decision never imports scikit-learn and never unpickles anything.

On disk (`rulesets/<org>/model/`): `model.npz` (numpy arrays, loaded with `allow_pickle=False`) and
`model.json` (the manifest: classes, feature settings, calibration temperature, what it was trained on and
how it measured, and the content hash). The hash covers everything that changes a prediction; a file whose
arrays do not hash to the manifest's value is refused (`model_tampered`), and the hash is part of the org's
revision, so every decision names the model it used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from engine.config import Intent
from engine.text import EventText, fold

MODEL_DIR = "model"
MANIFEST = "model.json"
ARRAYS = "model.npz"
FORMAT = 1
WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (3, 5)
MAX_CHARS = 3000  # text beyond this says little about intent and would only cost time
_ARRAY_NAMES = ("vocab", "idf", "coef", "intercept", "n_word")
_TOKEN = re.compile(r"[^\W_]+")
_ZEROS = str.maketrans("123456789", "000000000")
_CACHE_LIMIT = 50_000
C = TypeVar("C")
_MARKS = 4  # the most markers `document` puts first (type, source, category, form)


class ModelError(ValueError):
    """A model folder that cannot be used: missing parts, wrong shapes, or arrays that do not hash to the
    manifest's value. `code` is one of the stable error codes (engine/errors.py)."""

    def __init__(self, path: str, code: str, message: str) -> None:
        super().__init__(f"{path}:0: {code}: {message}")
        self.path = path
        self.code = code
        self.message = message


def tokens(s: str) -> list[str]:
    """The words of a text as the model reads them: folded, digits as 0 (every invoice number is one word)."""
    return _TOKEN.findall(fold(s).translate(_ZEROS))


def document(envelope: dict[str, Any], text: EventText) -> str:
    """What the model reads of an event: markers for its type, source and form category, then subject and body
    (instruction-like passages already removed by `engine.text.extract`; quoted history and signature left
    out)."""
    data = envelope.get("data") or {}
    marks = [f"zztype{envelope.get('type', '')}", f"zzsrc{envelope.get('source', '')}"]
    if isinstance(data.get("category"), str):
        marks.append(f"zzcat{data['category']}")
    if isinstance(data.get("form"), str):
        marks.append(f"zzform{data['form']}")
    marks = [re.sub(r"[^a-z0-9]", "", m.lower()) for m in marks]
    return " ".join(marks) + " \n" + f"{text.subject}\n{text.body}"[:MAX_CHARS]


def word_features(toks: list[str]) -> list[str]:
    """Word unigrams (two letters or more, and the zz markers) and bigrams."""
    uni = [t for t in toks if len(t) > 1]
    return uni + [f"{a} {b}" for a, b in itertools.pairwise(uni)]


def char_features(tok: str) -> list[str]:
    """Character 3–5-grams of one word padded with spaces (scikit-learn's `char_wb`); markers have none."""
    if tok.startswith("zz"):
        return []
    w = f" {tok} "
    out: list[str] = []
    for n in range(CHAR_NGRAMS[0], CHAR_NGRAMS[1] + 1):
        if len(w) < n:
            if n == CHAR_NGRAMS[0]:
                out.append(w)
            break
        out.extend(w[i:i + n] for i in range(len(w) - n + 1))
    return out


def analyze_words(doc: str) -> list[str]:
    """The word features of a document (the analyzer training hands to scikit-learn)."""
    return word_features(tokens(doc))


def analyze_chars(doc: str) -> list[str]:
    """The character features of a document (the analyzer training hands to scikit-learn)."""
    out: list[str] = []
    for t in tokens(doc):
        out.extend(char_features(t))
    return out


def content_hash(arrays: dict[str, np.ndarray], classes: list[str], temperature: float) -> str:
    """SHA-256 of everything that changes a prediction: the arrays (name, dtype, shape, bytes), the classes
    and the calibration temperature."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT, "classes": classes, "temperature": round(float(temperature), 8),
                         "word": WORD_NGRAMS, "char": CHAR_NGRAMS, "max_chars": MAX_CHARS}).encode())
    for name in _ARRAY_NAMES:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one event: its intent, calibrated confidence and the runner-up (with the
    event's feature vector, from which `OrgModel.terms` explains it)."""

    intent: Intent
    confidence: float
    runner_up: Intent
    runner_up_confidence: float
    ids: np.ndarray = field(repr=False)
    vals: np.ndarray = field(repr=False)
    version: str = ""
    words: int = 0  # the event's words (markers aside): too few and the model is not asked to decide

    def to_json(self) -> dict[str, Any]:
        """For the decision's trace."""
        return {"version": self.version, "intent": str(self.intent), "confidence": self.confidence,
                "runner_up": str(self.runner_up), "runner_up_confidence": self.runner_up_confidence,
                "words": self.words}


class OrgModel:
    """A trained model, scored from its arrays. Cheap: an event costs a dictionary look-up per word and per
    word n-gram, and the character n-grams of each distinct word are looked up once and cached."""

    def __init__(self, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        self.classes = [Intent(c) for c in manifest["classes"]]
        self.temperature = float(manifest["temperature"])
        self.version = str(manifest["version"])
        vocab = [str(v) for v in arrays["vocab"].tolist()]
        self.n_word = int(arrays["n_word"])
        self.vocab = vocab
        self.index = {v: i for i, v in enumerate(vocab)}
        self.idf = np.asarray(arrays["idf"], dtype=np.float64)
        self.coef = np.asarray(arrays["coef"], dtype=np.float64)  # (features, classes)
        # per class, each feature's pull toward it rather than toward the average class (for `terms`)
        self._pull = np.ascontiguousarray((self.coef - self.coef.mean(axis=1, keepdims=True)).T)
        self.intercept = np.asarray(arrays["intercept"], dtype=np.float64)
        self._words: dict[str, tuple[int, np.ndarray]] = {}
        self._bigrams: dict[tuple[int, int], int] = {}
        for i, v in enumerate(vocab[: self.n_word]):
            if " " in v:
                first, second = v[1:].split(" ", 1)
                self._bigrams[(self.index.get("w" + first, -1), self.index.get("w" + second, -1))] = i

    def _word(self, tok: str) -> tuple[int, np.ndarray]:
        """A word's unigram feature id (-1: none) and its character n-gram ids, looked up once and cached."""
        got = self._words.get(tok)
        if got is None:
            index = self.index
            chars = np.array([i for i in (index.get("c" + g) for g in char_features(tok)) if i is not None],
                             dtype=np.int64)
            got = (index.get("w" + tok, -1) if len(tok) > 1 else -1, chars)
            if len(self._words) >= _CACHE_LIMIT:
                self._words.clear()
            self._words[tok] = got
        return got

    def vector(self, doc: str) -> tuple[np.ndarray, np.ndarray, int]:
        """The document's TF-IDF vector as (feature id, value) per occurrence — a feature's values over its
        occurrences add up to its TF-IDF value: sublinear tf, each block (words, characters) normalized to unit
        length, as a scikit-learn FeatureUnion of two TfidfVectorizers — and its number of words (markers
        aside)."""
        toks = tokens(doc)
        per_word = Counter(toks)
        cache = self._words
        info = [cache.get(t) or self._word(t) for t in per_word]
        ids_of = dict(zip(per_word, (u for u, _ in info), strict=True))
        # A bigram in the vocabulary occurs in at least as few documents as each of its words, so both words are
        # in the vocabulary too: bigrams are looked up by their words' ids.
        uni = [ids_of[t] for t in toks if len(t) > 1]
        pairs = self._bigrams
        found = [u for u in uni if u >= 0]
        found += [i for i in map(pairs.get, itertools.pairwise(uni)) if i is not None]
        chars = [c for _, c in info]
        lens = [len(c) for c in chars]
        if not found and not sum(lens):
            return np.zeros(0, dtype=np.int64), np.zeros(0), len(toks) - sum(1 for t in toks[:_MARKS] if t.startswith("zz"))
        # Every occurrence of a feature, words first: `weights` is how many times it occurs there (a word's count
        # for its character n-grams). Each occurrence carries its share (weight / term frequency) of the feature's
        # value, so sums over occurrences are sums over features, with no sorting or de-duplicating. Few numpy
        # calls: on vectors this short their overhead, not the arithmetic, is the cost.
        cut = len(found)
        occ = np.concatenate([np.array(found, dtype=np.int64), *chars])
        weights = np.concatenate((np.ones(cut), np.repeat(np.fromiter(per_word.values(), dtype=np.float64,
                                                                      count=len(per_word)), lens)))
        tf = np.bincount(occ, weights=weights, minlength=len(self.idf))[occ]
        vals = np.log(tf)
        vals += 1.0
        vals *= self.idf[occ]
        shared = weights / tf
        shared *= vals
        sq = shared * vals
        for lo, hi in ((0, cut), (cut, len(occ))):
            if hi > lo:
                shared[lo:hi] /= math.sqrt(float(sq[lo:hi].sum()))
        return occ, shared, len(toks) - sum(1 for t in toks[:_MARKS] if t.startswith("zz"))

    def probabilities(self, doc: str) -> tuple[list[float], np.ndarray, np.ndarray, int]:
        """Calibrated class probabilities, with the feature occurrences they came from and the word count."""
        ids, vals, n_words = self.vector(doc)
        logits = (self.intercept + vals @ self.coef[ids]).tolist() if len(ids) else self.intercept.tolist()
        t = self.temperature
        top = max(logits)
        e = [math.exp((z - top) / t) for z in logits]
        total = sum(e)
        return [x / total for x in e], ids, vals, n_words

    def predict(self, envelope: dict[str, Any], text: EventText) -> Prediction:
        """The intent the model gives this event, its calibrated confidence and the runner-up."""
        p, ids, vals, n_words = self.probabilities(document(envelope, text))
        order = sorted(range(len(p)), key=p.__getitem__)
        best, second = order[-1], order[-2]
        return Prediction(self.classes[best], round(p[best], 4), self.classes[second], round(p[second], 4), ids,
                          vals, self.version, n_words)

    def terms(self, pred: Prediction, top: int = 4) -> list[str]:
        """The words and word pairs that pushed most toward the predicted intent rather than toward the average
        class: what the decision's reasoning quotes."""
        cut = int(np.searchsorted(pred.ids >= self.n_word, True))  # words come first among the occurrences
        summed: dict[int, float] = {}
        for i, v in zip(pred.ids[:cut].tolist(), pred.vals[:cut].tolist(), strict=True):
            summed[i] = summed.get(i, 0.0) + v
        if not summed:
            return []
        ids = np.fromiter(summed.keys(), dtype=np.int64, count=len(summed))
        vals = np.fromiter(summed.values(), dtype=np.float64, count=len(summed))
        contrib = vals * self._pull[self.classes.index(pred.intent)][ids]
        picked: list[str] = []
        for j in np.argsort(-contrib, kind="stable")[: top * 2]:
            term = _readable(self.vocab[int(ids[j])])
            if contrib[j] > 0 and term and len(picked) < top:
                picked.append(term)
        return picked


def _readable(feature: str) -> str:
    kind, body = feature[0], feature[1:]
    if kind == "w":
        return "" if body.startswith("zz") else body
    return f"…{body.strip()}…"


def with_learning(compiled: C, enabled: bool) -> C:
    """The same compiled revision (an `engine.rules.CompiledRules`) with the policy's `learning.enabled` set: to
    compare decisions with and without the model in one run (`astralis eval --learning`, the tests)."""
    bundle = compiled.bundle  # type: ignore[attr-defined]
    learning = bundle.policy.learning.model_copy(update={"enabled": enabled})
    policy = bundle.policy.model_copy(update={"learning": learning})
    return dataclasses.replace(compiled, bundle=dataclasses.replace(bundle, policy=policy))  # type: ignore[type-var]


# --------------------------------------------------------------------------- files

def model_paths(org_dir: Path) -> tuple[Path, Path]:
    """The manifest and the arrays file of an org's model."""
    return org_dir / MODEL_DIR / MANIFEST, org_dir / MODEL_DIR / ARRAYS


def save_model(folder: Path, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
    """Write `model.npz` and `model.json` (the manifest last, so a reader never sees a manifest without its
    arrays). Each file is written to a temporary name and renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (ARRAYS + ".tmp")
    with tmp.open("wb") as f:
        np.savez_compressed(f, **{k: arrays[k] for k in _ARRAY_NAMES})  # type: ignore[arg-type]  # numpy types its **kwds as allow_pickle
    tmp.replace(folder / ARRAYS)
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(folder / MANIFEST)


def read_arrays(data: bytes | Path, where: str) -> dict[str, np.ndarray]:
    """The arrays of a `model.npz` (never unpickling anything), checked for names and shapes."""
    import io

    try:
        with np.load(io.BytesIO(data) if isinstance(data, bytes) else data, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise ModelError(where, "model_invalid", f"not a readable numpy archive ({exc})") from None
    missing = [k for k in _ARRAY_NAMES if k not in arrays]
    if missing:
        raise ModelError(where, "model_invalid", f"arrays missing: {', '.join(missing)}")
    n = len(arrays["vocab"])
    if arrays["vocab"].dtype.kind != "U" or arrays["idf"].shape != (n,) or arrays["coef"].ndim != 2 \
            or arrays["coef"].shape[0] != n or arrays["intercept"].shape != (arrays["coef"].shape[1],):
        raise ModelError(where, "model_invalid", "arrays have inconsistent shapes or types")
    return arrays


def load_model_bytes(manifest_text: str, arrays_data: bytes | Path, where: str) -> OrgModel:
    """A model from its manifest and arrays; `ModelError` when they are unusable or do not match."""
    try:
        manifest = json.loads(manifest_text)
        classes = [str(c) for c in manifest["classes"]]
        temperature = float(manifest["temperature"])
        expected = str(manifest["sha256"])
        for c in classes:
            Intent(c)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(where, "model_invalid", f"{MANIFEST} is not a model manifest ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise ModelError(where, "model_invalid", f"format {manifest.get('format')!r}; this version reads {FORMAT}")
    arrays = read_arrays(arrays_data, where)
    if arrays["coef"].shape[1] != len(classes) or not temperature > 0:
        raise ModelError(where, "model_invalid", "the manifest's classes or temperature do not fit the arrays")
    got = content_hash(arrays, classes, temperature)
    if got != expected:
        raise ModelError(where, "model_tampered",
                         f"the model's content hash is {got[:12]}, but its manifest says {expected[:12]}: the files "
                         "were changed after training; retrain with `astralis train --org ORG`")
    if manifest.get("version") != "m-" + got[:12]:
        raise ModelError(where, "model_tampered", f"version {manifest.get('version')!r} does not name hash {got[:12]}")
    return OrgModel(arrays, manifest)


def load_model(org_dir: Path) -> OrgModel | None:
    """The org's model from `rulesets/<org>/model/`, None when it has none; `ModelError` when it is broken."""
    manifest, arrays = model_paths(org_dir)
    if not manifest.exists() and not arrays.exists():
        return None
    if not manifest.exists() or not arrays.exists():
        missing = manifest if not manifest.exists() else arrays
        raise ModelError(str(missing), "model_invalid", f"{missing.name} is missing beside its "
                         f"{(arrays if missing == manifest else manifest).name}")
    return load_model_bytes(manifest.read_text(encoding="utf-8"), arrays.read_bytes(), str(arrays))
