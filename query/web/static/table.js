// The results table: newest first, only the visible rows in the DOM, expandable rows.

import { h, copyText } from "./dom.js";
import { formatTime } from "./timeutil.js";

export const ROW_H = 24;
const OVERSCAN = 12;
const COLUMNS = ["ts", "observed_ts", "service", "host", "source", "level", "severity", "message", "trace_id", "span_id"];
const NOT_FILTERABLE = new Set(["ts", "observed_ts"]);
// Names the query language reads as the original line, not as an attribute of that name.
const LINE_FIELDS = ["line", "head", "raw"];
const FIELD_RE = /^[A-Za-z_@][A-Za-z0-9_.@-]*$/;

/** The query text for field = value: quoted when it holds spaces or the language's special characters. */
export function filterTerm(field, value, exclude = false) {
  const v = String(value);
  const plain = v !== "" && /^[^\s"()\\*?:<>[\]{}]+$/.test(v) && !/^[-/]/.test(v) && !["AND", "OR", "NOT"].includes(v);
  const text = plain ? v : `"${v.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
  return `${exclude ? "-" : ""}${field}:${text}`;
}

/** A row's fields as [name, value] pairs: columns, then attributes (attrs.k when k names a column). */
export function rowFields(row) {
  const out = [];
  for (const c of COLUMNS) if (row[c] !== null && row[c] !== undefined && row[c] !== "") out.push([c, String(row[c])]);
  for (const [k, v] of Object.entries(row.attrs || {})) {
    out.push([COLUMNS.includes(k) || LINE_FIELDS.includes(k) || k === "attrs" ? `attrs.${k}` : k, String(v)]);
  }
  return out;
}

export function rowIdentity(r) {
  return JSON.stringify([r.ts, r.service, r.host, r.source, r.level, r.message, r.attrs, r.trace_id, r.span_id, r.line]);
}

export class ResultsTable {
  /** ``hooks``: onNearEnd(), onFilter(term), onContext(row). */
  constructor(scroller, hooks) {
    this.scroller = scroller;
    this.hooks = hooks;
    this.rows = [];
    this.tz = "local";
    this.layer = h("div", { class: "layer" });
    scroller.replaceChildren(this.layer);
    this.els = new Map();        // row -> its element
    this.details = new Map();    // expanded row -> {el, height}
    this.layout = null;          // [[index, height], ...] of expanded rows, in order
    this.frame = 0;
    scroller.addEventListener("scroll", () => this.schedule(), { passive: true });
    new ResizeObserver(() => this.schedule()).observe(scroller);
  }

  setTz(tz) {
    this.tz = tz;
    for (const [row, el] of this.els) el.querySelector(".c-time").textContent = formatTime(row.ts, tz);
  }

  setRows(rows) {
    this.rows = rows;
    this.els.forEach((el) => el.remove());
    this.details.forEach((d) => d.el.remove());
    this.els.clear();
    this.details.clear();
    this.layout = null;
    this.scroller.scrollTop = 0;
    this.render();
  }
  append(rows) { this.rows = this.rows.concat(rows); this.layout = null; this.render(); }
  prepend(rows) {
    if (!rows.length) return;
    const keep = this.scroller.scrollTop > 0;
    this.rows = rows.concat(this.rows);
    this.layout = null;
    if (keep) this.scroller.scrollTop += rows.length * ROW_H;
    this.render();
  }

  expandedLayout() {
    if (!this.layout) {
      const index = new Map(this.rows.map((r, i) => [r, i]));
      this.layout = [...this.details].filter(([r]) => index.has(r))
        .map(([r, d]) => [index.get(r), d.height]).sort((a, b) => a[0] - b[0]);
    }
    return this.layout;
  }
  top(i) {
    let y = i * ROW_H;
    for (const [j, hgt] of this.expandedLayout()) { if (j < i) y += hgt; else break; }
    return y;
  }
  indexAt(y) {
    let offset = 0;
    for (const [j, hgt] of this.expandedLayout()) {
      const end = (j + 1) * ROW_H + offset;
      if (y < end) break;
      if (y < end + hgt) return j;
      offset += hgt;
    }
    return Math.max(0, Math.floor((y - offset) / ROW_H));
  }
  totalHeight() { return this.top(this.rows.length); }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.render(); });
  }

  render() {
    const n = this.rows.length;
    this.layer.style.height = `${this.totalHeight()}px`;
    const top = this.scroller.scrollTop, height = this.scroller.clientHeight || 600;
    const first = Math.max(0, this.indexAt(top) - OVERSCAN);
    const last = Math.min(n - 1, this.indexAt(top + height) + OVERSCAN);
    const wanted = [];
    const visible = new Set();
    for (let i = first; i <= last && n; i++) {
      const row = this.rows[i];
      visible.add(row);
      let el = this.els.get(row);
      if (!el) { el = this.rowElement(row); this.els.set(row, el); }
      const y = this.top(i);
      el.style.transform = `translateY(${y}px)`;
      el.classList.toggle("odd", i % 2 === 1);
      wanted.push(el);
      const d = this.details.get(row);
      if (d) { d.el.style.transform = `translateY(${y + ROW_H}px)`; wanted.push(d.el); }
    }
    for (const [row, el] of this.els) {
      if (!visible.has(row)) { el.remove(); this.els.delete(row); this.details.get(row)?.el.remove(); }
    }
    // The DOM in the order shown, so the first result-row is the newest.
    let at = this.layer.firstChild;
    for (const el of wanted) {
      if (el === at) at = at.nextSibling;
      else this.layer.insertBefore(el, at);
    }
    while (at) { const next = at.nextSibling; at.remove(); at = next; }
    if (n && last >= n - 60) this.hooks.onNearEnd();
  }

  rowElement(row) {
    const level = row.level || "none";
    const el = h("div", { class: "row", "data-testid": "result-row", role: "row", tabindex: "-1",
      onclick: () => this.toggle(row) },
      h("span", { class: "c-time", "data-testid": "cell-time", text: formatTime(row.ts, this.tz) }),
      h("span", { class: `c-level lvl-${level}`, "data-testid": "cell-level", text: row.level ?? "" }),
      h("span", { class: "c-service", "data-testid": "cell-service", text: row.service ?? "" }),
      h("span", { class: "c-host", "data-testid": "cell-host", text: row.host ?? "" }),
      h("span", { class: "c-message", "data-testid": "cell-message", text: row.message ?? "" }));
    if (this.details.has(row)) el.classList.add("open");
    return el;
  }

  toggle(row) {
    const open = this.details.get(row);
    if (open) {
      open.el.remove();
      this.details.delete(row);
      this.els.get(row)?.classList.remove("open");
    } else {
      const el = this.detailsElement(row);
      el.style.transform = "translateY(-10000px)";
      this.layer.append(el);
      this.details.set(row, { el, height: Math.ceil(el.getBoundingClientRect().height) });
      this.els.get(row)?.classList.add("open");
    }
    this.layout = null;
    this.render();
  }

  detailsElement(row) {
    const fields = rowFields(row);
    // The line as it was received (time, level and all), which the message is a part of.
    const raw = row.line ?? row.message ?? "";
    const fieldItems = fields.map(([name, value]) => {
      const ok = !NOT_FILTERABLE.has(name) && FIELD_RE.test(name);
      return h("div", { class: "detail-field", "data-testid": "detail-field", "data-field": name, "data-value": value },
        h("span", { class: "d-name", text: name }),
        h("span", { class: "d-value", text: value }),
        h("span", { class: "d-actions" },
          h("button", { type: "button", class: "icon", "data-testid": "filter-include", title: `Filter: ${name} = this value`,
            disabled: !ok, onclick: (e) => { e.stopPropagation(); this.hooks.onFilter(filterTerm(name, value)); } }, "+"),
          h("button", { type: "button", class: "icon", "data-testid": "filter-exclude", title: `Filter out: ${name} = this value`,
            disabled: !ok, onclick: (e) => { e.stopPropagation(); this.hooks.onFilter(filterTerm(name, value, true)); } }, "\u2212")));
    });
    const copied = h("span", { class: "copied" });
    return h("div", { class: "details", "data-testid": "row-details", onclick: (e) => e.stopPropagation() },
      h("div", { class: "d-fields" }, fieldItems),
      h("div", { class: "d-raw" },
        h("pre", { "data-testid": "raw-line", text: raw }),
        h("div", { class: "d-buttons" },
          h("button", { type: "button", "data-testid": "copy-line", onclick: async () => {
            copied.textContent = (await copyText(raw)) ? "copied" : "copy failed";
            setTimeout(() => { copied.textContent = ""; }, 1500);
          } }, "Copy line"),
          h("button", { type: "button", onclick: async () => {
            copied.textContent = (await copyText(JSON.stringify(row, null, 2))) ? "copied" : "copy failed";
            setTimeout(() => { copied.textContent = ""; }, 1500);
          } }, "Copy JSON"),
          h("button", { type: "button", "data-testid": "context-button", onclick: () => this.hooks.onContext(row) }, "Context"),
          copied)));
  }
}
