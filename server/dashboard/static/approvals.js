// The approvals inbox: decisions awaiting a person, oldest first, each readable and decidable from the list (who,
// what, what the agent proposes, why, confidence): approve, reject with a reason, or correct (what it should have
// been: approved with the change, and a label the org model learns from); keyboard shortcuts for a long queue;
// verdicts arrive live.
"use strict";

(() => {
  const A = Astralis;
  const { api, esc, nav } = A;
  const AWAITING = ["REQUIRES_APPROVAL", "PENDING"];
  const MAX_PAGES = 21; // 50 + 20 × 500: more than anyone reviews by hand
  const rows = document.getElementById("rows");
  const errorBox = document.getElementById("error");
  const resolved = document.getElementById("resolved");
  const live = document.getElementById("live");
  const events = new Map(); // event id → {sender, subject, snippet}
  let more = true; // older pages still loading: the count is a lower bound

  const findRow = (id) => rows.querySelector(`[data-id="${CSS.escape(id)}"]`);
  const open = () => [...rows.querySelectorAll(".item:not(.done)")];

  function count() {
    const n = open().length;
    document.getElementById("count").textContent = `${n}${more ? "+" : ""}`;
    document.getElementById("empty").hidden = n > 0;
  }

  function item(d) {
    const ev = events.get(d.event_id) || {};
    const el = document.createElement("article");
    el.className = "item card";
    el.setAttribute("role", "listitem");
    el.tabIndex = 0;
    el.dataset.id = d.id;
    el.dataset.created = d.created_at;
    el.dataset.status = d.status;
    const who = ev.sender ? `<span class="who" title="${esc(ev.sender)}">${esc(A.senderName(ev.sender))}</span>`
      : `<span class="who muted">${esc(A.label(d.input?.source))}</span>`;
    const subject = ev.subject || ev.snippet?.slice(0, 80) || A.label(d.input?.type?.replace(":", "_").toUpperCase());
    const snippet = ev.subject ? ev.snippet : "";
    el.innerHTML = `<div class="meta">${who}<span class="muted">·</span> ${A.ago(d.created_at)}
        ${d.status !== "REQUIRES_APPROVAL" ? A.pill(d.status) : ""}
        <span class="conf" title="confidence ${esc(d.confidence)}">${esc(A.percent(d.confidence))} sure</span></div>
      <a class="subject" href="/decisions/${encodeURIComponent(d.id)}">${esc(subject)}</a>
      ${snippet ? `<p class="snippet">${esc(snippet)}</p>` : ""}
      <p class="proposal"><span class="muted">Proposes:</span> ${esc(A.proposal(d))}</p>
      <p class="why"><span class="muted">Why:</span> ${esc(A.why(d))}</p>
      <div class="verdict">
        <button class="primary approve" type="button" title="approve (a)">Approve</button>
        <button class="danger reject" type="button" title="reject (r)">Reject…</button>
        <button class="correct" type="button" title="correct (c): say what it should have been">Correct…</button>
        <form class="reject-form" hidden>
          <input class="reason" name="reason" list="reasons" placeholder="Why reject? (required)"
            aria-label="reason for rejecting" autocomplete="off">
          <button class="danger confirm-reject" type="submit">Reject</button>
          <button class="cancel" type="button">Cancel</button>
        </form>
        <form class="correct-form" hidden>
          <label>Intent <select class="fix-intent" name="intent">${A.options(
            A.INTENTS.map((i) => [i, i === d.intent ? `${A.label(i)} (proposed)` : A.label(i)]), d.intent)}</select></label>
          <label>Pipeline <select class="fix-pipeline" name="pipeline">${A.options(
            (A.org?.pipelines || []).map((p) => [p.id, p.name || p.id]), "", "as routed")}</select></label>
          <label>Assignee <select class="fix-assignee" name="assignee">${A.options(
            A.users.map((u) => [u.id, u.name || u.id]), "", "as assigned")}</select></label>
          <input class="fix-note" name="note" maxlength="2000" placeholder="Note (optional)" aria-label="note on the correction"
            autocomplete="off">
          <button class="primary confirm-correct" type="submit">Correct</button>
          <button class="cancel" type="button">Cancel</button>
        </form>
        <div class="error" role="alert" hidden></div>
      </div>`;
    el.dataset.intent = d.intent;
    el.querySelector(".approve").addEventListener("click", () => review(el, "approve"));
    el.querySelector(".reject").addEventListener("click", () => openForm(el, "reject"));
    el.querySelector(".correct").addEventListener("click", () => openForm(el, "correct"));
    for (const b of el.querySelectorAll(".cancel")) b.addEventListener("click", () => closeForms(el));
    el.querySelector(".reject-form").addEventListener("submit", (e) => { e.preventDefault(); review(el, "reject"); });
    el.querySelector(".correct-form").addEventListener("submit", (e) => { e.preventDefault(); review(el, "correct"); });
    const box = el.querySelector(".verdict .error");
    for (const f of el.querySelectorAll("form")) f.addEventListener("input", () => { box.hidden = true; }); // said; now changed
    el.addEventListener("focus", () => select(el, false));
    return el;
  }

  /** Open the reject form (asks the reason) or the correct form (asks what it should have been) of an item. */
  function openForm(el, kind) {
    select(el, false);
    for (const k of ["reject", "correct"]) {
      el.querySelector(`.${k}-form`).hidden = k !== kind;
      el.querySelector(`button.${k}`).hidden = k === kind;
    }
    el.querySelector(".verdict .error").hidden = true;
    el.querySelector(kind === "reject" ? ".reason" : ".fix-intent").focus();
  }

  function closeForms(el) {
    for (const k of ["reject", "correct"]) {
      el.querySelector(`.${k}-form`).hidden = true;
      el.querySelector(`button.${k}`).hidden = false;
    }
    el.querySelector(".verdict .error").hidden = true;
    el.focus();
  }

  /** Mark `el` as the current item (keyboard target). */
  function select(el, focus = true) {
    for (const x of rows.querySelectorAll(".item.current")) if (x !== el) x.classList.remove("current");
    if (!el) return;
    el.classList.add("current");
    if (focus) { el.focus({ preventScroll: true }); el.scrollIntoView({ block: "nearest" }); }
  }

  const current = () => rows.querySelector(".item.current:not(.done)");

  /** Put an item in created order (oldest first): new decisions go to the end, normally. */
  function insert(el) {
    const later = [...rows.children].find((r) => r.dataset.created > el.dataset.created);
    rows.insertBefore(el, later || null);
  }

  function settle(d) {
    const el = findRow(d.id);
    if (resolved.querySelector(`li[data-id="${CSS.escape(d.id)}"]`)) return; // the answer and the stream both tell
    const rv = d.trace?.review || {};
    const li = document.createElement("li");
    li.dataset.id = d.id;
    const ev = events.get(d.event_id);
    const from = rv.corrected?.from?.intent;
    const verb = rv.verdict !== "approve" ? "rejected"
      : from ? `corrected (${A.label(from)} → ${A.label(d.intent)}) and approved` : "approved";
    li.innerHTML = `<a href="/decisions/${encodeURIComponent(d.id)}">${esc(ev?.subject || A.label(d.intent))}</a>
      <span class="muted">(${esc(d.id)})</span>: ${A.pill(d.status)}
      ${rv.by ? `${esc(verb)} by ${esc(rv.by)}` : ""}
      ${rv.note ? `— “${esc(rv.note)}”` : ""}`;
    resolved.prepend(li);
    if (!el || el.classList.contains("done")) return;
    const wasCurrent = el.classList.contains("current");
    el.classList.add("done");
    el.dataset.status = d.status;
    el.querySelector(".verdict").innerHTML = A.pill(d.status);
    if (wasCurrent) {
      const next = open().find((x) => x.dataset.created >= el.dataset.created) || open().pop();
      select(next || null, document.activeElement === el || el.contains(document.activeElement));
    }
    count();
    setTimeout(() => { el.remove(); count(); }, 1500);
  }

  async function review(el, verdict) {
    const box = el.querySelector(".verdict .error");
    box.hidden = true;
    const body = {};
    if (verdict === "correct") {
      body.intent = el.querySelector(".fix-intent").value;
      for (const k of ["pipeline", "assignee", "note"]) {
        const v = el.querySelector(`.fix-${k}`).value.trim();
        if (v) body[k] = v;
      }
      if (body.intent === el.dataset.intent && !body.pipeline && !body.assignee) {
        box.textContent = "Nothing changed: choose another intent, pipeline or assignee (or Approve as proposed).";
        box.hidden = false;
        el.querySelector(".fix-intent").focus();
        return;
      }
    } else if (verdict === "reject") {
      body.reason = el.querySelector(".reason").value.trim();
      if (!body.reason) {
        box.textContent = "Say why: the reason is kept with the decision.";
        box.hidden = false;
        el.querySelector(".reason").focus();
        return;
      }
    }
    for (const b of el.querySelectorAll("button")) b.disabled = true;
    try {
      const d = await api(`/api/agent/decisions/${encodeURIComponent(el.dataset.id)}/${verdict}`, { method: "POST", body });
      if (!findRow(d.id)?.classList.contains("done")) settle(d); // the stream may have said so already
    } catch (err) {
      box.textContent = err.status === 409 ? `Already resolved: ${A.label(err.details?.status ?? "")}`
        : `Could not ${verdict}: ${err.message}`;
      box.hidden = false;
      for (const b of el.querySelectorAll("button")) b.disabled = false;
    }
  }

  /** The oldest page first (shown at once), then the rest in the background, appended in order. */
  async function load() {
    try {
      await A.ready;
      document.getElementById("zone").textContent = `${A.zoneLabel()}.`;
      let cursor = null;
      for (let i = 0; i < MAX_PAGES; i++) {
        const q = new URLSearchParams({ status: AWAITING.join(","), limit: i === 0 ? "50" : "500", include: "event",
                                        order: "oldest" });
        if (cursor) q.set("cursor", cursor);
        const page = await api(`/api/agent/decisions?${q}`);
        for (const [k, v] of Object.entries(page.events || {})) events.set(k, v);
        const frag = document.createDocumentFragment();
        for (const d of page.decisions) if (!findRow(d.id)) frag.append(item(d));
        rows.append(frag);
        cursor = page.next_cursor;
        more = Boolean(cursor);
        count();
        document.body.dataset.loaded = "1";
        if (!cursor) break;
      }
      document.body.dataset.complete = "1";
    } catch (err) {
      more = false;
      errorBox.textContent = `Could not load: ${err.message}`;
      errorBox.hidden = false;
    }
  }

  async function onDecision(msg) {
    let data;
    try { data = JSON.parse(msg.data); } catch { return; }
    const d = data.decision;
    if (!d?.id) return;
    await A.ready; // the org's pipelines and users fill an item's correct form
    if (AWAITING.includes(d.status)) {
      if (findRow(d.id)) return;
      if (!events.has(d.event_id)) { // fetched once; a second message for it waits for the same answer
        events.set(d.event_id, A.eventSummary(d.event_id).then((v) => { events.set(d.event_id, v); return v; }));
      }
      await events.get(d.event_id);
      if (findRow(d.id)) return;
      const el = item(d);
      el.classList.add("fresh");
      insert(el);
      count();
    } else if (!data.new) {
      settle(d);
    }
  }

  // keyboard: j/k move, a approve, r reject, c correct, o open, Esc cancel; ignored while filling in a form
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const typing = e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement
      || e.target instanceof HTMLSelectElement;
    const el = current() || (e.target.closest?.(".item:not(.done)") ?? null);
    if (e.key === "Escape" && el) { closeForms(el); return; }
    if (typing) return;
    const list = open();
    const i = el ? list.indexOf(el) : -1;
    if (e.key === "j" || e.key === "ArrowDown") { select(list[Math.min(i + 1, list.length - 1)]); e.preventDefault(); }
    else if (e.key === "k" || e.key === "ArrowUp") { select(list[Math.max(i - 1, 0)]); e.preventDefault(); }
    else if (!el) return;
    else if (e.key === "a") { review(el, "approve"); e.preventDefault(); }
    else if (e.key === "r") { openForm(el, "reject"); e.preventDefault(); }
    else if (e.key === "c") { openForm(el, "correct"); e.preventDefault(); }
    else if (e.key === "o" || (e.key === "Enter" && e.target === el)) { location.href = el.querySelector("a.subject").href; }
  });

  nav();
  const source = new EventSource("/api/stream");
  source.addEventListener("ready", () => { live.textContent = "● live"; live.classList.add("on"); });
  for (const kind of ["awaiting_approval", "approved", "rejected"]) source.addEventListener(`decision.${kind}`, onDecision);
  source.onerror = () => { live.textContent = "○ reconnecting"; live.classList.remove("on"); };
  load();
})();
