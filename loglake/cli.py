"""The `loglake` command: one entry point, thin over the same objects the services use.

Exit codes: 0 ok, 1 failure, 2 bad usage or configuration, 3 query rejected
by the server, 4 server unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from loglake.commands import parsers as admin
from loglake.core.config import Config, ConfigError, load_config
from loglake.core.logs import setup_logging
from query.errors import QueryError
from storage.errors import StorageError

EXIT_FAILURE, EXIT_USAGE, EXIT_QUERY, EXIT_UNREACHABLE = 1, 2, 3, 4


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def cmd_up(cfg: Config, args: argparse.Namespace) -> int:
    from loglake.supervisor import run_up

    return run_up(cfg, args.config)


def cmd_broker(cfg: Config, args: argparse.Namespace) -> int:
    from loglake.broker import start_broker, stop_process
    from loglake.core.topics import ensure_topic

    proc = start_broker(cfg.broker.listen)
    try:
        asyncio.run(ensure_topic(cfg.kafka))
        print(f"broker listening on {cfg.broker.listen}; topic {cfg.kafka.topic}. Ctrl-C stops it.", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        proc.wait()
        return proc.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        stop_process(proc)


def cmd_ship(cfg: Config, args: argparse.Namespace) -> int:
    from shippers.shipper import Shipper, StartupError, reach_broker

    async def main() -> int:
        stop = _stop_event()
        shipper = Shipper(cfg)          # first: settings it ignores are warned about at once
        try:
            if await reach_broker(cfg, stop) is None:
                print("loglake ship: stopped while waiting for the broker", file=sys.stderr)
                return 0
        except StartupError as e:
            print(f"loglake ship: {e}", file=sys.stderr)
            return EXIT_FAILURE
        if not args.once:
            await shipper.run(stop)
            return 0
        # A backfill: show how much of what is on disk now has been read.
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

        shipper.files.scan(first=True)
        total = sum(max(0, w.size() - w.offset) for w in shipper.files.watchers.values())
        with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), TimeRemainingColumn(), transient=False) as progress:
            task = progress.add_task(f"shipping {len(shipper.files.watchers)} files", total=total or None)
            run = asyncio.create_task(shipper.run(stop, once=True))
            while not run.done():
                progress.update(task, completed=min(total, shipper.stats["bytes"]))
                await asyncio.wait([run], timeout=0.2)
            progress.update(task, completed=total)
            await run
        return 0

    return asyncio.run(main())


def cmd_ingest(cfg: Config, args: argparse.Namespace) -> int:
    from ingest.parsers.pattern import PatternError
    from ingest.worker import IngestWorker, TopicRecreated
    from storage.catalog import Catalog

    try:
        worker = IngestWorker(cfg, Catalog(cfg.storage.resolved_catalog_url()))
    except PatternError as e:
        raise ConfigError(f"ingest.formats: {e}") from None

    async def main() -> None:
        await worker.run(_stop_event())

    try:
        asyncio.run(main())
    except TopicRecreated as e:
        print(f"loglake ingest: {e} (ingest.on_topic_recreated = \"fail\")", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _open_without_auth(command: str, host: str, cfg: Config, args: argparse.Namespace) -> bool:
    """Whether ``command`` would listen beyond loopback with authentication off (and says so)."""
    from loglake.core.addresses import is_loopback

    if cfg.auth.enabled or is_loopback(host) or args.insecure:
        return False
    print(f"loglake {command}: refusing to listen on {host} with authentication off (auth.enabled = false); "
          "turn it on, listen on loopback, or pass --insecure", file=sys.stderr)
    return True


def cmd_serve(cfg: Config, args: argparse.Namespace) -> int:
    import uvicorn

    from query.api.app import create_app

    host = args.host or cfg.query.host
    if _open_without_auth("serve", host, cfg, args):
        return EXIT_USAGE
    tls = bool(cfg.query.tls_cert)
    # The app checks Host against the address it really listens on, --host included.
    cfg = cfg.model_copy(update={"query": cfg.query.model_copy(update={"host": host})})
    uvicorn.run(create_app(cfg), host=host, port=args.port or cfg.query.port, log_config=None, access_log=False,
                ssl_certfile=str(cfg.query.tls_cert) if tls else None,
                ssl_keyfile=str(cfg.query.tls_key) if tls else None)
    return 0


def cmd_receive(cfg: Config, args: argparse.Namespace) -> int:
    import uvicorn

    from receive.app import Middleware, create_app, required_role

    host = args.host or cfg.receive.host
    if _open_without_auth("receive", host, cfg, args):
        return EXIT_USAGE
    wrap: Middleware | None = None
    if cfg.auth.enabled:
        # The query server's keys, in the same catalog: a writer key may push to its tenants.
        from query.auth import Authenticator, AuthMiddleware
        from storage.catalog import Catalog

        auth = Authenticator(Catalog(cfg.storage.resolved_catalog_url()), cfg.auth)
        wrap = lambda app: AuthMiddleware(app, auth, role_of=required_role)  # noqa: E731
    uvicorn.run(create_app(cfg, wrap), host=host, port=args.port or cfg.receive.port, log_config=None,
                access_log=False)
    return 0


def cmd_demo(cfg: Config, args: argparse.Namespace) -> int:
    from loglake.demo import DemoWriter

    writer = DemoWriter(cfg.demo.dir, cfg.demo.lines_per_second)
    signal.signal(signal.SIGTERM, lambda *_: writer.stop())
    signal.signal(signal.SIGINT, lambda *_: writer.stop())
    writer.run()
    return 0


def cmd_search(cfg: Config, args: argparse.Namespace) -> int:
    from loglake.search_client import run_search

    return run_search(cfg, args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loglake", description="Log aggregation and search.")
    p.add_argument("--config", help="TOML config file (default: $LOGLAKE_CONFIG or ./loglake.toml)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("up", help="run broker, ingest, query server, shipper and demo writer together")
    sub.add_parser("broker", help="run the embedded Kafka-protocol broker alone")
    ship = sub.add_parser("ship", help="tail files into Kafka")
    ship.add_argument("--once", action="store_true", help="ship everything up to the current end, then exit")
    sub.add_parser("ingest", help="consume the topic into Parquet segments")
    serve = sub.add_parser("serve", help="run the query HTTP server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--insecure", action="store_true",
                       help="serve a non-loopback address even with authentication off")
    receive = sub.add_parser("receive", help="accept OTLP/HTTP, Loki push, Elasticsearch bulk and NDJSON pushes")
    receive.add_argument("--host")
    receive.add_argument("--port", type=int)
    receive.add_argument("--insecure", action="store_true",
                         help="listen on a non-loopback address even with authentication off")
    sub.add_parser("demo", help="append realistic demo lines to files under demo.dir")
    search = sub.add_parser(
        "search", help="search, aggregate and run saved queries through the HTTP API",
        description="Search (the default), aggregate (--aggregate), or use saved queries "
                    "(--run, --save, --list-saved, --show-saved, --delete-saved).")
    search.add_argument("query", nargs="?", default="", help="e.g. 'level:error service:api timeout'")
    search.add_argument("--since", help="relative start, e.g. 15m, 2h (default 1h)")
    search.add_argument("--start", help="RFC 3339, epoch or now-15m")
    search.add_argument("--end", help="RFC 3339, epoch or now")
    search.add_argument("--limit", type=int, help="rows per page (default 100)")
    search.add_argument("--order", choices=["asc", "desc"], default="desc")
    search.add_argument("--fields", help="comma-separated columns or attribute keys to show")
    search.add_argument("--cursor", help="continue after the page that printed this cursor")
    search.add_argument("--pages", type=int, default=1, help="follow the cursor for this many pages")
    search.add_argument("--aggregate", action="store_true", help="count or compute per time bucket")
    search.add_argument("--interval", help="bucket width with --aggregate, e.g. 5m (default: about 100 buckets)")
    search.add_argument("--by", help="comma-separated fields to group by with --aggregate")
    search.add_argument("--fn", default="count", help="count, or p95(duration_ms), avg(bytes), ...")
    search.add_argument("--top", type=int, help="groups kept before 'other' with --aggregate")
    saved = search.add_mutually_exclusive_group()
    saved.add_argument("--run", metavar="NAME", help="run a saved query (over --start/--end if given)")
    saved.add_argument("--save", metavar="NAME", help="save the query and its options under NAME")
    saved.add_argument("--list-saved", action="store_true", help="list saved queries")
    saved.add_argument("--show-saved", metavar="NAME", help="show one saved query")
    saved.add_argument("--delete-saved", metavar="NAME", help="delete a saved query")
    search.add_argument("--description", default="", help="with --save")
    search.add_argument("--owner", default="", help="with --save")
    search.add_argument("--tenant", help="tenant to search (X-Scope-OrgID; default: the key's first, or default)")
    search.add_argument("--url", help="query server (default from [query] host/port)")
    search.add_argument("--key", help="API key (default: auth.key, e.g. from LOGLAKE_AUTH__KEY)")
    search.add_argument("-o", "--output", choices=["table", "json", "ndjson", "raw"], default="table",
                        help="raw: each record's original line, exactly as received")
    admin.add_parsers(sub)
    return p


#: The pipeline's commands; the admin commands' functions are imported when one runs (admin.command).
COMMANDS = {"up": cmd_up, "broker": cmd_broker, "ship": cmd_ship, "ingest": cmd_ingest,
            "serve": cmd_serve, "receive": cmd_receive, "demo": cmd_demo, "search": cmd_search}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"loglake: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.command != "search":
        setup_logging(args.command, cfg.log.level, cfg.log.json_format)
    try:
        run = COMMANDS.get(args.command) or admin.command(args.command)
        return run(cfg, args)
    except ConfigError as e:       # found only when a command puts the config to use
        print(f"loglake: {e}", file=sys.stderr)
        return EXIT_USAGE
    except QueryError as e:        # a bad query given to `delete`
        print(f"loglake {args.command}: {e}", file=sys.stderr)
        return EXIT_QUERY
    except StorageError as e:      # the catalog or the data root cannot be used
        print(f"loglake {args.command}: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 0
