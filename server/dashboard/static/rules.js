// The ruleset editor: the org's YAML files in CodeMirror (the vendored bundle, static/vendor/editor.js) with
// completion and hover from the files' JSON Schemas, validated as you type (the same findings as `astralis
// validate`, as diagnostics at their line), simulated against past events before saving (the decisions that would
// change, linked to the past decisions), saved (hot-reloaded), with the revision history, its diffs and rollback.
"use strict";

(() => {
  const A = Astralis;
  const { api, esc, nav } = A;
  const $ = (id) => document.getElementById(id);
  const state = { org: "", saved: {}, edited: {}, current: "", findings: [], timer: null, seq: 0 };
  const schemas = {};
  let opening = false; // a file being opened: its text is not an edit
  const editor = AstralisEditor.create({
    parent: $("editor"),
    onChange(text) {
      if (opening) return;
      state.edited[state.current] = text;
      renderProblems();
      validateSoon();
    },
    onSave: () => { if (!$("save").disabled) save(); },
  });

  /** The schema of a file: the org file, the policy, or a ruleset. */
  function schemaFor(name) {
    if (name === "org.yaml") return schemas["org.schema.json"];
    if (name.startsWith("policies/")) return schemas["policy.schema.json"];
    return schemas["ruleset.schema.json"];
  }

  async function loadSchemas() {
    await Promise.all(["org.schema.json", "ruleset.schema.json", "policy.schema.json"].map(async (n) => {
      try {
        const r = await fetch(`/schemas/${n}`);
        if (r.ok) schemas[n] = await r.json();
      } catch { /* no completion for that kind of file; everything else works */ }
    }));
    editor.setSchema(schemaFor(state.current || ""));
  }

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

  /** The findings of the open file, as diagnostics at their line. */
  function renderDiagnostics() {
    editor.setFindings(state.findings.filter((f) => f.file === state.current));
  }

  function renderProblems() {
    $("problems").innerHTML = state.findings.map((f, i) =>
      `<li class="${f.severity}" data-i="${i}">${esc(f.text)}</li>`).join("");
    const errors = state.findings.filter((f) => f.severity === "error").length;
    $("state").textContent = !changed() ? "saved" : errors ? `${errors} error(s): cannot be saved` : "valid, not saved";
    $("save").disabled = !changed() || errors > 0;
    renderFiles();
    renderDiagnostics();
  }

  function open(name) {
    state.current = name;
    $("current").textContent = name;
    opening = true;
    try { editor.setText(state.edited[name] ?? ""); } finally { opening = false; }
    editor.setSchema(schemaFor(name));
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
    editor.goTo(finding.line);
  }

  /** An error's details, whatever their shape: a list of messages, or an object of fields. */
  function detailsHtml(details) {
    if (details == null) return "";
    const items = Array.isArray(details) ? details.map((d) => (typeof d === "object" ? JSON.stringify(d) : String(d)))
      : typeof details === "object" ? Object.entries(details).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`)
      : [String(details)];
    return items.length ? `<ul class="problems">${items.map((d) => `<li>${esc(d)}</li>`).join("")}</ul>` : "";
  }

  const outcome = (v) => `${A.label(v.intent)} → ${A.label(v.decision_type)}, ${A.label(v.status).toLowerCase()}`;

  /** One flip as a person reads it: the event's words, before → after, the rule that made the difference. */
  function flipHtml(f, events, past) {
    const ev = events[f.event_id] || {};
    const what = ev.subject || ev.snippet || `${f.type} ${f.event_id}`;
    const id = past[f.event_id];
    const link = id ? `<a href="/decisions/${encodeURIComponent(id)}">${esc(what)}</a>` : esc(what);
    const rules = [...(f.rules_added || []).map((r) => `now matches <code>${esc(r)}</code>`),
                   ...(f.rules_removed || []).map((r) => `no longer matches <code>${esc(r)}</code>`)];
    const why = rules.length ? rules.join("; ") : `changed: ${esc(f.changed.join(", "))}`;
    return `<li data-event-id="${esc(f.event_id)}">${link}${ev.sender ? ` <span class="muted">— ${esc(A.senderName(ev.sender))}</span>` : ""}
      <div><span class="before">${esc(outcome(f.baseline))}</span> → <span class="after">${esc(outcome(f.candidate))}</span></div>
      <div class="muted">${why}</div></li>`;
  }

  async function simulate() {
    const days = Math.max(1, Math.min(90, Number($("days").value) || 7));
    if (!changed()) {
      $("report").innerHTML = `<p id="simulated">Nothing edited yet: the saved rules decide past events as they
        were decided. Edit a file, then simulate to see which decisions would change.</p>`;
      return;
    }
    const since = new Date(Date.now() - days * 86400e3).toISOString();
    $("report").innerHTML = `<p class="muted">Simulating the last ${days} day(s)…</p>`;
    $("simulate").disabled = true;
    try {
      const r = await api("/api/agent/simulate", { method: "POST", body: { past: 1000, since, config: body() } });
      const rep = r.report;
      const flips = (rep.flips || []).slice(0, 100).map((f) => flipHtml(f, r.events || {}, r.past_decisions || {})).join("");
      const more = (rep.flips || []).length > 100 ? `<p class="muted">and ${rep.flips.length - 100} more.</p>` : "";
      $("report").innerHTML =
        `<h3 id="simulated">${rep.changed_events} of ${rep.events} past decisions would change</h3>` +
        (flips ? `<ul class="flips">${flips}</ul>${more}` : `<p class="muted">None would change.</p>`);
    } catch (e) {
      $("report").innerHTML = `<p class="error">Could not simulate: ${esc(e.message)}</p>${detailsHtml(e.details)}`;
    } finally {
      $("simulate").disabled = false;
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
    $("no-history").hidden = h.history.length > 0;
    $("history").closest("table").hidden = h.history.length === 0;
    $("history").innerHTML = h.history.map((row, i) =>
      `<tr><td><code>${esc(row.revision)}</code>${row.active ? ' <span class="pill EXECUTED">active</span>' : ""}</td>` +
      `<td>${A.ago(row.created_at)}</td><td>${esc(row.by || "")}</td><td>` +
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
  A.ready.then(loadSchemas).then(load).then(() => { document.body.dataset.loaded = "1"; })
    .catch((e) => { $("report").innerHTML = `<p class="error">${esc(e.message)}</p>`; });
})();
