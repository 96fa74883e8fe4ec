"""Test lines in mixed formats, each carrying a unique id token and a known timestamp."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

UID_RE = re.compile(r"uid(\d{6})x")
FILES = ("app.log", "worker.log", "nginx.log")


@dataclass(frozen=True)
class Line:
    uid: int
    file: str
    text: str
    ts: datetime          # the timestamp the pipeline should parse from the line

    @property
    def token(self) -> str:
        return f"uid{self.uid:06d}x"


def make_line(uid: int, ts: datetime) -> Line:
    """Line ``uid``: JSON, log4j-style plain text or access log, by uid."""
    token = f"uid{uid:06d}x"
    kind = uid % 3
    if kind == 0:
        text = orjson.dumps({"time": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                             "level": ["info", "warn", "error"][uid % 5 % 3], "msg": f"handled request {token}",
                             "service": "app", "request_id": uid}).decode()
        return Line(uid, FILES[0], text, ts.replace(microsecond=ts.microsecond // 1000 * 1000))
    if kind == 1:
        stamp = ts.strftime("%Y-%m-%d %H:%M:%S,") + f"{ts.microsecond // 1000:03d}"
        text = f"{stamp} {['INFO', 'WARN', 'ERROR', 'DEBUG'][uid % 4]} [main] com.example.Worker - job {token} done"
        return Line(uid, FILES[1], text, ts.replace(microsecond=ts.microsecond // 1000 * 1000))
    text = (f'10.0.{uid % 256}.{uid % 200 + 1} - - [{ts.strftime("%d/%b/%Y:%H:%M:%S +0000")}] '
            f'"GET /items/{token} HTTP/1.1" {access_status(uid)} {uid % 5000} "-" "curl/8.0"')
    return Line(uid, FILES[2], text, ts.replace(microsecond=0))


def access_status(uid: int) -> int:
    return (200, 200, 404, 500, 200, 503, 302)[uid // 3 % 7]


def make_lines(n: int, base: datetime, step: timedelta, start_uid: int = 0) -> list[Line]:
    return [make_line(start_uid + i, base + i * step) for i in range(n)]


def append(directory: Path, lines: list[Line]) -> None:
    by_file: dict[str, list[str]] = {}
    for line in lines:
        by_file.setdefault(line.file, []).append(line.text)
    for name, texts in by_file.items():
        with open(directory / name, "a") as f:
            f.write("\n".join(texts) + "\n")


def uids_in(rows: list[dict]) -> list[int]:
    """The uid of every row (one per row; a row without one fails the test)."""
    out = []
    for r in rows:
        m = UID_RE.search(r["message"])
        assert m, f"row without a uid: {r['message']!r}"
        out.append(int(m.group(1)))
    return out


def now_utc() -> datetime:
    return datetime.now(UTC)
