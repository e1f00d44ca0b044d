"""The simulator's outputs: a terminal table, JSON, JSONL and one self-contained HTML page with SVG charts.

Every renderer returns text; the CLI decides where it goes. The HTML has no scripts and loads nothing:
its CSS is inline and its charts are SVG drawn here.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from html import escape
from typing import Any

from rich.console import Console
from rich.table import Table

from engine.compare import Report, changed_fields
from engine.models import Decision
from engine.simulator import render_table, summarize

FORMATS = ("table", "json", "jsonl", "html")


def render(fmt: str, report: Report, candidate: Sequence[Decision], baseline: Sequence[Decision] | None = None,
           *, color: bool = False, width: int = 160) -> str:
    """The report in one of FORMATS (no trailing newline)."""
    if fmt == "json":
        return as_json(report, candidate)
    if fmt == "jsonl":
        return as_jsonl(candidate, baseline)
    if fmt == "html":
        return as_html(report)
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
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}.up{color:#b44d12}.down{color:#0c6b58}
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
    cell, left, top = 46, 150, 150
    width, height = left + cell * len(cols) + 10, top + cell * len(rows) + 10
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


def _delta_class(change: str) -> str:
    return "up" if change.startswith("+") else "down" if change.startswith("-") else ""


def as_html(report: Report) -> str:
    """One self-contained HTML page: charts (types before/after, the flip matrix, the confidence histogram),
    the aggregate table and the list of flips."""
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
    agg = "".join(f'<tr><td>{escape(m)}</td><td class="n">{escape(x)}</td><td class="n">{escape(y)}</td>'
                  f'<td class="n {_delta_class(d)}">{escape(d)}</td></tr>' for m, x, y, d in aggregate_rows(report))
    flips = "".join(
        f"<tr><td><code>{escape(f['event_id'])}</code></td><td>{escape(', '.join(f['changed']))}</td>"
        f"<td>{escape(_side(f['baseline']))}<br><small>{escape('; '.join(f['baseline']['actions']))}</small></td>"
        f"<td>{escape(_side(f['candidate']))}<br><small>{escape('; '.join(f['candidate']['actions']))}</small></td>"
        f"<td>{escape(' '.join(['+' + r for r in f['rules_added']] + ['-' + r for r in f['rules_removed']]))}</td></tr>"
        for f in report.flips)
    flips_html = (f"<table><thead><tr><th>event</th><th>changed</th><th>baseline</th><th>candidate</th>"
                  f"<th>rules +/-</th></tr></thead><tbody>{flips}</tbody></table>" if report.flips
                  else "<p>No decision changes.</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>astralis simulate: {escape(report.org)}</title><style>{CSS}</style></head><body>"
        f"<h1>Simulation: {escape(report.org)}</h1><p class=\"sub\">{revs} · {escape(headline)}</p>"
        f"<h2>Charts</h2>{_legend(b is not None)}<div class=\"charts\">"
        + "".join(f'<div class="chart">{svg}</div>' for svg in charts) + "</div>"
        "<h2>Aggregate changes</h2><table><thead><tr><th>metric</th><th class=\"n\">baseline</th>"
        f"<th class=\"n\">candidate</th><th class=\"n\">change</th></tr></thead><tbody>{agg}</tbody></table>"
        + (f"<h2>Flips</h2>{flips_html}" if report.baseline else "")
        + "</body></html>"
    )
