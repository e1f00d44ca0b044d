"""The simulator's outputs: a terminal table, JSON, JSONL and one self-contained HTML page with SVG charts.

Every renderer returns text; the CLI decides where it goes. The HTML has no scripts and loads nothing:
its CSS is inline and its charts are SVG drawn here.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from rich.console import Console
from rich.table import Table

from engine.compare import Report, changed_fields
from engine.models import Decision
from engine.simulator import render_table, summarize
from engine.templates import event_summary

FORMATS = ("table", "json", "jsonl", "html")


def render(fmt: str, report: Report, candidate: Sequence[Decision], baseline: Sequence[Decision] | None = None,
           *, color: bool = False, width: int = 160, events: Mapping[str, Mapping[str, Any]] | None = None,
           timing: bool = False) -> str:
    """The report in one of FORMATS (no trailing newline). `events` (event id → data) and `timing`: for html."""
    if fmt == "json":
        return as_json(report, candidate)
    if fmt == "jsonl":
        return as_jsonl(candidate, baseline)
    if fmt == "html":
        return as_html(report, events, timing=timing)
    if fmt == "table":
        return as_table(report, candidate, baseline, color=color, width=width)
    raise ValueError(f"format '{fmt}' is not one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------- json and jsonl

def as_json(report: Report, candidate: Sequence[Decision]) -> str:
    """`{"report": …, "summary": …, "decisions": […]}`: the comparison, the candidate run's summary (as
    before baselines existed) and its decision records."""
    return json.dumps({"report": report.to_dict(), "summary": summarize(list(candidate)),
                       "decisions": [d.model_dump(mode="json") for d in candidate]}, indent=2)


def as_jsonl(candidate: Sequence[Decision], baseline: Sequence[Decision] | None = None) -> str:
    """One decision record a line (DESIGN §5); with a baseline, one
    `{"event_id", "baseline", "candidate", "changed"}` a line."""
    if baseline is None:
        return "\n".join(d.model_dump_json() for d in candidate)
    return "\n".join(json.dumps({"event_id": c.event_id, "baseline": b.model_dump(mode="json"),
                                 "candidate": c.model_dump(mode="json"), "changed": changed_fields(b, c)})
                     for b, c in zip(baseline, candidate, strict=True))


# --------------------------------------------------------------------------- table

def _pct(x: float) -> str:
    return f"{x:.1%}"


def _signed(x: float, fmt: str = "{:+g}") -> str:
    return "0" if x == 0 else fmt.format(x)


def _side(v: dict[str, Any]) -> str:
    return f"{v['intent']} {v['decision_type']} {v['status']} p{v['priority']} {v['confidence']:.2f} {v['decided_by']}"


def aggregate_rows(report: Report) -> list[tuple[str, str, str, str]]:
    """(metric, baseline, candidate, change) rows of the aggregate table; without a baseline the baseline
    and change columns are empty."""
    c = report.candidate["stats"]
    b = report.baseline["stats"] if report.baseline else None
    rows: list[tuple[str, str, str, str]] = []

    def add(name: str, get: Any, fmt: Any, delta_fmt: Any) -> None:
        after = get(c)
        before = get(b) if b is not None else None
        change = "" if before is None else delta_fmt(after - before)
        rows.append((name, "" if before is None else fmt(before), fmt(after), change))

    add("events", lambda s: s["events"], str, lambda d: _signed(d))
    for key, label in (("by_decision_type", "type"), ("by_status", "status"), ("by_intent", "intent"),
                       ("by_decided_by", "decided by")):
        keys = sorted(set(c[key]) | set(b[key] if b else {}))
        for k in keys:
            add(f"{label} {k}", lambda s, key=key, k=k: s[key].get(k, 0), str, lambda d: _signed(d))
    for key in ("llm_call_rate", "auto_execute_rate", "approval_rate", "rejection_rate", "escalation_rate"):
        add(key.replace("_", " "), lambda s, key=key: s[key], _pct, lambda d: _signed(d * 100, "{:+.1f} pt"))
    add("LLM input tokens", lambda s: s["llm"]["input_tokens"], str, lambda d: _signed(d))
    add("LLM output tokens", lambda s: s["llm"]["output_tokens"], str, lambda d: _signed(d))
    add("LLM cost (USD)", lambda s: s["llm"]["cost_usd"], lambda x: f"{x:.4f}", lambda d: _signed(d, "{:+.4f}"))
    add("decision p50 (ms)", lambda s: s["decision_ms"]["p50"], lambda x: f"{x:.2f}", lambda d: _signed(d, "{:+.2f}"))
    add("decision p99 (ms)", lambda s: s["decision_ms"]["p99"], lambda x: f"{x:.2f}", lambda d: _signed(d, "{:+.2f}"))
    return rows


def as_table(report: Report, candidate: Sequence[Decision], baseline: Sequence[Decision] | None = None,
             *, color: bool = False, width: int = 160) -> str:
    """Without a baseline, the simulator's decision table; with one, the flips and then the aggregate changes."""
    if baseline is None:
        return render_table(list(candidate))
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=color, color_system="standard" if color else None,
                      highlight=False, emoji=False)
    flips = Table(title=f"{report.changed_events} of {report.events} decisions change", title_justify="left")
    for name in ("event", "changed", "baseline", "candidate", "rules +/-"):
        flips.add_column(name, overflow="fold")
    for f in report.flips:
        rules = [f"+{r}" for r in f["rules_added"]] + [f"-{r}" for r in f["rules_removed"]]
        b_acts, c_acts = f["baseline"]["actions"], f["candidate"]["actions"]
        flips.add_row(f["event_id"], ", ".join(f["changed"]),
                      "\n".join([_side(f["baseline"]), *(f"- {a}" for a in b_acts if a not in c_acts)]),
                      "\n".join([_side(f["candidate"]), *(f"+ {a}" for a in c_acts if a not in b_acts)]),
                      " ".join(rules))
    if report.flips:
        console.print(flips)
    else:
        console.print(f"no decision changes ({report.events} events)")
    agg = Table(title="aggregate changes", title_justify="left")
    for name, justify in (("metric", "left"), ("baseline", "right"), ("candidate", "right"), ("change", "right")):
        agg.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in aggregate_rows(report):
        agg.add_row(*row)
    console.print(agg)
    cost = report.candidate["stats"]["llm"]
    if cost["unpriced_models"]:
        console.print(f"no price for {', '.join(cost['unpriced_models'])}: add it under llm.prices in the policy")
    return buf.getvalue().rstrip("\n")


