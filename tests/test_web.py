"""The search page at GET /, in Debian's chromium (Playwright) over a real `loglake serve` and real segments.

Everything goes through the page's DOM contract (data-testid attributes) and its URL; the lake is
tests/helpers/browser.py's ``web_rows``: 3,000 bulk rows of api/web/worker over the last 50 minutes and
12 consecutive billing lines (three "PAYMARK" errors of customer "ACME Corp") 25 minutes ago.
Screenshots of the main states go to var/test-artefacts/web/ (not committed).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from loglake.core.config import load_config
from storage.catalog import Catalog
from tests.helpers import tenants
from tests.helpers.browser import (
    BILLING,
    BULK_ROWS,
    CUSTOMER,
    Served,
    WebLake,
    WebPage,
    billing_head,
    chromium,
    loglake_serve,
    open_page,
    require_chromium,
    web_lake,
    write_config,
)
from tests.helpers.lake import record

BILLING_ERRORS = "service:billing level:error"
#: Newest first: the three billing errors.
PAYMARKS = [t for level, t in reversed(BILLING) if level == "error"]


# -- fixtures: one lake, one server and one browser per module; a new page per test ------------


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebLake]:
    require_chromium()
    with web_lake(tmp_path_factory.mktemp("web")) as lk:
        yield lk


@pytest.fixture(scope="module")
def server(lake: WebLake) -> Iterator[Served]:
    with loglake_serve(lake.config) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def web(browser: Any, server: Served) -> Iterator[WebPage]:
    with open_page(browser, server.url) as w:
        yield w
        assert not w.foreign(), f"requests outside {server.url}: {w.foreign()}"


# -- reading the page -------------------------------------------------------------------------

_ROWS_JS = """() => [...document.querySelectorAll('[data-testid="result-row"]')].map(r => {
    const cell = n => {
        const c = r.querySelector(`[data-testid="cell-${n}"]`);
        return c ? c.textContent.trim() : null;
    };
    return {time: cell('time'), level: cell('level'), service: cell('service'), host: cell('host'),
            message: cell('message')};
})"""


def rows(w: WebPage) -> list[dict[str, str]]:
    """The result rows in the DOM, top to bottom, as their cells' text."""
    return w.page.evaluate(_ROWS_JS)


def row_count(w: WebPage) -> int | None:
    """The number ``row-count`` shows (the rows loaded), or None while it shows none."""
    loc = w.tid("row-count")
    if not loc.count():
        return None
    m = re.search(r"\d[\d,\u202f\u00a0.]*", loc.first.inner_text())
    return int(re.sub(r"\D", "", m[0])) if m else None


