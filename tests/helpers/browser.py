"""The search page in a real browser: Debian's chromium driven by Playwright over a real `loglake serve`.

    web_lake(root)          a lake of real segments in the last hour (see ``web_rows``); ``append`` adds more
    loglake_serve(config)   `loglake serve` as a real process on a free loopback port; yields its URL
    chromium()              Playwright's chromium at /usr/bin/chromium, headless (never a downloaded browser)
    open_page(browser, url) a new page that records every request it makes (``WebPage.requests``)
    WebPage.shot(name)      a screenshot under var/test-artefacts/web/ (gitignored: var/)

Without /usr/bin/chromium (or playwright) the browser tests skip, printing why; in CI
(``CI`` set) they fail instead.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from loglake.core.config import load_config
from storage.catalog import Catalog, PartitionCommit
from tests.helpers.lake import arrow_table, record
from tests.helpers.processes import free_port, wait_until

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
#: Screenshots of the main states: kept after the run, never committed (var/ is in .gitignore).
ARTEFACTS = REPO / "var" / "test-artefacts" / "web"

# -- the lake -------------------------------------------------------------------------------

MINUTE_US = 60_000_000
#: Rows of the bulk services (api, web, worker): enough for many cursor pages.
BULK_ROWS = 3000
SERVICES = ("api", "api", "web", "worker")            # api: half the bulk rows
HOSTS = ("web-1", "web-2", "db-1")
REGIONS = ("eu-west", "us-east")
#: billing: consecutive lines of one source (context), three of them errors with a customer whose name has a space.
BILLING = [
    ("info", "charge started order=1001"),
    ("info", "card tokenised order=1001"),
    ("error", "PAYMARK charge declined order=1001 card=visa"),
    ("info", "retry scheduled order=1001"),
    ("info", "charge started order=1002"),
    ("error", "PAYMARK charge declined order=1002 card=amex"),
    ("warn", "slow gateway answer order=1002"),
    ("info", "charge settled order=1003"),
    ("error", "PAYMARK charge declined order=1004 card=visa"),
    ("info", "refund issued order=1004"),
    ("info", "ledger updated order=1004"),
    ("info", "batch closed"),
]
CUSTOMER = "ACME Corp"


def _level(i: int) -> str:
    if i % 13 == 0:
        return "error"
    if i % 7 == 0:
        return "warn"
    if i % 5 == 0:
        return "debug"
    return "info"


def web_rows(now_us: int) -> list[dict[str, Any]]:
    """The page tests' records, all in (now - 50 min, now - 30 s]: the default range (1h) holds them all.

    Bulk rows ``r00000``..: one every second or so, spread evenly; ``attrs.id`` is unique.
    Billing rows ``b00``..``b11``: the 12 ``BILLING`` lines of /var/log/billing.log, a second apart,
    25 minutes ago; the errors carry ``customer="ACME Corp"``. Their original lines have a head
    (``billing_head``) before the message, as a Log4j layout writes them.
    """
    rows = []
    first = now_us - 50 * MINUTE_US
    step = (50 * MINUTE_US - 30_000_000) // BULK_ROWS
    for i in range(BULK_ROWS):
        service = SERVICES[i % len(SERVICES)]
        status = "500" if _level(i) == "error" else ("404" if i % 11 == 0 else "200")
        rows.append(record(first + i * step, service, _level(i), f"{service} handled request {i} status={status}",
                           host=HOSTS[i % len(HOSTS)],
                           attrs=[("id", f"r{i:05d}"), ("http.status", status), ("region", REGIONS[i % 2])]))
    at = now_us - 25 * MINUTE_US
    for j, (level, text) in enumerate(BILLING):
        attrs = [("id", f"b{j:02d}")] + ([("customer", CUSTOMER)] if level == "error" else [])
        rows.append(record(at + j * 1_000_000, "billing", level, text, host="pay-1", attrs=attrs,
                           head=billing_head(at + j * 1_000_000, level)))
    return rows


def billing_head(ts_us: int, level: str) -> str:
    """What a billing line holds before its message: time, level (padded) and thread."""
    t = datetime.fromtimestamp(ts_us / 1e6, tz=UTC)
    return f"{t:%Y-%m-%d %H:%M:%S},{t.microsecond // 1000:03d} {level.upper():<5} [pay-worker-1] "


@dataclass
class WebLake:
    """A lake written through the storage package; ``append`` adds a segment as ingest would (a new commit)."""

    root: Path
    config: Path
    catalog: Catalog
    now_us: int
    rows: list[dict[str, Any]]
    tenant: str = "default"
    topic: str = "web"
    _next: int = 0
    _segments: int = 0

    @property
    def data_root(self) -> Path:
        return self.root / "data"

    def append(self, rows: list[dict[str, Any]]) -> None:
        """``rows`` as new segments and one catalog commit after the last (the next offsets of partition 0)."""
        from storage.segments import write_segments

        self._segments += 1
        written = write_segments(self.data_root, self.tenant, arrow_table(rows), f"web-{self._segments}.parquet")
        new_next = self._next + len(rows)
        self.catalog.commit([PartitionCommit(topic=self.topic, partition=0, epoch=0, expected_next=self._next,
                                             new_next=new_next, segments=written)])
        self._next = new_next
        self.rows += rows


def write_config(root: Path, *, auth: bool = False) -> Path:
    """A loglake.toml with the lake under ``root``/data (SQLite catalog beside it)."""
    config = root / "loglake.toml"
    config.write_text(f'[storage]\ndata_root = "{root / "data"}"\n\n[auth]\nenabled = {"true" if auth else "false"}\n')
    return config


@contextlib.contextmanager
def web_lake(root: Path) -> Iterator[WebLake]:
    """``web_rows`` stored under ``root`` (auth off), one segment per hour, committed at once."""
    config = write_config(root)
    cfg = load_config(config, environ={})
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    now_us = time.time_ns() // 1000
    lake = WebLake(root, config, catalog, now_us, [])
    try:
        lake.append(web_rows(now_us))
        yield lake
    finally:
        catalog.close()


# -- the server -------------------------------------------------------------------------------


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def api(self, path: str, key: str | None = None, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(f"{self.url}{path}", params=params, headers=headers, timeout=30)


@contextlib.contextmanager
def loglake_serve(config: Path, **env: str) -> Iterator[Served]:
    """`loglake --config CONFIG serve` on a free loopback port, as a real process, until ready."""
    port = free_port()
    log = config.parent / f"serve-{port}.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LOGLAKE_")}
    environ.update(env)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "loglake", "--config", str(config), "serve",
                                 "--host", "127.0.0.1", "--port", str(port)],
                                cwd=config.parent, env=environ, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    served = Served(f"http://127.0.0.1:{port}", proc, log)

    def ready() -> bool:
        assert proc.poll() is None, f"loglake serve exited with {proc.returncode}:\n{served.log_text()[-3000:]}"
        try:
            return httpx.get(f"{served.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 30, 0.1, "loglake serve to answer /healthz")
        yield served
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- the browser ---------------------------------------------------------------------------------


def require_chromium() -> None:
    """Skip (printing why) when Debian's chromium or playwright is missing; in CI, fail instead."""
    reason = None
    if not CHROMIUM.exists():
        reason = (f"the browser tests need Debian's chromium at {CHROMIUM} "
                  "(apt-get install chromium; `make test` does it when run as root)")
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError as e:
            reason = f"the browser tests need playwright (the test extra: pip install -e '.[test]'): {e}"
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    print(f"\nSKIP: {reason}", file=sys.__stderr__)
    pytest.skip(reason)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Playwright's chromium at /usr/bin/chromium, headless; yields the Browser."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class WebPage:
    """A page and what it did: every request's URL, console errors and uncaught exceptions."""

    page: Any
    origin: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def tid(self, testid: str) -> Any:
        """The locator of ``[data-testid=testid]``."""
        return self.page.get_by_test_id(testid)

    def params(self) -> dict[str, str]:
        """The page URL's query string (first value of each)."""
        return {k: v[0] for k, v in parse_qs(urlsplit(self.page.url).query, keep_blank_values=True).items()}

    def foreign(self) -> list[str]:
        """Requests that left the page's origin (data: and blob: URLs stay in the page)."""
        return [u for u in self.requests
                if not (u.startswith(self.origin + "/") or u == self.origin or u.startswith(("data:", "blob:")))]

    def shot(self, name: str) -> Path:
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTEFACTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path


@contextlib.contextmanager
def open_page(browser: Any, origin: str, *, width: int = 1280, height: int = 720,
              timeout_ms: int = 15_000) -> Iterator[WebPage]:
    """A fresh context and page of ``width`` x ``height`` recording its requests; not yet navigated."""
    context = browser.new_context(viewport={"width": width, "height": height}, timezone_id="Europe/Berlin",
                                  locale="en-GB")
    context.set_default_timeout(timeout_ms)
    # Nothing outside the origin is fetched (the test sees it in ``requests``, then it is cut off):
    # the same run with or without internet.
    context.route(lambda url: not (url == origin or url.startswith(origin + "/")), lambda route: route.abort())
    page = context.new_page()
    web = WebPage(page, origin)
    page.on("request", lambda r: web.requests.append(r.url))
    page.on("console", lambda m: web.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: web.errors.append(f"pageerror: {e}"))
    try:
        yield web
    finally:
        context.close()
