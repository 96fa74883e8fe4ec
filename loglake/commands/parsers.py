"""The arguments of the admin commands (storage, keys, sources, formats, alerts, backups and the
Iceberg mirror), and which function runs each.

The grammar lives apart from the commands so that building the parser imports nothing heavy:
every `loglake` process builds it (each child of `loglake up`, every CLI call), and importing the
commands' modules with it (DuckDB, pyarrow, FastAPI, the query service) cost each 1.1 s of CPU
before it did anything. A command's module is imported when it runs (:func:`command`).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from loglake.core.config import Config
from query.roles import ROLES

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Command = Callable[[Config, argparse.Namespace], int]

#: Lines `loglake formats suggest` reads from the start of the file.
SAMPLE_LINES = 500

#: Each admin command's function, as "module:function".
COMMANDS = {
    "compact": "loglake.commands.storage:cmd_compact", "retention": "loglake.commands.storage:cmd_retention",
    "delete": "loglake.commands.storage:cmd_delete", "fsck": "loglake.commands.storage:cmd_fsck",
    "maintain": "loglake.commands.storage:cmd_maintain", "keys": "loglake.commands.keys:cmd_keys",
    "sources": "loglake.commands.sources:cmd_sources", "formats": "loglake.commands.formats:cmd_formats",
    "alert": "loglake.commands.alerts:cmd_alert", "backup": "loglake.commands.lakehouse:cmd_backup",
    "iceberg": "loglake.commands.lakehouse:cmd_iceberg",
}


def command(name: str) -> Command:
    """The function that runs the admin command ``name``, its module imported now."""
    module, _, fn = COMMANDS[name].partition(":")
    found: Command = getattr(importlib.import_module(module), fn)
    return found


def add_parsers(sub: Subparsers) -> None:
    """Every admin command's arguments, under ``sub``."""
    for add in (_storage, _keys, _sources, _formats, _alerts, _lakehouse):
        add(sub)


def _storage(sub: Subparsers) -> None:
    compact = sub.add_parser("compact", help="merge each hour's small segments into big sorted ones")
    compact.add_argument("--tenant")
    compact.add_argument("--dry-run", action="store_true", help="show what would be merged")
    ret = sub.add_parser("retention", help="apply the retention policies")
    ret_sub = ret.add_subparsers(dest="retention_command", required=True, metavar="ACTION")
    run = ret_sub.add_parser("run", help="delete what the policies say has expired")
    run.add_argument("--tenant")
    run.add_argument("--dry-run", action="store_true", help="show what would be deleted, delete nothing")
    delete = sub.add_parser("delete", help="delete the rows a query matches (rewrites the segments)")
    delete.add_argument("--tenant", required=True)
    delete.add_argument("--query", required=True, help="search language, e.g. 'password' or 'user.id:42'")
    delete.add_argument("--start", required=True, help="RFC 3339, epoch or now-30d")
    delete.add_argument("--end", default="now")
    delete.add_argument("--dry-run", action="store_true")
    delete.add_argument("--actor", help="who asked, for the audit table (default: the OS user)")
    fsck = sub.add_parser("fsck", help="compare the files with the catalog")
    fsck.add_argument("--repair", action="store_true", help="delete old orphans, retire segments without files")
    sub.add_parser("maintain", help="run compaction, retention, garbage collection, the Iceberg mirror's sync "
                                    "and backups on their schedules")


def _keys(sub: Subparsers) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="make a key and print it (the only time it is shown)")
    create.add_argument("--tenant", action="append", required=True, help="tenant it may use (repeat, or a,b)")
    create.add_argument("--role", choices=ROLES, required=True,
                        help="reader: search; writer: also saved queries and push; admin: also retention; "
                             "ingest: push to `loglake receive` only, no reading")
    create.add_argument("--expires", help="lifetime, e.g. 90d (default: none)")
    create.add_argument("--description", default="")
    keys_sub.add_parser("list", help="every key: id, role, tenants, dates (never the secret)")
    revoke = keys_sub.add_parser("revoke", help="stop a key working (within auth.cache_s)")
    revoke.add_argument("id", help="the key's id: the part after llk_")