def wait_for(w: WebPage, check: Callable[[], Any], what: str, timeout_s: float = 15) -> Any:
    """Poll ``check`` (letting the page run between polls) until it is truthy."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        w.page.wait_for_timeout(100)
    w.shot(f"timeout-{re.sub(r'[^a-z0-9]+', '-', what.lower())[:60]}")
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last: {last!r}; "
                         f"url {w.page.url}; page errors: {w.errors}")


def wait_rows(w: WebPage, ok: Callable[[list[dict[str, str]]], bool], what: str,
              timeout_s: float = 15) -> list[dict[str, str]]:
    def check() -> list[dict[str, str]] | None:
        got = rows(w)
        return got if got and ok(got) else None
    return wait_for(w, check, what, timeout_s)


def goto(w: WebPage, **params: str) -> None:
    """Open the page with ``params`` as its query string (the URL state)."""
    w.page.goto(f"{w.origin}/" + (f"?{urlencode(params)}" if params else ""))
    w.tid("query-input").wait_for(state="visible")


def run_query(w: WebPage, q: str) -> None:
    """Type ``q`` into the query box and press Enter."""
    box = w.tid("query-input")
    box.click()
    box.fill(q)
    box.press("Enter")


def api_rows(server: Served, q: str, **params: str) -> list[dict[str, Any]]:
    resp = server.api("/api/v1/search", q=q, **params)
    assert resp.status_code == 200, resp.text
    return resp.json()["rows"]


def rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- the tests ----------------------------------------------------------------------------------


def test_a_query_shows_the_matching_rows_newest_first(web: WebPage) -> None:
    goto(web)
    web.page.locator("body").click(position={"x": 5, "y": 5})
    web.page.keyboard.press("/")
    assert web.page.evaluate("document.activeElement?.dataset?.testid") == "query-input", "/ focuses the query"
    web.page.keyboard.type(BILLING_ERRORS)
    web.page.keyboard.press("Enter")
    got = wait_rows(web, lambda rs: len(rs) == 3 and all(r["service"] == "billing" for r in rs), "3 billing rows")
    assert [r["level"].lower() for r in got] == ["error"] * 3
    assert [r["message"] for r in got] == PAYMARKS, "newest first"
    assert all(r["host"] == "pay-1" for r in got)
    assert web.params()["q"] == BILLING_ERRORS
    assert wait_for(web, lambda: row_count(web) == 3, "row-count 3")
    web.shot("results")


def test_the_run_button_runs_the_query(web: WebPage) -> None:
    goto(web)
    web.tid("query-input").fill("PAYMARK order=1002")
    web.tid("run-button").click()
    got = wait_rows(web, lambda rs: len(rs) == 1, "one row")
    assert got[0]["message"] == "PAYMARK charge declined order=1002 card=amex"


def test_dragging_across_the_histogram_zooms_in(web: WebPage, server: Served) -> None:
    goto(web, q="", start="now-1h", end="now")
    wait_for(web, lambda: web.tid("histogram-bar").count() > 0, "histogram bars")
    wait_rows(web, lambda rs: True, "rows")
    newest_before = rows(web)[0]["message"]
    bar = web.tid("histogram-bar").first
    assert int(bar.get_attribute("data-count")) >= 0 and bar.get_attribute("data-start")
    assert bar.get_attribute("data-level")
    web.shot("histogram")
    box = web.tid("histogram").bounding_box()
    assert box and box["width"] > 200, f"histogram too small: {box}"
    y = box["y"] + box["height"] / 2
    web.page.mouse.move(box["x"] + box["width"] * 0.25, y)
    web.page.mouse.down()
    for f in (0.3, 0.4, 0.5, 0.55):
        web.page.mouse.move(box["x"] + box["width"] * f, y, steps=3)
    web.page.mouse.up()
    params = wait_for(web, lambda: (p := web.params()).get("start", "now-1h") != "now-1h" and p, "URL start to change")
    start, end = rfc3339(params["start"]), rfc3339(params["end"])
    assert timedelta(minutes=5) < end - start < timedelta(minutes=30), (start, end)
    want = api_rows(server, "", start=params["start"], end=params["end"], limit="1")[0]["message"]
    got = wait_rows(web, lambda rs: rs[0]["message"] == want, f"first row {want!r} of the zoomed range")
    assert got[0]["message"] != newest_before
    web.shot("histogram-zoomed")


def test_a_field_value_in_the_sidebar_filters(web: WebPage) -> None:
    goto(web)
    value = web.page.locator('[data-testid="field-value"][data-field="service"][data-value="worker"]')
    value.wait_for(state="visible")
    assert "%" in value.inner_text(), "a value shows its share"
    web.shot("fields")
    value.click()
    wait_for(web, lambda: "service:worker" in web.params().get("q", ""), "q to hold service:worker")
    got = wait_rows(web, lambda rs: all(r["service"] == "worker" for r in rs), "only worker rows")
    assert len(got) > 5
    assert "service:worker" in web.tid("query-input").input_value()


def test_a_row_expands_to_its_attributes_and_line(web: WebPage, lake: WebLake) -> None:
    goto(web, q=BILLING_ERRORS)
    wait_rows(web, lambda rs: len(rs) == 3, "3 rows")
    web.tid("result-row").first.click()
    details = web.tid("row-details")
    details.wait_for(state="visible")
    fields = {f.get_attribute("data-field"): f.get_attribute("data-value")
              for f in details.get_by_test_id("detail-field").all()}
    assert fields.get("customer") == CUSTOMER and fields.get("id") == "b08", fields
    assert fields.get("service") == "billing" and fields.get("host") == "pay-1", fields
    # The original line, head and all, exactly as the search API holds it.
    [newest] = [r for r in lake.rows if r["message"] == PAYMARKS[0]]
    assert details.get_by_test_id("raw-line").text_content() == billing_head(newest["ts"], "error") + PAYMARKS[0]
    assert details.get_by_test_id("copy-line").count() == 1
    web.shot("row-details")
    details.locator('[data-testid="detail-field"][data-field="customer"]').get_by_test_id("filter-include").click()
    wait_for(web, lambda: f'customer:"{CUSTOMER}"' in web.params().get("q", ""), "q with the quoted customer")
    wait_rows(web, lambda rs: len(rs) == 3, "the same 3 rows")


def test_excluding_a_value_drops_its_rows(web: WebPage) -> None:
    goto(web, q=BILLING_ERRORS)
    wait_rows(web, lambda rs: len(rs) == 3, "3 rows")
    web.tid("result-row").first.click()
    web.page.locator('[data-testid="detail-field"][data-field="id"]').get_by_test_id("filter-exclude").click()
    wait_for(web, lambda: "-id:b08" in web.params().get("q", ""), "q with -id:b08")
    got = wait_rows(web, lambda rs: len(rs) == 2, "2 rows")
    assert [r["message"] for r in got] == PAYMARKS[1:]


def test_context_shows_the_lines_around_a_hit(web: WebPage) -> None:
    goto(web, q=BILLING_ERRORS)
    wait_rows(web, lambda rs: len(rs) == 3, "3 rows")
    web.tid("result-row").nth(1).click()            # order=1002: lines before and after it
    web.tid("context-button").first.click()
    panel = web.tid("context-panel")
    panel.wait_for(state="visible")
    wait_for(web, lambda: panel.get_by_test_id("context-row").count() >= 5, "context rows")
    texts = [r.inner_text() for r in panel.get_by_test_id("context-row").all()]
    hit = panel.locator('[data-testid="context-row"][data-hit="true"]')
    assert hit.count() == 1 and "order=1002 card=amex" in hit.inner_text(), texts
    assert any("charge started order=1002" in t for t in texts), texts          # the line before
    assert any("slow gateway answer order=1002" in t for t in texts), texts     # the line after
    assert not any("handled request" in t for t in texts), "only lines of the same source"
    web.shot("context")
    web.tid("context-close").click()
    panel.wait_for(state="hidden")


def test_scrolling_loads_more_pages_and_renders_only_visible_rows(web: WebPage) -> None:
    goto(web)
    wait_for(web, lambda: row_count(web), "row-count")
    first_page = row_count(web)
    assert first_page and first_page < BULK_ROWS, f"a first page, not everything: {first_page}"
    box = web.tid("results").bounding_box()
    web.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + min(box["height"] / 2, 200))

    def scrolled() -> bool:
        web.page.mouse.wheel(0, 4000)
        return (row_count(web) or 0) >= min(3 * first_page, BULK_ROWS)
    wait_for(web, scrolled, f"row-count past {3 * first_page} by scrolling", timeout_s=30)
    loaded, in_dom = row_count(web), web.tid("result-row").count()
    assert in_dom < loaded / 2, f"{in_dom} row elements for {loaded} rows: not virtual"
    got = rows(web)
    assert got and all(r["message"] for r in got), "the visible rows are drawn"
    web.shot("scrolled")


def test_live_tail_shows_a_new_line(web: WebPage, lake: WebLake) -> None:
    goto(web, q="service:api")
    wait_rows(web, lambda rs: True, "rows")
    toggle = web.tid("tail-toggle")
    assert "Live" in toggle.inner_text()
    toggle.click()
    wait_for(web, lambda: "Stop" in toggle.inner_text(), "the toggle to say Stop")
    marker = f"TAILMARK-{uuid.uuid4().hex[:8]}"
    web.page.wait_for_timeout(500)
    lake.append([record(time.time_ns() // 1000, "api", "warn", f"{marker} written during the test",
                        host="web-9", attrs=[("id", "tail-1")]),
                 record(time.time_ns() // 1000, "worker", "warn", f"{marker} not matching", host="web-9")])
    got = wait_rows(web, lambda rs: marker in rs[0]["message"], "the new line at the top", timeout_s=8)
    assert got[0]["service"] == "api" and not any("not matching" in r["message"] for r in got)
    web.shot("tail")
    toggle.click()
    wait_for(web, lambda: "Live" in toggle.inner_text(), "the toggle to say Live")


def test_save_and_run_a_saved_query(web: WebPage, server: Served) -> None:
    name = f"web errors {uuid.uuid4().hex[:6]}"
    goto(web)
    run_query(web, "level:error service:web")
    wait_rows(web, lambda rs: all(r["service"] == "web" for r in rs), "web rows")
    web.tid("save-button").click()
    web.tid("save-name").fill(name)
    web.tid("save-confirm").click()
    item = web.page.locator(f'[data-testid="saved-item"][data-name="{name}"]')
    item.wait_for(state="visible")
    saved = server.api(f"/api/v1/saved-queries/{name}")
    assert saved.status_code == 200 and saved.json()["query"] == "level:error service:web", saved.text
    web.shot("saved")

    run_query(web, BILLING_ERRORS)
    wait_rows(web, lambda rs: len(rs) == 3, "billing rows")
    item.click()
    wait_for(web, lambda: web.params().get("q") == "level:error service:web", "q of the saved query")
    got = wait_rows(web, lambda rs: all(r["service"] == "web" for r in rs), "the saved query's rows")
    assert all(r["level"].lower() == "error" for r in got)
    assert web.tid("query-input").input_value() == "level:error service:web"

    # The same name again updates it.
    run_query(web, "level:warn service:web")
    wait_rows(web, lambda rs: all(r["level"].lower() == "warn" for r in rs), "warn rows")
    web.tid("save-button").click()
    web.tid("save-name").fill(name)
    web.tid("save-confirm").click()
    wait_for(web, lambda: server.api(f"/api/v1/saved-queries/{name}").json()["query"] == "level:warn service:web",
             "the saved query updated")
    assert web.page.locator(f'[data-testid="saved-item"][data-name="{name}"]').count() == 1


def test_a_bad_query_shows_its_error_and_position(web: WebPage, server: Served) -> None:
    want = server.api("/api/v1/search", q="level:(").json()
    goto(web)
    run_query(web, "level:(")
    err = web.tid("query-error")
    err.wait_for(state="visible")
    text = err.inner_text()
    pos = want["position"]
    assert want["reason"] in text, (text, want)
    assert f"at {pos}" in text or f"position {pos}" in text or "^" in text, text
    web.shot("query-error")
    run_query(web, BILLING_ERRORS)
    wait_rows(web, lambda rs: len(rs) == 3, "3 rows")
    err.wait_for(state="hidden")


def test_back_and_forward_restore_searches(web: WebPage) -> None:
    goto(web)
    run_query(web, "service:worker")
    wait_rows(web, lambda rs: all(r["service"] == "worker" for r in rs), "worker rows")
    run_query(web, BILLING_ERRORS)
    wait_rows(web, lambda rs: len(rs) == 3, "billing rows")
    web.page.go_back()
    wait_for(web, lambda: web.params().get("q") == "service:worker", "q back to service:worker")
    wait_rows(web, lambda rs: all(r["service"] == "worker" for r in rs), "worker rows again")
    assert web.tid("query-input").input_value() == "service:worker"
    web.page.go_forward()
    wait_rows(web, lambda rs: len(rs) == 3 and rs[0]["service"] == "billing", "billing rows again")
    assert web.tid("query-input").input_value() == BILLING_ERRORS


def test_a_link_restores_the_search(web: WebPage, lake: WebLake) -> None:
    """An absolute range and a query in the URL: the page runs exactly that (a shared link)."""
    from query.timerange import format_us

    at = lake.now_us - 25 * 60_000_000
    start, end = format_us(at - 500_000), format_us(at + 3_500_000)         # the first four billing lines
    goto(web, q="service:billing", start=start, end=end, tz="utc")
    got = wait_rows(web, lambda rs: len(rs) == 4, "4 rows")
    assert [r["message"] for r in got] == [t for _, t in reversed(BILLING[:4])]
    assert "UTC" in web.tid("tz-toggle").inner_text()


def test_time_controls_update_the_url(web: WebPage, lake: WebLake) -> None:
    from query.timerange import format_us

    goto(web, q="service:billing")
    wait_rows(web, lambda rs: True, "rows")
    web.tid("range-15m").click()
    wait_for(web, lambda: web.params().get("start") == "now-15m", "start=now-15m")
    web.tid("range-24h").click()
    wait_for(web, lambda: web.params().get("start") == "now-24h", "start=now-24h")
    wait_rows(web, lambda rs: len(rs) == 12, "12 billing rows in 24h")

    tz = web.tid("tz-toggle")
    before, url_tz = tz.inner_text(), web.params().get("tz")
    tz.click()
    wait_for(web, lambda: tz.inner_text() != before, "the zone toggle to switch")
    assert ("UTC" in before) != ("UTC" in tz.inner_text())
    wait_for(web, lambda: web.params().get("tz") in ("utc", "local") and web.params().get("tz") != url_tz,
             "tz in the URL to switch")

    at = lake.now_us - 25 * 60_000_000
    start, end = format_us(at + 1_500_000), format_us(at + 5_500_000)       # billing lines 2..5
    web.tid("range-start").fill(start)
    web.tid("range-end").fill(end)
    web.tid("range-apply").click()
    wait_for(web, lambda: rfc3339(web.params().get("start", "1970-01-01T00:00:00Z")) == rfc3339(start),
             "the absolute start in the URL")
    assert rfc3339(web.params()["end"]) == rfc3339(end)
    got = wait_rows(web, lambda rs: len(rs) == 4, "4 rows")
    assert [r["message"] for r in got] == [t for _, t in reversed(BILLING[2:6])]


def test_completion_offers_fields_and_values(web: WebPage) -> None:
    goto(web)
    box = web.tid("query-input")
    box.click()
    box.press_sequentially("serv", delay=30)
    items = web.tid("completion-item")
    wait_for(web, lambda: any("service" in t for t in items.all_inner_texts()), "service offered")
    box.fill("")
    box.press_sequentially("service:bil", delay=30)
    wait_for(web, lambda: any("billing" in t for t in items.all_inner_texts()), "billing offered")
    web.shot("completion")


def test_syntax_help_opens(web: WebPage) -> None:
    goto(web)
    before = web.page.locator("body").inner_text()
    web.tid("syntax-help").click()
    wait_for(web, lambda: len(web.page.locator("body").inner_text()) > len(before) + 100, "the language help")
    help_text = web.page.locator("body").inner_text()
    assert "level:error" in help_text or "OR" in help_text


def test_no_request_leaves_the_origin(web: WebPage, server: Served) -> None:
    goto(web)
    run_query(web, BILLING_ERRORS)
    wait_rows(web, lambda rs: len(rs) == 3, "3 rows")
    web.tid("result-row").first.click()
    web.tid("syntax-help").click()
    web.page.wait_for_load_state("networkidle")
    assert any(u.startswith(f"{server.url}/api/v1/search") for u in web.requests), web.requests
    assert not web.foreign(), web.foreign()


def test_docs_load_without_leaving_the_origin(web: WebPage, server: Served) -> None:
    web.page.goto(f"{server.url}/docs")
    web.page.locator(".swagger-ui .opblock").first.wait_for(state="visible")
    web.page.wait_for_load_state("networkidle")
    assert not web.foreign(), web.foreign()
    assert not [e for e in web.errors if "pageerror" in e], web.errors
    web.shot("docs")


def test_the_page_fits_1280x720_in_light_and_dark(web: WebPage) -> None:
    goto(web)
    wait_rows(web, lambda rs: True, "rows")
    for testid in ("query-input", "run-button", "range-1h", "histogram", "results", "fields-sidebar",
                   "tail-toggle", "save-button"):
        loc = web.tid(testid).first
        assert loc.is_visible(), f"{testid} not visible at 1280x720"
        box = loc.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 1280 + 1, f"{testid} outside: {box}"
    assert web.page.evaluate("document.documentElement.scrollWidth") <= 1280, "no horizontal scroll"
    assert web.tid("result-row").first.bounding_box()["y"] < 720, "rows visible without scrolling"
    web.shot("page-1280x720-light")
    web.page.emulate_media(color_scheme="dark")
    web.page.wait_for_timeout(200)
    web.shot("page-1280x720-dark")


# -- with authentication on -------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, dict[str, tenants.Key]]]:
    """tests/helpers/tenants.py's two-tenant lake with auth on, keys from `loglake keys create`."""
    require_chromium()
    root: Path = tmp_path_factory.mktemp("web-auth")
    config = write_config(root, auth=True)
    catalog = Catalog(load_config(config, environ={}).storage.resolved_catalog_url())
    try:
        tenants.build_lake(root / "data", catalog)
        keys = tenants.create_keys(config, {"reader": ["--tenant", "acme", "--role", "reader"],
                                            "writer": ["--tenant", "acme", "--role", "writer"]})
        with loglake_serve(config) as srv:
            yield srv, keys
    finally:
        catalog.close()


