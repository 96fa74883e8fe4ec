// The search page: state in the URL, and the parts wired together.

import { api, ApiError, hooks, setKey, chosenTenant, chooseTenant } from "./api.js";
import { h } from "./dom.js";
import { Histogram } from "./histogram.js";
import { QueryBar } from "./querybar.js";
import { FieldsSidebar, SavedQueries } from "./sidebar.js";
import { ResultsTable, rowIdentity } from "./table.js";
import { formatTime, hasZone, iso, isRelative, pickInterval, toMs } from "./timeutil.js";

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const FIRST_PAGE = 200, NEXT_PAGE = 500, TAIL_EVERY_MS = 2000;
const RANGES = { "range-15m": "now-15m", "range-1h": "now-1h", "range-24h": "now-24h", "range-7d": "now-7d" };

let state = readUrl();
let running = null;       // AbortController of the current search
let cursor = null, loadingMore = false, tailTimer = 0, tailBusy = false;

// -- URL state -----------------------------------------------------------------

function readUrl() {
  const p = new URLSearchParams(location.search);
  return { q: p.get("q") ?? "", start: p.get("start") || "now-1h", end: p.get("end") || "now",
    tz: p.get("tz") === "utc" ? "utc" : "local" };
}

function urlOf(s) {
  const p = new URLSearchParams();
  p.set("q", s.q); p.set("start", s.start); p.set("end", s.end); p.set("tz", s.tz);
  const tenant = new URLSearchParams(location.search).get("tenant");
  if (tenant) p.set("tenant", tenant);
  return "?" + p.toString();
}

function writeUrl(push) {
  const url = urlOf(state);
  if (url === location.search) return;
  if (push) history.pushState(null, "", url); else history.replaceState(null, "", url);
}

// -- parts -------------------------------------------------------------------------

const queryInput = $("query-input");
const bar = new QueryBar(queryInput, $("completion"), { range: () => apiRange(), onRun: () => runFromInputs() });
const histogram = new Histogram($("histogram"), {
  onZoom: (a, b) => run({ ...state, q: queryInput.value, start: iso(a), end: iso(b) }, true),
});
const table = new ResultsTable($("results"), {
  onNearEnd: () => loadMore(),
  onFilter: (term) => addFilter(term),
  onContext: (row) => openContext(row),
});
const fields = new FieldsSidebar($("fields-sidebar"), { onFilter: (term) => addFilter(term) });
const saved = new SavedQueries({
  list: $("saved-list"), button: $("save-button"), form: document.getElementById("save-form"),
  name: $("save-name"), confirm: $("save-confirm"), error: $("saved-error"),
}, {
  current: () => ({ q: queryInput.value, start: state.start, end: state.end }),
  onRun: (s) => run({ ...state, q: s.query || "", start: s.params?.start || "now-1h", end: s.params?.end || "now" }, true),
});

function apiRange() { return { start: state.start, end: state.end }; }

function addFilter(term) {
  const q = queryInput.value.trim();
  run({ ...state, q: q ? `${q} ${term}` : term }, true);
}

// -- running a search ----------------------------------------------------------------

function runFromInputs() { run({ ...state, q: queryInput.value }, true); }

function showQueryError(e, q) {
  const box = $("query-error");
  if (!e) { box.hidden = true; box.replaceChildren(); return; }
  const b = e.body || {};
  const parts = [h("div", { class: "err-msg", text: e.message })];
  if (Number.isInteger(b.position)) {
    const text = b.query ?? q;
    parts.push(h("div", { class: "err-at", text: `at ${b.position}` }),
      h("pre", { class: "err-caret", text: `${text}\n${" ".repeat(b.position)}^` }));
    queryInput.setSelectionRange(b.position, Math.min(text.length, b.position + 1));
  }
  box.replaceChildren(...parts);
  box.hidden = false;
}

function showAuthError(message) {
  const box = $("auth-error");
  box.textContent = message ? `Refused: ${message}` : "";
  box.hidden = !message;
}
hooks.forbidden = (message) => showAuthError(message);

function syncControls() {
  if (queryInput.value !== state.q) queryInput.value = state.q;
  for (const [id, start] of Object.entries(RANGES)) $(id).classList.toggle("active", state.start === start && state.end === "now");
  $("tz-toggle").textContent = state.tz === "utc" ? "UTC" : "Local";
  $("tz-toggle").title = state.tz === "utc" ? "Times in UTC (click for the browser's zone)" : "Times in the browser's zone (click for UTC)";
  const show = (t) => {
    const ms = toMs(t, state.tz);
    if (Number.isNaN(ms)) return t;
    return formatTime(ms, state.tz, { sep: "T", millis: !isRelative(t) && ms % 1000 !== 0 }) + (state.tz === "utc" ? "Z" : "");
  };
  $("range-start").value = show(state.start);
  $("range-end").value = show(state.end);
}

function setStatus(text) { document.getElementById("status").textContent = text; }
function setCount(n, more) {
  $("row-count").textContent = String(n);
  document.getElementById("more").textContent = more ? "(more on scroll)" : "";
}

