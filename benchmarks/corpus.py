"""A deterministic, realistic log corpus with every benchmark query's answer known in advance.

One day of logs from 20 services (Zipf-like traffic shares) on 200 hosts,
following a daily rate curve; levels about 80% info, 10% debug, 7% warn, 3%
error, with bursts of errors; JSON application logs, nginx access logs, Java
logs with multi-line stack traces and syslog (RFC 3164 and 5424), built from
400+ message templates with realistic variable parts. Needle tokens are
planted at known positions, so the benchmarks check answers, not only time.

Draws are vectorised with numpy; only the final string formatting is a
Python loop.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

DAY = datetime(2026, 11, 1, tzinfo=UTC)
LEVELS = ("debug", "info", "warn", "error", "fatal")
LEVEL_P = (0.10, 0.80, 0.0695, 0.03, 0.0005)

#: (name, format) in traffic rank order: rank 1 gets the most lines.
SERVICES: tuple[tuple[str, str], ...] = (
    ("api-gateway", "json"), ("nginx-edge", "nginx"), ("orders", "json"), ("inventory", "java"),
    ("users", "json"), ("frontend", "nginx"), ("payments", "json"), ("search", "java"),
    ("cart", "json"), ("sshd", "syslog3164"), ("catalog", "json"), ("shipping", "java"),
    ("auth", "json"), ("nginx-static", "nginx"), ("billing", "json"), ("email", "java"),
    ("recommendations", "json"), ("cron", "syslog5424"), ("notifications", "json"), ("checkout", "json"),
)
N_HOSTS = 200

_ACTIONS = ("created", "updated", "deleted", "fetched", "validated", "cached", "retried", "rejected",
            "queued", "processed")
_OBJECTS = ("order", "user", "session", "payment", "invoice", "cart", "product", "shipment", "token", "report")
_SHAPES = {
    "debug": "{obj} {id} {act} cache_hit={hit} shard={shard}",
    "info": "{obj} {id} {act} in {ms}ms",
    "warn": "slow {obj} {id}: {act} took {ms}ms (budget 250ms)",
    "error": "failed to get {obj} {id} {act}: {err}",
    "fatal": "giving up on {obj} {id} after {n} attempts: {err}",
}
_ERRORS = ("connection refused", "deadline exceeded", "upstream returned 503", "constraint violation",
           "broker unavailable", "permission denied", "no space left on device", "invalid token")
_PATHS = ("/api/v1/orders", "/api/v1/orders/{id}", "/api/v1/users/{id}", "/api/v1/cart", "/api/v1/search",
          "/static/js/app.{hex}.js", "/static/css/site.{hex}.css", "/login", "/logout", "/healthz",
          "/api/v2/payments/{id}", "/api/v2/catalog/items", "/images/{id}.webp", "/favicon.ico", "/metrics")
_SYSLOG = {
    "sshd": ("Accepted publickey for deploy from {ip} port {port} ssh2",
             "Connection closed by {ip} port {port} [preauth]",
             "Failed password for invalid user admin from {ip} port {port} ssh2",
             "pam_unix(sshd:session): session opened for user deploy",
             "error: maximum authentication attempts exceeded for root from {ip} port {port}",
             "Disconnected from user deploy {ip} port {port}",
             "Received disconnect from {ip} port {port}:11: disconnected by user"),
    "cron": ("(root) CMD (/usr/local/bin/backup.sh --incremental)",
             "(www-data) CMD (php /var/www/cron.php)",
             "pam_unix(cron:session): session closed for user root",
             "(CRON) info (No MTA installed, discarding output)",
             "(root) CMD (run-parts /etc/cron.hourly)",
             "(CRON) error (grandchild #{n} failed with exit status 1)"),
}
_SYSLOG_SEV = {"debug": 7, "info": 6, "warn": 4, "error": 3, "fatal": 2}
_TRACE = ("\tat com.shop.{svc}.{cls}.handle({cls}.java:{line})",
          "\tat com.shop.common.Retry.call(Retry.java:57)",
          "\tat java.base/java.util.concurrent.ThreadPoolExecutor.runWorker(ThreadPoolExecutor.java:1144)",
          "\tat java.base/java.lang.Thread.run(Thread.java:1583)")

#: Planted tokens and where the benchmark queries look for them.
NEEDLE = "needle7f3a9c2e"
SUBSTRING = "ConnectionResetByPeer"
Q2_SERVICE, Q2_LEVEL, Q2_HOUR = "payments", "error", 14
Q5_START_HOUR, Q5_HOURS = 6, 6


def template_count() -> int:
    """Distinct message templates the corpus draws from."""
    return len(_ACTIONS) * len(_OBJECTS) * len(_SHAPES) + len(_PATHS) * 2 + sum(len(v) for v in _SYSLOG.values())


@dataclass
class Truth:
    """Answers every benchmark query must give, computed from the draws."""

    lines: int
    physical_lines: int
    raw_bytes: int
    day_start_us: int
    needle: str
    needle_count: int
    substring: str
    substring_in_window: int
    substring_total: int
    q2_ts_us: list[int] = field(default_factory=list)     # newest first, at most 100
    q3_buckets: dict[str, dict[str, int]] = field(default_factory=dict)   # bucket start us -> level -> count
    q4_top_services: list[tuple[str, int]] = field(default_factory=list)
    per_level: dict[str, int] = field(default_factory=dict)
    per_service: dict[str, int] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Truth:
        return cls(**json.loads(path.read_text()))


def _daily_minutes(rng: np.random.Generator, n: int) -> np.ndarray:
    minute = np.arange(1440)
    # Quiet at night, a morning ramp, a lunch dip and an evening shoulder.
    curve = 0.25 + np.exp(-((minute - 600) / 180.0) ** 2) + 0.7 * np.exp(-((minute - 1020) / 150.0) ** 2) \
        - 0.15 * np.exp(-((minute - 750) / 30.0) ** 2)
    p = curve / curve.sum()
    return rng.choice(1440, size=n, p=p)


def generate(out_dir: Path, lines: int, *, seed: int = 42, day: datetime = DAY) -> Truth:
    """Write ``<out_dir>/<service>.log`` for ``lines`` records and return the answers."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = lines
    weights = 1.0 / np.arange(1, len(SERVICES) + 1) ** 1.07
    svc = rng.choice(len(SERVICES), size=n, p=weights / weights.sum())
    host = rng.integers(0, N_HOSTS, size=n)
    ms = _daily_minutes(rng, n).astype(np.int64) * 60_000 + rng.integers(0, 60_000, size=n)
    level = rng.choice(len(LEVELS), size=n, p=np.array(LEVEL_P) / sum(LEVEL_P))
    # Error bursts: ten 10-minute windows where one service fails a lot.
    for _ in range(10):
        s, start = rng.integers(0, len(SERVICES)), rng.integers(0, 1430) * 60_000
        hit = (svc == s) & (ms >= start) & (ms < start + 600_000) & (rng.random(n) < 0.4)
        level[hit] = LEVELS.index("error")
    kinds = np.array([k for _, k in SERVICES])[svc]
    # Access logs carry no debug; their level comes from the status class.
    level[(kinds == "nginx") & (level == 0)] = 1
    level[(kinds == "nginx") & (level == 4)] = 3
    # Needles: a rare token in 7 records; a substring in records inside and outside a window.
    needle_at = set(rng.choice(n, size=min(7, n), replace=False).tolist())
    sub_candidates = rng.choice(n, size=min(n, max(60, n // 20_000)), replace=False)
    substring_at = set(sub_candidates.tolist()) - needle_at
    order = np.lexsort((ms, svc))           # per service, in time order
    ts_us = day_start_us = int(day.timestamp() * 1_000_000)
    ts_us = ts_us + ms * 1000

    files = {name: open(out_dir / f"{name}.log", "w", buffering=1 << 20) for name, _ in SERVICES}  # noqa: SIM115
    r_int = rng.integers(0, 1 << 62, size=n).tolist()
    physical = 0
    raw_bytes = 0
    stored_ts = ts_us.copy()
    continuation = np.zeros(n, dtype=np.int64)      # lines of a record after its first (stack traces)
    try:
        svc_l, host_l, lvl_l, ms_l = svc.tolist(), host.tolist(), level.tolist(), ms.tolist()
        for i in order.tolist():
            name, kind = SERVICES[svc_l[i]]
            lvl = LEVELS[lvl_l[i]]
            r = r_int[i]
            t = day + timedelta(milliseconds=ms_l[i])
            extra = ""
            if i in needle_at:
                extra = f" marker={NEEDLE}"
            elif i in substring_at:
                extra = " cause=" + (SUBSTRING, SUBSTRING.lower(), SUBSTRING.upper())[r % 3]
            if kind == "json":
                msg = _SHAPES[lvl].format(obj=_OBJECTS[r % 10], id=r % 1_000_000, act=_ACTIONS[(r >> 4) % 10],
                                          hit=("true", "false")[(r >> 8) & 1], shard=(r >> 9) % 64,
                                          ms=(r >> 12) % 3000, err=_ERRORS[(r >> 20) % 8], n=(r >> 24) % 9 + 1)
                text = (f'{{"time":"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond // 1000:03d}Z","level":"{lvl}",'
                        f'"service":"{name}","host":"host-{host_l[i]:03d}","msg":"{msg}{extra}",'
                        f'"trace_id":"{r:016x}{(r * 2654435761) & 0xFFFFFFFFFFFFFFFF:016x}",'
                        f'"duration_ms":{(r >> 12) % 3000},"user_id":{(r >> 30) % 50000},'
                        f'"region":"{("eu-west-1", "us-east-1", "ap-south-1")[(r >> 40) % 3]}"}}')
                out = [text]
            elif kind == "java":
                msg = _SHAPES[lvl].format(obj=_OBJECTS[r % 10], id=r % 1_000_000, act=_ACTIONS[(r >> 4) % 10],
                                          hit=("true", "false")[(r >> 8) & 1], shard=(r >> 9) % 64,
                                          ms=(r >> 12) % 3000, err=_ERRORS[(r >> 20) % 8], n=(r >> 24) % 9 + 1)
                head = (f"{t:%Y-%m-%d %H:%M:%S},{t.microsecond // 1000:03d} {lvl.upper():5} "
                        f"[pool-{(r >> 32) % 8}-thread-{(r >> 36) % 32}] com.shop.{name}.Worker - {msg}{extra}")
                out = [head]
                if lvl in ("error", "fatal") and (r >> 44) % 3 == 0:
                    out.append(f"java.lang.IllegalStateException: {_ERRORS[(r >> 20) % 8]}")
                    cls_name = ("OrderService", "StockLevel", "Courier", "Mailer")[(r >> 46) % 4]
                    out += [f.format(svc=name, cls=cls_name, line=(r >> 48) % 900 + 10) for f in _TRACE]
            elif kind == "nginx":
                status = {"info": (200, 200, 200, 304, 201, 302)[(r >> 5) % 6],
                          "warn": (404, 400, 403, 429)[(r >> 5) % 4],
                          "error": (500, 502, 503, 504)[(r >> 5) % 4]}[lvl]
                path = _PATHS[r % len(_PATHS)].format(id=(r >> 8) % 100_000, hex=f"{(r >> 8) & 0xFFFFFF:06x}")
                if extra:
                    path += "?" + extra.strip()
                ip = f"{(r >> 16) % 223 + 1}.{(r >> 24) % 256}.{(r >> 32) % 256}.{(r >> 40) % 254 + 1}"
                method = ("GET", "GET", "POST", "PUT")[(r >> 50) % 4]
                agent = f"Mozilla/5.0 (X11; Linux x86_64) Firefox/{(r >> 52) % 30 + 110}.0"
                out = [f'{ip} - - [{t:%d/%b/%Y:%H:%M:%S} +0000] "{method} {path} HTTP/1.1" '
                       f'{status} {(r >> 12) % 90_000} "-" "{agent}"']
                stored_ts[i] = (ts_us[i] // 1_000_000) * 1_000_000
            else:
                pri = 3 * 8 + _SYSLOG_SEV[lvl]
                msg = _SYSLOG[name][r % len(_SYSLOG[name])].format(
                    ip=f"203.0.{(r >> 8) % 256}.{(r >> 16) % 254 + 1}", port=(r >> 24) % 60000 + 1024,
                    n=(r >> 40) % 90000)
                if kind == "syslog3164":
                    out = [f"<{pri}>{t:%b} {t.day:2d} {t:%H:%M:%S} host-{host_l[i]:03d} "
                           f"{name}[{(r >> 30) % 30000 + 100}]: {msg}{extra}"]
                    stored_ts[i] = (ts_us[i] // 1_000_000) * 1_000_000
                else:
                    out = [f"<{pri}>1 {t:%Y-%m-%dT%H:%M:%S}.{t.microsecond // 1000:03d}Z host-{host_l[i]:03d} {name} "
                           f"{(r >> 30) % 30000 + 100} - - {msg}{extra}"]
            block = "\n".join(out) + "\n"
            continuation[i] = len(out) - 1
            files[name].write(block)
            physical += len(out)
            raw_bytes += len(block.encode())
    finally:
        for f in files.values():
            f.close()

    return truth_of(n, physical, raw_bytes, day_start_us, svc, level, stored_ts, needle_at, substring_at,
                    continuation=continuation)


def truth_of(n: int, physical: int, raw_bytes: int, day_start_us: int, svc: np.ndarray, level: np.ndarray,
           ts: np.ndarray, needle_at: set[int], substring_at: set[int],
           services: tuple[str, ...] | None = None, continuation: np.ndarray | None = None) -> Truth:
    """The answers, from each record's service and level index (into ``services`` and
    :data:`LEVELS`), stored time, and where the needle and the substring were planted.

    ``continuation``: per record, its lines after the first (a stack trace's). Each is stored as a
    row of its own at the record's time (``attrs.ts_parse = inherited``) with level ``unknown``,
    so q3 counts them; the other answers are about records."""
    names = list(services) if services is not None else [s for s, _ in SERVICES]
    q2_sel = (svc == names.index(Q2_SERVICE)) & (level == LEVELS.index(Q2_LEVEL)) & \
        (ts >= day_start_us + Q2_HOUR * 3_600_000_000) & (ts < day_start_us + (Q2_HOUR + 1) * 3_600_000_000)
    q2 = np.sort(ts[q2_sel])[::-1][:100]
    bucket = (ts - day_start_us) // 300_000_000
    q3: dict[str, dict[str, int]] = {}
    keys, counts = np.unique(bucket * 8 + level, return_counts=True)
    for k, c in zip(keys.tolist(), counts.tolist(), strict=True):
        start = str(day_start_us + (k // 8) * 300_000_000)
        q3.setdefault(start, {})[LEVELS[k % 8]] = c
    if continuation is not None and continuation.any():
        extra = np.bincount(bucket, weights=continuation, minlength=int(bucket.max()) + 1)
        for k in np.flatnonzero(extra).tolist():
            q3.setdefault(str(day_start_us + k * 300_000_000), {})["unknown"] = int(extra[k])
    errors = np.bincount(svc[level == LEVELS.index("error")], minlength=len(names))
    top = sorted(((names[i], int(errors[i])) for i in range(len(names)) if errors[i]),
                 key=lambda x: (-x[1], x[0]))[:10]
    w_lo = day_start_us + Q5_START_HOUR * 3_600_000_000
    w_hi = w_lo + Q5_HOURS * 3_600_000_000
    sub = np.fromiter(substring_at, dtype=np.int64, count=len(substring_at))
    return Truth(
        lines=n, physical_lines=physical, raw_bytes=raw_bytes, day_start_us=day_start_us,
        needle=NEEDLE, needle_count=len(needle_at), substring=SUBSTRING,
        substring_in_window=int(((ts[sub] >= w_lo) & (ts[sub] < w_hi)).sum()) if len(sub) else 0,
        substring_total=len(substring_at), q2_ts_us=q2.tolist(), q3_buckets=q3, q4_top_services=top,
        per_level={LEVELS[i]: int(c) for i, c in enumerate(np.bincount(level, minlength=len(LEVELS)))},
        per_service={names[i]: int(c) for i, c in enumerate(np.bincount(svc, minlength=len(names)))},
    )
