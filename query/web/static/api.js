// Talking to the server: the key (sessionStorage only), the tenant, 401 -> ask for a key and retry.

const KEY = "loglake.key";
const TENANT = "loglake.tenant";

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

export const hooks = {
  // (message) -> Promise resolved once a new key is stored; set by the page.
  askKey: null,
  // (message) called on any 403.
  forbidden: null,
};

let waiting = null;

export function getKey() { return sessionStorage.getItem(KEY); }
export function setKey(key) { sessionStorage.setItem(KEY, key); }

/** The tenant the page asks for: ?tenant= in the URL, else the one picked this session, else the key's. */
export function chosenTenant() {
  return new URLSearchParams(location.search).get("tenant") || sessionStorage.getItem(TENANT) || "";
}
export function chooseTenant(t) {
  if (t) sessionStorage.setItem(TENANT, t); else sessionStorage.removeItem(TENANT);
}

function askKey(message) {
  if (!waiting) {
    waiting = hooks.askKey(message).finally(() => { waiting = null; });
  }
  return waiting;
}

export function queryString(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === "") continue;
    if (Array.isArray(v)) v.forEach((x) => p.append(k, x)); else p.set(k, String(v));
  }
  const s = p.toString();
  return s ? "?" + s : "";
}

async function body(r) {
  try { return await r.json(); } catch { return {}; }
}

/** JSON from ``path``; throws ApiError (status, body) or the fetch's AbortError. */
export async function api(path, { params, method = "GET", json, signal } = {}) {
  for (let attempt = 0; ; attempt++) {
    if (waiting) await waiting;      // a key is being asked for: send with it
    const headers = { Accept: "application/json" };
    const key = getKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    const tenant = chosenTenant();
    if (tenant) headers["X-Scope-OrgID"] = tenant;
    if (json !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path + queryString(params), {
      method, headers, signal, body: json === undefined ? undefined : JSON.stringify(json),
    });
    if (r.status === 401 && hooks.askKey && attempt < 20) {
      const b = await body(r);
      await askKey(key ? `The key was refused: ${b.message || "unauthorized"}` : "This server needs an API key.");
      continue;
    }
    if (!r.ok) {
      const b = await body(r);
      if (r.status === 403 && hooks.forbidden) hooks.forbidden(b.message || "forbidden");
      throw new ApiError(r.status, b);
    }
    return r.status === 204 ? null : r.json();
  }
}
