"""What the ingest worker of a test stack stored: its catalog, the rows of its live segments."""

from __future__ import annotations

from typing import Any

import duckdb

from storage.catalog import Catalog
from storage.lines import ORIGINAL_LINE
from tests.helpers.processes import Stack, running, wait_until


def open_catalog(stack: Stack) -> Catalog:
    """The stack's SQLite catalog, once its ingest worker has created it."""
    path = stack.data_root / "catalog.sqlite"
    wait_until(path.exists, 30, what=f"catalog {path} created by the ingest worker")
    return Catalog(f"sqlite:///{path}")


def stored(stack: Stack, catalog: Catalog, tenant: str) -> list[dict[str, Any]]:
    """Rows of ``tenant`` from the catalog's live segments; times as epoch µs, attrs as a dict."""
    segments = catalog.segments(tenant, 0, 2**62)
    if not segments:
        return []
    paths = [str(stack.data_root / s.path) for s in segments]
    con = duckdb.connect()
    try:
        table = con.execute(
            "SELECT epoch_us(ts) AS ts, epoch_us(observed_ts) AS observed_ts, service::VARCHAR AS service,"
            " host::VARCHAR AS host, source::VARCHAR AS source, level::VARCHAR AS level, severity, message,"
            f" attrs, trace_id, span_id, {ORIGINAL_LINE} AS line"
            " FROM read_parquet(?, union_by_name = true) ORDER BY observed_ts, message", [paths]
        ).to_arrow_table()
    finally:
        con.close()
    rows = table.to_pylist()
    for r in rows:
        r["attrs"] = dict(r["attrs"] or [])
    return rows


def wait_rows(stack: Stack, catalog: Catalog, want: int, timeout_s: float = 20, proc: str = "ingest") -> None:
    """Wait for ``want`` rows in the catalog; fail at once, with the log tail, if ``proc`` exits."""
    alive = running(stack, proc)

    def enough() -> bool:
        alive()
        return catalog.totals()["rows"] >= want

    try:
        wait_until(enough, timeout_s, what=f"{want} rows in the catalog")
    except AssertionError as e:
        raise AssertionError(f"{e}; catalog has {catalog.totals()}; worker log tail:\n"
                             f"{stack.log_text(proc)[-3000:]}") from None
