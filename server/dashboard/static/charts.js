// The dashboard's charts: counts over time with uPlot (vendored: static/vendor/uplot.js) — a real time axis in the
// org's zone, gridlines, stacked columns per bucket, a legend that reads the hovered bucket — and small inline-SVG
// horizontal bars for categories. A zero is never drawn as a bar.
"use strict";

const Charts = (() => {
  const PALETTE = ["#2f5fd0", "#1b7f4b", "#a86400", "#7b4bd0", "#0f8b8d", "#c2185b", "#5b6578", "#8d6e00", "#3e8ed0"];
  const esc = (v) => Astralis.esc(v);
  const MINUTE = 60, HOUR = 3600, DAY = 86400;
  const STEPS = [MINUTE, 5 * MINUTE, 10 * MINUTE, 15 * MINUTE, 30 * MINUTE, HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR,
                 12 * HOUR, DAY, 7 * DAY];

  function color(i) { return PALETTE[i % PALETTE.length]; }

  /** The bucket (seconds) for a window: the smallest round step that gives at most ~60 columns
   * (24 h → 30 min, 7 d → 3 h, 30 d → 12 h). */
  function step(sinceMs, untilMs) {
    const span = (untilMs - sinceMs) / 1000;
    return STEPS.find((s) => span / s <= 60) || 7 * DAY;
  }

  /** Bucket starts (Unix seconds) covering [since, until), aligned to whole steps of the org's wall clock (hours on
   * the hour, days at local midnight). */
  function starts(sinceMs, untilMs, size) {
    const since = Math.floor(sinceMs / 1000);
    const off = Astralis.offsetAt(sinceMs) * 60;
    const first = Math.floor((since + off) / size) * size - off;
    const out = [];
    for (let t = first; t * 1000 < untilMs && out.length < 2000; t += size) out.push(t);
    return out;
  }

  /** Counts per bucket of `items` by `key(item)`: [{name, values, color}], names sorted by total, largest first. */
  function count(items, when, key, buckets, size, colors = {}) {
    const names = new Map();
    for (const it of items) {
      const t = Date.parse(when(it)) / 1000;
      const k = Math.floor((t - buckets[0]) / size);
      if (k < 0 || k >= buckets.length) continue;
      const name = key(it);
      if (name == null) continue;
      if (!names.has(name)) names.set(name, buckets.map(() => 0));
      names.get(name)[k] += 1;
    }
    return [...names.entries()].sort((a, b) => b[1].reduce((x, y) => x + y, 0) - a[1].reduce((x, y) => x + y, 0))
      .map(([name, values], i) => ({ name, values, color: colors[name] || color(i) }));
  }

  function empty(el, title) {
    el.innerHTML = `<p class="muted chart-empty" role="img" aria-label="${esc(title)}">No data in this window.</p>`;
  }

  const charts = new Map(); // element → uPlot, to resize and replace

  function label(size) {
    return size >= DAY ? "per day" : size >= HOUR ? `per ${size / HOUR} h` : `per ${size / MINUTE} min`;
  }

  /** Stacked columns over time in `el`: `buckets` (Unix s, each `size` s long), `series` [{name, values, color}]. */
  function timeline(el, title, buckets, size, series, { labels = {} } = {}) {
    charts.get(el)?.destroy();
    charts.delete(el);
    el.dataset.step = String(size);
    el.dataset.buckets = String(buckets.length);
    el.dataset.total = String(series.reduce((n, s) => n + s.values.reduce((a, b) => a + b, 0), 0));
    if (!series.length || el.dataset.total === "0") { empty(el, title); return null; }
    // stacked: each series drawn as the running total of itself and those below it, tallest first
    const cumulative = [];
    let running = buckets.map(() => 0);
    for (const s of [...series].reverse()) {
      running = running.map((v, i) => v + s.values[i]);
      cumulative.unshift(running);
    }
    const raw = series.map((s) => s.values);
    const data = [buckets.map((t) => t + size / 2), ...cumulative.map((vals, si) =>
      vals.map((v, i) => (raw[si][i] === 0 ? null : v)))]; // no bar for a zero
    const width = Math.max(260, el.clientWidth || 560);
    const bars = uPlot.paths.bars({ size: [0.85, 64], align: 0 });
    el.innerHTML = "";
    const u = new uPlot({
      title: undefined, width, height: 220, tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), Astralis.zone),
      cursor: { points: { show: false }, drag: { x: true, y: false } },
      scales: { x: { time: true, range: () => [buckets[0], buckets[buckets.length - 1] + size] },
                y: { range: (u, min, max) => [0, Math.max(1, Math.ceil(max * 1.1))] } },
      axes: [{ grid: { stroke: "#eef1f6" }, ticks: { stroke: "#d9dee7" }, font: "11px system-ui, sans-serif",
               values: (u, ticks, space, incr) => ticks.map((t, i) => {
                 const iso = new Date(t * 1e3).toISOString();
                 if (incr >= DAY) return Astralis.day(iso);
                 const first = i === 0 || Astralis.ymd(new Date(ticks[i - 1] * 1e3)) !== Astralis.ymd(iso);
                 return first ? `${Astralis.clock(iso)}\n${Astralis.day(iso)}` : Astralis.clock(iso);
               }) },
             { grid: { stroke: "#eef1f6" }, ticks: { stroke: "#d9dee7" }, size: 40, font: "11px system-ui, sans-serif",
               values: (u, ticks) => ticks.map((v) => (Number.isInteger(v) ? String(v) : "")) }],
      series: [{ label: "Time", value: (u, v) => (v == null ? "" : Astralis.when(new Date((v - size / 2) * 1e3).toISOString())) },
               ...series.map((s, si) => ({
                 label: labels[s.name] || s.name, fill: s.color, stroke: s.color, width: 0, paths: bars, points: { show: false },
                 value: (u, v, _si, i) => (i == null ? "" : String(raw[si][i] ?? 0)),
               }))],
      legend: { live: true },
    }, data, el);
    u.root.setAttribute("role", "img");
    u.root.setAttribute("aria-label", `${title}, ${label(size)}`);
    charts.set(el, u);
    return u;
  }

  addEventListener("resize", () => {
    for (const [el, u] of charts) u.setSize({ width: Math.max(260, el.clientWidth), height: 220 });
  });

  /** Horizontal bars: `items` = [[label, value, note?]]; a zero shows its number and no bar. */
  function bars(title, items, { barColor, format } = {}) {
    const max = Math.max(0, ...items.map((it) => it[1]));
    if (!items.length || !max) return `<p class="muted chart-empty">No data in this window.</p>`;
    const left = 190, plot = 320, row = 22;
    const height = items.length * row + 8;
    const out = [`<svg xmlns="http://www.w3.org/2000/svg" role="img" width="${left + plot + 90}" height="${height}"
      viewBox="0 0 ${left + plot + 90} ${height}"><title>${esc(title)}</title>`];
    items.forEach(([name, value, note], i) => {
      const y = 4 + i * row;
      const w = value > 0 ? Math.max(2, Math.round((value / max) * plot)) : 0;
      const shown = format ? format(value) : value;
      out.push(`<text x="${left - 6}" y="${y + 14}" text-anchor="end">${esc(name)}</text>`);
      if (w) {
        out.push(`<rect class="bar" x="${left}" y="${y}" width="${w}" height="${row - 6}"
          fill="${barColor || color(i)}"><title>${esc(name)}: ${esc(shown)}${note ? ` (${esc(note)})` : ""}</title></rect>`);
      }
      out.push(`<text x="${left + w + 6}" y="${y + 14}">${esc(shown)}</text>`);
    });
    out.push("</svg>");
    return out.join("");
  }

  return { timeline, bars, color, step, starts, count, label };
})();
