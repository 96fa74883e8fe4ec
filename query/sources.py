"""Every source of a tenant: what ingest learned of it, and how much of it was parsed in the last hour.

What was learned (format, text layout, zone) is what the ingest workers wrote to
the catalog (``source_layouts``). How well it reads is measured on the rows
themselves: the segments written in the window hold every row received in it
(a row is in a segment written after it was received), and one DuckDB statement
over them counts, per service and source, the rows received in the window
(``observed_ts``), those whose time was read from the line (no ``attrs.ts_parse``)
and those with a level. ``GET /api/v1/sources`` and ``loglake sources`` answer
from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from query.language import MatchAll
from query.planner import choose
from query.runner import QueryRunner
from query.timerange import format_us, now_us

#: The window the shares are measured over.
WINDOW_US = 3600 * 1_000_000

_COUNT_SQL = """SELECT CAST(service AS VARCHAR) AS service, CAST(source AS VARCHAR) AS source, count(*) AS rows,
       count(*) FILTER (WHERE map_extract_value(attrs, 'ts_parse') IS NULL) AS time_read,
       count(*) FILTER (WHERE CAST(level AS VARCHAR) <> 'unknown') AS level_known,
       count(*) FILTER (WHERE map_extract_value(attrs, 'format') = 'unknown') AS unknown_format
FROM {relation} AS logs
WHERE observed_ts >= make_timestamptz(?::BIGINT) AND observed_ts < make_timestamptz(?::BIGINT)
GROUP BY ALL"""


@dataclass
class SourceInfo:
    """One source: what was learned of it and its rows in the window."""

    service: str
    source: str
    #: Format its rows were parsed as (json, syslog, clf, text, pattern<i>, ...); None: not recorded yet.
    format: str | None = None
    #: The learned text layout, described ("" when the source has none).
    layout: str | None = None
    #: The zone zone-less times are read in, "in the line" when the lines carry theirs.
    zone: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    #: When ingest last wrote what it learned.
    updated: str | None = None
    rows_last_hour: int = 0
    #: Shares of those rows whose time was read from the line, whose level is known, whose format is unknown.
    time_parsed: float | None = None
    level_parsed: float | None = None
    unknown_format: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _share(n: int, rows: int) -> float | None:
    return round(n / rows, 4) if rows else None


def list_sources(runner: QueryRunner, tenant: str, at_us: int | None = None) -> list[SourceInfo]:
    """Every source of ``tenant`` known to the catalog or with rows received in the hour before ``at_us``."""
    end = at_us if at_us is not None else now_us()
    start = end - WINDOW_US
    found: dict[tuple[str, str], SourceInfo] = {}
    for r in runner.catalog.source_layouts(tenant):
        found[(r.service, r.source)] = SourceInfo(r.service, r.source, r.format, r.layout, r.zone, r.detail,
                                                  format_us(r.updated_us))
    segments = runner.catalog.segments_created_since(tenant, start)
    if segments:
        scan = choose(MatchAll(), segments, runner.root.url)
        relation = scan.relation("service, source, level, attrs, observed_ts")
        with runner.slot():
            table = runner.run(_COUNT_SQL.format(relation=relation.sql), [*relation.params, start, end])
        for service, source, rows, time_read, level_known, unknown in zip(
                *(table.column(c).to_pylist() for c in ("service", "source", "rows", "time_read", "level_known",
                                                        "unknown_format")), strict=True):
            info = found.setdefault((service, source), SourceInfo(service, source))
            info.rows_last_hour = int(rows)
            info.time_parsed = _share(time_read, rows)
            info.level_parsed = _share(level_known, rows)
            info.unknown_format = _share(unknown, rows)
    return [found[k] for k in sorted(found)]
