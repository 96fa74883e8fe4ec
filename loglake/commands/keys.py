"""`loglake keys create | list | revoke`: API keys, managed on the catalog directly."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from loglake.core.config import Config
from query.auth import create_key
from query.store import KeyStore
from query.timerange import format_us, now_us, parse_duration_us
from storage.catalog import Catalog


def cmd_keys(cfg: Config, args: argparse.Namespace) -> int:
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    try:
        if args.keys_command == "create":
            tenants = [t for item in args.tenant for t in item.split(",") if t]
            expires = now_us() + parse_duration_us(args.expires) if args.expires else None
            key = create_key(catalog, tenants, args.role, expires, args.description)
            print(key)
            print(f"a {args.role} key for {', '.join(tenants)}"
                  f"{', expiring ' + format_us(expires) if expires else ''}; it is shown only now",
                  file=sys.stderr)
        elif args.keys_command == "list":
            table = Table(box=None, show_edge=False, pad_edge=False)
            for col in ("id", "role", "tenants", "created", "expires", "revoked", "description"):
                table.add_column(col)
            for k in KeyStore(catalog).api_keys():
                table.add_row(k.id, k.role, ",".join(k.tenants), format_us(k.created_us),
                              format_us(k.expires_us) if k.expires_us else "",
                              format_us(k.revoked_us) if k.revoked_us else "", k.description)
            Console().print(table)
        elif not KeyStore(catalog).revoke_api_key(args.id):
            print(f"loglake keys: no live key {args.id!r}", file=sys.stderr)
            return 1
    finally:
        catalog.close()
    return 0
