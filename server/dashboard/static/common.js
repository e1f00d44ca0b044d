// Shared by every dashboard page: the API call, escaping, the navigation bar. No framework, no download.
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
    header.innerHTML = `<span class="brand">Astralis</span>${links}
      <form class="who" method="post" action="/logout"><button type="submit">Sign out</button></form>`;
    document.body.prepend(header);
  }

  /** Local date and time of an ISO timestamp. */
  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "";
  }

  return { api, esc, nav, when };
})();
