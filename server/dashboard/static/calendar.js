// Calendar: one host's week (or every host's), a column per day, the agent's bookings marked and linked to the
// decision that made them. The URL keeps the choice: ?host=u-sam&week=2026-11-23.
"use strict";

(() => {
  Astralis.nav();
  const $ = (sel) => document.querySelector(sel);
  const esc = Astralis.esc;
  const DAY = 24 * 3600e3;
  let users = [];

  function ymd(d) {
    return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
  }

  /** Local midnight of the Monday of the week holding `d`. */
  function monday(d) {
    const m = new Date(d.getFullYear(), d.getMonth(), d.getDate());
    m.setDate(m.getDate() - ((m.getDay() + 6) % 7));
    return m;
  }

  function state() {
    const q = new URLSearchParams(location.search);
    const week = q.get("week");
    const parts = week && week.match(/^(\d{4})-(\d{2})-(\d{2})$/);
    const start = monday(parts ? new Date(+parts[1], +parts[2] - 1, +parts[3]) : new Date());
    return { host: q.get("host") ?? (users[0]?.id || ""), start };
  }

  function go(host, start) {
    const q = new URLSearchParams({ host: host || "", week: ymd(start) });
    history.pushState(null, "", `?${q}`);
    load();
  }

  const time = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const userName = (id) => users.find((u) => u.id === id)?.name || id;

  function eventHtml(e, showHost) {
    const agent = Boolean(e.decision_id);
    const guests = (e.attendees || []).map((a) => a.name || a.email).filter(Boolean).join(", ");
    const title = agent ? `<a href="/decisions/${encodeURIComponent(e.decision_id)}">${esc(e.title)}</a>` : esc(e.title);
    return `<div class="cal-event${agent ? " agent" : ""}" data-event-id="${esc(e.id)}">
      <div class="muted">${esc(time(e.start))}–${esc(time(e.end))}${showHost ? ` · ${esc(userName(e.host))}` : ""}</div>
      <div>${agent ? '<span class="agent-mark" title="Booked by the agent">agent</span> ' : ""}${title}</div>
      ${guests ? `<div class="muted">${esc(guests)}</div>` : ""}</div>`;
  }

  async function load() {
    const { host, start } = state();
    $("#host").value = host;
    const end = new Date(start); end.setDate(end.getDate() + 7);
    const last = new Date(end.getTime() - DAY);
    $("#range").textContent = `${start.toLocaleDateString()} – ${last.toLocaleDateString()}`;
    $("#error").hidden = true;
    const q = new URLSearchParams({ from: start.toISOString(), to: end.toISOString() });
    if (host) q.set("host", host);
    let events;
    try {
      events = (await Astralis.api(`/api/agent/calendar?${q}`)).events;
    } catch (err) {
      $("#error").textContent = `Could not load the calendar: ${err.message}`;
      $("#error").hidden = false;
      return;
    }
    const today = ymd(new Date());
    const days = [];
    for (let i = 0; i < 7; i++) {
      const d = new Date(start); d.setDate(d.getDate() + i);
      const mine = events.filter((e) => ymd(new Date(e.start)) === ymd(d));
      days.push(`<section class="cal-day${ymd(d) === today ? " today" : ""}" data-day="${ymd(d)}">
        <h3>${esc(d.toLocaleDateString(undefined, { weekday: "short", month: "short", day: "numeric" }))}</h3>
        ${mine.map((e) => eventHtml(e, !host)).join("") || '<p class="muted">—</p>'}</section>`);
    }
    $("#week").innerHTML = days.join("");
  }

  async function init() {
    try {
      users = (await Astralis.api("/api/agent/pipelines")).users || [];
    } catch (err) {
      $("#error").textContent = `Could not load the org's users: ${err.message}`;
      $("#error").hidden = false;
    }
    $("#host").insertAdjacentHTML("beforeend", users.map((u) =>
      `<option value="${esc(u.id)}">${esc(u.name)} (${esc(u.id)})</option>`).join(""));
    $("#host").addEventListener("change", () => go($("#host").value, state().start));
    const shift = (days) => { const s = state(); s.start.setDate(s.start.getDate() + days); go(s.host, s.start); };
    $("#prev").addEventListener("click", () => shift(-7));
    $("#next").addEventListener("click", () => shift(7));
    $("#today").addEventListener("click", () => go(state().host, monday(new Date())));
    window.addEventListener("popstate", load);
    await load();
  }

  init();
})();
