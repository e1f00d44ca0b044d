"""Write rulesets/acme/examples/*.jsonl from the hand-labelled corpora (issue 14).

    python scripts/examples.py

Trained on: corpus.jsonl + eval.jsonl (labels.jsonl) and dev.jsonl (dev_labels.jsonl), 442 events.
Held out, never trained on: dev2.jsonl (200 events) and blind.jsonl (60), to measure.
"""

from __future__ import annotations

import json
from pathlib import Path

CASES = Path("tests/cases/acme")
TRAIN = {"corpus": "labels", "eval": "labels", "dev": "dev_labels"}


def main() -> int:
    out = Path("rulesets/acme/examples")
    out.mkdir(parents=True, exist_ok=True)
    for events, labels in TRAIN.items():
        lab = {json.loads(x)["id"]: json.loads(x) for x in (CASES / f"{labels}.jsonl").read_text().splitlines() if x.strip()}
        lines = []
        for x in (CASES / f"{events}.jsonl").read_text().splitlines():
            if not x.strip():
                continue
            ev = json.loads(x)
            if ev["id"] in lab:
                lines.append(json.dumps({"event": ev, "intent": lab[ev["id"]]["intent"],
                                         "by": f"hand label, tests/cases/acme/{labels}.jsonl"}, ensure_ascii=False))
        (out / f"{events}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(events, len(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
