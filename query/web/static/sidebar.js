// The fields sidebar (top values and shares) and the saved queries.

import { api, ApiError } from "./api.js";
import { h } from "./dom.js";
import { filterTerm } from "./table.js";

const pct = (n, total) => (total ? `${((100 * n) / total).toFixed(n === total ? 0 : 1)}%` : "");

export class FieldsSidebar {
  /** ``onFilter(term)`` adds a filter and runs. */
  constructor(el, { onFilter }) {
    this.el = el;
    this.onFilter = onFilter;
    this.seq = 0;
  }

  async load(params, signal) {
    const seq = ++this.seq;
    this.el.classList.add("loading");
    try {
      const r = await api("/api/v1/fields", { params: { ...params, top: 5 }, signal });
      if (seq !== this.seq) return;
      this.params = params;
      this.render(r.fields, r.stats.sampled_rows || 0);
    } catch (e) {
      if (seq !== this.seq || e.name === "AbortError") return;
      this.el.replaceChildren(h("p", { class: "muted", text: e instanceof ApiError ? e.message : "fields unavailable" }));
    } finally {
      if (seq === this.seq) this.el.classList.remove("loading");
    }
  }

  valueItem(field, value, count, total) {
    return h("li", { class: "field-value", "data-testid": "field-value", "data-field": field, "data-value": value,
      title: `${field}:${value} — ${count} rows`, onclick: () => this.onFilter(filterTerm(field, value)) },
      h("span", { class: "fv-bar", style: `width:${total ? (100 * count) / total : 0}%` }),
      h("span", { class: "fv-text", text: value }),
      h("span", { class: "fv-share", text: pct(count, total) }));
  }

  render(fields, sampled) {
    if (!fields.length) {
      this.el.replaceChildren(h("p", { class: "muted", text: "no fields in this range" }));
      return;
    }
    this.el.replaceChildren(...fields.map((f) => {
      const values = h("ul", { class: "fvalues" }, f.top.map((v) => this.valueItem(f.name, String(v.value), v.count, sampled)));
      const name = h("button", { type: "button", class: "field-name", "data-testid": "field-name", "data-field": f.name,
        title: `${f.distinct} distinct in ${f.count} sampled rows; click for the top values over the whole range`,
        onclick: () => this.more(f.name, values) },
        h("span", { text: f.name }), h("small", { text: f.type === "number" ? "#" : `${f.distinct}` }));
      return h("div", { class: "field" }, name, values);
    }));
    this.el.prepend(h("p", { class: "muted small", text: `from the newest ${sampled.toLocaleString()} rows` }));
  }

  /** The exact top values over the range (/api/v1/values), replacing the sampled ones. */
  async more(field, list) {
    try {
      const r = await api(`/api/v1/values/${encodeURIComponent(field)}`, { params: { ...this.params, limit: 10 } });
      const total = r.values.reduce((a, v) => a + v.count, 0);
      list.replaceChildren(...r.values.map((v) => this.valueItem(field, String(v.value), v.count, total)));
      list.classList.add("exact");
    } catch (e) {
      if (e instanceof ApiError) list.append(h("li", { class: "muted", text: e.message }));
    }
  }
}

export class SavedQueries {
  /** ``current()`` -> {q, start, end}; ``onRun(saved)`` loads and runs one. */
  constructor({ list, button, form, name, confirm, error }, { current, onRun }) {
    Object.assign(this, { list, button, form, name, confirm, error, current, onRun });
    this.names = new Set();
    button.addEventListener("click", () => {
      form.hidden = !form.hidden;
      if (!form.hidden) name.focus();
    });
    form.addEventListener("submit", (e) => { e.preventDefault(); this.save(); });
  }

  showError(message) { this.error.textContent = message; this.error.hidden = !message; }

  async load() {
    try {
      const rows = await api("/api/v1/saved-queries");
      this.names = new Set(rows.map((r) => r.name));
      this.list.replaceChildren(...rows.map((r) => h("li", { class: "saved-item", "data-testid": "saved-item", "data-name": r.name,
        title: `${r.query || "(everything)"}${r.description ? "\n" + r.description : ""}`, tabindex: "0",
        onclick: () => this.onRun(r), onkeydown: (e) => { if (e.key === "Enter") this.onRun(r); } },
        h("span", { class: "s-name", text: r.name }),
        h("span", { class: "s-query", text: r.query || "*" }))));
      if (!rows.length) this.list.replaceChildren(h("li", { class: "muted", text: "none yet" }));
    } catch (e) {
      if (e instanceof ApiError) this.showError(e.message);
    }
  }

  async save() {
    const name = this.name.value.trim();
    if (!name) { this.showError("a name, please"); return; }
    const { q, start, end } = this.current();
    const body = { name, kind: "search", query: q, params: { start, end } };
    this.showError("");
    try {
      if (this.names.has(name)) {
        await api(`/api/v1/saved-queries/${encodeURIComponent(name)}`, { method: "PUT", json: body });
      } else {
        try {
          await api("/api/v1/saved-queries", { method: "POST", json: body });
        } catch (e) {
          if (!(e instanceof ApiError) || e.status !== 409) throw e;
          await api(`/api/v1/saved-queries/${encodeURIComponent(name)}`, { method: "PUT", json: body });
        }
      }
      this.form.hidden = true;
      await this.load();
    } catch (e) {
      if (!(e instanceof ApiError)) throw e;
      this.showError(e.status === 403 ? `Not saved: ${e.message}` : e.message);
    }
  }
}
