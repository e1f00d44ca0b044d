// Small inline-SVG charts for the dashboard pages (no library): stacked columns over time and horizontal bars.
"use strict";

const Charts = (() => {
  const PALETTE = ["#2f5fd0", "#1b7f4b", "#a86400", "#b3261e", "#7b4bd0", "#0f8b8d", "#c2185b", "#5b6578",
                   "#8d6e00", "#3e8ed0"];
  const esc = (v) => Astralis.esc(v);

  function color(i) { return PALETTE[i % PALETTE.length]; }

  function empty(title) {
    return `<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart-empty" width="360" height="60">
      <title>${esc(title)}</title><text x="8" y="34" class="muted">No data in this window</text></svg>`;
  }

  function legend(series) {
    return `<div class="legend">${series.map((s, i) =>
      `<span><i style="background:${s.color || color(i)}"></i>${esc(s.name)}</span>`).join("")}</div>`;
  }

  /** Stacked columns: one per label; `series` = [{name, values[], color?}]. */
  function stacked(title, labels, series) {
    const totals = labels.map((_, j) => series.reduce((a, s) => a + (s.values[j] || 0), 0));
    const max = Math.max(0, ...totals);
    if (!max) return empty(title);
    const left = 36, top = 10, height = 180, bottom = 38;
    const col = Math.max(6, Math.min(64, Math.floor(760 / Math.max(1, labels.length))));
    const width = left + col * labels.length + 10;
    const every = Math.max(1, Math.ceil(48 / col)); // a label at least every 48 px, so none overlap
    const out = [`<svg xmlns="http://www.w3.org/2000/svg" role="img" width="${width}" height="${top + height + bottom}"
      viewBox="0 0 ${width} ${top + height + bottom}"><title>${esc(title)}</title>`];
    out.push(`<line x1="${left}" y1="${top + height}" x2="${width - 6}" y2="${top + height}" stroke="#c5ccd6"/>`);
    out.push(`<text x="${left - 4}" y="${top + 10}" text-anchor="end" class="axis">${max}</text>`);
    out.push(`<text x="${left - 4}" y="${top + height}" text-anchor="end" class="axis">0</text>`);
    labels.forEach((label, j) => {
      let y = top + height;
      series.forEach((s, i) => {
        const v = s.values[j] || 0;
        if (!v) return;
        const h = Math.max(1, Math.round((v / max) * height));
        y -= h;
        out.push(`<rect class="bar" x="${left + j * col + 1}" y="${y}" width="${col - 2}" height="${h}"
          fill="${s.color || color(i)}"><title>${esc(label)} · ${esc(s.name)}: ${v}</title></rect>`);
      });
      if (j % every === 0) {
        out.push(`<text x="${left + j * col + col / 2}" y="${top + height + 14}" text-anchor="middle"
          class="axis">${esc(label)}</text>`);
      }
    });
    out.push("</svg>");
    return out.join("") + legend(series);
  }

  /** Horizontal bars: `items` = [[label, value, note?]]. */
  function bars(title, items, { barColor, format } = {}) {
    const max = Math.max(0, ...items.map((it) => it[1]));
    if (!items.length || !max) return empty(title);
    const left = 190, plot = 320, row = 22;
    const height = items.length * row + 8;
    const out = [`<svg xmlns="http://www.w3.org/2000/svg" role="img" width="${left + plot + 90}" height="${height}"
      viewBox="0 0 ${left + plot + 90} ${height}"><title>${esc(title)}</title>`];
    items.forEach(([label, value, note], i) => {
      const y = 4 + i * row;
      const w = Math.max(1, Math.round((value / max) * plot));
      const shown = format ? format(value) : value;
      out.push(`<text x="${left - 6}" y="${y + 14}" text-anchor="end">${esc(label)}</text>`);
      out.push(`<rect class="bar" x="${left}" y="${y}" width="${w}" height="${row - 6}"
        fill="${barColor || color(i)}"><title>${esc(label)}: ${esc(shown)}${note ? ` (${esc(note)})` : ""}</title></rect>`);
      out.push(`<text x="${left + w + 6}" y="${y + 14}">${esc(shown)}</text>`);
    });
    out.push("</svg>");
    return out.join("");
  }

  return { stacked, bars, color };
})();