# --------------------------------------------------------------------------- html

BASE_COLOR, CAND_COLOR = "#9aa5b1", "#2f6fde"
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1100px;color:#1f2933;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #e4e7eb}
.sub{color:#616e7c;margin-top:0}table{border-collapse:collapse;width:100%;margin:.5rem 0}
th,td{border-bottom:1px solid #e4e7eb;padding:.3rem .5rem;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}.worse{color:#b44d12}.better{color:#0c6b58}
.headline{font-size:1.25rem;font-weight:600;margin:.4rem 0 0}
.group h3{font-size:1rem;margin:1rem 0 .3rem}.group ul{margin:0;padding-left:1.2rem}.group li{margin:.35rem 0}
.before{color:#616e7c}.after{color:#1f2933}.why{color:#3e4c59}.acts{color:#616e7c;font-size:.85em}
code.id{color:#7b8794;font-size:.8em}details{margin-top:2rem}summary{cursor:pointer;color:#616e7c}
.charts{display:flex;flex-wrap:wrap;gap:1.5rem}.chart{flex:1 1 480px}
.legend span{display:inline-block;width:.8rem;height:.8rem;margin:0 .3rem 0 .8rem;vertical-align:middle}
code{font-size:.85em;background:#f5f7fa;padding:0 .2rem;border-radius:3px}
svg text{font:12px system-ui,sans-serif;fill:#323f4b}
"""


def _legend(with_baseline: bool) -> str:
    items = ([("baseline", BASE_COLOR)] if with_baseline else []) + [("candidate", CAND_COLOR)]
    return '<div class="legend">' + "".join(f'<span style="background:{c}"></span>{n}' for n, c in items) + "</div>"


def bars_svg(title: str, labels: list[str], series: list[tuple[str, str, list[int]]]) -> str:
    """A horizontal grouped bar chart: one group per label, one bar per (name, color, values) series."""
    bar, gap, left, plot = 14, 10, 190, 440
    top = 28
    group = bar * len(series) + gap
    height = top + group * max(1, len(labels)) + 10
    most = max([v for _, _, vals in series for v in vals] + [1])
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{left + plot + 60}" height="{height}" '
           f'viewBox="0 0 {left + plot + 60} {height}"><title>{escape(title)}</title>',
           f'<text x="0" y="16" font-weight="bold">{escape(title)}</text>']
    for i, label in enumerate(labels):
        y0 = top + i * group
        out.append(f'<text x="{left - 8}" y="{y0 + bar * len(series) / 2 + 4}" text-anchor="end">{escape(label)}</text>')
        for j, (name, color, vals) in enumerate(series):
            w = round(plot * vals[i] / most, 1)
            y = y0 + j * bar
            out.append(f'<rect x="{left}" y="{y}" width="{w}" height="{bar - 2}" fill="{color}">'
                       f"<title>{escape(name)} {escape(label)}: {vals[i]}</title></rect>")
            out.append(f'<text x="{left + w + 4}" y="{y + bar - 4}">{vals[i]}</text>')
    out.append("</svg>")
    return "".join(out)


def columns_svg(title: str, labels: list[str], series: list[tuple[str, str, list[int]]]) -> str:
    """A vertical grouped bar chart (the confidence histogram)."""
    left, bottom, plot_h, col = 36, 30, 200, 16
    group = col * len(series) + 10
    width = left + group * len(labels) + 10
    height = 28 + plot_h + bottom
    most = max([v for _, _, vals in series for v in vals] + [1])
    base_y = 28 + plot_h
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}"><title>{escape(title)}</title>',
           f'<text x="0" y="16" font-weight="bold">{escape(title)}</text>',
           f'<line x1="{left}" y1="{base_y}" x2="{width - 5}" y2="{base_y}" stroke="#7b8794"/>',
           f'<text x="{left - 6}" y="{28 + 10}" text-anchor="end">{most}</text>']
    for i, label in enumerate(labels):
        x0 = left + 5 + i * group
        for j, (name, color, vals) in enumerate(series):
            h = round(plot_h * vals[i] / most, 1)
            out.append(f'<rect x="{x0 + j * col}" y="{base_y - h}" width="{col - 2}" height="{h}" fill="{color}">'
                       f"<title>{escape(name)} {escape(label)}: {vals[i]}</title></rect>")
        out.append(f'<text x="{x0 + group / 2 - 5}" y="{base_y + 16}" text-anchor="middle">{escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def matrix_svg(title: str, matrix: dict[str, dict[str, int]]) -> str:
    """The flip matrix: baseline decision type (rows) × candidate decision type (columns); off-diagonal
    cells are flips, shaded by count."""
    rows = sorted(matrix)
    cols = sorted({c for r in matrix.values() for c in r} | set(rows))
    cell = 46
    longest = max((len(x) for x in [*rows, *cols]), default=8)
    left = 16 + 7 * longest  # room for the longest row label at 12 px (~7 px a character)
    top = 40 + round(7 * longest * 0.87)  # and for the column labels, turned 60°
    width = left + cell * len(cols) + 10 + round(7 * longest * 0.5)  # the last column's label leans right
    height = top + cell * len(rows) + 10
    most = max([n for r, cs in matrix.items() for c, n in cs.items() if r != c] + [1])
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}"><title>{escape(title)}</title>',
           f'<text x="0" y="16" font-weight="bold">{escape(title)}</text>',
           f'<text x="0" y="{top - 8}" fill="#616e7c">baseline ↓ candidate →</text>']
    for j, c in enumerate(cols):
        x = left + j * cell + cell / 2
        out.append(f'<text transform="translate({x + 4},{top - 6}) rotate(-60)">{escape(c)}</text>')
    for i, r in enumerate(rows):
        y = top + i * cell
        out.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4}" text-anchor="end">{escape(r)}</text>')
        for j, c in enumerate(cols):
            n = matrix[r].get(c, 0)
            if r == c:
                fill = "#f5f7fa"
            elif n:
                fill = f"rgba(196,74,20,{0.25 + 0.75 * n / most:.2f})"
            else:
                fill = "#ffffff"
            x = left + j * cell
            out.append(f'<rect x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" fill="{fill}" stroke="#e4e7eb">'
                       f"<title>{escape(r)} → {escape(c)}: {n}</title></rect>")
            if n:
                out.append(f'<text x="{x + cell / 2 - 1}" y="{y + cell / 2 + 4}" text-anchor="middle">{n}</text>')
    out.append("</svg>")
    return "".join(out)


_TIMING = ("decision p50 (ms)", "decision p99 (ms)")
_LOWER_IS_BETTER = ("LLM input tokens", "LLM output tokens", "LLM cost (USD)")


def _delta_class(metric: str, change: str) -> str:
    """Colour only where a direction is good or bad (tokens and cost: lower is better); a rate that moved is
    neither by itself: it is shown plainly."""
    if metric not in _LOWER_IS_BETTER or not change.startswith(("+", "-")):
        return ""
    return "worse" if change.startswith("+") else "better"


def _words(v: dict[str, Any]) -> str:
    label = lambda x: str(x).replace("_", " ").lower()  # noqa: E731 (a one-line helper)
    return f"{label(v['intent'])} → {label(v['decision_type'])}, {label(v['status'])}"


def _why(f: dict[str, Any]) -> str:
    b, c = f["baseline"], f["candidate"]
    out = [f"now matches {r}" for r in f["rules_added"]] + [f"no longer matches {r}" for r in f["rules_removed"]]
    if ("confidence" in f["changed"] or not out) and b["confidence"] != c["confidence"]:
        out.append(f"confidence {b['confidence']:.2f} → {c['confidence']:.2f}")
    if b["decided_by"] != c["decided_by"]:
        out.append(f"decided by {b['decided_by']} → {c['decided_by']}")
    if c.get("gate") and b.get("status") != c.get("status"):
        out.append(f"gate: {c['gate']}")
    return "; ".join(out) or ", ".join(f["changed"])


def _flip_groups(report: Report, events: Mapping[str, Mapping[str, Any]]) -> str:
    """The flips grouped by what changed (before → after), largest group first, each flip led by its event's
    subject and sender, with the rule (or the gate) that made the difference."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for f in report.flips:
        groups.setdefault((_words(f["baseline"]), _words(f["candidate"])), []).append(f)
    parts = []
    for (before, after), flips in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        items = []
        for f in flips:
            data = events.get(f["event_id"]) or {}
            summary = event_summary(data) if data else {"sender": "", "subject": "", "snippet": ""}
            what = summary["subject"] or summary["snippet"][:100] or f["type"]
            who = f' <span class="sub">— {escape(summary["sender"])}</span>' if summary["sender"] else ""
            b_acts, c_acts = f["baseline"]["actions"], f["candidate"]["actions"]
            acts = [f"− {a}" for a in b_acts if a not in c_acts] + [f"+ {a}" for a in c_acts if a not in b_acts]
            items.append(f'<li><b>{escape(what)}</b>{who} <code class="id">{escape(f["event_id"])}</code>'
                         f'<div class="why">{escape(_why(f))}</div>'
                         + (f'<div class="acts">{escape("; ".join(acts))}</div>' if acts else "") + "</li>")
        parts.append(f'<section class="group"><h3>{len(flips)} × <span class="before">{escape(before)}</span> → '
                     f'<span class="after">{escape(after)}</span></h3><ul>{"".join(items)}</ul></section>')
    return "".join(parts)


def _cost_note(report: Report) -> str:
    c = report.candidate["stats"]["llm"]
    b = report.baseline["stats"]["llm"] if report.baseline else None
    missing = sorted(set(c["unpriced_models"]) | set(b["unpriced_models"] if b else []))
    return (f'<p class="sub">Cost is not comparable: no price for {escape(", ".join(missing))} (add it under '
            "llm.prices in the policy).</p>" if missing else "")


def as_html(report: Report, events: Mapping[str, Mapping[str, Any]] | None = None, *, timing: bool = False) -> str:
    """One self-contained HTML page that leads with what changed and why (the flips, grouped, each with its
    event's subject and the rule that made the difference), then the rates that moved, then the charts (types
    before/after, the flip matrices, the confidence histogram) and every metric. Decision timings are noise at
    these sizes: folded away unless `timing`. `events`: event id → its data (for subjects and senders)."""
    events = events or {}
    c = report.candidate["stats"]
    b = report.baseline["stats"] if report.baseline else None

    def series(key: str, keys: list[str]) -> list[tuple[str, str, list[int]]]:
        return (([("baseline", BASE_COLOR, [b[key].get(k, 0) for k in keys])] if b else [])
                + [("candidate", CAND_COLOR, [c[key].get(k, 0) for k in keys])])

    types = sorted(set(c["by_decision_type"]) | set(b["by_decision_type"] if b else {}))
    bins = list(c["confidence_histogram"])
    charts = [bars_svg("Decisions by type" + (" (before / after)" if b else ""), types,
                       series("by_decision_type", types)),
              columns_svg("Confidence histogram", bins, series("confidence_histogram", bins))]
    if report.flip_matrix is not None:
        charts.insert(1, matrix_svg("Flips: baseline type × candidate type", report.flip_matrix))
    if report.status_matrix is not None:
        charts.insert(2, matrix_svg("Flips: baseline status × candidate status", report.status_matrix))
    revs = (f'baseline <code>{escape(report.baseline["revision"])}</code> → ' if report.baseline else "") + \
        f'candidate <code>{escape(report.candidate["revision"])}</code>'
    headline = (f"{report.changed_events} of {report.events} decisions change" if report.baseline
                else f"{report.events} events, no baseline")
    rows = aggregate_rows(report)
    unpriced = bool(_cost_note(report))

    def row(m: str, x: str, y: str, d: str) -> str:
        if m == "LLM cost (USD)" and unpriced:
            d = "n/a"
        return (f'<tr><td>{escape(m)}</td><td class="n">{escape(x)}</td><td class="n">{escape(y)}</td>'
                f'<td class="n {_delta_class(m, d)}">{escape(d)}</td></tr>')

    head = ('<thead><tr><th>metric</th><th class="n">baseline</th><th class="n">candidate</th>'
            '<th class="n">change</th></tr></thead>')
    moved = [r for r in rows if r[0] not in _TIMING and r[3] not in ("", "0")]
    others = [r for r in rows if r[0] not in _TIMING and r not in moved]
    timings = [r for r in rows if r[0] in _TIMING]
    moved_html = (f"<table>{head}<tbody>{''.join(row(*r) for r in moved)}</tbody></table>" if moved
                  else "<p>No rate or count moved.</p>")
    timing_html = (f"<table>{head}<tbody>{''.join(row(*r) for r in timings)}</tbody></table>"
                   "<p class=\"sub\">Per-decision timings of two short dry runs on one machine differ by chance; "
                   "measure with bench/ before reading anything into them.</p>")
    flips_html = _flip_groups(report, events) if report.flips else "<p>No decision changes.</p>"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>astralis simulate: {escape(report.org)}</title><style>{CSS}</style></head><body>"
        f"<h1>Simulation: {escape(report.org)}</h1><p class=\"sub\">{revs}</p>"
        f"<p class=\"headline\">{escape(headline)}</p>"
        + (f"<h2>What changed, and why</h2>{flips_html}" if report.baseline else "")
        + (f"<h2>Rates and counts that moved</h2>{moved_html}{_cost_note(report)}" if report.baseline else "")
        + f"<h2>Charts</h2>{_legend(b is not None)}<div class=\"charts\">"
        + "".join(f'<div class="chart">{svg}</div>' for svg in charts) + "</div>"
        + (f"<h2>{'Everything else (unchanged)' if b else 'Every metric'}</h2>"
           f"<table>{head}<tbody>{''.join(row(*r) for r in others)}</tbody></table>")
        + (f"<h2>Timing</h2>{timing_html}" if timing else
           f"<details><summary>Timing (noise at this size; not a change)</summary>{timing_html}</details>")
        + "</body></html>"
    )