def _sources(sub: Subparsers) -> None:
    p = sub.add_parser("sources", help="every source: detected format, time layout, zone, share parsed (1h)")
    p.add_argument("--tenant", help="only this tenant (default: every tenant ingest recorded)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _formats(sub: Subparsers) -> None:
    formats = sub.add_parser("formats", help="work out a file's format and suggest an [[ingest.formats]] rule")
    formats_sub = formats.add_subparsers(dest="formats_command", required=True, metavar="ACTION")
    s = formats_sub.add_parser("suggest", help="detected format, time layout, zone, level, fields, a rule, a preview")
    s.add_argument("file", help="a log file (plain or .gz)")
    s.add_argument("--lines", type=int, default=SAMPLE_LINES, help=f"lines to sample (default {SAMPLE_LINES})")
    s.add_argument("--json", action="store_true", help="machine-readable output")


def _alerts(sub: Subparsers) -> None:
    alert = sub.add_parser("alert", help="evaluate alert and recording rules (without an action); manage rules")
    actions = alert.add_subparsers(dest="alert_command", metavar="ACTION")
    load = actions.add_parser("load", help="load Prometheus/Loki rule files into the catalog (a namespace each)")
    load.add_argument("files", nargs="+", type=Path)
    load.add_argument("--tenant", default="default")
    check = actions.add_parser("check", help="check rule files without loading them")
    check.add_argument("files", nargs="+", type=Path)
    lst = actions.add_parser("list", help="the tenant's rules and their alerts")
    lst.add_argument("--tenant", default="default")
    delete = actions.add_parser("delete", help="delete a rule group")
    delete.add_argument("namespace")
    delete.add_argument("group")
    delete.add_argument("--tenant", default="default")
    bt = actions.add_parser("backtest", help="replay a rule over stored history: when it would have fired")
    bt.add_argument("rule", help="the rule's name (or namespace/group/name), or one in --file")
    bt.add_argument("--since", default="7d", help="how far back (default 7d)")
    bt.add_argument("--end", help="end of the replay (default now)")
    bt.add_argument("--step", help="evaluation step (default the group's interval)")
    bt.add_argument("--file", type=Path, help="take the rule from this rule file instead of the catalog")
    bt.add_argument("--tenant", default="default")
    bt.add_argument("--output", choices=["table", "json"], default="table")


def _lakehouse(sub: Subparsers) -> None:
    b = sub.add_parser("backup", help="back up the catalog and segments; list, verify, restore, prune backups")
    bs = b.add_subparsers(dest="backup_command", required=True, metavar="ACTION")
    create = bs.add_parser("create", help="a new backup (copies only segments DEST lacks)")
    create.add_argument("dest", nargs="?", help="directory or s3://bucket/prefix (default: backup.dest)")
    create.add_argument("--keep", type=int, help="then delete all but the newest KEEP backups")
    lst = bs.add_parser("list", help="the backups in DEST")
    lst.add_argument("dest", nargs="?")
    verify = bs.add_parser("verify", help="check every file of every backup (size and SHA-256)")
    verify.add_argument("dest", nargs="?")
    verify.add_argument("--backup", help="only this backup id")
    restore = bs.add_parser("restore", help="restore a backup into an empty data root and catalog")
    restore.add_argument("dest")
    restore.add_argument("--to", required=True, help="the data root to restore into (empty)")
    restore.add_argument("--backup", help="backup id (default: the newest)")
    restore.add_argument("--catalog-url", help="the catalog to restore into (empty; default: storage.catalog_url, "
                                               "or catalog.sqlite in the new data root)")
    prune = bs.add_parser("prune", help="delete all but the newest backups")
    prune.add_argument("dest", nargs="?")
    prune.add_argument("--keep", type=int, help="how many to keep (default: backup.keep)")
    ice = sub.add_parser("iceberg", help="the Iceberg mirror of the lake")
    ices = ice.add_subparsers(dest="iceberg_command", required=True, metavar="ACTION")
    sync = ices.add_parser("sync", help="bring the tables up to the catalog now, then list them")
    sync.add_argument("--tenant")
    ices.add_parser("tables", help="each tenant's table and its current metadata file")
