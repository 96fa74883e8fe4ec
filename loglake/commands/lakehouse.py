"""`loglake backup create|list|verify|restore|prune` and `loglake iceberg sync|tables`."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from loglake.core.config import Config
from storage.catalog import Catalog
from storage.errors import StorageError
from storage.root import DataRoot

console = Console()
EXIT_PROBLEMS = 1
EXIT_USAGE = 2


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _dest(cfg: Config, args: argparse.Namespace) -> DataRoot:
    dest = args.dest or cfg.backup.dest
    if not dest:
        raise StorageError("no destination: give DEST or set backup.dest")
    return DataRoot(dest, cfg.storage.s3)


def cmd_backup(cfg: Config, args: argparse.Namespace) -> int:
    try:
        return _BACKUP[args.backup_command](cfg, args)
    except StorageError as e:
        console.print(f"[red]{e}[/red]")
        return EXIT_PROBLEMS


def _create(cfg: Config, args: argparse.Namespace) -> int:
    from loglake.commands.storage import progress_bar
    from storage import backup

    dest = _dest(cfg, args)
    root, catalog = DataRoot.from_config(cfg.storage), Catalog(cfg.storage.resolved_catalog_url())
    try:
        with progress_bar("backing up", catalog.totals()["bytes"]) as advance:
            r = backup.create(root, catalog, dest, progress=advance)
    finally:
        catalog.close()
    m = r.manifest
    console.print(f"backup {m.id} in {dest.url}: {len(m.segments)} segments ({m.rows:,} rows, {_mb(m.bytes)}); "
                  f"copied {m.copied} ({_mb(m.copied_bytes)}), {r.reused} already there; {r.seconds:.1f} s")
    if args.keep:
        pruned = backup.prune(dest, args.keep)
        console.print(f"pruned {len(pruned.backups)} old backups, {pruned.segments} segment copies "
                      f"({_mb(pruned.bytes)})")
    return 0


def _list(cfg: Config, args: argparse.Namespace) -> int:
    from storage import backup

    dest = _dest(cfg, args)
    t = Table(title=f"backups in {dest.url}")
    for col in ("id", "catalog", "segments", "rows", "size", "copied"):
        t.add_column(col, justify="left" if col in ("id", "catalog") else "right")
    for m in backup.manifests(dest):
        t.add_row(m.id, f"{m.source} v{m.schema_version}", str(len(m.segments)), f"{m.rows:,}", _mb(m.bytes),
                  f"{m.copied} ({_mb(m.copied_bytes)})")
    console.print(t)
    return 0


def _verify(cfg: Config, args: argparse.Namespace) -> int:
    from loglake.commands.storage import progress_bar
    from storage import backup

    dest = _dest(cfg, args)
    chosen = backup.manifests(dest) if not args.backup else [backup.find(dest, args.backup)]
    with progress_bar("verifying", sum(m.bytes for m in chosen)) as advance:
        problems = backup.verify(dest, [m.id for m in chosen], progress=advance)
    for p in problems:
        console.print(f"[red]{p.backup}: {p.path}: {p.what}[/red]")
    if problems:
        return EXIT_PROBLEMS
    console.print(f"{len(chosen)} backups verified: every file present, of its size and checksum")
    return 0


def _restore(cfg: Config, args: argparse.Namespace) -> int:
    from loglake.commands.storage import progress_bar
    from storage import backup

    dest = _dest(cfg, args)
    storage = cfg.storage.model_copy(update={"data_root": args.to})
    catalog_url = args.catalog_url or storage.resolved_catalog_url()
    root = DataRoot(args.to, cfg.storage.s3)
    m = backup.find(dest, args.backup)
    with progress_bar("restoring", m.bytes) as advance:
        r = backup.restore(dest, root, catalog_url, backup_id=m.id, progress=advance)
    console.print(f"restored backup {r.backup} into {root.url}: {r.segments} segments ({r.rows:,} rows, "
                  f"{_mb(r.bytes)}); catalog rows: "
                  + ", ".join(f"{t} {n}" for t, n in sorted(r.tables.items()) if n))
    return 0


def _prune(cfg: Config, args: argparse.Namespace) -> int:
    from storage import backup

    dest = _dest(cfg, args)
    r = backup.prune(dest, args.keep or cfg.backup.keep)
    console.print(f"deleted {len(r.backups)} backups ({', '.join(r.backups) or 'none'}) and {r.segments} segment "
                  f"copies ({_mb(r.bytes)})")
    return 0


_BACKUP = {"create": _create, "list": _list, "verify": _verify, "restore": _restore, "prune": _prune}


def cmd_iceberg(cfg: Config, args: argparse.Namespace) -> int:
    from storage.iceberg import IcebergMirror

    root, catalog = DataRoot.from_config(cfg.storage), Catalog(cfg.storage.resolved_catalog_url())
    mirror = IcebergMirror(cfg.iceberg, root, catalog)
    try:
        if args.iceberg_command == "sync":
            r = mirror.sync(args.tenant)
            console.print(f"{r.tables} tables: {r.commits} snapshots committed, {r.added} files added, "
                          f"{r.removed} removed, {r.conflicts} lost to another writer")
        t = Table(title=f"Iceberg tables in namespace {cfg.iceberg.namespace}")
        t.add_column("tenant")
        t.add_column("current metadata file")
        for tenant, location in mirror.metadata_locations().items():
            t.add_row(tenant, location)
        console.print(t)
    except StorageError as e:
        console.print(f"[red]{e}[/red]")
        return EXIT_PROBLEMS
    finally:
        mirror.close()
        catalog.close()
    return 0
