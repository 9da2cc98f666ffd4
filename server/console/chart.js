// Hand-made SVG charts: built with createElementNS and attributes only (no inline style, which the CSP forbids);
// labels are Text nodes.

const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) el.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
  return el;
}

/**
 * Horizontal stacked bars: rows [{label, parts: {key: n}}], keys in legend order. Each segment gets the class
 * `seg-KEY` (colours in style.css) and a <title> with its count, so hovering shows it.
 */
export function stackedBars(rows, keys, { width = 640, barHeight = 22, labelWidth = 120, title = "" } = {}) {
  const max = Math.max(1, ...rows.map((r) => keys.reduce((n, k) => n + (r.parts[k] || 0), 0)));
  const plot = width - labelWidth - 50;
  const legendHeight = 26;
  const height = legendHeight + rows.length * (barHeight + 8) + 4;
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: "img",
    class: "chart",
    "aria-label": title,
  });
  if (title) svg.appendChild(s("title", {}, title));
  let x = 0;
  for (const k of keys) {
    svg.appendChild(s("rect", { x, y: 4, width: 12, height: 12, class: `seg-${k}` }));
    svg.appendChild(s("text", { x: x + 16, y: 14, class: "legend" }, k));
    x += 24 + k.length * 8;
  }
  rows.forEach((r, i) => {
    const y = legendHeight + i * (barHeight + 8);
    const g = s("g", { class: "bar", "data-label": r.label });
    g.appendChild(s("text", { x: labelWidth - 8, y: y + barHeight * 0.7, "text-anchor": "end", class: "label" }, r.label));
    let at = labelWidth;
    let total = 0;
    for (const k of keys) {
      const n = r.parts[k] || 0;
      if (!n) continue;
      const w = (n / max) * plot;
      g.appendChild(
        s("rect", { x: at, y, width: Math.max(w, 1), height: barHeight, class: `seg-${k}` }, s("title", {}, `${r.label}, ${k}: ${n}`)),
      );
      at += w;
      total += n;
    }
    g.appendChild(s("text", { x: at + 6, y: y + barHeight * 0.7, class: "count" }, String(total)));
    svg.appendChild(g);
  });
  return svg;
}

/** One progress bar of a rollout group: finished, failed, in flight, cancelled, waiting — as parts of its total. */
export function progress(counts, width = 260, height = 14) {
  const keys = ["finished", "failed", "in_flight", "canceled", "waiting"];
  const total = Math.max(1, counts.total || 0);
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "progress", role: "img" });
  svg.appendChild(s("rect", { x: 0, y: 0, width, height, class: "track" }));
  let at = 0;
  for (const k of keys) {
    const n = counts[k] || 0;
    if (!n) continue;
    const w = (n / total) * width;
    svg.appendChild(s("rect", { x: at, y: 0, width: w, height, class: `seg-${k}` }, s("title", {}, `${k}: ${n}`)));
    at += w;
  }
  svg.setAttribute("aria-label", keys.map((k) => `${k} ${counts[k] || 0}`).join(", "));
  return svg;
}
