"""web: the search page at GET /, loaded in Debian's chromium over the stored (and compacted) corpus.

The lake is the query suite's: the corpus shipped and ingested by the real pipeline, then compacted
(`query.compacted`, shared with that suite). `loglake serve` runs over it as a real process, and the
page is opened ``repetitions`` times (after one warm-up), each in a fresh browser context (no cache),
on a link to the whole corpus day with an empty query: the newest rows of every line of the day.

Reported: the median time from navigation start to the first result row painted (a MutationObserver
injected before the page's scripts notes the first ``[data-testid=result-row]`` and the next animation
frame; ``performance.now()`` counts from navigation start), DOMContentLoaded, and the page's own assets:
every same-origin response that is not an API call, as served (bytes on the wire) and gzip -6
compressed. Baseline: the API's first page of the same search over HTTP (``api.search``), which the
page cannot beat; and when the page's first search request left and its answer arrived (resource
timing), to show where the time goes. The only check is that the first painted row is the corpus's newest row; nothing
is asserted about speed (aim: under one second; assets under 300 KB compressed).
"""

from __future__ import annotations

import gzip
import statistics
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from benchmarks.harness import Result, Samples
from benchmarks.pipeline import WORK, serve, serve_config, store
from benchmarks.suites.query import compacted
from query.timerange import format_us

CHROMIUM = "/usr/bin/chromium"
_DAY_US = 86_400_000_000

#: Installed before any of the page's scripts: the time of the frame after the first result row appears.
_FIRST_ROW = """
(() => {
  window.__firstRowMs = null;
  const seen = () => {
    if (window.__firstRowMs !== null || !document.querySelector('[data-testid="result-row"]')) return false;
    requestAnimationFrame(() => { if (window.__firstRowMs === null) window.__firstRowMs = performance.now(); });
    return true;
  };
  const obs = new MutationObserver(() => { if (seen()) obs.disconnect(); });
  obs.observe(document, {childList: true, subtree: true});
})();
"""


def _load(browser: Any, url: str) -> dict[str, Any]:
    """One load in a fresh context: first row time, DOMContentLoaded, the newest row, the resources."""
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    context.add_init_script(_FIRST_ROW)
    try:
        page = context.new_page()
        page.goto(url, wait_until="commit")
        page.wait_for_function("window.__firstRowMs !== null", timeout=60_000, polling=100)
        return page.evaluate("""() => ({
            firstRowMs: window.__firstRowMs,
            domContentLoadedMs: performance.getEntriesByType('navigation')[0]?.domContentLoadedEventEnd ?? null,
            firstMessage: document.querySelector('[data-testid="result-row"] [data-testid="cell-message"]')
                ?.textContent.trim() ?? null,
            resources: [performance.getEntriesByType('navigation')[0], ...performance.getEntriesByType('resource')]
                .map(e => ({name: e.name, transfer: e.transferSize, encoded: e.encodedBodySize,
                            start: e.startTime, end: e.responseEnd})),
        })""")
    finally:
        context.close()


def _assets(url: str, resources: list[dict[str, Any]]) -> tuple[int, int, int]:
    """(count, bytes as served, bytes gzip -6) of the page's same-origin non-API resources."""
    names = sorted({r["name"].split("#")[0] for r in resources
                    if r["name"].startswith(url) and "/api/" not in r["name"] and "/loki/" not in r["name"]})
    served = gzipped = 0
    with httpx.Client(timeout=30) as client:
        for name in names:
            with client.stream("GET", name, headers={"Accept-Encoding": "gzip"}) as resp:
                body = b"".join(resp.iter_raw())
                encoded = resp.headers.get("content-encoding") == "gzip"
            served += len(body)
            gzipped += len(gzip.compress(gzip.decompress(body) if encoded else body, 6))
    return len(names), served, gzipped


def run(lines: int, repetitions: int = 7) -> Result:
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"the web suite needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    _, truth, _ = store(lines)
    cfg = compacted(lines)
    start, end = format_us(truth.day_start_us), format_us(truth.day_start_us + _DAY_US)
    r = Result("web", lines)
    with serve(serve_config(cfg, WORK / f"web-{lines}")) as url:
        page_url = f"{url}/?{urlencode({'q': '', 'start': start, 'end': end, 'tz': 'utc'})}"
        api = Samples()
        newest = None
        for i in range(repetitions + 1):
            t0 = time.perf_counter()
            resp = httpx.get(f"{url}/api/v1/search", params={"q": "", "start": start, "end": end}, timeout=60)
            resp.raise_for_status()
            if i:
                api.values.append((time.perf_counter() - t0) * 1000)
            newest = resp.json()["rows"][0]["message"]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                loads = [_load(browser, page_url) for _ in range(repetitions + 1)][1:]
            finally:
                browser.close()
        first = Samples([load["firstRowMs"] for load in loads])
        r.metrics["web.first_rows.p50_ms"] = first.median
        r.metrics["web.first_rows.spread"] = first.spread
        r.metrics["web.first_rows.min_ms"] = min(first.values)
        r.metrics["web.dom_content_loaded.p50_ms"] = statistics.median(
            load["domContentLoadedMs"] or 0.0 for load in loads)
        # Where the time goes: when the page's first search request left, and when its answer was in.
        searches = [min((e for e in load["resources"] if "/api/v1/search" in e["name"]), key=lambda e: e["start"])
                    for load in loads]
        r.metrics["web.search_request.start_p50_ms"] = statistics.median(e["start"] for e in searches)
        r.metrics["web.search_request.end_p50_ms"] = statistics.median(e["end"] for e in searches)
        count, served, gzipped = _assets(url, loads[-1]["resources"])
        r.metrics["web.assets.count"] = count
        r.metrics["web.assets.served_bytes"] = served
        r.metrics["web.assets.gzip_bytes"] = gzipped
        r.baselines["api.search.p50_ms"] = api.median
        r.ratios["web.first_rows.p50_ms.vs_api.search"] = first.median / api.median if api.median else 0.0
        for n, load in enumerate(loads):
            r.check(f"newest_row.load{n + 1}", load["firstMessage"] == newest,
                    f"first row {load['firstMessage']!r}, the API's newest {newest!r}")
    r.notes.append(f"data: {truth.lines:,} records stored by the pipeline and compacted (the query suite's lake), "
                   "served by `loglake serve`. Each load: a fresh headless chromium context (no cache), "
                   "1280x720, the link to the whole day with an empty query; first rows = navigation start "
                   "to the animation frame after the first result row enters the DOM. Assets: the document "
                   "and every same-origin non-API resource; served = bytes on the wire with Accept-Encoding: "
                   "gzip, gzip_bytes = each body gzip -6. Baseline: GET /api/v1/search, the same range and "
                   f"query, first page. Median of {repetitions} loads after one warm-up.")
    return r
