"""The simulator's renderers: every format, with and without a baseline; the HTML is one well-formed,
self-contained page with its SVG charts."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from engine.compare import Side, compare
from engine.config import DecisionType
from engine.models import Action, Decision
from server import reports

ROOT = Path(__file__).resolve().parents[2]
VOID = {"meta", "br", "img", "input", "link", "hr", "col", "source", "wbr", "area", "base", "embed", "track"}


def decision(event_id: str, **over) -> Decision:
    base = {"event_id": event_id, "org": "acme", "input": {"source": "EMAIL", "type": "email:received"},
            "intent": "SALES_INQUIRY", "priority": 3, "decision_type": "ASSIGN_PIPELINE", "confidence": 0.82,
            "decided_by": "rules", "reasoning": "r.", "status": "EXECUTED", "execution_ms": 1.0,
            "matched_rules": ["intake/sales"],
            "actions": [Action(type=DecisionType.ASSIGN_PIPELINE,
                               params={"pipeline": "sales-inquiries", "stage": "new", "assignee": "u-sam"})]}
    base.update(over)
    return Decision.model_validate(base)


BASELINE = [decision("e1"), decision("e2"), decision("e3", intent="SPAM", decision_type="NO_ACTION", actions=[],
                                                        confidence=0.99, matched_rules=["spam/x"])]
CANDIDATE = [decision("e1"), decision("e2", status="REQUIRES_APPROVAL"),
             decision("e3", intent="OTHER", decision_type="ESCALATE", confidence=0.4, decided_by="fallback",
                      status="REQUIRES_APPROVAL", matched_rules=[],
                      actions=[Action(type=DecisionType.ESCALATE, params={"to": ["u-omar"], "address": "ops@x <&>"})])]


@pytest.fixture
def report():
    return compare(Side(CANDIDATE, revision="cand123"), Side(BASELINE, revision="base456"), org="acme")


class Checker(HTMLParser):
    """Checks that every element is closed in order and collects tags and their attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def check_html(page: str) -> Checker:
    assert page.startswith("<!DOCTYPE html>")
    c = Checker()
    c.feed(page)
    c.close()
    assert c.errors == [] and c.stack == [], (c.errors, c.stack)
    names = [t for t, _ in c.tags]
    assert "script" not in names and "link" not in names and "img" not in names  # nothing loaded, nothing run
    for _, attrs in c.tags:
        for k in ("src", "href"):
            assert k not in attrs, attrs
    return c


@pytest.mark.parametrize("fmt", reports.FORMATS)
@pytest.mark.parametrize("with_baseline", [True, False])
def test_every_format_renders(fmt, with_baseline):
    base = BASELINE if with_baseline else None
    r = compare(Side(CANDIDATE), Side(BASELINE) if with_baseline else None, org="acme")
    text = reports.render(fmt, r, CANDIDATE, base)
    assert text and not text.endswith("\n")
    if fmt == "json":
        out = json.loads(text)
        assert out["report"]["changed_events"] == (2 if with_baseline else 0)
        assert len(out["decisions"]) == 3 and out["summary"]["events"] == 3
    elif fmt == "jsonl":
        assert len(text.splitlines()) == 3
    elif fmt == "html":
        check_html(text)


def test_unknown_format_is_refused(report):
    with pytest.raises(ValueError, match="not one of"):
        reports.render("xml", report, CANDIDATE, BASELINE)


def test_jsonl_with_a_baseline_pairs_whole_records():
    lines = [json.loads(x) for x in reports.as_jsonl(CANDIDATE, BASELINE).splitlines()]
    assert [x["event_id"] for x in lines] == ["e1", "e2", "e3"]
    assert [x["changed"] for x in lines] == [[], ["status"], ["intent", "decision_type", "status", "actions",
                                                             "decided_by"]]
    for x in lines:
        for side in ("baseline", "candidate"):  # DESIGN §5 records, ids and timestamps included
            assert {"id", "event_id", "intent", "actions", "status", "llm", "created_at"} <= set(x[side])


def test_jsonl_without_a_baseline_is_one_decision_a_line():
    lines = [json.loads(x) for x in reports.as_jsonl(CANDIDATE).splitlines()]
    assert [x["event_id"] for x in lines] == ["e1", "e2", "e3"] and all("id" in x for x in lines)


