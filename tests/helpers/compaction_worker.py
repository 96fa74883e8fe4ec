"""A compactor in a process of its own, for tests/test_compaction.py (killed mid-run, or raced with another).

    python tests/helpers/compaction_worker.py DATA_ROOT CATALOG_URL [--zstd N] [--target-rows N]
        [--target-bytes N] [--row-group-rows N] [--tenant T] [--wait] [--until FILE] [--hold-before-swap S]

Prints ``ready`` once the catalog is open. With ``--wait`` it then waits for a
line on stdin before it starts (so two of them can be let go at once). It runs
``compact()`` once, or again and again until FILE exists (``--until``), then
prints the summed report as one JSON line. ``--hold-before-swap`` waits S seconds between a
batch's outputs landing on disk and their catalog swap, so that a kill in that window (outputs
not committed) is a matter of waiting, not of luck.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("data_root")
    p.add_argument("catalog_url")
    p.add_argument("--zstd", type=int, default=9)
    p.add_argument("--target-rows", type=int, default=5_000_000)
    p.add_argument("--target-bytes", type=int, default=256 << 20)
    p.add_argument("--row-group-rows", type=int, default=1 << 20)
    p.add_argument("--tenant")
    p.add_argument("--wait", action="store_true")
    p.add_argument("--until")
    p.add_argument("--hold-before-swap", type=float, default=0.0)
    args = p.parse_args()

    from loglake.core.config import CompactionConfig
    from storage.catalog import Catalog
    from storage.compaction import compact
    from storage.root import DataRoot

    if args.hold_before_swap:
        swap = Catalog.swap

        def held_swap(self: Catalog, *a: object, **kw: object) -> object:
            time.sleep(args.hold_before_swap)
            return swap(self, *a, **kw)  # type: ignore[arg-type]  # the real swap's own arguments

        Catalog.swap = held_swap  # type: ignore[method-assign]  # a test-only delay in this process

    cfg = CompactionConfig(target_bytes=args.target_bytes, target_rows=args.target_rows, min_age_s=0,
                           zstd_level=args.zstd, row_group_rows=args.row_group_rows)
    root, catalog = DataRoot(args.data_root), Catalog(args.catalog_url)
    print("ready", flush=True)
    if args.wait:
        sys.stdin.readline()
    total = {"runs": 0, "batches": 0, "inputs": 0, "outputs": 0, "rows": 0, "conflicts": 0, "hours": [],
             "pid": os.getpid()}
    while True:
        r = compact(root, catalog, cfg, tenant=args.tenant)
        total["runs"] += 1
        for k in ("batches", "inputs", "outputs", "rows", "conflicts"):
            total[k] += getattr(r, k)
        total["hours"] += r.hours
        if not args.until or os.path.exists(args.until):
            break
        if not r.batches:
            time.sleep(0.005)
    print(json.dumps(total), flush=True)
    catalog.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