def test_a_key_unlocks_the_page_and_shows_its_tenant(browser: Any,
                                                     auth_server: tuple[Served, dict[str, tenants.Key]]) -> None:
    server, keys = auth_server
    with open_page(browser, server.url) as w:
        goto(w, q="", start=tenants.ALL["start"], end=tenants.ALL["end"])
        w.tid("key-prompt").wait_for(state="visible")
        w.shot("key-prompt")
        w.tid("key-input").fill(keys["reader"].whole)
        w.tid("key-submit").click()
        got = wait_rows(w, lambda rs: len(rs) == 4, "acme's 4 rows")
        assert all("ACMEMARK" in r["message"] for r in got)
        wait_for(w, lambda: "acme" in w.tid("tenant-label").inner_text(), "the tenant label")
        w.tid("key-prompt").wait_for(state="hidden")
        stored = w.page.evaluate("() => [JSON.stringify(sessionStorage), JSON.stringify(localStorage)]")
        assert keys["reader"].whole in stored[0] and keys["reader"].whole not in stored[1], stored
        w.shot("key-unlocked")

        # A reader may not save: the refusal is explained.
        w.tid("save-button").click()
        w.tid("save-name").fill("not allowed")
        w.tid("save-confirm").click()
        w.tid("saved-error").wait_for(state="visible")
        assert w.tid("saved-error").inner_text().strip()
        assert server.api("/api/v1/saved-queries/not allowed", keys["reader"].whole).status_code == 404
        assert not w.foreign(), w.foreign()


def test_a_wrong_key_is_explained(browser: Any, auth_server: tuple[Served, dict[str, tenants.Key]]) -> None:
    server, keys = auth_server
    with open_page(browser, server.url) as w:
        goto(w, q="", start=tenants.ALL["start"], end=tenants.ALL["end"])
        w.tid("key-prompt").wait_for(state="visible")
        w.tid("key-input").fill("llk_000000000000_not-a-real-secret")
        w.tid("key-submit").click()
        w.page.wait_for_timeout(500)
        # Asked again (or told why): never a blank page with no rows and no word.
        assert w.tid("key-prompt").is_visible() or w.tid("auth-error").is_visible()
        assert not rows(w)
        w.tid("key-input").fill(keys["writer"].whole)
        w.tid("key-submit").click()
        wait_rows(w, lambda rs: len(rs) == 4, "acme's 4 rows")
