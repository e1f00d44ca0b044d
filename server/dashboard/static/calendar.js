// Calendar: the week of the hosts who take bookings, a column per day, in the org's time zone (labelled). It opens
// on the week of the next bookings; the agent's bookings are marked and linked to the decision that made them, and
// their titles (the sender's text) are shown as the sender's words. The URL keeps the choice:
// ?host=u-sam&week=2026-11-23 (host "" = every host who takes bookings, "*" = everyone).
"use strict";

(() => {
  const A = Astralis;
  A.nav();
  const $ = (sel) => document.querySelector(sel);
  const esc = A.esc;
  const LOOK_AHEAD_DAYS = 180;
  let users = [];

  // calendar dates as "YYYY-MM-DD", counted in UTC so that no zone shifts them
  const toDate = (ymd) => new Date(`${ymd}T00:00:00Z`);
  const fromDate = (d) => d.toISOString().slice(0, 10);
  const addDays = (ymd, n) => { const d = toDate(ymd); d.setUTCDate(d.getUTCDate() + n); return fromDate(d); };
  const mondayOf = (ymd) => addDays(ymd, -((toDate(ymd).getUTCDay() + 6) % 7));
  const today = () => A.ymd(new Date());
  const bookers = () => users.filter((u) => u.takes_bookings).map((u) => u.id);

  function state() {
    const q = new URLSearchParams(location.search);
    const week = q.get("week");
    return { host: q.get("host") ?? "", week: week && /^\d{4}-\d{2}-\d{2}$/.test(week) ? mondayOf(week) : null };
  }

  function go(host, week) {
    history.pushState(null, "", `?${new URLSearchParams({ host: host || "", week })}`);
    load();
  }

  /** The hosts a choice stands for: one user, every host who takes bookings (""), or everyone ("*"). */
  function hostsOf(host) {
    if (host === "*") return null;
    return host ? [host] : bookers();
  }

  async function fetchEvents(host, from, to) {
    const q = new URLSearchParams({ from, to });
    if (host && host !== "*") q.set("host", host);
    const hosts = hostsOf(host);
    const events = (await A.api(`/api/agent/calendar?${q}`)).events;
    return hosts === null ? events : events.filter((e) => hosts.includes(e.host));
  }

  /** The Monday of the week holding the next bookings of these hosts (from now), or of this week. */
  async function nextBookingsWeek(host) {
    const now = new Date();
    const until = new Date(now.getTime() + LOOK_AHEAD_DAYS * 86400e3);
    const upcoming = await fetchEvents(host, now.toISOString(), until.toISOString());
    return mondayOf(upcoming.length ? A.ymd(upcoming[0].start) : today());
  }

  /** The sender's words: quoted, whitespace folded, attributed to the guest; never markup. */
  function theirWords(e) {
    const words = String(e.title || "").replace(/\s+/g, " ").trim();
    const clipped = words.length > 140 ? `${words.slice(0, 139)}…` : words;
    const guest = (e.attendees || []).map((a) => a.name || a.email).filter(Boolean)[0];
    return { quote: `<q class="their-words" title="${esc(words)}">${esc(clipped)}</q>`,
             by: guest ? ` <span class="muted">— ${esc(guest)}</span>` : "" };
  }

  function eventHtml(e, showHost) {
    const agent = Boolean(e.decision_id);
    const guests = (e.attendees || []).map((a) => a.name || a.email).filter(Boolean).join(", ");
    const words = theirWords(e);
    const title = agent ? `<a href="/decisions/${encodeURIComponent(e.decision_id)}">${words.quote}</a>${words.by}` : esc(e.title);
    return `<div class="cal-event${agent ? " agent" : ""}" data-event-id="${esc(e.id)}">
      <div class="muted"><time datetime="${esc(e.start)}" title="${esc(A.when(e.start))}">${esc(A.clock(e.start))}–${esc(A.clock(e.end))}</time>${showHost ? ` · ${esc(A.userName(e.host))}` : ""}</div>
      <div>${agent ? '<span class="agent-mark" title="Booked by the agent">agent</span> ' : ""}${title}</div>
      ${guests && !agent ? `<div class="muted">${esc(guests)}</div>` : ""}</div>`;
  }

  async function load() {
    const s = state();
    $("#host").value = s.host;
    $("#error").hidden = true;
    let events;
    let week = s.week;
    try {
      if (!week) {
        week = await nextBookingsWeek(s.host);
        history.replaceState(null, "", `?${new URLSearchParams({ host: s.host, week })}`);
      }
      const end = addDays(week, 7);
      $("#range").textContent = `${A.day(`${week}T12:00:00Z`)} – ${A.day(`${addDays(week, 6)}T12:00:00Z`)} ${week.slice(0, 4)}`;
      events = await fetchEvents(s.host, A.fromLocal(`${week}T00:00`), A.fromLocal(`${end}T00:00`));
    } catch (err) {
      $("#error").textContent = `Could not load the calendar: ${err.message}`;
      $("#error").hidden = false;
      return;
    }
    const now = today();
    const days = [];
    const oneHost = Boolean(s.host) && s.host !== "*";
    for (let i = 0; i < 7; i++) {
      const d = addDays(week, i);
      const mine = events.filter((e) => A.ymd(e.start) === d);
      days.push(`<section class="cal-day${d === now ? " today" : ""}${mine.length ? "" : " empty"}" data-day="${d}">
        <h3>${esc(A.day(`${d}T12:00:00Z`))}</h3>
        ${mine.map((e) => eventHtml(e, !oneHost)).join("") || '<p class="muted">—</p>'}</section>`);
    }
    $("#week").innerHTML = days.join("");
    $("#summary").textContent = events.length ? `${events.length} booking${events.length === 1 ? "" : "s"} this week.`
      : "No bookings this week.";
    document.body.dataset.loaded = "1";
  }

  async function init() {
    await A.ready;
    users = A.users;
    $("#zone").textContent = A.zoneLabel();
    const names = bookers().map(A.userName).join(", ");
    $("#host").innerHTML = `<option value="">Hosts who take bookings${names ? ` (${esc(names)})` : ""}</option>
      <option value="*">Everyone</option>` + users.map((u) =>
      `<option value="${esc(u.id)}">${esc(u.name)}${u.takes_bookings ? "" : " (no bookings)"}</option>`).join("");
    $("#host").addEventListener("change", () => go($("#host").value, state().week || mondayOf(today())));
    const shift = (n) => { const s = state(); go(s.host, addDays(s.week || mondayOf(today()), n)); };
    $("#prev").addEventListener("click", () => shift(-7));
    $("#next").addEventListener("click", () => shift(7));
    $("#today").addEventListener("click", () => go(state().host, mondayOf(today())));
    $("#upcoming").addEventListener("click", async () => go(state().host, await nextBookingsWeek(state().host)));
    window.addEventListener("popstate", load);
    await load();
  }

  init();
})();
