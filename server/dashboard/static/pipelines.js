// Pipelines: each pipeline as a board (a column per stage, a card per intake), each person's load against their
// capacity, and with ?intake=ID that intake highlighted and opened with its history and its decision.
"use strict";

(() => {
  Astralis.nav();
  const $ = (sel) => document.querySelector(sel);
  const esc = Astralis.esc;
  const MAX_PAGES = 4; // 4 × 500 newest intakes at most on the boards
  let users = [];

  const userName = (id) => (id ? users.find((u) => u.id === id)?.name || id : "unassigned");

  async function allIntakes() {
    const out = [];
    let cursor = null;
    for (let i = 0; i < MAX_PAGES; i++) {
      const q = new URLSearchParams({ limit: "500" });
      if (cursor) q.set("cursor", cursor);
      const page = await Astralis.api(`/api/agent/intakes?${q}`);
      out.push(...page.intakes);
      cursor = page.next_cursor;
      if (!cursor) break;
    }
    return out;
  }

  function card(i, selected) {
    return `<a class="intake-card${selected ? " selected" : ""}" data-intake-id="${esc(i.id)}"
        href="?intake=${encodeURIComponent(i.id)}">
      <div class="intake-title">${esc(i.title || "(untitled)")}</div>
      <div class="muted"><span class="assignee">${esc(userName(i.assignee))}</span>
        <span class="pill prio-${esc(i.priority)}" title="priority">P${esc(i.priority)}</span></div></a>`;
  }

  function boards(pipelines, intakes, selected) {
    return pipelines.map((pl) => {
      const closed = new Set(pl.closed_stages || []);
      const cols = pl.stages.map((s) => {
        const here = intakes.filter((i) => i.pipeline === pl.id && i.stage === s.id);
        return `<div class="stage${closed.has(s.id) ? " closed" : ""}" data-stage="${esc(s.id)}">
          <h3>${esc(s.id)} <span class="muted">${here.length}</span></h3>
          ${here.map((i) => card(i, i.id === selected)).join("")}</div>`;
      }).join("");
      const team = (pl.team || []).map(userName).join(", ");
      return `<div class="card board" data-pipeline="${esc(pl.id)}">
        <h2>${esc(pl.name || pl.id)} <span class="muted">${esc(team)}</span></h2>
        <div class="stages">${cols}</div></div>`;
    }).join("") || '<p class="muted">This org defines no pipelines.</p>';
  }

  function loads() {
    const max = Math.max(1, ...users.map((u) => Math.max(u.capacity || 0, u.open || 0)));
    const width = 360, left = 170, row = 24;
    const h = users.length * row + 6;
    const bars = users.map((u, i) => {
      const y = 4 + i * row;
      const cap = Math.round(((u.capacity || 0) / max) * width);
      const used = Math.round(((u.open || 0) / max) * width);
      const over = u.capacity && u.open > u.capacity;
      return `<text x="${left - 6}" y="${y + 14}" text-anchor="end">${esc(u.name)}</text>
        <rect x="${left}" y="${y}" width="${Math.max(1, cap)}" height="${row - 8}" fill="#eef1f6" stroke="#c5ccd6"/>
        <rect class="bar" x="${left}" y="${y}" width="${used}" height="${row - 8}" fill="${over ? "#b3261e" : "#2f5fd0"}">
          <title>${esc(u.name)}: ${u.open} open of ${u.capacity}</title></rect>
        <text x="${left + Math.max(cap, used) + 6}" y="${y + 14}">${u.open} / ${u.capacity}</text>`;
    }).join("");
    return `<svg xmlns="http://www.w3.org/2000/svg" role="img" width="${left + width + 80}" height="${h}"
      viewBox="0 0 ${left + width + 80} ${h}"><title>Assignee loads</title>${bars}</svg>`;
  }

  function detail(i) {
    const history = (i.history || []).map((h) => `<tr><td>${esc(Astralis.when(h.at))}</td><td>${esc(h.what)}</td>
      <td>${esc(h.stage)}</td><td>${esc(userName(h.assignee))}</td><td>${esc(h.by)}</td><td>${esc(h.note)}</td></tr>`);
    const contact = i.contact ? Object.entries(i.contact).filter(([, v]) => v)
      .map(([k, v]) => `${esc(k)}: ${esc(v)}`).join(" · ") : "";
    return `<h2>${esc(i.title || i.id)} <span class="pill">${esc(i.stage)}</span>${i.closed ? ' <span class="pill">closed</span>' : ""}</h2>
      <p>Pipeline <b>${esc(i.pipeline)}</b> · assignee <b>${esc(userName(i.assignee))}</b> · priority <b>P${esc(i.priority)}</b>
        ${contact ? ` · ${contact}` : ""}</p>
      <p>${i.decision_id ? `Created by decision <a class="decision-link" href="/decisions/${encodeURIComponent(i.decision_id)}">${esc(i.decision_id)}</a>`
        : "No decision recorded."} <a href="/pipelines" class="muted">close</a></p>
      <table><thead><tr><th>When</th><th>What</th><th>Stage</th><th>Assignee</th><th>By</th><th>Note</th></tr></thead>
      <tbody>${history.join("") || '<tr><td colspan="6" class="muted">No history.</td></tr>'}</tbody></table>`;
  }

  async function load() {
    const selected = new URLSearchParams(location.search).get("intake");
    $("#error").hidden = true;
    try {
      const [board, intakes, one] = await Promise.all([
        Astralis.api("/api/agent/pipelines"), allIntakes(),
        selected ? Astralis.api(`/api/agent/intakes/${encodeURIComponent(selected)}`)
          .catch((err) => { if (err.status === 404) return null; throw err; }) : null]);
      users = board.users || [];
      $("#boards").innerHTML = boards(board.pipelines || [], intakes, selected);
      $("#loads").innerHTML = loads();
      $("#detail").hidden = !one;
      $("#detail").innerHTML = one ? detail(one) : "";
      if (selected && !one) {
        $("#error").textContent = `No intake ${selected}.`;
        $("#error").hidden = false;
      }
      if (one) document.querySelector(`[data-intake-id="${CSS.escape(one.id)}"]`)?.scrollIntoView({ block: "center" });
    } catch (err) {
      $("#error").textContent = `Could not load the pipelines: ${err.message}`;
      $("#error").hidden = false;
    }
  }

  document.addEventListener("click", (e) => {
    const a = e.target.closest("a.intake-card, #detail a[href='/pipelines']");
    if (!a || e.metaKey || e.ctrlKey) return;
    e.preventDefault();
    history.pushState(null, "", a.getAttribute("href"));
    load();
  });
  window.addEventListener("popstate", load);
  load();
})();
