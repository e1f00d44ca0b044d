// Shared by every dashboard page: the API call, escaping, the navigation bar, and the words and times every page
// shows the same way (human labels for enums; times in the org's zone, labelled). No framework, no download.
"use strict";

const Astralis = (() => {
  const HEADERS = { "X-Astralis-Dashboard": "1" };

  /** Call the JSON API with the session cookie; throws an Error with the API's message on a non-2xx answer. */
  async function api(path, { method = "GET", body } = {}) {
    const opts = { method, credentials: "same-origin", headers: { ...HEADERS } };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(path, opts);
    if (r.status === 401) { location.href = "/login"; throw new Error("signed out"); }
    const data = r.headers.get("Content-Type")?.includes("json") ? await r.json() : await r.text();
    if (!r.ok) {
      const err = new Error(data?.error?.message || `HTTP ${r.status}`);
      err.status = r.status; err.details = data?.error?.details;
      throw err;
    }
    return data;
  }

  /** Text made safe to put into HTML. */
  function esc(value) {
    return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }

  const PAGES = [["/decisions", "Decisions"], ["/approvals", "Approvals"], ["/analytics", "Analytics"],
                 ["/rules", "Rules"], ["/calendar", "Calendar"], ["/pipelines", "Pipelines"]];

  /** The navigation bar, with the current page marked and a sign-out button. */
  function nav() {
    const here = location.pathname === "/" ? "/decisions" : location.pathname;
    const links = PAGES.map(([href, label]) =>
      `<a href="${href}" class="${here.startsWith(href) ? "active" : ""}">${label}</a>`).join("");
    const header = document.createElement("header");
    header.className = "nav";
    header.innerHTML = `<span class="brand">Astralis</span><nav>${links}</nav>
      <form class="who" method="post" action="/logout"><button type="submit">Sign out</button></form>`;
    document.body.prepend(header);
  }

  // ---- words ------------------------------------------------------------------------------------------------

  const LABELS = {
    SALES_INQUIRY: "Sales inquiry", SUPPORT_REQUEST: "Support request", BILLING_QUESTION: "Billing question",
    PARTNERSHIP: "Partnership", PROJECT: "Project", SCHEDULING: "Scheduling", SPAM: "Spam", OTHER: "Other",
    ASSIGN_PIPELINE: "Assign to a pipeline", CREATE_EVENT: "Book a meeting", UPDATE_EVENT: "Move a meeting",
    CANCEL_EVENT: "Cancel a meeting", SEND_NOTIFICATION: "Notify", TRIGGER_AUTOMATION: "Run an automation",
    ESCALATE: "Escalate to a person", NO_ACTION: "No action",
    PENDING: "Running", EXECUTED: "Done", FAILED: "Failed", REJECTED: "Rejected", REQUIRES_APPROVAL: "Needs approval",
    EMAIL: "Email", WEBHOOK: "Web form", DB_TRIGGER: "Database", WORKER: "Worker", API: "API", SCHEDULE: "Schedule",
    rules: "Rules", model: "Learned model", llm: "LLM", fallback: "Fallback",
  };

  /** Every intent (DESIGN §5), in the order a person picks from. */
  const INTENTS = ["SALES_INQUIRY", "SUPPORT_REQUEST", "BILLING_QUESTION", "PARTNERSHIP", "PROJECT", "SCHEDULING",
                   "SPAM", "OTHER"];

  /** The human label of an enum value (intent, decision type, status, source, decided by). */
  function label(value) {
    return LABELS[value] ?? String(value ?? "").toLowerCase().replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
  }

  /** A status as a coloured pill with its human label (the raw value stays in the class and the title). */
  function pill(status) {
    return `<span class="pill ${esc(status)}" title="${esc(status)}">${esc(label(status))}</span>`;
  }

  /** The display name of a sender "Maya <maya@x.com>" → "Maya"; a bare address stays as it is. */
  function senderName(sender) {
    const m = /^\s*"?([^"<]*?)"?\s*<([^>]+)>\s*$/.exec(sender || "");
    return m ? (m[1] || m[2]) : (sender || "");
  }

  // ---- the org and its time zone ---------------------------------------------------------------------------

  let org = null;
  let zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  const users = new Map();
  const pipelines = new Map();

  /** Load the org's profile once (name, time zone, users, pipelines); pages await it before they render. */
  const ready = api("/api/agent/org").then((o) => {
    org = o;
    zone = o.timezone || zone;
    for (const u of o.users || []) users.set(u.id, u);
    for (const p of o.pipelines || []) pipelines.set(p.id, p);
    return o;
  }).catch(() => null); // no loaded config: times stay in the browser's zone, still labelled

  const userName = (id) => users.get(id)?.name || id;
  const pipelineName = (id) => pipelines.get(id)?.name || id;

  function parts(iso, opts) {
    const d = iso instanceof Date ? iso : new Date(iso);
    if (Number.isNaN(d.getTime())) return null;
    const out = {};
    for (const p of new Intl.DateTimeFormat("en-GB", { timeZone: zone, hourCycle: "h23", ...opts }).formatToParts(d)) {
      out[p.type] = p.value;
    }
    return out;
  }

  /** The zone's short name at a moment ("EST", "EDT", "GMT+1"). */
  function zoneName(iso = new Date()) {
    const d = iso instanceof Date ? iso : new Date(iso);
    const p = new Intl.DateTimeFormat("en-US", { timeZone: zone, timeZoneName: "short" }).formatToParts(d);
    return p.find((x) => x.type === "timeZoneName")?.value || zone;
  }

  /** One format everywhere: "Tue 8 Dec 2026, 09:00 EST" (the org's zone, labelled). */
  function when(iso) {
    if (!iso) return "";
    const p = parts(iso, { weekday: "short", day: "numeric", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit" });
    return p ? `${p.weekday} ${p.day} ${p.month} ${p.year}, ${p.hour}:${p.minute} ${zoneName(iso)}` : String(iso);
  }

  /** "09:00" in the org's zone. */
  function clock(iso) {
    const p = parts(iso, { hour: "2-digit", minute: "2-digit" });
    return p ? `${p.hour}:${p.minute}` : "";
  }

  /** "Tue 8 Dec" in the org's zone. */
  function day(iso) {
    const p = parts(iso, { weekday: "short", day: "numeric", month: "short" });
    return p ? `${p.weekday} ${p.day} ${p.month}` : "";
  }

  /** "2026-12-08": the date in the org's zone. */
  function ymd(iso) {
    const p = parts(iso, { year: "numeric", month: "2-digit", day: "2-digit" });
    return p ? `${p.year}-${p.month}-${p.day}` : "";
  }

  /** A meeting's span: "Tue 8 Dec, 09:00–09:30 EST". */
  function span(start, end) {
    return `${day(start)}, ${clock(start)}${end ? `–${clock(end)}` : ""} ${zoneName(start)}`;
  }

  const RELATIVE = new Intl.RelativeTimeFormat("en", { numeric: "auto" });

  /** "5 minutes ago", "in 3 days", "just now". */
  function relative(iso, now = Date.now()) {
    const s = (new Date(iso).getTime() - now) / 1000;
    if (Number.isNaN(s)) return "";
    const a = Math.abs(s);
    if (a < 45) return "just now";
    for (const [unit, size] of [["minute", 60], ["hour", 3600], ["day", 86400], ["week", 604800], ["month", 2629800], ["year", 31557600]]) {
      const next = { minute: 3600, hour: 86400, day: 604800, week: 2629800, month: 31557600 }[unit];
      if (!next || a < next) return RELATIVE.format(Math.round(s / size), unit);
    }
    return when(iso);
  }

  /** A relative time with the absolute one (org's zone, labelled) on hover: the markup every page uses. */
  function ago(iso) {
    if (!iso) return "";
    return `<time datetime="${esc(iso)}" title="${esc(when(iso))}">${esc(relative(iso))}</time>`;
  }

  /** The label of the zone the page shows times in: "Times in America/New_York (EST)". */
  function zoneLabel() {
    return `Times in ${zone} (${zoneName()})`;
  }

  /** Minutes the org's zone is ahead of UTC at `ms`. */
  function offsetAt(ms) {
    const p = parts(new Date(ms), { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" });
    return (Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour % 24, +p.minute, +p.second) - Math.floor(ms / 1000) * 1000) / 60000;
  }

  /** A wall-clock "2026-12-08T09:00" (a datetime-local input) read in the org's zone → ISO UTC; "" if not a time. */
  function fromLocal(value) {
    const m = /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2}))?/.exec(value || "");
    if (!m) return "";
    const wall = Date.UTC(+m[1], +m[2] - 1, +m[3], +(m[4] || 0), +(m[5] || 0));
    let t = wall - offsetAt(wall) * 60000;
    t = wall - offsetAt(t) * 60000; // once more: right across a DST change
    return new Date(t).toISOString();
  }

  /** An event as a person reads it (sender, subject, first lines) from its stored envelope, for a decision that
   * arrived on the live stream (list pages get it from `include=event`). */
  async function eventSummary(eventId) {
    try {
      const ev = await api(`/api/agent/events/${encodeURIComponent(eventId)}`);
      const data = ev.envelope?.data || {};
      const text = String(data.text ?? data.message ?? data.description ?? data.body ?? "");
      const fresh = text.split(/\n\s*(?:>|On [^\n]* wrote:|-----Original Message)/)[0];
      const sender = typeof data.from === "string" ? data.from
        : data.name && data.email ? `${data.name} <${data.email}>` : String(data.email || data.name || "");
      return { sender, subject: String(data.subject || data.title || data.purpose || ""),
               snippet: fresh.replace(/\s+/g, " ").trim().slice(0, 240) };
    } catch {
      return {};
    }
  }

  // relative times stay true while a page is open
  setInterval(() => {
    for (const t of document.querySelectorAll("time[datetime]:not([data-absolute])")) {
      t.textContent = relative(t.getAttribute("datetime"));
    }
  }, 60_000);

  // a phone has no hover: a tap on a relative time shows the absolute one (and back)
  document.addEventListener("click", (e) => {
    const t = e.target.closest?.("time[datetime][title]");
    if (!t || t.closest("a")) return;
    const absolute = t.toggleAttribute("data-absolute");
    t.textContent = absolute ? t.title : relative(t.getAttribute("datetime"));
  });

  // ---- what a decision proposes, in words --------------------------------------------------------------------

  /** One action in words: "assign to General intake (new), Ana Ruiz", "book Sam Carter Tue 15 Dec, 10:00–10:30 EST". */
  function action(a) {
    const p = a.params || {};
    const names = (ids) => (Array.isArray(ids) ? ids : [ids]).filter(Boolean).map(userName).join(", ");
    switch (a.type) {
      case "ASSIGN_PIPELINE":
        return `assign to ${pipelineName(p.pipeline)}${p.stage ? ` (${p.stage})` : ""}${p.assignee ? `, ${userName(p.assignee)}` : ""}`;
      case "CREATE_EVENT":
        return `book ${p.host ? userName(p.host) : "a host"}${p.start ? ` ${span(p.start, p.end)}` : ""}`;
      case "UPDATE_EVENT":
        return `move the meeting${p.start ? ` to ${span(p.start, p.end)}` : ""}`;
      case "CANCEL_EVENT":
        return "cancel the meeting";
      case "SEND_NOTIFICATION":
        return `notify ${names(p.to) || p.role || "the team"}`;
      case "TRIGGER_AUTOMATION":
        return `run automation ${p.workflow || p.name || p.path || ""}`.trim();
      case "ESCALATE":
        return `hand to ${names(p.to) || p.role || "a person"}`;
      case "NO_ACTION":
        return "nothing to do";
      default:
        return label(a.type).toLowerCase();
    }
  }

  /** What a decision proposes: "Billing question → assign to General intake (new), Ana Ruiz; notify Ana Ruiz". */
  function proposal(d) {
    const acts = (d.actions || []).map(action);
    return `${label(d.intent)} → ${acts.length ? acts.join("; ") : "no action"}`;
  }

  const NOISE = [/^LLM (unavailable|failed|down|not)/i, /^Confidence \d/i, /^(Route|Routed) to /i, /^\S+ has the lightest/i,
                 /needs no action\.?$/i];

  /** Why, in one line: the first sentence of the reasoning that is not machinery, with names instead of enums. */
  function why(d) {
    const sentences = String(d.reasoning || "").replace(/\s+/g, " ").split(/(?<=[.!?])\s+(?=[A-Z])/);
    const keep = sentences.filter((s) => s && !NOISE.some((re) => re.test(s)));
    let s = (keep[0] || sentences[0] || "").replace(/\s*\([^()]*(\([^()]*\))?[^()]*\)/g, "");
    s = s.replace(/\b[A-Z][A-Z_]{2,}\b/g, (w) => (LABELS[w] ? LABELS[w].toLowerCase() : w));
    if (d.decided_by === "fallback" && /LLM/.test(d.reasoning || "")) s += " The LLM was not available.";
    return s.trim();
  }

  /** `<option>`s for a select: `[value, text]` pairs, `selected` marked; `blank` (text) adds an empty first one. */
  function options(pairs, selected = "", blank = null) {
    const all = blank === null ? pairs : [["", blank], ...pairs];
    return all.map(([v, t]) => `<option value="${esc(v)}"${v === selected ? " selected" : ""}>${esc(t)}</option>`).join("");
  }

  /** A confidence as a percentage. */
  function percent(c) {
    return typeof c === "number" ? `${Math.round(c * 100)}%` : "";
  }

  return { api, esc, nav, when, clock, day, ymd, span, relative, ago, zoneLabel, zoneName, label, pill, senderName,
           ready, userName, INTENTS, options, fromLocal, offsetAt, eventSummary, pipelineName, proposal, action, why, percent, get zone() { return zone; },
           get org() { return org; }, get users() { return [...users.values()]; } };
})();