async function run(next, push) {
  state = { ...next };
  writeUrl(push);
  syncControls();
  bar.close();
  running?.abort();
  const ctl = new AbortController();
  running = ctl;
  cursor = null;
  showQueryError(null);
  document.title = state.q ? `${state.q} - loglake` : "loglake";
  const range = apiRange();
  const base = { q: state.q, ...range };
  const span = toMs(state.end, state.tz) - toMs(state.start, state.tz);
  const interval = Number.isFinite(span) && span > 0 ? pickInterval(span) : undefined;
  setStatus("searching\u2026");
  document.body.classList.add("busy");
  const t0 = performance.now();
  const searching = api("/api/v1/search", { params: { ...base, limit: FIRST_PAGE }, signal: ctl.signal })
    .then((r) => {
      if (running !== ctl) return;
      cursor = r.cursor;
      table.setRows(r.rows);
      setCount(r.rows.length, !!r.cursor);
      showAuthError("");
      setStatus(`${Math.round(performance.now() - t0)} ms`);
      if (!r.rows.length) setStatus("no matching lines in this range");
    })
    .catch((e) => fail(e, ctl));
  await searching;
  if (running !== ctl) return;
  document.body.classList.remove("busy");
  // The rows first: the histogram and the sidebar ask only once they are painted, so on a small
  // machine the three queries do not share the cores while the user waits for the rows.
  api("/api/v1/aggregate", { params: { ...base, by: "level", interval }, signal: ctl.signal })
    .then((r) => { if (running === ctl) histogram.set(r, state.tz); })
    .catch((e) => { if (running === ctl && e.name !== "AbortError") histogram.clear(e.message); });
  fields.load(base, ctl.signal);
}

function fail(e, ctl) {
  if (e.name === "AbortError" || running !== ctl) return;
  table.setRows([]);
  setCount(0, false);
  setStatus("");
  document.body.classList.remove("busy");
  if (e instanceof ApiError) showQueryError(e, state.q);
  else showQueryError({ message: `The server could not be reached: ${e.message}`, body: {} });
}

async function loadMore() {
  if (!cursor || loadingMore) return;
  loadingMore = true;
  const ctl = running;
  try {
    const r = await api("/api/v1/search", { params: { q: state.q, ...apiRange(), limit: NEXT_PAGE, cursor },
      signal: ctl?.signal });
    if (ctl !== running) return;
    cursor = r.cursor;
    table.append(r.rows);
    setCount(table.rows.length, !!cursor);
  } catch (e) {
    if (e.name !== "AbortError" && ctl === running) setStatus(`more rows failed: ${e.message}`);
  } finally {
    loadingMore = false;
  }
}

// -- live tail ------------------------------------------------------------------------

function setTail(on) {
  clearInterval(tailTimer);
  tailTimer = on ? setInterval(pollTail, TAIL_EVERY_MS) : 0;
  $("tail-toggle").textContent = on ? "Stop" : "Live";
  $("tail-toggle").classList.toggle("active", on);
  if (on) pollTail();
}

async function pollTail() {
  if (tailBusy) return;
  tailBusy = true;
  const ctl = running;
  try {
    const newest = table.rows[0]?.ts;
    const r = await api("/api/v1/search", {
      params: { q: state.q, start: newest || state.start, end: "now", limit: 1000 }, signal: ctl?.signal });
    if (ctl !== running || !tailTimer) return;
    const seen = new Set(table.rows.filter((x) => x.ts === newest).map(rowIdentity));
    const fresh = r.rows.filter((x) => x.ts !== newest || !seen.has(rowIdentity(x)));
    if (fresh.length) {
      table.prepend(fresh);
      setCount(table.rows.length, !!cursor);
      setStatus(`live: ${fresh.length} new at ${formatTime(Date.now(), state.tz, { millis: false }).slice(11)}`);
    }
  } catch (e) {
    if (e.name !== "AbortError") setStatus(`live: ${e.message}`);
  } finally {
    tailBusy = false;
  }
}

// -- context -----------------------------------------------------------------------------

function micros(ts) {
  const m = /\.(\d+)Z$/.exec(ts);
  const frac = m ? (m[1] + "000000").slice(3, 6) : "000";
  return Math.floor(toMs(ts) / 1000) * 1e6 + (toMs(ts) % 1000) * 1000 + Number(frac);
}
function isoMicros(us) {
  const ms = Math.floor(us / 1000);
  return new Date(ms).toISOString().replace(/Z$/, String(us - ms * 1000).padStart(3, "0") + "Z");
}

