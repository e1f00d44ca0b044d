// The ruleset editor: the org's YAML files, validated as you type (the same findings as `astralis validate`, at
// their line), simulated against past events before saving, saved (hot-reloaded), with the revision history,
// its diffs and rollback.
"use strict";

(() => {
  const { api, esc, nav, when } = Astralis;
  const $ = (id) => document.getElementById(id);
  const state = { org: "", saved: {}, edited: {}, current: "", findings: [], timer: null, seq: 0 };

  /** The update body for every edited file: ruleset files by name, the org's policy as `policy`. */
  function body() {
    const files = {};
    let policy = null;
    for (const [name, text] of Object.entries(state.edited)) {
      if (text === state.saved[name]) continue;
      if (name.startsWith("policies/")) policy = text; else files[name] = text;
    }
    return { files, policy };
  }

  function changed() {
    const b = body();
    return Object.keys(b.files).length > 0 || b.policy !== null;
  }

  function renderFiles() {
    const bad = new Set(state.findings.filter((f) => f.severity === "error").map((f) => f.file));
    $("files").innerHTML = Object.keys(state.edited).map((name) =>
      `<li data-name="${esc(name)}" class="${name === state.current ? "active" : ""} ${bad.has(name) ? "bad" : ""}">` +
      `${esc(name)}${state.edited[name] !== state.saved[name] ? " *" : ""}</li>`).join("");
  }

  function renderGutter() {
    const lines = $("text").value.split("\n").length;
    const bad = new Set(state.findings.filter((f) => f.file === state.current && f.severity === "error").map((f) => f.line));
    const out = [];
    for (let i = 1; i <= lines; i++) out.push(bad.has(i) ? `<span class="bad">${i}</span>` : `${i}`);
    $("gutter").innerHTML = out.join("\n");
    $("gutter").scrollTop = $("text").scrollTop;
  }

  function renderProblems() {
    $("problems").innerHTML = state.findings.map((f, i) =>
      `<li class="${f.severity}" data-i="${i}">${esc(f.text)}</li>`).join("");
    const errors = state.findings.filter((f) => f.severity === "error").length;
    $("state").textContent = !changed() ? "saved" : errors ? `${errors} error(s): cannot be saved` : "valid, not saved";
    $("save").disabled = !changed() || errors > 0;
    renderFiles();
    renderGutter();
  }

  function open(name) {
    state.current = name;
    $("current").textContent = name;
    $("text").value = state.edited[name];
    renderProblems();
  }

  /** Validate the edited files (debounced while typing); a later answer replaces an earlier one. */
  function validateSoon() {
    clearTimeout(state.timer);
    state.timer = setTimeout(validate, 350);
  }

  async function validate() {
    const seq = ++state.seq;
    if (!changed()) { state.findings = []; renderProblems(); return; }
    try {
      const r = await api("/api/agent/config/validate", { method: "POST", body: body() });
      if (seq !== state.seq) return;
      state.findings = [...r.errors, ...r.warnings];
    } catch (e) {
      if (seq !== state.seq) return;
      state.findings = [{ file: state.current, line: 0, severity: "error", text: e.message }];
    }
    renderProblems();
  }

  function goTo(finding) {
    if (finding.file !== state.current && finding.file in state.edited) open(finding.file);
    const text = $("text");
    const lines = text.value.split("\n");
    const start = lines.slice(0, Math.max(0, finding.line - 1)).join("\n").length + (finding.line > 1 ? 1 : 0);
    text.focus();
    text.setSelectionRange(start, start + (lines[finding.line - 1] || "").length);
    text.scrollTop = Math.max(0, (finding.line - 5) * 18);
    renderGutter();
  }

  async function simulate() {
    const days = Math.max(1, Math.min(90, Number($("days").value) || 7));
    const since = new Date(Date.now() - days * 86400e3).toISOString();
    $("report").innerHTML = `<p class="muted">Simulating the last ${days} day(s)…</p>`;
    try {
      const r = await api("/api/agent/simulate", { method: "POST", body: { past: 1000, since, config: body() } });
      const rep = r.report;
      const flips = (rep.flips || []).slice(0, 50).map((f) =>
        `<tr><td><a href="/decisions?event=${encodeURIComponent(f.event_id)}">${esc(f.event_id)}</a></td>` +
        `<td>${esc(f.type)}</td><td>${esc(f.changed.join(", "))}</td>` +
        `<td>${esc(f.baseline.intent)} / ${esc(f.baseline.status)}</td><td>${esc(f.candidate.intent)} / ${esc(f.candidate.status)}</td></tr>`).join("");
      const changes = Object.entries(rep.changes || {}).slice(0, 12).map(([k, v]) =>
        `<li>${esc(k)}: ${esc(typeof v === "object" ? JSON.stringify(v) : v)}</li>`).join("");
      $("report").innerHTML =
        `<h3 id="simulated">${rep.changed_events} of ${rep.events} past decisions would change</h3>` +
        (changes ? `<ul class="muted">${changes}</ul>` : "") +
        (flips ? `<table><thead><tr><th>Event</th><th>Type</th><th>Changes</th><th>Now</th><th>With this edit</th></tr></thead>` +
                 `<tbody>${flips}</tbody></table>` : "");
    } catch (e) {
      $("report").innerHTML = `<p class="error">${esc(e.message)}</p>` +
        (e.details ? `<ul class="problems">${e.details.map((d) => `<li>${esc(d)}</li>`).join("")}</ul>` : "");
    }
  }

  async function save() {
    try {
      const r = await api("/api/agent/config", { method: "POST", body: body() });
      $("report").innerHTML = `<p id="saved">Saved: revision <code>${esc(r.revision)}</code> is active.</p>`;
      await load();
    } catch (e) {
      $("report").innerHTML = `<p class="error">${esc(e.message)}</p>`;
    }
  }

  function diffHtml(diff) {
    return diff.split("\n").map((l) => {
      const cls = l.startsWith("+") && !l.startsWith("+++") ? "add" : l.startsWith("-") && !l.startsWith("---") ? "del" : "";
      return cls ? `<span class="${cls}">${esc(l)}</span>` : esc(l);
    }).join("\n");
  }

  async function loadHistory() {
    const h = await api("/api/agent/config/history");
    $("history").innerHTML = h.history.map((row, i) =>
      `<tr><td><code>${esc(row.revision)}</code>${row.active ? ' <span class="pill EXECUTED">active</span>' : ""}</td>` +
      `<td>${esc(when(row.created_at))}</td><td>${esc(row.by || "")}</td><td>` +
      `<button data-diff="${i}">Diff</button> ` +
      (row.active ? "" : `<button data-rollback="${esc(row.revision)}">Roll back</button>`) + `</td></tr>` +
      `<tr hidden id="diff-${i}"><td colspan="4"><pre class="diff">${diffHtml(row.diff || "(no change)")}</pre></td></tr>`).join("");
  }

  async function load() {
    const c = await api("/api/agent/config");
    state.org = c.org;
    state.saved = { ...c.files };
    if (c.policy !== null && c.policy !== undefined) state.saved[`policies/${c.org}.yaml`] = c.policy;
    state.edited = { ...state.saved };
    $("revision").textContent = c.revision ? `· revision ${c.revision}` : "";
    state.findings = [];
    open(state.current in state.edited ? state.current : Object.keys(state.edited)[0]);
    await loadHistory();
  }

  nav();
  $("files").addEventListener("click", (e) => { const li = e.target.closest("li"); if (li) open(li.dataset.name); });
  $("text").addEventListener("input", () => { state.edited[state.current] = $("text").value; renderProblems(); validateSoon(); });
  $("text").addEventListener("scroll", () => { $("gutter").scrollTop = $("text").scrollTop; });
  $("problems").addEventListener("click", (e) => { const li = e.target.closest("li"); if (li) goTo(state.findings[li.dataset.i]); });
  $("simulate").addEventListener("click", simulate);
  $("save").addEventListener("click", save);
  $("history").addEventListener("click", async (e) => {
    const b = e.target.closest("button");
    if (!b) return;
    if (b.dataset.diff !== undefined) { const row = $(`diff-${b.dataset.diff}`); row.hidden = !row.hidden; }
    if (b.dataset.rollback) {
      try {
        const r = await api("/api/agent/config/rollback", { method: "POST", body: { revision: b.dataset.rollback } });
        $("report").innerHTML = `<p id="rolled-back">Rolled back: revision <code>${esc(r.revision)}</code> is active.</p>`;
        await load();
      } catch (err) {
        $("report").innerHTML = `<p class="error">${esc(err.message)}</p>`;
      }
    }
  });
  load().catch((e) => { $("report").innerHTML = `<p class="error">${esc(e.message)}</p>`; });
})();
