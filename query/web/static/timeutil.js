// Times: relative (now-15m), RFC 3339, shown in the browser's zone or UTC.

const UNITS = { us: 1e-3, ms: 1, s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 604800e3 };

export function durationMs(text) {
  const re = /(\d+)(us|ms|s|m|h|d|w)/y;
  let total = 0, m, pos = 0;
  while ((m = re.exec(text))) { total += Number(m[1]) * UNITS[m[2]]; pos = re.lastIndex; }
  return pos === text.length && pos > 0 ? total : NaN;
}

/** ``now``, ``now-1h``, RFC 3339 (no zone: ``tz``'s), epoch seconds/ms -> epoch ms (NaN when unreadable). */
export function toMs(text, tz = "utc", now = Date.now()) {
  const t = String(text || "").trim();
  const rel = /^now(?:\s*([+-])\s*(\S+))?$/.exec(t);
  if (rel) {
    if (!rel[1]) return now;
    const d = durationMs(rel[2]);
    return rel[1] === "-" ? now - d : now + d;
  }
  if (/^\d+(\.\d+)?$/.test(t)) {
    const n = Number(t);
    return t.split(".")[0].length <= 11 ? n * 1000 : t.length <= 14 ? n : n / 1000;
  }
  const m = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?\s*(Z|z|[+-]\d{2}:?\d{2})?$/.exec(t);
  if (!m) return NaN;
  const [, y, mo, d, h = "0", mi = "0", s = "0", frac = "", zone] = m;
  const ms = Number((frac + "000").slice(0, 3));
  const args = [Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s), ms];
  if (zone) {
    let base = Date.UTC(...args);
    if (!/^[Zz]$/.test(zone)) {
      const sign = zone[0] === "-" ? -1 : 1;
      const digits = zone.slice(1).replace(":", "");
      base -= sign * (Number(digits.slice(0, 2)) * 60 + Number(digits.slice(2))) * 60e3;
    }
    return base;
  }
  return tz === "utc" ? Date.UTC(...args) : new Date(...args).getTime();
}

export function isRelative(text) { return /^now/.test(String(text || "").trim()); }
export function hasZone(text) { return /(Z|z|[+-]\d{2}:?\d{2})$/.test(String(text).trim()); }

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** ``YYYY-MM-DD HH:MM:SS.mmm`` in the zone; ``ms`` a number or an RFC 3339 string. */
export function formatTime(ms, tz, { millis = true, sep = " " } = {}) {
  if (typeof ms === "string") ms = toMs(ms);
  const d = new Date(ms);
  const u = tz === "utc";
  const parts = u
    ? [d.getUTCFullYear(), d.getUTCMonth() + 1, d.getUTCDate(), d.getUTCHours(), d.getUTCMinutes(), d.getUTCSeconds(), d.getUTCMilliseconds()]
    : [d.getFullYear(), d.getMonth() + 1, d.getDate(), d.getHours(), d.getMinutes(), d.getSeconds(), d.getMilliseconds()];
  const [y, mo, da, h, mi, s, msec] = parts;
  return `${y}-${pad(mo)}-${pad(da)}${sep}${pad(h)}:${pad(mi)}:${pad(s)}${millis ? "." + pad(msec, 3) : ""}`;
}

/** A short tick label: time of day, with the date when the span is long. */
export function tickLabel(ms, tz, spanMs) {
  const full = formatTime(ms, tz, { millis: false });
  if (spanMs > 2 * 86400e3) return full.slice(5, 16);
  if (spanMs > 600e3) return full.slice(11, 16);
  return full.slice(11, 19);
}

export function iso(ms) { return new Date(ms).toISOString(); }

const NICE_S = [1, 2, 5, 10, 15, 20, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 3600, 7200, 10800, 14400,
  21600, 43200, 86400, 172800, 604800];

/** A round bucket width giving at most 100 (and, rounding allowing, at least about 60) bars. */
export function pickInterval(spanMs) {
  const s = NICE_S.find((n) => n * 1000 * 100 >= spanMs) || NICE_S[NICE_S.length - 1];
  if (s % 86400 === 0) return `${s / 86400}d`;
  if (s % 3600 === 0) return `${s / 3600}h`;
  if (s % 60 === 0) return `${s / 60}m`;
  return `${s}s`;
}