async function openContext(row) {
  const panel = $("context-panel"), list = document.getElementById("context-list");
  panel.hidden = false;
  const source = row.source ?? "";
  document.getElementById("context-title").textContent = source ? `Around this line in ${source}` : `Around this line (${row.service})`;
  list.replaceChildren(h("p", { class: "muted", text: "loading\u2026" }));
  const esc = (v) => `"${String(v).replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
  const q = source ? `source:${esc(source)}` : `service:${esc(row.service)}`;
  const at = micros(row.ts), day = 86400e6;
  try {
    const [before, after] = await Promise.all([
      api("/api/v1/search", { params: { q, start: isoMicros(at - day), end: isoMicros(at + 1), limit: 30, order: "desc" } }),
      api("/api/v1/search", { params: { q, start: isoMicros(at + 1), end: isoMicros(at + day), limit: 30, order: "asc" } }),
    ]);
    const hit = rowIdentity(row);
    const rows = [...before.rows].reverse().concat(after.rows);
    let hitEl = null;
    list.replaceChildren(...rows.map((r) => {
      const isHit = rowIdentity(r) === hit && !hitEl;
      const el = h("div", { class: `context-row${isHit ? " hit" : ""}`, "data-testid": "context-row", "data-hit": isHit ? "true" : "false" },
        h("span", { class: "c-time", text: formatTime(r.ts, state.tz) }),
        h("span", { class: `c-level lvl-${r.level || "none"}`, text: r.level ?? "" }),
        h("span", { class: "c-message", text: r.message ?? "" }));
      if (isHit) hitEl = el;
      return el;
    }));
    hitEl?.scrollIntoView({ block: "center" });
  } catch (e) {
    list.replaceChildren(h("p", { class: "error", text: e.message }));
  }
}

function closeContext() { $("context-panel").hidden = true; }

// -- keys and tenants --------------------------------------------------------------------

hooks.askKey = (message) => new Promise((resolve) => {
  const dialog = $("key-prompt"), input = $("key-input"), form = document.getElementById("key-form");
  const say = (text) => { document.getElementById("key-message").textContent = text; };
  say(message);
  dialog.hidden = false;
  input.value = "";
  input.focus();
  form.onsubmit = async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    // Checked once here, so the requests waiting for a key retry only with one the server takes.
    const headers = { Authorization: `Bearer ${key}` };
    if (chosenTenant()) headers["X-Scope-OrgID"] = chosenTenant();
    let r;
    try {
      r = await fetch("/api/v1/whoami", { headers });
    } catch (err) {
      say(`The server could not be reached: ${err.message}`);
      return;
    }
    if (r.status === 401 || r.status === 429) {
      const b = await r.json().catch(() => ({}));
      say(`The key was refused: ${b.message || r.status}`);
      input.select();
      return;
    }
    setKey(key);
    dialog.hidden = true;
    form.onsubmit = null;
    resolve();
    showTenant();
    saved.load();
  };
});

async function showTenant() {
  const label = $("tenant-label");
  try {
    const me = await api("/api/v1/whoami");
    label.textContent = me.tenant;
    label.title = me.auth ? `tenant read with key ${me.key_id} (${me.role})` : "authentication is off";
    const pick = document.getElementById("tenant-pick");
    pick.hidden = me.tenants.length < 2;
    pick.replaceChildren(...me.tenants.map((t) => h("option", { value: t, selected: t === me.tenant }, t)));
  } catch (e) {
    label.textContent = chosenTenant() || "?";
  }
}
document.getElementById("tenant-pick").addEventListener("change", (e) => {
  chooseTenant(e.target.value);
  bar.invalidate();
  showTenant();
  saved.load();
  run(state, false);
});

// -- controls -------------------------------------------------------------------------------

document.getElementById("query-form").addEventListener("submit", (e) => { e.preventDefault(); runFromInputs(); });
for (const [id, start] of Object.entries(RANGES)) {
  $(id).addEventListener("click", () => run({ ...state, q: queryInput.value, start, end: "now" }, true));
}
function readInput(text) {
  const t = text.trim();
  if (!t || isRelative(t) || (hasZone(t) && !Number.isNaN(toMs(t)))) return t;
  const ms = toMs(t, state.tz);
  return Number.isNaN(ms) ? t : iso(ms);     // the server says what is wrong with it
}
$("range-apply").addEventListener("click", () => {
  run({ ...state, q: queryInput.value, start: readInput($("range-start").value) || "now-1h",
    end: readInput($("range-end").value) || "now" }, true);
});
for (const id of ["range-start", "range-end"]) {
  $(id).addEventListener("keydown", (e) => { if (e.key === "Enter") $("range-apply").click(); });
}
$("tz-toggle").addEventListener("click", () => {
  state = { ...state, tz: state.tz === "utc" ? "local" : "utc" };
  writeUrl(false);
  syncControls();
  table.setTz(state.tz);
  histogram.setTz(state.tz);
});
$("tail-toggle").addEventListener("click", () => setTail(!tailTimer));
$("context-close").addEventListener("click", closeContext);
document.addEventListener("keydown", (e) => {
  const typing = e.target instanceof HTMLElement && (e.target.matches("input, textarea, select") || e.target.isContentEditable);
  if (e.key === "/" && !typing && !e.ctrlKey && !e.metaKey) {
    e.preventDefault();
    queryInput.focus();
    queryInput.select();
  } else if (e.key === "Escape") {
    closeContext();
  }
});
window.addEventListener("popstate", () => run(readUrl(), false));

run(state, false);
saved.load();
showTenant();
