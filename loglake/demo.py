"""The demo writer: keeps appending realistic lines to a few log files.

Several services, every level, JSON and plain text, access logs and now and
then a multi-line Java stack trace, so `loglake up` has something to search.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import orjson

_LEVELS = ["debug"] * 10 + ["info"] * 78 + ["warn"] * 8 + ["error"] * 3 + ["fatal"]
_PATHS = ["/api/v1/orders", "/api/v1/users/{id}", "/api/v1/cart", "/healthz", "/static/app.js", "/login"]
_MSGS = {
    "debug": ["cache lookup key=user:{id} hit={hit}", "sql SELECT * FROM orders WHERE id={id} took {ms}ms"],
    "info": ["request completed in {ms}ms", "user {id} logged in", "order {id} created total={amount}",
             "payment authorised for order {id}", "job {job} finished in {ms}ms"],
    "warn": ["slow request: {ms}ms over budget", "retrying call to inventory (attempt {n})",
             "connection pool at {pct}% capacity"],
    "error": ["payment declined for order {id}: card expired", "timeout calling inventory after {ms}ms",
              "failed to write to queue: broker unavailable"],
    "fatal": ["out of memory: shutting down worker {n}"],
}
_TRACE = """java.lang.IllegalStateException: order {id} in unexpected state
\tat com.shop.orders.OrderService.transition(OrderService.java:212)
\tat com.shop.orders.OrderController.update(OrderController.java:88)
\tat java.base/java.lang.Thread.run(Thread.java:1583)"""


def _fill(template: str, rng: random.Random) -> str:
    return template.format(id=rng.randint(1000, 99999), hit=rng.choice(["true", "false"]),
                           ms=rng.randint(1, 3000), amount=f"{rng.uniform(5, 500):.2f}",
                           job=uuid.UUID(int=rng.getrandbits(128)).hex[:12], n=rng.randint(1, 8),
                           pct=rng.randint(70, 99))


def _json_line(service: str, rng: random.Random, now: datetime) -> str:
    level = rng.choice(_LEVELS)
    return orjson.dumps({
        "time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "level": level,
        "msg": _fill(rng.choice(_MSGS[level]), rng), "service": service,
        "trace_id": uuid.UUID(int=rng.getrandbits(128)).hex, "user_id": rng.randint(1, 5000),
        "region": rng.choice(["eu-west-1", "us-east-1"]),
    }).decode()


def _java_lines(rng: random.Random, now: datetime) -> list[str]:
    level = rng.choice(_LEVELS)
    stamp = now.strftime("%Y-%m-%d %H:%M:%S,") + f"{now.microsecond // 1000:03d}"
    head = (f"{stamp} {level.upper():5} [worker-{rng.randint(1, 4)}] com.shop.worker.Jobs - "
            f"{_fill(rng.choice(_MSGS[level]), rng)}")
    if level == "error" and rng.random() < 0.5:
        return [head, *_fill(_TRACE, rng).splitlines()]
    return [head]


def _access_line(rng: random.Random, now: datetime) -> str:
    status = rng.choices([200, 201, 304, 404, 500, 503], [80, 5, 5, 6, 3, 1])[0]
    path = rng.choice(_PATHS).replace("{id}", str(rng.randint(1, 5000)))
    ip = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    return (f'{ip} - - [{now.strftime("%d/%b/%Y:%H:%M:%S +0000")}] "{rng.choice(["GET", "POST"])} {path} HTTP/1.1" '
            f'{status} {rng.randint(100, 50000)} "-" "Mozilla/5.0 (X11; Linux x86_64)"')


def demo_lines(rng: random.Random, now: datetime) -> tuple[str, list[str]]:
    """One event: the file it goes to and its line(s)."""
    kind = rng.choices(["api", "payments", "worker", "nginx"], [40, 15, 20, 25])[0]
    if kind in ("api", "payments"):
        return kind, [_json_line(kind, rng, now)]
    if kind == "worker":
        return kind, _java_lines(rng, now)
    return kind, [_access_line(rng, now)]


class DemoWriter:
    """Appends ``lines_per_second`` demo lines under ``directory`` until stopped."""

    def __init__(self, directory: Path, lines_per_second: float, seed: int | None = None) -> None:
        self.directory = directory
        self.rate = lines_per_second
        self.rng = random.Random(seed)
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        files: dict[str, TextIO] = {}
        try:
            interval = 1.0 / self.rate
            next_at = time.monotonic()
            while not self._stop.is_set():
                kind, lines = demo_lines(self.rng, datetime.now(UTC))
                f = files.get(kind)
                if f is None:
                    f = files[kind] = open(self.directory / f"{kind}.log", "a", buffering=1)  # noqa: SIM115
                f.write("\n".join(lines) + "\n")
                next_at += interval
                self._stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            for f in files.values():
                f.close()
