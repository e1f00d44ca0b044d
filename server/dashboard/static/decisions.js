// The decision log: filters, a paged table ("older" via next_cursor), live rows from /api/stream.
"use strict";

(() => {
  const A = Astralis;
  const { api, esc, nav } = A;
  const events = new Map(); // event id → {sender, subject, snippet}
  const FILTERS = ["status", "intent", "decision_type", "source", "decided_by", "since", "until"];
  const form = document.getElementById("filters");
  const rows = document.getElementById("rows");
  const older = document.getElementById("older");
  const errorBox = document.getElementById("error");
  const live = document.getElementById("live");
  let cursor = null;
  let generation = 0; // a newer filter load makes older answers stale

  /** The filters in the address bar (the page's state, so a filtered view can be shared and reloaded). */
  function current() {
    const q = new URLSearchParams(location.search);
    const out = {};
    for (const name of FILTERS) if (q.get(name)) out[name] = q.get(name);
    return out;
  }

  function toIso(local) { // datetime-local (a wall clock in the org's zone) → ISO UTC for the API
    return A.fromLocal(local) || local;
  }

  function query(filters, after) {
    const q = new URLSearchParams({ limit: "50", include: "event" });
    for (const [k, v] of Object.entries(filters)) q.set(k, k === "since" || k === "until" ? toIso(v) : v);
    if (after) q.set("cursor", after);
    return q.toString();
  }

  function matches(d, f) {
    if (f.status && !f.status.split(",").includes(d.status)) return false;
    if (f.intent && !f.intent.split(",").includes(d.intent)) return false;
    if (f.decision_type && !f.decision_type.split(",").includes(d.decision_type)) return false;
    if (f.source && !f.source.split(",").includes(d.input?.source)) return false;
    if (f.decided_by && !f.decided_by.split(",").includes(d.decided_by)) return false;
    const t = Date.parse(d.created_at);
    if (f.since && t < Date.parse(toIso(f.since))) return false;
    if (f.until && t >= Date.parse(toIso(f.until))) return false;
    return true;
  }

  function cells(d) {
    const ev = events.get(d.event_id) || {};
    const subject = ev.subject || ev.snippet?.slice(0, 80) || `${A.label(d.input?.source)} ${d.input?.type || ""}`;
    const from = ev.sender ? `<span title="${esc(ev.sender)}">${esc(A.senderName(ev.sender))}</span> · ` : "";
    return `<td class="what"><a href="/decisions/${encodeURIComponent(d.id)}">${esc(subject)}</a>
        <div class="from muted">${from}${esc(A.label(d.input?.source))}</div></td>
      <td>${A.pill(d.status)}</td>
      <td data-label="Decision">${esc(A.label(d.intent))} → ${esc(A.label(d.decision_type))}</td>
      <td data-label="By">${esc(A.label(d.decided_by))}</td>
      <td data-label="Confidence">${esc(A.percent(d.confidence))}</td>
      <td>${A.ago(d.created_at)}</td>`;
  }

  function row(d) {
    const tr = document.createElement("tr");
    tr.dataset.id = d.id;
    tr.dataset.status = d.status;
    tr.innerHTML = cells(d);
    return tr;
  }

  function findRow(id) {
    return rows.querySelector(`tr[data-id="${CSS.escape(id)}"]`);
  }

  function showEmpty() {
    document.getElementById("empty").hidden = rows.children.length > 0;
  }

  async function load(append) {
    const mine = append ? generation : ++generation;
    errorBox.hidden = true;
    try {
      await A.ready;
      const page = await api(`/api/agent/decisions?${query(current(), append ? cursor : null)}`);
      if (mine !== generation) return;
      for (const [k, v] of Object.entries(page.events || {})) events.set(k, v);
      if (!append) rows.replaceChildren();
      const frag = document.createDocumentFragment();
      for (const d of page.decisions) if (!findRow(d.id)) frag.append(row(d));
      rows.append(frag);
      cursor = page.next_cursor;
      older.hidden = !cursor;
      showEmpty();
      document.body.dataset.loaded = "1";
    } catch (err) {
      errorBox.textContent = `Could not load decisions: ${err.message}`;
      errorBox.hidden = false;
    }
  }

  function fillForm() {
    const f = current();
    for (const name of FILTERS) form.elements[name].value = f[name] || "";
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const name of FILTERS) if (form.elements[name].value) q.set(name, form.elements[name].value);
    history.pushState(null, "", q.toString() ? `?${q}` : location.pathname);
    load(false);
  });
  document.getElementById("clear").addEventListener("click", (e) => {
    e.preventDefault();
    history.pushState(null, "", location.pathname);
    fillForm();
    load(false);
  });
  window.addEventListener("popstate", () => { fillForm(); load(false); });
  older.addEventListener("click", () => load(true));

  async function onDecision(msg) {
    let data;
    try { data = JSON.parse(msg.data); } catch { return; }
    const d = data.decision;
    if (!d?.id) return;
    if (!events.has(d.event_id)) { // fetched once; a second message for it waits for the same answer
      events.set(d.event_id, A.eventSummary(d.event_id).then((v) => { events.set(d.event_id, v); return v; }));
    }
    await events.get(d.event_id);
    const existing = findRow(d.id);
    if (existing) {
      existing.innerHTML = cells(d);
      existing.dataset.status = d.status;
      existing.classList.remove("fresh");
      void existing.offsetWidth; // restart the highlight
      existing.classList.add("fresh");
      return;
    }
    if (data.new && matches(d, current())) {
      const tr = row(d);
      tr.classList.add("fresh");
      rows.prepend(tr);
      showEmpty();
    }
  }

  function connect() {
    const source = new EventSource("/api/stream");
    source.addEventListener("ready", () => { live.textContent = "● live"; live.classList.add("on"); });
    for (const kind of ["executed", "awaiting_approval", "failed", "rejected", "approved"]) {
      source.addEventListener(`decision.${kind}`, onDecision);
    }
    source.onerror = () => { live.textContent = "○ reconnecting"; live.classList.remove("on"); };
  }

  nav();
  A.ready.then(() => {
    document.getElementById("zone").textContent = `${A.zoneLabel()}; hover a time for the date.`;
    for (const el of document.querySelectorAll(".zone-label")) el.textContent = `(${A.zoneName()})`;
  });
  fillForm();
  connect(); // first, so nothing decided while the first page loads is missed (rows are de-duplicated)
  load(false);
})();
