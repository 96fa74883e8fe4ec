"""`loglake search`: a client of the HTTP API that prints a table, JSON, NDJSON or the original lines.

One command for the three things an engineer does from a terminal: search
(following cursors for more pages), aggregate, and manage or run saved
queries. Exit codes: 0 done, 3 the server refused the request, 4 no server.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from rich.console import Console
from rich.table import Table

from loglake.core.config import Config

EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


def _call(client: httpx.Client, method: str, path: str, **kw: Any) -> Any:
    resp = client.request(method, path, **kw)
    if resp.status_code >= 400:
        try:
            body = resp.json()
            msg = body.get("message") or body.get("detail") or resp.text
            if "position" in body:
                msg = f"{msg}\n  {body['query']}\n  {' ' * body['position']}^"
        except ValueError:
            msg = resp.text
        raise _Refused(resp.status_code, str(msg))
    return resp.json() if resp.content else None


def _range(args: argparse.Namespace) -> dict[str, str]:
    out = {}
    if args.since:
        out["start"] = f"now-{args.since}"
    if args.start:
        out["start"] = args.start
    if args.end:
        out["end"] = args.end
    return out


def _dump(body: Any) -> None:
    sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")


def _print_lines(rows: list[dict[str, Any]]) -> None:
    """Each row's original line as it was received, UTF-8, one per line (a multi-line record spans several)."""
    out = sys.stdout.buffer
    for row in rows:
        line = row.get("line")
        out.write(("" if line is None else str(line)).encode("utf-8", "surrogateescape") + b"\n")
    out.flush()


def _print_rows(args: argparse.Namespace, body: dict[str, Any], console: Console) -> None:
    rows = body["rows"]
    if args.output == "raw":
        _print_lines(rows)
        return
    if args.output == "json":
        _dump(body)
        return
    if args.output == "ndjson":
        for row in rows:
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
        return
    columns = ["ts", *[f for f in (args.fields or "").split(",") if f and f != "ts"]] if args.fields \
        else ["ts", "service", "level", "message"]
    table = Table(box=None, show_edge=False, pad_edge=False)
    for col in columns:
        # The message wraps; the other columns are cut at the column's width (no_wrap).
        table.add_column(col, overflow="fold", no_wrap=col != "message")
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    console.print(table)
    s = body["stats"]
    more = f", next page: --cursor {body['cursor']}" if body.get("cursor") else ""
    console.print(f"[dim]{s['returned']} rows, {s['segments_scanned']}/{s['segments_total']} segments, "
                  f"{s['elapsed_ms']} ms{more}[/dim]", soft_wrap=True)   # a cursor must stay one piece


def _print_aggregate(args: argparse.Namespace, body: dict[str, Any], console: Console) -> None:
    if args.output == "json":
        _dump(body)
        return
    if args.output == "ndjson":
        for s in body["series"]:
            for t, v in zip(body["buckets"], s["points"], strict=True):
                sys.stdout.write(orjson.dumps({"t": t, **s["group"], "other": s["other"], "value": v}).decode()
                                 + "\n")
        return
    table = Table(box=None, show_edge=False, pad_edge=False)
    names = body["by"] or ["all"]
    for name in names:
        table.add_column(name)
    table.add_column(body["fn"], justify="right")
    table.add_column(f"per {body['interval']}")
    for s in body["series"]:
        key = ["(other)"] * len(names) if s["other"] else [str(s["group"].get(n)) for n in names] if body["by"] \
            else ["all"]
        peak = max((p for p in s["points"] if p is not None), default=0) or 1
        bars = "".join(" ▁▂▃▄▅▆▇█"[min(8, round(8 * (p or 0) / peak))] for p in s["points"][-60:])
        table.add_row(*key, "" if s["total"] is None else f"{s['total']:g}", bars)
    console.print(table)
    console.print(f"[dim]{len(body['buckets'])} buckets of {body['interval']}, {body['stats']['elapsed_ms']} ms[/dim]")


