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
  const STATUS_COLORS = { EXECUTED: "#1b7f4b", REQUIRES_APPROVAL: "#a86400", PENDING: "#d9a400", REJECTED: "#b3261e",
                          FAILED: "#7a1a14" };

  function chart(name, html) { document.querySelector(`[data-chart="${name}"] > div`).innerHTML = html; }

  function localInput(date) {
    const d = new Date(date.getTime() - date.getTimezoneOffset() * 60e3);
    return d.toISOString().slice(0, 16);
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

  /** The window's buckets: local hours (up to 2 days) or local days (DST-safe), with labels and an index of a
   * time into them. */
  function buckets(since, until) {
    const hourly = until - since <= 2 * DAY;
    const first = new Date(since);
    first.setMinutes(0, 0, 0);
    if (!hourly) first.setHours(0);
    const starts = [];
    for (let t = new Date(first); t < until && starts.length < 1000;) {
      starts.push(new Date(t));
      if (hourly) t.setTime(t.getTime() + HOUR); else t.setDate(t.getDate() + 1);
    }
    if (!starts.length) starts.push(first);
    const labels = starts.map((t) => (hourly ? `${String(t.getHours()).padStart(2, "0")}:00`
      : t.toLocaleDateString(undefined, { month: "short", day: "numeric" })));
    const index = (iso) => {
      const t = new Date(iso);
      let k = 0;
      while (k + 1 < starts.length && starts[k + 1] <= t) k += 1;
      return k;
    };
    return { labels, index };
  }

  function overTime(decisions, b, key, colors) {
    const names = [...new Set(decisions.map((d) => d[key]))].sort();
    return names.map((name, i) => {
      const values = b.labels.map(() => 0);
      for (const d of decisions) if (d[key] === name) values[b.index(d.created_at)] += 1;
      return { name, values, color: colors?.[name] || Charts.color(i) };
    });
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
      $("#status").textContent = `${since.toLocaleString()} – ${until.toLocaleString()}` +
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

    const b = buckets(since, until);
    chart("by-type", Charts.stacked("Decisions by type over time", b.labels, overTime(decisions, b, "decision_type")));
    chart("by-status", Charts.stacked("Decisions by status over time", b.labels,
      overTime(decisions, b, "status", STATUS_COLORS)));
    const withLlm = decisions.map((d) => ({ ...d, llm_used: d.llm ? "LLM consulted" : "rules only" }));
    chart("llm-rate", Charts.stacked("LLM calls over time", b.labels,
      overTime(withLlm, b, "llm_used", { "LLM consulted": "#7b4bd0", "rules only": "#c5ccd6" })) +
      `<p class="muted">${llm.calls || 0} calls for ${report.total} decisions; LLM latency p50 ${llm.latency_ms?.p50 ?? "—"} ms,
       p90 ${llm.latency_ms?.p90 ?? "—"} ms.</p>`);
    chart("llm-tokens", Charts.bars("LLM tokens", [["input tokens", llm.input_tokens || 0],
      ["output tokens", llm.output_tokens || 0]]) +
      (llm.cost_usd === null || llm.cost_usd === undefined
        ? `<p class="muted">Cost: no price for ${Astralis.esc(llm.model || "the model")} in the policy's llm.prices.</p>`
        : `<p id="llm-cost">Estimated cost: $${Number(llm.cost_usd).toFixed(4)} (${Astralis.esc(llm.model)}, the policy's prices)</p>`));
    chart("decided-by", Charts.bars("Decided by", Object.entries(report.by_decided_by || {})
      .sort((x, y) => y[1] - x[1])));
    chart("approvals", Charts.bars("Approvals", [["approved", appr.approved || 0], ["rejected", appr.rejected || 0],
      ["awaiting", appr.awaiting || 0]]) +
      `<p>Turnaround: p50 <b>${secs(turn.p50)}</b>, p90 <b>${secs(turn.p90)}</b>, max <b>${secs(turn.max)}</b>
       over ${appr.reviewed || 0} reviews.</p>`);

    const matched = new Map();
    for (const d of decisions) for (const r of d.matched_rules || []) matched.set(r, (matched.get(r) || 0) + 1);
    const top = [...matched.entries()].sort((x, y) => y[1] - x[1] || x[0].localeCompare(y[0])).slice(0, 15);
    chart("top-rules", Charts.bars("Top matched rules", top, { barColor: "#2f5fd0" }));
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
      const since = new Date($("#since").value), until = new Date($("#until").value);
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
  load();
})();
