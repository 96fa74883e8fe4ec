"""`loglake compact | retention run | delete | fsck | maintain`: the storage commands.

Each shows what it will do or did as a table, with a progress bar while it
works; `--dry-run` shows the same table and changes nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from loglake.core.config import Config
from storage.catalog import Catalog
from storage.root import DataRoot

if TYPE_CHECKING:
    from storage.maintenance import Maintenance

console = Console()
EXIT_PROBLEMS = 1


def _open(cfg: Config) -> tuple[DataRoot, Catalog]:
    return DataRoot.from_config(cfg.storage), Catalog(cfg.storage.resolved_catalog_url())


def sync_mirror(cfg: Config, root: DataRoot, catalog: Catalog) -> None:
    """Bring the Iceberg mirror (when on) up to what a command just changed, rather than at the
    maintenance loop's next sync."""
    if not cfg.iceberg.enabled:
        return
    from storage.errors import StorageError
    from storage.iceberg import IcebergMirror

    mirror = IcebergMirror(cfg.iceberg, root, catalog)
    try:
        r = mirror.sync()
        console.print(f"iceberg mirror: {r.commits} snapshots, {r.added} files added, {r.removed} removed")
    except StorageError as e:
        console.print(f"[yellow]iceberg mirror not synced ({e}); the maintenance loop will[/yellow]")
    finally:
        mirror.close()


def _time(us: int | None) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S") if us else "-"


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


@contextmanager
def progress_bar(what: str, total: int) -> Iterator[Callable[[int], None]]:
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=False) as progress:
        task = progress.add_task(what, total=total or None)
        yield lambda n: progress.advance(task, n)


def cmd_compact(cfg: Config, args: argparse.Namespace) -> int:
    from storage import compaction

    root, catalog = _open(cfg)
    batches = compaction.plan(catalog.live_segments(args.tenant), cfg.compaction)
    total = sum(s.bytes for b in batches for s in b)
    console.print(f"{len(batches)} batches in {len({compaction.hour_of(b[0]) for b in batches})} hours, "
                  f"{sum(len(b) for b in batches)} segments, {_mb(total)}")
    if args.dry_run or not batches:
        return 0
    with progress_bar("compacting", total) as advance:
        r = compaction.compact(root, catalog, cfg.compaction, tenant=args.tenant, progress=advance)
    sync_mirror(cfg, root, catalog)
    console.print(f"compacted {r.inputs} segments into {r.outputs} ({r.rows:,} rows): {_mb(r.bytes_in)} -> "
                  f"{_mb(r.bytes_out)} at {r.mb_per_s:.1f} MB/s; {r.conflicts} batches lost a race")
    return 0


def _removed_table(title: str, totals: dict[tuple[str, str], dict[str, int]]) -> Table:
    t = Table(title=title)
    for col in ("tenant", "service", "segments", "rows", "bytes", "from", "to"):
        t.add_column(col, justify="right" if col in ("segments", "rows", "bytes") else "left")
    for (tenant, service), v in sorted(totals.items()):
        t.add_row(tenant, service, str(v["segments"]), f"{v['rows']:,}", _mb(v["bytes"]),
                  _time(v["min_ts_us"]), _time(v["max_ts_us"]))
    return t


def cmd_retention(cfg: Config, args: argparse.Namespace) -> int:
    from storage import retention

    root, catalog = _open(cfg)
    rules = retention.Rules.of(cfg.retention)
    if not rules.policies:
        console.print("no retention policies configured ([[retention.policies]]): nothing to do")
        return 0
    planned = retention.plan(catalog.live_segments(args.tenant), rules)
    total = sum(a.segment.bytes for a in planned)
    with progress_bar("checking" if args.dry_run else "deleting", total) as advance:
        report = retention.run(root, catalog, rules, dry_run=args.dry_run, tenant=args.tenant, progress=advance,
                               zstd_level=cfg.compaction.zstd_level)
    if not args.dry_run:
        sync_mirror(cfg, root, catalog)
    verb = "would delete" if args.dry_run else "deleted"
    console.print(_removed_table(f"retention {verb}", report.totals))
    console.print(f"{verb} {sum(r.rows for r in report.removed):,} rows, "
                  f"{_mb(sum(r.bytes for r in report.removed))}"
                  + ("" if args.dry_run else f"; files go after the {cfg.storage.grace_s:g} s grace period")
                  + (f"; {report.conflicts} segments changed meanwhile (next run)" if report.conflicts else ""))
    return 0


