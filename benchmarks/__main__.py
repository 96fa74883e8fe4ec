"""`python -m benchmarks SUITE [--lines N]`: run one suite (or `all`) and write its result."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.harness import RESULTS_DIR, console

SUITES = ("ship", "ingest", "storage", "query", "e2e", "web", "push", "patterns", "up")
DEFAULT_LINES = {"ship": 2_000_000, "ingest": 5_000_000, "storage": 2_000_000, "query": 10_000_000,
                 "e2e": 2_400_000, "web": 2_000_000,
                 "push": 200_000, "patterns": 1_000_000, "up": 2_500_000}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("suite", choices=[*SUITES, "all", "report"],
                   help="a suite, all of them, or `report` to refresh the tables in benchmarks/README.md")
    p.add_argument("--lines", type=int, help="corpus size (default per suite; e2e: rate x duration)")
    p.add_argument("--out", default=str(RESULTS_DIR), help="where SUITE.json goes")
    args = p.parse_args(argv)
    if args.suite == "report":
        from benchmarks.report import update_readme

        update_readme(Path(args.out))
        return 0
    cpus = os.sched_getaffinity(0)
    failed = False
    for suite in SUITES if args.suite == "all" else (args.suite,):
        os.sched_setaffinity(0, cpus)
        lines = args.lines or DEFAULT_LINES[suite]
        console.rule(f"{suite} ({lines:,} lines)")
        t0 = time.perf_counter()
        started = datetime.now(UTC).isoformat(timespec="seconds")
        result = importlib.import_module(f"benchmarks.suites.{suite}").run(lines)
        result.started = started
        result.print()
        path = result.write(Path(args.out))
        console.print(f"  wrote {path} in {time.perf_counter() - t0:.0f}s")
        failed |= not all(result.checks.values())
    if args.suite == "all":
        from benchmarks.report import update_readme

        update_readme(Path(args.out))
    if failed:
        console.print("[bold red]some answers were wrong[/bold red]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
