// The decision log: filters, a paged table ("older" via next_cursor), live rows from /api/stream.
"use strict";

(() => {
  const { api, esc, nav, when } = Astralis;
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

  function toIso(local) { // datetime-local (the browser's zone) → ISO UTC for the API
    const d = new Date(local);
    return Number.isNaN(d.getTime()) ? local : d.toISOString();
  }

  function query(filters, after) {
    const q = new URLSearchParams({ limit: "50" });
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
    const conf = typeof d.confidence === "number" ? d.confidence.toFixed(2) : "";
    return `<td><a href="/decisions/${encodeURIComponent(d.id)}">${esc(when(d.created_at))}</a></td>
      <td><span class="pill ${esc(d.status)}">${esc(d.status)}</span></td>
      <td>${esc(d.intent)}</td><td>${esc(d.decision_type)}</td><td>${esc(d.input?.source)}</td>
      <td>${esc(d.decided_by)}</td><td>${conf}</td><td><code>${esc(d.input?.type)}</code></td>`;
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
      const page = await api(`/api/agent/decisions?${query(current(), append ? cursor : null)}`);
      if (mine !== generation) return;
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

  function onDecision(msg) {
    let data;
    try { data = JSON.parse(msg.data); } catch { return; }
    const d = data.decision;
    if (!d?.id) return;
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
  fillForm();
  connect(); // first, so nothing decided while the first page loads is missed (rows are de-duplicated)
  load(false);
})();
