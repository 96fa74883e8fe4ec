"""`loglake sources`: every source, what ingest learned of it, and how much of its last hour was parsed."""

from __future__ import annotations

import argparse
import sys

import orjson
from rich.console import Console
from rich.table import Table

from loglake.core.config import Config
from query.runner import QueryRunner
from query.sources import SourceInfo, list_sources
from storage.catalog import Catalog


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}" if share in (0, 1) else f"{share:.1%}"


def _time_layout(s: SourceInfo) -> str:
    if s.detail.get("time"):
        return f"{s.detail['time']} ({s.detail.get('example', '')})"
    return "-" if s.format in (None, "text") else "(the format's own)"


def cmd_sources(cfg: Config, args: argparse.Namespace) -> int:
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    try:
        tenants = [args.tenant] if args.tenant else \
            sorted({r.tenant for r in catalog.source_layouts()} | {cfg.ingest.default_tenant})
        runner = QueryRunner(cfg, catalog)
        found = {t: list_sources(runner, t) for t in tenants}
    finally:
        catalog.close()
    if args.json:
        sys.stdout.write(orjson.dumps([{"tenant": t, **s.to_dict()} for t, ss in found.items() for s in ss],
                                      option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    table = Table(title="sources (shares: of the rows received in the last hour)", box=None, pad_edge=False)
    for col in ("tenant", "service", "source", "format", "time layout", "zone", "rows 1h", "time read",
                "level known", "updated"):
        table.add_column(col, justify="right" if col in ("rows 1h", "time read", "level known") else "left",
                         overflow="fold")
    for tenant, sources in found.items():
        for s in sources:
            table.add_row(tenant, s.service, s.source, s.format or "?", _time_layout(s),
                          s.zone if s.zone else "-", f"{s.rows_last_hour:,}", _pct(s.time_parsed),
                          _pct(s.level_parsed), (s.updated or "-")[:19])
    console = Console()
    console.print(table)
    if not any(found.values()):
        console.print("no sources yet: nothing was ingested, or no ingest worker has recorded its sources")
    return 0
