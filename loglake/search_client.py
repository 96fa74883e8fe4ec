"""`loglake search`: a client of the HTTP API that prints a table, JSON or NDJSON."""

from __future__ import annotations

import argparse
import sys

import httpx
import orjson
from rich.console import Console
from rich.table import Table

from loglake.config import Config


def run_search(cfg: Config, args: argparse.Namespace) -> int:
    url = (args.url or f"http://{cfg.query.host}:{cfg.query.port}").rstrip("/")
    params = {"q": args.query, "limit": args.limit, "order": args.order}
    if args.since:
        params["start"] = f"now-{args.since}"
    if args.start:
        params["start"] = args.start
    if args.end:
        params["end"] = args.end
    try:
        resp = httpx.get(f"{url}/api/v1/search", params=params, timeout=60)
    except httpx.HTTPError as e:
        print(f"loglake: cannot reach {url}: {e}", file=sys.stderr)
        return 4
    if resp.status_code != 200:
        try:
            body = resp.json()
            msg = body.get("message") or body.get("detail") or resp.text
            if "position" in body:
                msg = f"{msg}\n  {body['query']}\n  {' ' * body['position']}^"
        except ValueError:
            msg = resp.text
        print(f"loglake: query rejected ({resp.status_code}): {msg}", file=sys.stderr)
        return 3
    body = resp.json()
    if args.output == "json":
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif args.output == "ndjson":
        for row in body["rows"]:
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
    else:
        table = Table(box=None, show_edge=False, pad_edge=False)
        for col in ("ts", "service", "level", "message"):
            table.add_column(col, overflow="fold" if col == "message" else None, no_wrap=col != "message")
        for row in body["rows"]:
            table.add_row(row["ts"], row["service"], row["level"], row["message"])
        console = Console()
        console.print(table)
        s = body["stats"]
        console.print(f"[dim]{s['returned']} rows, {s['segments_scanned']}/{s['segments_total']} segments, "
                      f"{s['elapsed_ms']} ms[/dim]")
    return 0