def cmd_delete(cfg: Config, args: argparse.Namespace) -> int:
    import getpass

    from query.deletion import delete_matching
    from query.timerange import parse_range
    from storage import retention

    root, catalog = _open(cfg)
    start_us, end_us = parse_range(args.start, args.end)
    total = sum(s.bytes for s in catalog.segments(args.tenant, start_us, end_us))
    actor = args.actor or f"loglake delete by {getpass.getuser()}"
    with progress_bar("checking" if args.dry_run else "deleting", total) as advance:
        report = delete_matching(root, catalog, tenant=args.tenant, query=args.query, start_us=start_us,
                                 end_us=end_us, actor=actor, dry_run=args.dry_run, progress=advance,
                                 zstd_level=cfg.compaction.zstd_level)
    if not args.dry_run:
        sync_mirror(cfg, root, catalog)
    shown = retention.RetentionReport(args.dry_run)
    for r in report.removed:
        shown.add(r)
    verb = "would delete" if args.dry_run else "deleted"
    console.print(_removed_table(f"{verb}: {args.query!r} from {_time(start_us)} to {_time(end_us)}", shown.totals))
    console.print(f"{verb} {report.rows:,} rows in {len(report.removed)} of {report.segments_checked} segments")
    if report.conflicts:
        console.print(f"[red]{report.conflicts} segments kept changing under compaction; run it again[/red]")
        return EXIT_PROBLEMS
    return 0


def cmd_fsck(cfg: Config, args: argparse.Namespace) -> int:
    from storage.fsck import fsck

    root, catalog = _open(cfg)
    r = fsck(root, catalog, repair=args.repair, grace_s=cfg.storage.grace_s)
    for rel, size, age in r.orphans:
        console.print(f"orphan file   {rel} ({size:,} bytes, {age or 0:,.0f} s old)"
                      + ("  [green]deleted[/green]" if args.repair else ""))
    for rel, size, age in r.young_orphans:
        console.print(f"recent file   {rel} ({size:,} bytes, {age or 0:,.0f} s old): maybe a commit under way; "
                      "left alone")
    for s in r.missing:
        console.print(f"missing file  {s.path} (segment {s.id}, {s.rows:,} rows, {_time(s.min_ts_us)}-"
                      f"{_time(s.max_ts_us)})"
                      + ("  [yellow]taken out of the live set[/yellow]" if args.repair else ""))
    for s in r.retired_gone:
        console.print(f"retired, gone {s.path}" + ("  forgotten" if args.repair else ""))
    if r.clean:
        console.print("clean: every file is in the catalog and every live segment has its file")
        return 0
    if not args.repair:
        console.print("run `loglake fsck --repair` to fix what is safe to fix")
        return EXIT_PROBLEMS
    return 0


def cmd_maintain(cfg: Config, args: argparse.Namespace) -> int:
    from storage.maintenance import Maintenance

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if cfg.maintain.nice:
        # Compaction can wait; ingest and searches cannot. (On an idle machine it still gets a core.)
        os.nice(cfg.maintain.nice)
    maintenance = Maintenance(cfg)
    if cfg.maintain.metrics_listen:
        _serve_in_background(cfg.maintain.metrics_listen, maintenance)
    maintenance.run(stop)
    return 0


def _serve_in_background(listen: str, maintenance: Maintenance) -> None:
    """/metrics, /healthz and /readyz on a thread of their own: the jobs run synchronously, and
    a long compaction must not leave a scrape or a probe unanswered."""
    from loglake.core.metrics_server import serve_in_thread
    from storage.metrics import registry_for

    serve_in_thread(listen, registry_for(maintenance), maintenance.health, maintenance.ready)
