// Analytics: the API's counts for a window, plus what it does not give, computed here from the window's
// decisions (by type and status over time, LLM calls over time, matched rules), the org's rule files (rules that
// never matched) and the dead-lettered actions.
"use strict";

(() => {
  Astralis.nav();
  const $ = (sel) => document.querySelector(sel);
  const esc = Astralis.esc;
  const HOUR = 3600e3, DAY = 24 * HOUR;
  const RANGES = { "24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY };
  const MAX_PAGES = 20; // 20 × 500 decisions at most are read for the charts over time
  const STATUS_COLORS = { EXECUTED: "#1b7f4b", REQUIRES_APPROVAL: "#d08a00", PENDING: "#e3c15a", REJECTED: "#8a93a3",
                          FAILED: "#b3261e" };
  // one colour per decision type; doing nothing is grey, not an error
  const TYPE_COLORS = { ASSIGN_PIPELINE: "#2f5fd0", CREATE_EVENT: "#0f8b8d", UPDATE_EVENT: "#3e8ed0",
                        CANCEL_EVENT: "#7b4bd0", SEND_NOTIFICATION: "#1b7f4b", TRIGGER_AUTOMATION: "#8d6e00",
                        ESCALATE: "#d08a00", NO_ACTION: "#b7bfcc" };
  const labelsOf = (names) => Object.fromEntries(names.map((n) => [n, Astralis.label(n)]));

  const box = (name) => document.querySelector(`[data-chart="${name}"] > div`);
  function chart(name, html) { box(name).innerHTML = html; }

  /** A datetime-local value: the wall clock in the org's zone. */
  function localInput(date) {
    return `${Astralis.ymd(date)}T${Astralis.clock(date)}`;
  }

  function windowFromUrl() {
    const q = new URLSearchParams(location.search);
    const range = q.get("range") || (q.get("since") ? "custom" : "24h");
    const until = q.get("until") ? new Date(q.get("until")) : new Date();
    const since = range === "custom" && q.get("since") ? new Date(q.get("since"))
      : new Date(until.getTime() - (RANGES[range] || DAY));
    return { range, since, until };
  }

  async function allDecisions(since, until) {
    const out = [];
    let cursor = null, truncated = false;
    for (let i = 0; i < MAX_PAGES; i++) {
      const q = new URLSearchParams({ since: since.toISOString(), until: until.toISOString(), limit: "500" });
      if (cursor) q.set("cursor", cursor);
      const page = await Astralis.api(`/api/agent/decisions?${q}`);
      out.push(...page.decisions);
      cursor = page.next_cursor;
      if (!cursor) break;
      if (i === MAX_PAGES - 1) truncated = true;
    }
    return { decisions: out, truncated };
  }

  /** The org's rule names (`ruleset/id`) from its YAML files: a line scan of `ruleset:` and the `- id:` entries
   * under `rules:`. */
  function ruleNames(files) {
    const names = [];
    for (const [file, text] of Object.entries(files || {})) {
      if (file === "org.yaml" || file === "org.yml") continue;
      let ruleset = file.replace(/\.ya?ml$/, ""), inRules = false;
      for (const line of text.split("\n")) {
        const top = line.match(/^ruleset:\s*["']?([\w.-]+)/);
        if (top) { ruleset = top[1]; continue; }
        if (/^rules:\s*$/.test(line)) { inRules = true; continue; }
        if (/^\S/.test(line) && !line.startsWith("#")) { inRules = false; continue; }
        const rule = inRules && line.match(/^\s{0,4}-\s+(?:id|name):\s*["']?([\w.:-]+)/);
        if (rule) names.push(`${ruleset}/${rule[1]}`);
      }
    }
    return names;
  }

  const secs = (v) => (v == null ? "—" : v < 120 ? `${Math.round(v)} s` : v < 7200 ? `${Math.round(v / 60)} min`
    : `${(v / 3600).toFixed(1)} h`);

  function stat(label, value) { return `<div class="stat card"><div class="muted">${esc(label)}</div><b>${esc(value)}</b></div>`; }

  async function load() {
    const { range, since, until } = windowFromUrl();
    $("#range").value = range;
    $("#since").value = localInput(since);
    $("#until").value = localInput(until);
    document.querySelectorAll(".custom").forEach((el) => { el.hidden = range !== "custom"; });
    $("#status").textContent = "Loading…";
    $("#error").hidden = true;
    try {
      const q = new URLSearchParams({ since: since.toISOString(), until: until.toISOString() });
      const [report, { decisions, truncated }, dead, config] = await Promise.all([
        Astralis.api(`/api/agent/analytics?${q}`), allDecisions(since, until),
        Astralis.api("/api/agent/actions?status=dead&limit=200"),
        Astralis.api("/api/agent/config").catch(() => ({ files: {} }))]);
      render(report, decisions, dead.actions || [], config, since, until);
      $("#status").textContent = `${Astralis.when(since.toISOString())} – ${Astralis.when(until.toISOString())}` +
        (truncated ? ` (charts over time use the newest ${decisions.length} decisions)` : "");
    } catch (err) {
      $("#error").textContent = `Could not load analytics: ${err.message}`;
      $("#error").hidden = false;
      $("#status").textContent = "";
    }
  }

  function render(report, decisions, dead, config, since, until) {
    const llm = report.llm || {}, appr = report.approvals || {}, turn = appr.turnaround_seconds || {};
    $("#summary").innerHTML = [
      stat("Decisions", report.total), stat("LLM call rate", `${((llm.call_rate || 0) * 100).toFixed(1)} %`),
      stat("LLM tokens (in / out)", `${llm.input_tokens || 0} / ${llm.output_tokens || 0}`),
      stat("Decision latency p50 / p90", `${report.latency_ms?.p50 ?? "—"} / ${report.latency_ms?.p90 ?? "—"} ms`),
      stat("Awaiting approval", appr.awaiting ?? 0), stat("Dead actions", dead.length)].join("");

    const size = Charts.step(since.getTime(), until.getTime());
    const buckets = Charts.starts(since.getTime(), until.getTime(), size);
    const at = (d) => d.created_at;
    const every = (name, title, key, colors) => {
      const series = Charts.count(decisions, at, key, buckets, size, colors);
      Charts.timeline(box(name), title, buckets, size, series, { labels: labelsOf(series.map((x) => x.name)) });
    };
    every("by-type", "Decisions by type over time", (d) => d.decision_type, TYPE_COLORS);
    every("by-status", "Decisions by status over time", (d) => d.status, STATUS_COLORS);
    const calls = Charts.count(decisions, at, (d) => (d.llm ? "LLM calls" : null), buckets, size, { "LLM calls": "#7b4bd0" });
    Charts.timeline(box("llm-rate"), "LLM calls over time", buckets, size, calls);
    if (!calls.length) {
      box("llm-rate").innerHTML = `<p class="muted chart-empty">No LLM calls in this window: the rules decided
        ${report.total ? "every decision" : "(no decisions)"}.</p>`;
    }
    $("#llm-note").textContent = `${llm.calls || 0} calls for ${report.total} decisions; LLM latency p50 `
      + `${llm.latency_ms?.p50 ?? "—"} ms, p90 ${llm.latency_ms?.p90 ?? "—"} ms.`;
    for (const el of document.querySelectorAll(".bucket")) el.textContent = `(${Charts.label(size)}, ${Astralis.zoneName()})`;
    chart("llm-tokens", Charts.bars("LLM tokens", [["input tokens", llm.input_tokens || 0],
      ["output tokens", llm.output_tokens || 0]]) +
      (llm.cost_usd === null || llm.cost_usd === undefined
        ? `<p class="muted">Cost: no price for ${Astralis.esc(llm.model || "the model")} in the policy's llm.prices.</p>`
        : `<p id="llm-cost">Estimated cost: $${Number(llm.cost_usd).toFixed(4)} (${Astralis.esc(llm.model)}, the policy's prices)</p>`));
    chart("decided-by", Charts.bars("Decided by", Object.entries(report.by_decided_by || {})
      .sort((x, y) => y[1] - x[1]).map(([k, v]) => [Astralis.label(k), v])));
    chart("approvals", Charts.bars("Approvals", [["approved", appr.approved || 0], ["rejected", appr.rejected || 0],
      ["awaiting", appr.awaiting || 0]]) +
      `<p>Turnaround: p50 <b>${secs(turn.p50)}</b>, p90 <b>${secs(turn.p90)}</b>, max <b>${secs(turn.max)}</b>
       over ${appr.reviewed || 0} reviews.</p>`);

    const matched = new Map();
    for (const d of decisions) for (const r of d.matched_rules || []) matched.set(r, (matched.get(r) || 0) + 1);
    const top = [...matched.entries()].sort((x, y) => y[1] - x[1] || x[0].localeCompare(y[0])).slice(0, 15);
    chart("top-rules", Charts.bars("Top matched rules", top, { barColor: "#2f5fd0" }));
    const precision = Object.entries(report.rule_precision || {}).sort((x, y) => x[1].precision - y[1].precision);
    chart("rule-precision", precision.length
      ? `<table><thead><tr><th>Rule</th><th>Precision</th><th>Kept / labelled</th></tr></thead><tbody>${precision.map(
        ([rule, r]) => `<tr><td><code>${esc(rule)}</code></td><td>${(100 * r.precision).toFixed(0)}%</td>
        <td>${esc(r.right)} / ${esc(r.labelled)}</td></tr>`).join("")}</tbody></table>`
      : `<p class="muted">No approvals or corrections in this window.</p>`);
    const names = ruleNames(config.files);
    const never = names.filter((n) => !matched.has(n));
    chart("unmatched-rules", names.length
      ? `<p class="muted">${never.length} of ${names.length} rules matched no decision in this window.</p>
         <ul class="rule-list">${never.map((n) => `<li><code>${esc(n)}</code></li>`).join("")}</ul>`
      : `<p class="muted">The org's rule files could not be read.</p>`);

    $("#failures > div").innerHTML = dead.length ? `<table><thead><tr><th>Action</th><th>Type</th><th>Decision</th>
      <th>Attempts</th><th>Error</th><th>When</th></tr></thead><tbody>${dead.map((a) => `<tr>
      <td><code>${esc(a.key)}</code></td><td>${esc(a.type)}</td>
      <td><a href="/decisions/${encodeURIComponent(a.decision_id)}">${esc(a.decision_id)}</a></td>
      <td>${esc(a.attempts)}</td><td class="error">${esc(a.error)}</td><td>${esc(Astralis.when(a.updated_at))}</td>
      </tr>`).join("")}</tbody></table>` : `<p class="muted">No dead-lettered actions.</p>`;
  }

  $("#range").addEventListener("change", () => {
    document.querySelectorAll(".custom").forEach((el) => { el.hidden = $("#range").value !== "custom"; });
  });
  $("#window").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams({ range: $("#range").value });
    if ($("#range").value === "custom") {
      const since = new Date(Astralis.fromLocal($("#since").value)), until = new Date(Astralis.fromLocal($("#until").value));
      if (isNaN(since) || isNaN(until) || since >= until) {
        $("#error").textContent = "Choose a since before the until.";
        $("#error").hidden = false;
        return;
      }
      q.set("since", since.toISOString());
      q.set("until", until.toISOString());
    }
    history.pushState(null, "", `?${q}`);
    load();
  });
  window.addEventListener("popstate", load);
  Astralis.ready.then(load);
})();
