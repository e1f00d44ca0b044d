// One decision as a story: the event, the rules, the resolution, the LLM, the plan, the gate, the actions.
"use strict";

(() => {
  const A = Astralis;
  const { api, esc, nav, when } = A;
  const id = decodeURIComponent(location.pathname.split("/").pop());
  const story = document.getElementById("story");
  const errorBox = document.getElementById("error");
  const AWAITING = ["REQUIRES_APPROVAL", "PENDING"];

  const fmt = (n, digits = 2) => (typeof n === "number" ? n.toFixed(digits) : esc(n ?? "—"));
  const json = (v) => `<pre>${esc(JSON.stringify(v, null, 2))}</pre>`;
  const section = (step, title, body, cls = "") =>
    `<section class="card step ${cls}" data-step="${esc(step)}"><h2>${esc(title)}</h2>${body}</section>`;
  const list = (items) => (items.length ? `<ul>${items.map((i) => `<li>${i}</li>`).join("")}</ul>` : "");

  function eventSection(d, ev) {
    const head = `<p><code>${esc(d.input?.type)}</code> from <strong>${esc(d.input?.source)}</strong>
      ${ev ? `received ${esc(when(ev.received_at))} via ${esc(ev.channel)}` : ""} — event
      <code>${esc(d.event_id)}</code></p>`;
    if (!ev) return section("event", "1. The event", `${head}<p class="muted">The event's body is not stored.</p>`);
    const data = ev.envelope?.data || {};
    const text = data.text ?? data.body ?? data.message;
    const fields = Object.entries(data).filter(([k]) => !["text", "body", "message"].includes(k));
    const table = fields.length ? `<table class="kv">${fields.map(([k, v]) =>
      `<tr><th>${esc(k)}</th><td>${typeof v === "object" ? json(v) : esc(v)}</td></tr>`).join("")}</table>` : "";
    return section("event", "1. The event",
      `${head}${table}${text != null ? `<pre class="text">${esc(text)}</pre>` : ""}`);
  }

  function rulesSection(t) {
    const rules = t.rules || [];
    const body = rules.length ? `<table><thead><tr><th>Rule</th><th>Intent</th><th>Confidence</th><th>Where</th>
      </tr></thead><tbody>${rules.map((r) => `<tr class="rule"><td><code>${esc(r.rule)}</code></td>
      <td>${esc(r.intent ?? "—")}</td><td>${fmt(r.confidence)}</td><td><code>${esc(r.at)}</code></td></tr>`).join("")}
      </tbody></table>` : `<p>No rule matched.</p>`;
    const extras = [];
    if (t.engine) extras.push(`engine ${esc(t.engine)}, rules revision <code>${esc(t.revision)}</code>`);
    if (t.fields && Object.keys(t.fields).length) extras.push(`fields extracted: ${esc(JSON.stringify(t.fields))}`);
    if (t.quoted_text_ignored) extras.push("quoted text (an earlier message in the thread) was ignored");
    if (t.injection_removed?.length) extras.push(`instructions aimed at the model were removed: ${esc(t.injection_removed.join("; "))}`);
    return section("rules", "2. Rules that matched", body + list(extras));
  }

  function resolutionSection(d, t) {
    const r = t.resolution || {};
    const scores = Object.entries(r.scores || {}).map(([k, v]) => `${esc(k)} ${fmt(v)}`).join(", ");
    const verdict = r.ambiguous ? `<p><strong>Ambiguous</strong> (${esc(r.ambiguous)}): ${esc(r.reason)}</p>`
      : `<p>Clear: ${esc(r.reason || "—")}</p>`;
    return section("resolution", "3. Resolution", `${verdict}${scores ? `<p class="muted">Scores: ${scores}</p>` : ""}
      <p>Result: <strong>${esc(d.intent)}</strong> → <strong>${esc(d.decision_type)}</strong>, confidence
      ${fmt(d.confidence)}, priority ${esc(d.priority)}, decided by <strong>${esc(d.decided_by)}</strong>.</p>`);
  }

  function llmSection(d, t) {
    const asked = d.llm || t.timings_ms?.llm_ms !== undefined || d.decided_by !== "rules";
    if (!asked) {
      return section("llm", "4. The LLM", `<p>Not asked: the rules were clear enough on their own.</p>`);
    }
    const why = t.resolution?.ambiguous ? `Asked because the rules were ambiguous (${esc(t.resolution.ambiguous)}).`
      : "Asked for this event.";
    const l = d.llm;
    if (!l) {
      return section("llm", "4. The LLM", `<p>${why}</p><p>No answer was used; decided by
        <strong>${esc(d.decided_by)}</strong>. ${esc((d.reasoning || "").match(/LLM [^.]*\.?/)?.[0] || "")}</p>`);
    }
    let reasoning = "";
    try { reasoning = JSON.parse(l.response || "")?.reasoning || ""; } catch { /* not JSON: shown below */ }
    const proposed = t.llm_proposed_actions || [];
    return section("llm", "4. The LLM", `<p>${why}</p>
      <p>Model <code>${esc(l.provider)}/${esc(l.model)}</code>: ${esc(l.input_tokens)} tokens in,
      ${esc(l.output_tokens)} out, ${fmt(l.latency_ms, 0)} ms${l.attempts ? `, ${esc(l.attempts)} attempt(s)` : ""}.</p>
      ${l.error ? `<p class="error">Error: ${esc(l.error)}</p>` : ""}
      ${reasoning ? `<p>Its reasoning: <em>${esc(reasoning)}</em></p>` : ""}
      ${proposed.length ? `<p>Actions it proposed:</p>${json(proposed)}` : ""}
      <details><summary>Prompt</summary><pre>${esc(l.prompt)}</pre></details>
      <details><summary>Response</summary><pre>${esc(l.response)}</pre></details>`);
  }

  function planSection(t) {
    const items = [];
    items.push(t.urgency_words?.length ? `Urgency words: ${t.urgency_words.map((w) => `<code>${esc(w)}</code>`).join(", ")}`
      : "No urgency words.");
    for (const note of t.plan || []) items.push(esc(note));
    const b = t.booking;
    if (b) {
      items.push(`Booking: <strong>${esc(b.status)}</strong>${b.start ? ` at ${esc(when(b.start))}` : ""}
        ${b.requested ? ` (requested ${esc(when(b.requested))}${b.time_source ? `, from ${esc(b.time_source)}` : ""})` : ""}
        ${b.reason ? ` — ${esc(b.reason)}` : ""}`);
    }
    return section("plan", "5. Urgency and plan", list(items));
  }

  function gateSection(d, t) {
    const g = t.gate || {};
    const blocked = t.blocked_actions || [];
    const review = t.review;
    return section("gate", "6. The gate", `<p>Outcome: <strong>${esc(g.outcome ?? "—")}</strong> — ${esc(g.reason ?? "")}</p>
      ${blocked.length ? `<p>Blocked actions:</p>${json(blocked)}` : ""}
      <p>Status now: <span class="pill ${esc(d.status)}" id="status">${esc(d.status)}</span>
      ${d.error ? `<span class="error">${esc(d.error)}</span>` : ""}</p>
      ${review ? `<p>Reviewed: ${esc(review.verdict ?? "")} by <strong>${esc(review.by)}</strong>
        ${review.at ? `at ${esc(when(review.at))}` : ""}${review.note ? ` — “${esc(review.note)}”` : ""}</p>` : ""}`);
  }

  function link(result) {
    if (!result) return "";
    if (result.intake_id) {
      return ` → intake <a href="/pipelines?intake=${encodeURIComponent(result.intake_id)}">${esc(result.intake_id)}</a>`;
    }
    if (result.event_id) {
      return ` → calendar event <a href="/calendar?event=${encodeURIComponent(result.event_id)}">${esc(result.event_id)}</a>`;
    }
    return "";
  }

  function actionsSection(d) {
    const rows = d.outbox || [];
    const byKey = Object.fromEntries(rows.map((r) => [r.key, r]));
    if (!d.actions?.length) return section("actions", "7. Actions", "<p>No actions.</p>");
    const items = d.actions.map((a, i) => {
      const r = byKey[a.idempotency_key] || rows.find((x) => x.index === i);
      const state = r ? `<span class="pill outbox-${esc(r.status)}">${esc(r.status)}</span> after ${esc(r.attempts)}
        attempt(s)${r.error ? ` <span class="error">${esc(r.error)}</span>` : ""}${link(r.result)}`
        : `<span class="muted">not in the outbox${AWAITING.includes(d.status) ? " (waiting for approval)" : ""}</span>`;
      const log = r?.attempt_log?.length ? `<ul class="muted">${r.attempt_log.map((x) =>
        `<li>${esc(when(x.attempt_at))}: ${esc(x.outcome)}${x.ms != null ? ` (${fmt(x.ms, 1)} ms)` : ""}
        ${x.error ? esc(x.error) : ""}</li>`).join("")}</ul>` : "";
      return `<li class="action"><strong>${esc(a.type)}</strong>: ${esc(A.action(a))}<br><code>${esc(JSON.stringify(a.params))}</code><br>${state}${log}</li>`;
    });
    return section("actions", "7. Actions", `<ol>${items.join("")}</ol>`);
  }

  function render(d, ev) {
    const t = d.trace || {};
    document.title = `Astralis — ${d.intent} ${d.id}`;
    document.getElementById("title").innerHTML = `${esc(A.label(d.intent))} → ${esc(A.label(d.decision_type))}
      ${A.pill(d.status)} <small class="muted">${esc(d.id)}, ${A.ago(d.created_at)}</small>`;
    document.getElementById("proposal").textContent = `Proposes: ${A.proposal(d)}. ${A.zoneLabel()}.`;
    story.innerHTML = `<p class="card reasoning">${esc(d.reasoning)}</p>` + eventSection(d, ev) + rulesSection(t)
      + resolutionSection(d, t) + llmSection(d, t) + planSection(t) + gateSection(d, t) + actionsSection(d)
      + (t.timings_ms ? `<p class="muted">Timings: ${Object.entries(t.timings_ms).map(([k, v]) =>
        `${esc(k)} ${fmt(v, 1)}`).join(", ")}; total ${fmt(d.execution_ms, 1)} ms.</p>` : "");
    document.getElementById("review").hidden = !AWAITING.includes(d.status);
    const fix = document.getElementById("correct");
    fix.hidden = !["REQUIRES_APPROVAL", "PENDING", "EXECUTED", "REJECTED"].includes(d.status);
    if (!fix.dataset.touched) {
      document.getElementById("fix-intent").innerHTML = A.options(
        A.INTENTS.map((i) => [i, i === d.intent ? `${A.label(i)} (decided)` : A.label(i)]), d.intent);
      document.getElementById("fix-pipeline").innerHTML = A.options(
        (A.org?.pipelines || []).map((p) => [p.id, p.name || p.id]), "", "as routed");
      document.getElementById("fix-assignee").innerHTML = A.options(
        A.users.map((u) => [u.id, u.name || u.id]), "", "as assigned");
    }
    document.body.dataset.loaded = "1";
  }

  async function load() {
    try {
      await A.ready;
      const d = await api(`/api/agent/decisions/${encodeURIComponent(id)}`);
      let ev = null;
      try { ev = await api(`/api/agent/events/${encodeURIComponent(d.event_id)}`); } catch { /* not stored */ }
      render(d, ev);
    } catch (err) {
      errorBox.textContent = err.status === 404 ? `No decision ${id}.` : `Could not load: ${err.message}`;
      errorBox.hidden = false;
    }
  }

  async function review(verdict) {
    const box = document.getElementById("review-error");
    box.hidden = true;
    const body = verdict === "approve" ? {} : { reason: document.getElementById("reason").value.trim() };
    if (verdict === "reject" && !body.reason) {
      box.textContent = "Say why you reject it.";
      box.hidden = false;
      return;
    }
    try {
      await api(`/api/agent/decisions/${encodeURIComponent(id)}/${verdict}`, { method: "POST", body });
    } catch (err) {
      box.textContent = err.status === 409 ? `Already resolved: ${err.message}` : err.message;
      box.hidden = false;
    }
    await load();
  }

  async function correct(e) {
    e.preventDefault();
    const box = document.getElementById("correct-error");
    box.hidden = true;
    const body = { intent: document.getElementById("fix-intent").value };
    const priority = document.getElementById("fix-priority").value;
    if (priority) body.priority = Number(priority);
    for (const k of ["pipeline", "assignee", "note"]) {
      const v = document.getElementById(`fix-${k}`).value.trim();
      if (v) body[k] = v;
    }
    try {
      await api(`/api/agent/decisions/${encodeURIComponent(id)}/correct`, { method: "POST", body });
      delete e.target.dataset.touched; // the form shows the decision as it now is
    } catch (err) {
      box.textContent = `Could not correct: ${err.message}`;
      box.hidden = false;
    }
    await load();
  }

  document.getElementById("correct").addEventListener("input", (e) => { e.currentTarget.dataset.touched = "1"; });
  document.getElementById("correct").addEventListener("submit", correct);
  document.getElementById("approve").addEventListener("click", () => review("approve"));
  document.getElementById("reject").addEventListener("click", () => review("reject"));

  nav();
  load();
  const source = new EventSource("/api/stream"); // a review made elsewhere shows here at once
  source.addEventListener("decision.approved", (m) => { if (JSON.parse(m.data).decision?.id === id) load(); });
  source.addEventListener("decision.rejected", (m) => { if (JSON.parse(m.data).decision?.id === id) load(); });
})();
