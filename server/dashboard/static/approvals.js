// The approvals inbox: decisions awaiting a person, oldest first; verdicts arrive live for every viewer.
"use strict";

(() => {
  const { api, esc, nav, when } = Astralis;
  const AWAITING = ["REQUIRES_APPROVAL", "PENDING"];
  const MAX_PAGES = 20; // 20 × 500: more than anyone reviews by hand
  const rows = document.getElementById("rows");
  const errorBox = document.getElementById("error");
  const resolved = document.getElementById("resolved");
  const live = document.getElementById("live");

  const findRow = (id) => rows.querySelector(`tr[data-id="${CSS.escape(id)}"]`);

  function count() {
    const n = rows.querySelectorAll("tr:not(.done)").length;
    document.getElementById("count").textContent = String(n);
    document.getElementById("empty").hidden = n > 0;
  }

  function row(d) {
    const tr = document.createElement("tr");
    tr.dataset.id = d.id;
    tr.dataset.created = d.created_at;
    tr.innerHTML = `<td><a href="/decisions/${encodeURIComponent(d.id)}">${esc(when(d.created_at))}</a><br>
        <code class="muted">${esc(d.input?.source)} ${esc(d.input?.type)}</code></td>
      <td><span class="pill ${esc(d.status)}">${esc(d.status)}</span></td>
      <td>${esc(d.intent)} → ${esc(d.decision_type)}<br><span class="muted">by ${esc(d.decided_by)}</span></td>
      <td>${typeof d.confidence === "number" ? d.confidence.toFixed(2) : ""}</td>
      <td class="reasoning">${esc(d.reasoning)}</td>
      <td class="verdict"><button class="primary approve" type="button">Approve</button>
        <input class="reason" placeholder="reason" aria-label="reason for rejecting" size="14">
        <button class="danger reject" type="button">Reject</button>
        <div class="error" hidden></div></td>`;
    tr.querySelector(".approve").addEventListener("click", () => review(tr, "approve"));
    tr.querySelector(".reject").addEventListener("click", () => review(tr, "reject"));
    return tr;
  }

  /** Put a row in created order (oldest first): new decisions go to the end, normally. */
  function insert(tr) {
    const later = [...rows.children].find((r) => r.dataset.created > tr.dataset.created);
    rows.insertBefore(tr, later || null);
  }

  function settle(d) {
    const tr = findRow(d.id);
    const review = d.trace?.review || {};
    const li = document.createElement("li");
    li.dataset.id = d.id;
    li.innerHTML = `<a href="/decisions/${encodeURIComponent(d.id)}">${esc(d.intent)} ${esc(d.id)}</a>:
      <span class="pill ${esc(d.status)}">${esc(d.status)}</span>
      ${review.by ? `${esc(review.verdict === "approve" ? "approved" : "rejected")} by ${esc(review.by)}` : ""}
      ${review.note ? `— “${esc(review.note)}”` : ""}`;
    resolved.prepend(li);
    if (!tr || tr.classList.contains("done")) return;
    tr.classList.add("done");
    tr.querySelector(".verdict").innerHTML = `<span class="pill ${esc(d.status)}">${esc(d.status)}</span>`;
    tr.children[1].innerHTML = `<span class="pill ${esc(d.status)}">${esc(d.status)}</span>`;
    count();
    setTimeout(() => { tr.remove(); count(); }, 1500);
  }

  async function review(tr, verdict) {
    const box = tr.querySelector(".verdict .error");
    box.hidden = true;
    const body = {};
    if (verdict === "reject") {
      body.reason = tr.querySelector(".reason").value.trim();
      if (!body.reason) {
        box.textContent = "Say why.";
        box.hidden = false;
        return;
      }
    }
    for (const b of tr.querySelectorAll("button")) b.disabled = true;
    try {
      const d = await api(`/api/agent/decisions/${encodeURIComponent(tr.dataset.id)}/${verdict}`, { method: "POST", body });
      if (!findRow(d.id)?.classList.contains("done")) settle(d); // the stream may have said so already
    } catch (err) {
      box.textContent = err.status === 409 ? `Already resolved: ${err.details?.status ?? err.message}` : err.message;
      box.hidden = false;
      for (const b of tr.querySelectorAll("button")) b.disabled = false;
    }
  }

  async function load() {
    try {
      const found = [];
      let cursor = null;
      for (let i = 0; i < MAX_PAGES; i++) {
        const q = new URLSearchParams({ status: AWAITING.join(","), limit: "500" });
        if (cursor) q.set("cursor", cursor);
        const page = await api(`/api/agent/decisions?${q}`);
        found.push(...page.decisions);
        cursor = page.next_cursor;
        if (!cursor) break;
      }
      found.sort((a, b) => (a.created_at < b.created_at ? -1 : a.created_at > b.created_at ? 1 : 0));
      const frag = document.createDocumentFragment();
      for (const d of found) if (!findRow(d.id)) frag.append(row(d));
      rows.append(frag);
      count();
      document.body.dataset.loaded = "1";
    } catch (err) {
      errorBox.textContent = `Could not load: ${err.message}`;
      errorBox.hidden = false;
    }
  }

  function onDecision(msg) {
    let data;
    try { data = JSON.parse(msg.data); } catch { return; }
    const d = data.decision;
    if (!d?.id) return;
    if (AWAITING.includes(d.status)) {
      if (!findRow(d.id)) { const tr = row(d); tr.classList.add("fresh"); insert(tr); count(); }
    } else if (!data.new) {
      settle(d);
    }
  }

  nav();
  const source = new EventSource("/api/stream");
  source.addEventListener("ready", () => { live.textContent = "● live"; live.classList.add("on"); });
  for (const kind of ["awaiting_approval", "approved", "rejected"]) source.addEventListener(`decision.${kind}`, onDecision);
  source.onerror = () => { live.textContent = "○ reconnecting"; live.classList.remove("on"); };
  load();
})();