def test_table_lists_the_flips_then_the_aggregate_changes(report):
    text = reports.as_table(report, CANDIDATE, BASELINE)
    assert text.index("2 of 3 decisions change") < text.index("aggregate changes")
    assert "e2" in text and "e3" in text and "\n│ e1 " not in text
    assert "- NO_ACTION()" not in text and "+ ESCALATE(to=u-omar, address=ops@x <&>)" in text
    assert "-spam/x" in text
    row = next(line for line in text.splitlines() if "status REQUIRES_APPROVAL" in line)
    assert [c.strip() for c in row.split("│")[2:5]] == ["0", "2", "+2"]
    assert "\x1b[" not in text  # no colour unless asked
    assert "\x1b[" in reports.as_table(report, CANDIDATE, BASELINE, color=True)


def test_html_has_the_charts_the_tables_and_escapes_text(report):
    page = reports.as_html(report)
    c = check_html(page)
    svgs = [a for t, a in c.tags if t == "svg"]
    titles = [x.strip() for x in c.text]
    assert len(svgs) == 4
    for t in ("Decisions by type (before / after)", "Flips: baseline type × candidate type",
              "Flips: baseline status × candidate status", "Confidence histogram"):
        assert t in titles
    # bars: 4 types × 2 series; matrix: the NO_ACTION → ESCALATE cell carries its count
    assert "baseline NO_ACTION: 1" in titles and "candidate ESCALATE: 1" in titles
    assert "NO_ACTION → ESCALATE: 1" in titles
    assert "ops@x &lt;&amp;&gt;" in page and "ops@x <&>" not in page
    assert "2 of 3 decisions change" in page and "base456" in page and "cand123" in page
    assert [t for t, _ in c.tags].count("tr") >= 1 + 2 + 5  # aggregate header, flips, metrics


def test_html_leads_with_what_changed_and_why(report):
    events = {"e2": {"from": "Jo <jo@shop.example>", "subject": "Pricing for the pro plan", "text": "How much?"},
              "e3": {"from": "news@promo.example", "subject": "Weekly newsletter", "text": "Unsubscribe."}}
    page = reports.as_html(report, events)
    check_html(page)
    order = [page.index(x) for x in ("2 of 3 decisions change", "What changed, and why", "Rates and counts that moved",
                                     "Charts", "Everything else")]
    assert order == sorted(order)
    # each flip: the subject and sender first, before → after in words, the rule that made the difference
    assert "Weekly newsletter</b> <span class=\"sub\">— news@promo.example</span>" in page
    assert "spam → no action, executed</span> → <span class=\"after\">other → escalate, requires approval" in page
    assert "no longer matches spam/x" in page
    assert page.index("Weekly newsletter") < page.index("<h2>Charts")
    # timing is noise: folded away, never coloured as a change; shown as a section when asked
    assert "<details><summary>Timing" in page
    timing = page[page.index("<details>"):]
    assert "better" not in timing and "worse" not in timing
    assert "<h2>Timing</h2>" in reports.as_html(report, events, timing=True)


def test_html_colours_only_tokens_and_cost_and_says_when_cost_cannot_be_compared():
    from engine.models import LLMTrace

    with_llm = [decision(f"e{i}", decided_by="llm", llm=LLMTrace(provider="openai", model="gpt-x", prompt="p",
                                                                 response="{}", input_tokens=900, output_tokens=90,
                                                                 latency_ms=5.0)) for i in range(2)]
    fewer = [decision(f"e{i}", decided_by="llm", llm=LLMTrace(provider="openai", model="gpt-x", prompt="p",
                                                              response="{}", input_tokens=300, output_tokens=30,
                                                              latency_ms=5.0)) for i in range(2)]
    page = reports.as_html(compare(Side(fewer), Side(with_llm), org="acme"))
    assert '<td class="n better">-1200</td>' in page  # fewer tokens: better, in green
    assert "Cost is not comparable: no price for gpt-x" in page
    assert '<td class="n ">n/a</td>' in page  # not a red "cost went down"


def test_the_heat_map_has_room_for_its_longest_label():
    svg = reports.matrix_svg("Flips", {"TRIGGER_AUTOMATION": {"SEND_NOTIFICATION": 2}, "NO_ACTION": {"NO_ACTION": 3}})
    import re

    width = float(re.search(r'width="(\d+)"', svg).group(1))
    left = 16 + 7 * len("TRIGGER_AUTOMATION")
    assert f'x="{left - 6}"' in svg and width >= left + 46 * 3


def test_html_without_a_baseline_has_no_matrix():
    r = compare(Side(CANDIDATE), org="acme")
    c = check_html(reports.as_html(r))
    assert [t for t, _ in c.tags].count("svg") == 2
    assert "Flips" not in "".join(c.text)
