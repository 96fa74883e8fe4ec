// The query input: completion of field names (/api/v1/fields) and values (/api/v1/values/{field}).

import { api } from "./api.js";
import { h } from "./dom.js";
import { filterTerm } from "./table.js";

const BASE_FIELDS = ["service", "host", "source", "level", "message", "line", "trace_id", "span_id", "severity"];
const STOP = /[\s()]/;

/** The token around the caret: its start, and its text up to the caret (a leading '-' left out). */
function tokenAt(text, caret) {
  let start = caret;
  while (start > 0 && !STOP.test(text[start - 1])) start--;
  if (text[start] === "-") start++;
  return { start, word: text.slice(start, caret) };
}

export class QueryBar {
  /** ``range()`` gives {start, end} for the lookups; ``onRun()`` runs the query. */
  constructor(input, list, { range, onRun }) {
    this.input = input;
    this.list = list;
    this.range = range;
    this.onRun = onRun;
    this.items = [];
    this.active = -1;
    this.cache = new Map();
    this.timer = 0;
    this.seq = 0;
    input.addEventListener("input", () => this.schedule());
    input.addEventListener("keydown", (e) => this.key(e));
    input.addEventListener("blur", () => setTimeout(() => this.close(), 150));
    input.addEventListener("click", () => this.close());
  }

  get value() { return this.input.value; }
  set value(v) { this.input.value = v; }
  invalidate() { this.cache.clear(); }

  key(e) {
    const open = !this.list.hidden && this.items.length;
    if (e.key === "ArrowDown" && open) { e.preventDefault(); this.highlight(Math.min(this.items.length - 1, this.active + 1)); }
    else if (e.key === "ArrowUp" && open) { e.preventDefault(); this.highlight(Math.max(0, this.active - 1)); }
    else if ((e.key === "Tab" && open) || (e.key === "Enter" && open && this.active >= 0)) {
      e.preventDefault();
      this.accept(this.items[Math.max(0, this.active)]);
    } else if (e.key === "Escape") { this.close(); }
    else if (e.key === "Enter") { e.preventDefault(); this.close(); this.onRun(); }
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.suggest(), 120);
  }

  async cached(key, load) {
    if (!this.cache.has(key)) this.cache.set(key, load().catch((e) => { this.cache.delete(key); throw e; }));
    return this.cache.get(key);
  }

  async suggest() {
    const seq = ++this.seq;
    const text = this.input.value, caret = this.input.selectionStart ?? text.length;
    const { start, word } = tokenAt(text, caret);
    const colon = word.indexOf(":");
    let items = [];
    try {
      const { start: from, end: to } = this.range();
      if (colon > 0) {
        const field = word.slice(0, colon), prefix = word.slice(colon + 1).replace(/^"/, "").toLowerCase();
        const values = await this.cached(`v:${field}:${from}:${to}`, () =>
          api(`/api/v1/values/${encodeURIComponent(field)}`, { params: { start: from, end: to, limit: 50 } }).then((r) => r.values));
        items = values.map((v) => String(v.value))
          .filter((v) => v.toLowerCase().startsWith(prefix) || (prefix.length > 1 && v.toLowerCase().includes(prefix)))
          .slice(0, 12)
          .map((v) => ({ label: v, hint: "value", insert: filterTerm(field, v) + " ", start }));
      } else if (word.length >= 1) {
        const fields = await this.cached(`f:${from}:${to}`, () =>
          api("/api/v1/fields", { params: { start: from, end: to, top: 1 } }).then((r) => r.fields.map((f) => f.name)));
        const names = [...new Set([...BASE_FIELDS, ...fields])];
        const w = word.toLowerCase();
        items = names.filter((n) => n.toLowerCase().startsWith(w) && n.toLowerCase() !== w).slice(0, 12)
          .map((n) => ({ label: n, hint: "field", insert: n + ":", start }));
      }
    } catch (e) {
      items = [];
    }
    if (seq !== this.seq || document.activeElement !== this.input) return;
    this.show(items, caret);
  }

  show(items, caret) {
    this.items = items;
    this.caret = caret;
    this.active = -1;
    this.list.replaceChildren(...items.map((it, i) => h("li", {
      "data-testid": "completion-item", role: "option", "data-value": it.label, class: `hint-${it.hint}`,
      onmousedown: (e) => { e.preventDefault(); this.accept(it); },
      onmousemove: () => this.highlight(i),
    }, h("span", { text: it.label }), h("small", { text: it.hint }))));
    this.list.hidden = items.length === 0;
  }

  highlight(i) {
    this.active = i;
    [...this.list.children].forEach((li, j) => li.setAttribute("aria-selected", String(i === j)));
  }

  accept(it) {
    const text = this.input.value;
    const before = text.slice(0, it.start), after = text.slice(this.caret).replace(/^\S*/, "");
    this.input.value = before + it.insert + after;
    const pos = (before + it.insert).length;
    this.input.setSelectionRange(pos, pos);
    this.input.focus();
    this.close();
    if (it.hint === "field") this.schedule();     // now its values
  }

  /** Hide the list, and drop a lookup still pending or in flight (it would reopen the list). */
  close() {
    clearTimeout(this.timer);
    this.seq++;
    this.list.hidden = true; this.items = []; this.active = -1;
  }
}