def _search(client: httpx.Client, args: argparse.Namespace, console: Console) -> None:
    params: dict[str, Any] = {"q": args.query, "order": args.order, **_range(args)}
    if args.limit is not None:
        params["limit"] = args.limit
    if args.fields:
        params["fields"] = f"{args.fields},line" if args.output == "raw" else args.fields
    cursor = args.cursor
    for _ in range(max(1, args.pages)):
        body = _call(client, "GET", "/api/v1/search", params={**params, **({"cursor": cursor} if cursor else {})})
        _print_rows(args, body, console)
        cursor = body.get("cursor")
        if not cursor:
            break
    if cursor and args.output == "raw":
        print(f"next page: --cursor {cursor}", file=sys.stderr)     # stdout holds only the lines


def _aggregate(client: httpx.Client, args: argparse.Namespace, console: Console) -> None:
    params: dict[str, Any] = {"q": args.query, "fn": args.fn, **_range(args)}
    for key in ("interval", "by", "top"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    _print_aggregate(args, _call(client, "GET", "/api/v1/aggregate", params=params), console)


def _save(client: httpx.Client, args: argparse.Namespace) -> None:
    params: dict[str, Any] = _range(args)
    if args.aggregate:
        params.update({k: getattr(args, k) for k in ("interval", "top") if getattr(args, k) is not None})
        params["fn"] = args.fn
        if args.by:
            params["by"] = [b for b in args.by.split(",") if b]
    else:
        if args.limit is not None:
            params["limit"] = args.limit
        if args.fields:
            params["fields"] = [f for f in args.fields.split(",") if f]
        params["order"] = args.order
    body = {"name": args.save, "kind": "aggregate" if args.aggregate else "search", "query": args.query,
            "params": params, "description": args.description, "owner": args.owner}
    try:
        _dump(_call(client, "POST", "/api/v1/saved-queries", json=body))
    except _Refused as e:
        if e.status != 409:
            raise
        _dump(_call(client, "PUT", f"/api/v1/saved-queries/{quote(args.save, safe='')}", json=body))


def _run_saved(client: httpx.Client, args: argparse.Namespace, console: Console) -> None:
    body = _call(client, "GET", f"/api/v1/saved-queries/{quote(args.run, safe='')}/run", params=_range(args))
    if "series" in body:
        _print_aggregate(args, body, console)
    else:
        _print_rows(args, body, console)


def run_search(cfg: Config, args: argparse.Namespace) -> int:
    url = (args.url or f"http://{cfg.query.host}:{cfg.query.port}").rstrip("/")
    console = Console()
    headers = {"X-Scope-OrgID": args.tenant} if args.tenant else {}
    key = args.key or cfg.auth.key
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        with httpx.Client(base_url=url, timeout=120, headers=headers) as client:
            if args.list_saved:
                saved = _call(client, "GET", "/api/v1/saved-queries")
                if args.output != "table":
                    _dump(saved)
                    return 0
                table = Table(box=None, show_edge=False, pad_edge=False)
                for col in ("name", "kind", "query", "description", "updated"):
                    table.add_column(col)
                for s in saved:
                    table.add_row(s["name"], s["kind"], s["query"], s["description"], s["updated"])
                console.print(table)
            elif args.show_saved:
                _dump(_call(client, "GET", f"/api/v1/saved-queries/{quote(args.show_saved, safe='')}"))
            elif args.delete_saved:
                _call(client, "DELETE", f"/api/v1/saved-queries/{quote(args.delete_saved, safe='')}")
                print(f"deleted {args.delete_saved}", file=sys.stderr)
            elif args.save:
                _save(client, args)
            elif args.run:
                _run_saved(client, args, console)
            elif args.aggregate:
                _aggregate(client, args, console)
            else:
                _search(client, args, console)
    except _Refused as e:
        print(f"loglake: request refused ({e.status}): {e.message}", file=sys.stderr)
        return EXIT_REFUSED
    except httpx.HTTPError as e:
        print(f"loglake: cannot reach {url}: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except BrokenPipeError:           # `loglake search ... | head`: the reader has what it wanted
        sys.stderr.close()
    return 0
