// The log-volume histogram: our own SVG, stacked by level, drag to zoom.

import { tickLabel, formatTime, toMs } from "./timeutil.js";

const NS = "http://www.w3.org/2000/svg";
// Bottom to top.
const ORDER = ["fatal", "error", "warn", "info", "debug", "trace"];
const H = 96, AXIS = 16, LEFT = 44;

function el(name, attrs = {}) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

export class Histogram {
  constructor(svg, { onZoom }) {
    this.svg = svg;
    this.onZoom = onZoom;
    this.data = null;
    this.tz = "local";
    this.drag = null;
    svg.addEventListener("pointerdown", (e) => this.down(e));
    svg.addEventListener("pointermove", (e) => this.move(e));
    svg.addEventListener("pointerup", (e) => this.up(e));
    svg.addEventListener("pointercancel", () => this.cancel());
    new ResizeObserver(() => this.draw()).observe(svg);
  }

  set(data, tz) { this.data = data; this.tz = tz; this.draw(); }
  setTz(tz) { this.tz = tz; this.draw(); }
  clear(message) { this.data = null; this.message = message; this.draw(); }

  get width() { return Math.max(200, this.svg.clientWidth || 800); }
  domain() {
    const d = this.data;
    return [toMs(d.stats.start), toMs(d.stats.end)];
  }
  x(t) {
    const [a, b] = this.domain();
    return LEFT + ((t - a) / Math.max(1, b - a)) * (this.width - LEFT - 4);
  }
  t(x) {
    const [a, b] = this.domain();
    const f = Math.min(1, Math.max(0, (x - LEFT) / (this.width - LEFT - 4)));
    return a + f * (b - a);
  }

  draw() {
    const svg = this.svg, w = this.width;
    svg.setAttribute("viewBox", `0 0 ${w} ${H}`);
    svg.setAttribute("height", H);
    svg.replaceChildren();
    if (!this.data) {
      if (this.message) svg.append(Object.assign(el("text", { x: w / 2, y: H / 2, "text-anchor": "middle", class: "h-msg" }), { textContent: this.message }));
      return;
    }
    const { buckets, series, interval_ms } = this.data;
    const totals = buckets.map(() => 0);
    for (const s of series) s.points.forEach((v, i) => { totals[i] += v || 0; });
    const max = Math.max(1, ...totals);
    const plotH = H - AXIS - 4;
    const rank = (s) => {
      const lvl = s.other ? "other" : s.group.level;
      const i = ORDER.indexOf(lvl);
      return i < 0 ? ORDER.length + (s.other ? 1 : 0) : i;
    };
    const ordered = [...series].sort((a, b) => rank(a) - rank(b));
    const [d0, d1] = this.domain();
    // Grid and axis.
    svg.append(el("line", { x1: LEFT, x2: w - 4, y1: H - AXIS, y2: H - AXIS, class: "h-axis" }));
    svg.append(Object.assign(el("text", { x: LEFT - 6, y: 10, "text-anchor": "end", class: "h-label" }), { textContent: compact(max) }));
    svg.append(Object.assign(el("text", { x: LEFT - 6, y: H - AXIS, "text-anchor": "end", class: "h-label" }), { textContent: "0" }));
    const ticks = Math.max(2, Math.floor((w - LEFT) / 110));
    for (let i = 0; i <= ticks; i++) {
      const t = d0 + ((d1 - d0) * i) / ticks;
      const x = this.x(t);
      const anchor = i === 0 ? "start" : i === ticks ? "end" : "middle";
      svg.append(Object.assign(el("text", { x, y: H - 3, "text-anchor": anchor, class: "h-label" }), { textContent: tickLabel(t, this.tz, d1 - d0) }));
    }
    const g = el("g");
    buckets.forEach((b, i) => {
      const t0 = toMs(b), t1 = t0 + interval_ms;
      const xa = Math.max(LEFT, this.x(Math.max(t0, d0))), xb = Math.min(w - 4, this.x(Math.min(t1, d1)));
      const bw = Math.max(1, xb - xa - (xb - xa > 3 ? 1 : 0));
      let y = H - AXIS;
      for (const s of ordered) {
        const v = s.points[i] || 0;
        if (!v) continue;
        const h = Math.max(1, (v / max) * plotH);
        y -= h;
        const level = s.other ? "other" : (s.group.level ?? "none");
        const r = el("rect", {
          x: xa.toFixed(1), y: y.toFixed(1), width: bw.toFixed(1), height: h.toFixed(1),
          class: `bar lvl-${level}`, "data-testid": "histogram-bar", "data-level": level,
          "data-count": v, "data-start": b,
        });
        const title = el("title");
        title.textContent = `${formatTime(t0, this.tz, { millis: false })} +${this.data.interval}  ${level}: ${v}`;
        r.append(title);
        g.append(r);
      }
    });
    svg.append(g);
    this.sel = el("rect", { class: "h-sel", x: 0, y: 0, width: 0, height: H - AXIS, visibility: "hidden" });
    svg.append(this.sel);
  }

  px(e) { return e.clientX - this.svg.getBoundingClientRect().left; }
  down(e) {
    if (!this.data || e.button !== 0) return;
    this.drag = { x0: this.px(e) };
    this.svg.setPointerCapture(e.pointerId);
    e.preventDefault();
  }
  move(e) {
    if (!this.drag) return;
    const x1 = this.px(e), a = Math.min(this.drag.x0, x1), b = Math.max(this.drag.x0, x1);
    this.drag.x1 = x1;
    Object.entries({ x: a, width: b - a, visibility: "visible" }).forEach(([k, v]) => this.sel.setAttribute(k, v));
  }
  up(e) {
    if (!this.drag) return;
    const x1 = this.px(e), x0 = this.drag.x0;
    this.cancel();
    if (Math.abs(x1 - x0) < 4) return;
    const a = this.t(Math.min(x0, x1)), b = this.t(Math.max(x0, x1));
    if (b - a >= 1) this.onZoom(Math.floor(a), Math.ceil(b));
  }
  cancel() {
    this.drag = null;
    if (this.sel) this.sel.setAttribute("visibility", "hidden");
  }
}

function compact(n) {
  if (n >= 1e6) return (n / 1e6).toFixed(n >= 1e7 ? 0 : 1) + "M";
  if (n >= 1e3) return (n / 1e3).toFixed(n >= 1e4 ? 0 : 1) + "k";
  return String(n);
}
