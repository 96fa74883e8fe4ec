"""storage/catalog.py: compaction, retention and deletion (swap, retire, forget), on both backends.

Every test runs on SQLite and on PostgreSQL (the ``catalog_url`` fixture). The
process tests spawn real processes that each open their own Catalog, as ingest
workers, compactors and retention runs on several machines would.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import random
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from storage.catalog import MIGRATIONS, AuditEntry, Catalog, PartitionCommit, PartitionState, SegmentRow
from storage.errors import CatalogConflict
from storage.segments import SegmentInfo
from tests.helpers.catalogs import integrity, is_postgres, run_sql

TOPIC = "logs"


# -- helpers ---------------------------------------------------------------------------------


def seg(path: str, lo: int = 0, hi: int = 10, *, tenant: str = "t", rows: int = 1) -> SegmentInfo:
    return SegmentInfo(tenant=tenant, path=path, min_ts_us=lo, max_ts_us=hi, rows=rows, bytes=100 * rows,
                       services={"api": rows}, levels={"info": rows})


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    cat = Catalog(catalog_url)
    yield cat
    cat.close()


def ingest(cat: Catalog, *infos: SegmentInfo, partition: int = 0) -> dict[str, int]:
    """Commit ``infos`` as the next batch of ``partition``; their ids by path."""
    state = cat.partition_states(TOPIC).get(partition, PartitionState(0, 0))
    cat.commit([PartitionCommit(TOPIC, partition, state.epoch, state.next_offset, state.next_offset + 1,
                                list(infos))])
    known = cat.known_paths()
    return {i.path: known[i.path][0] for i in infos}


def live_paths(cat: Catalog, tenant: str | None = None) -> set[str]:
    return {r.path for r in cat.live_segments(tenant)}


def states(cat: Catalog) -> dict[str, str]:
    return {p: st for p, (_, st) in cat.known_paths().items()}


def entry(n: int = 1, **over: Any) -> AuditEntry:
    fields: dict[str, Any] = dict(actor=f"retention policy tenant=t service=* #{n}", action="retention",
                                  tenant="t", service="*", start_us=10 * n, end_us=10 * n + 9, segments=n,
                                  rows=7 * n, bytes=700 * n, detail={"n": n}, at_us=1_000 + n)
    fields.update(over)
    return AuditEntry(**fields)


def wait_past(us: int) -> None:
    """Spin until the clock has passed ``us`` (microseconds): the next stamp is strictly later."""
    while time.time_ns() // 1000 <= us:
        pass


def _join(procs: list[Any], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(timeout=max(0.1, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0] * len(procs)


# -- swap -------------------------------------------------------------------------------------


def test_swap_retires_and_adds_in_one_step(catalog: Catalog) -> None:
    ids = ingest(catalog, seg("a", 0, 10, rows=2), seg("b", 5, 20, rows=3), seg("c", 30, 40, rows=4))
    before = time.time_ns() // 1000
    [new] = catalog.swap([ids["a"], ids["b"]], [seg("ab", 0, 20, rows=5)], generation=1,
                         audit=[entry(1, action="delete")])
    after = time.time_ns() // 1000

    live = {r.path: r for r in catalog.live_segments()}
    assert set(live) == {"ab", "c"}
    assert (live["ab"].id, live["ab"].generation, live["ab"].state, live["ab"].rows) == (new, 1, "live", 5)
    assert live["ab"].services == {"api": 5} and live["ab"].retired_us is None
    assert live["c"].generation == 0
    assert catalog.totals() == {"segments": 2, "rows": 9, "bytes": 900}
    assert states(catalog) == {"a": "retired", "b": "retired", "ab": "live", "c": "live"}
    retired = catalog.retired()
    assert {r.path for r in retired} == {"a", "b"}
    assert all(r.state == "retired" and r.retired_us is not None and before <= r.retired_us <= after
               for r in retired)
    assert {r.path for r in catalog.segments("t", 0, 100)} == {"ab", "c"}
    assert catalog.audit_log() == [entry(1, action="delete")]


def test_swap_that_fails_midway_records_nothing(catalog: Catalog) -> None:
    """The new segment's path is taken: the retirement in the same call is undone too."""
    ids = ingest(catalog, seg("a"), seg("b"), seg("c"))
    with pytest.raises(CatalogConflict, match="duplicate"):
        catalog.swap([ids["a"], ids["b"]], [seg("fresh"), seg("c")], generation=1, audit=[entry()])
    assert live_paths(catalog) == {"a", "b", "c"}
    assert states(catalog) == {"a": "live", "b": "live", "c": "live"}
    assert catalog.retired() == []
    assert catalog.audit_log() == []
    # ... and the catalog still works.
    catalog.swap([ids["a"], ids["b"]], [seg("fresh")], generation=1)
    assert live_paths(catalog) == {"c", "fresh"}


def test_swap_with_nothing_to_retire_just_adds(catalog: Catalog) -> None:
    ingest(catalog, seg("a"))
    ids = catalog.swap([], [seg("x", rows=2), seg("y", rows=3)], generation=4)
    known = catalog.known_paths()
    assert ids == [known["x"][0], known["y"][0]]
    assert live_paths(catalog) == {"a", "x", "y"}
    assert {r.path: r.generation for r in catalog.live_segments()} == {"a": 0, "x": 4, "y": 4}


def test_swap_retiring_without_replacement_is_a_deletion(catalog: Catalog) -> None:
    ids = ingest(catalog, seg("a", rows=3), seg("b", rows=4))
    assert catalog.swap([ids["a"]], [], audit=[entry(3)]) == []
    assert live_paths(catalog) == {"b"}
    assert catalog.totals()["rows"] == 4
    assert catalog.audit_log() == [entry(3)]


@pytest.mark.parametrize("gone", ["retired", "missing", "forgotten", "never existed"])
def test_swap_with_a_segment_no_longer_live_conflicts_and_changes_nothing(catalog: Catalog, gone: str) -> None:
    ids = ingest(catalog, seg("a", rows=1), seg("b", rows=2), seg("c", rows=4))
    catalog.swap([ids["a"]], [seg("a2", rows=1)], generation=1, audit=[entry(1)])
    victim = ids["a"]
    if gone == "missing":
        catalog.mark_missing([ids["c"]])
        victim = ids["c"]
    elif gone == "forgotten":
        catalog.forget([ids["a"]])
    elif gone == "never existed":
        victim = max(i for i, _ in catalog.known_paths().values()) + 1000
    live_before, known_before = catalog.live_segments(), catalog.known_paths()
    retired_before, audit_before = catalog.retired(), catalog.audit_log()

    with pytest.raises(CatalogConflict):
        catalog.swap([ids["b"], victim], [seg("merged", rows=3)], generation=2, audit=[entry(2)])

    assert catalog.live_segments() == live_before
    assert catalog.known_paths() == known_before
    assert "merged" not in catalog.known_paths()
    assert catalog.retired() == retired_before
    assert catalog.audit_log() == audit_before


def test_swap_naming_a_segment_twice_retires_it_once(catalog: Catalog) -> None:
    ids = ingest(catalog, seg("a", rows=2), seg("b", rows=3))
    catalog.swap([ids["a"], ids["b"], ids["a"]], [seg("ab", rows=5)], generation=1)
    assert live_paths(catalog) == {"ab"}
    assert catalog.totals()["rows"] == 5


# -- audit ------------------------------------------------------------------------------------


def test_audit_entries_round_trip_every_field(catalog: Catalog) -> None:
    ids = ingest(catalog, seg("a"), seg("b"), seg("c", tenant="u"))
    full = AuditEntry(actor="delete by alice@example.com (ticket #42)", action="delete", tenant="t",
                      service="checkout-api", start_us=-5, end_us=1 << 53, segments=2, rows=123_456_789_012,
                      bytes=(1 << 40) + 3,
                      detail={"segment": "tenant=t/date=2024-03-04/hour=22/x.parquet", "query": "level = 'error'",
                              "nested": {"list": [1, 2.5, None, True], "ünïcödé": "日本語 ✓"}, "empty": {}},
                      at_us=1_700_000_000_123_456)
    open_ended = AuditEntry("retention policy tenant=t service=*", "retention", "t", "*", None, None, 0, 0, 0)
    other_tenant = entry(9, tenant="u", at_us=1_700_000_000_000_000)
    before = time.time_ns() // 1000
    catalog.swap([ids["a"]], [], audit=[full, open_ended])
    after = time.time_ns() // 1000
    catalog.swap([ids["c"]], [], audit=[other_tenant])

    log = catalog.audit_log(tenant="t")
    stamped = next(e for e in log if e.actor == open_ended.actor)
    assert before <= stamped.at_us <= after                     # at_us=0: stamped at the swap
    assert stamped.detail == {} and stamped.start_us is None and stamped.end_us is None
    assert log == sorted([full, replace(open_ended, at_us=stamped.at_us)], key=lambda e: -e.at_us)
    assert catalog.audit_log(tenant="u") == [other_tenant]
    assert catalog.audit_log(tenant="nobody") == []


def test_audit_log_is_newest_first_and_limited(catalog: Catalog) -> None:
    ids = ingest(catalog, *(seg(f"s{i}") for i in range(6)))
    # Stamps out of insertion order, and two equal ones (then the later insert is newer).
    stamps = [50, 10, 40, 40, 30, 20]
    for i, at in enumerate(stamps):
        catalog.swap([ids[f"s{i}"]], [], audit=[entry(i, at_us=at)])
    assert [e.at_us for e in catalog.audit_log()] == [50, 40, 40, 30, 20, 10]
    assert [e.segments for e in catalog.audit_log()][1:3] == [3, 2]
    assert catalog.audit_log(limit=2) == [entry(0, at_us=50), entry(3, at_us=40)]
    assert catalog.audit_log(limit=0) == []


# -- retired, forget, mark_missing ------------------------------------------------------------


def test_retired_honours_its_cut(catalog: Catalog) -> None:
    ids = ingest(catalog, seg("a"), seg("b"), seg("live"), seg("gone"))
    catalog.swap([ids["a"]], [])
    [a] = catalog.retired()
    wait_past(a.retired_us or 0)
    catalog.swap([ids["b"]], [])
    catalog.mark_missing([ids["gone"]])
    b = next(r for r in catalog.retired() if r.path == "b")
    assert a.retired_us is not None and b.retired_us is not None and a.retired_us < b.retired_us

    def paths(before: int | None) -> list[str]:
        return [r.path for r in catalog.retired(before)]

    assert paths(a.retired_us) == []                  # strictly before the cut
    assert paths(a.retired_us + 1) == ["a"]
    assert paths(b.retired_us) == ["a"]
    assert paths(b.retired_us + 1) == ["a", "b"]      # oldest first
    assert paths(None) == ["a", "b"]
    assert paths(0) == []
    assert all(r.state == "retired" for r in catalog.retired())


def test_forget_drops_only_retired_and_missing_rows(catalog: Catalog) -> None:
    ids = ingest(catalog, seg("live1", rows=1), seg("live2", rows=2), seg("ret", rows=4), seg("miss", rows=8))
    catalog.swap([ids["ret"]], [])
    catalog.mark_missing([ids["miss"]])
    live_before = catalog.live_segments()

    catalog.forget(list(ids.values()) + [10**9])
    assert catalog.live_segments() == live_before
    assert states(catalog) == {"live1": "live", "live2": "live"}
    assert catalog.retired() == []
    assert catalog.totals() == {"segments": 2, "rows": 3, "bytes": 300}
    catalog.forget([])
    assert states(catalog) == {"live1": "live", "live2": "live"}


def test_mark_missing_only_touches_live_segments(catalog: Catalog) -> None:
    ids = ingest(catalog, seg("a", 0, 10, rows=1), seg("b", 0, 10, rows=2), seg("c", 0, 10, rows=4))
    catalog.swap([ids["b"]], [])
    [b_before] = catalog.retired()

    catalog.mark_missing([ids["a"], ids["b"], 10**9])
    assert states(catalog) == {"a": "missing", "b": "retired", "c": "live"}
    assert catalog.retired() == [b_before]           # b still retired, retired_us unchanged
    assert live_paths(catalog) == {"c"}
    assert [r.path for r in catalog.segments("t", 0, 100)] == ["c"]
    assert catalog.totals() == {"segments": 1, "rows": 4, "bytes": 400}
    # A missing segment cannot be swapped out again, and marking it twice changes nothing.
    catalog.mark_missing([ids["a"]])
    assert states(catalog)["a"] == "missing"
    with pytest.raises(CatalogConflict):
        catalog.swap([ids["a"]], [])
    catalog.mark_missing([])


def test_a_stale_plan_never_retires_a_newer_segment(catalog_url: str) -> None:
    """A compactor or rewrite that planned with a segment must not retire a different, newer one.

    Retention retires the newest segment, GC forgets it after the grace period,
    ingest commits a new one (SQLite may hand out the forgotten id again): a
    stale swap naming the old segment must conflict.
    """
    cat = Catalog(catalog_url)
    try:
        ingest(cat, seg("a", rows=1), seg("b", rows=2))
        [stale] = [r for r in cat.live_segments() if r.path == "b"]     # a slow compactor's plan
        cat.swap([stale], [], audit=[entry()])             # retention got there first
        cat.forget([r.id for r in cat.retired()])           # GC, after the grace period
        ingest(cat, seg("c", rows=4))                       # ingest goes on
        with pytest.raises(CatalogConflict):
            cat.swap([stale], [seg("b-compacted", rows=2)], generation=1)
        assert live_paths(cat) == {"a", "c"}
        assert cat.totals()["rows"] == 5
    finally:
        cat.close()


def test_live_segments_filter_by_tenant_oldest_first(catalog: Catalog) -> None:
    ingest(catalog, seg("t-late", 50, 90), seg("t-early", 0, 40), seg("u-1", 0, 10, tenant="u"),
           seg("t-mid", 10, 60))
    assert [r.path for r in catalog.live_segments("t")] == ["t-early", "t-mid", "t-late"]
    assert [r.path for r in catalog.live_segments("u")] == ["u-1"]
    assert [r.path for r in catalog.live_segments()] == ["u-1", "t-early", "t-mid", "t-late"]
    assert catalog.live_segments("nobody") == []


def test_segments_never_returns_retired_or_missing_segments(catalog: Catalog) -> None:
    """Random swaps, deletions, losses and forgets against a model of the live set."""
    rng = random.Random(20240304)
    model: dict[int, SegmentRow | SegmentInfo] = {}      # id -> live segment
    counter = 0

    def fresh() -> SegmentInfo:
        nonlocal counter
        counter += 1
        lo = rng.randrange(0, 1000)
        return seg(f"s{counter}", lo, lo + rng.randrange(0, 200), tenant=rng.choice("tu"), rows=rng.randrange(1, 9))

    for _ in range(60):
        op = rng.choice(["ingest", "swap", "swap", "missing", "forget"])
        live = sorted(model)
        if op == "ingest" or not live:
            infos = [fresh() for _ in range(rng.randrange(1, 4))]
            for path, i in ingest(catalog, *infos).items():
                model[i] = next(x for x in infos if x.path == path)
        elif op == "swap":
            out = rng.sample(live, rng.randrange(1, min(3, len(live)) + 1))
            add = [fresh() for _ in range(rng.randrange(0, 2))]
            new = catalog.swap(out, add, generation=1)
            for i in out:
                del model[i]
            model.update(zip(new, add, strict=True))
        elif op == "missing":
            out = rng.sample(live, 1)
            catalog.mark_missing(out)
            del model[out[0]]
        else:
            catalog.forget([i for i, _ in catalog.known_paths().values()])   # only non-live rows go
        for tenant in "tu":
            lo = rng.randrange(-10, 1100)
            hi = lo + rng.randrange(0, 400)
            got = catalog.segments(tenant, lo, hi)
            want = {i for i, s in model.items() if s.tenant == tenant and s.max_ts_us >= lo and s.min_ts_us < hi}
            assert sorted(r.id for r in got) == sorted(want)
            assert all(r.state == "live" for r in got)
        assert {r.id for r in catalog.live_segments()} == set(model)
        assert catalog.totals()["rows"] == sum(s.rows for s in model.values())


def test_statement_text_is_never_rewritten(catalog: Catalog) -> None:
    """The dialect is applied when statements are built: a literal that looks like the old
    shim's spellings (``?``, ``MAX2(``, ``ID_IN(?)``) reaches the database as written."""
    odd = "a ? b MAX2( c ID_IN(?) d"
    assert catalog.db.read(f"SELECT '{odd}'") == [(odd,)]
    d = catalog.db.dialect
    assert catalog.db.read(f"SELECT {d.greatest(d.p, d.p)}", (3, 7)) == [(7,)]
    ids = ingest(catalog, seg("a"), seg("b"), seg("c"))
    wanted = sorted(ids[p] for p in ("a", "c"))
    assert sorted(r[0] for r in catalog.db.read(f"SELECT id FROM segments WHERE {d.id_in()}", (d.ids(wanted),))) \
        == wanted


def test_many_segments_retire_and_forget_in_one_call(catalog_url: str) -> None:
    """Retention of a big tenant retires every expired segment in one swap; GC forgets them in one call."""
    n = 70_000
    cat = Catalog(catalog_url)
    try:
        # Seeded in bulk behind the catalog's back: 70k commits would take too long.
        if is_postgres(catalog_url):
            run_sql(catalog_url, "INSERT INTO segments (tenant, path, min_ts_us, max_ts_us, rows, bytes, services,"
                                 " levels, created_us) SELECT 't', 'bulk/' || g, g, g, 1, 1, '{}', '{}', 1"
                                 " FROM generate_series(1, ?) AS g", (n,))
        else:
            run_sql(catalog_url, "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < ?)"
                                 " INSERT INTO segments (tenant, path, min_ts_us, max_ts_us, rows, bytes, services,"
                                 " levels, created_us) SELECT 't', 'bulk/' || i, i, i, 1, 1, '{}', '{}', 1 FROM g",
                    (n,))
        ids = [i for i, _ in cat.known_paths().values()]
        assert len(ids) == n
        cat.swap(ids, [], audit=[entry(1, segments=n, rows=n)])
        assert cat.totals()["segments"] == 0
        assert len(cat.retired()) == n
        cat.forget(ids)
        assert cat.known_paths() == {}
    finally:
        cat.close()


# -- real processes ---------------------------------------------------------------------------

SWAP_ROUNDS = 20


def _swapper(url: str, name: str, groups: list[list[int]], barrier: Any, results: Any) -> None:
    cat = Catalog(url)
    try:
        for r, ids in enumerate(groups):
            barrier.wait(timeout=60)
            try:
                new = cat.swap(ids, [seg(f"{name}/{r}", rows=len(ids))], generation=1,
                               audit=[entry(r, actor=name, at_us=r + 1)])
                results.put((r, name, new))
            except CatalogConflict:
                results.put((r, name, None))
            barrier.wait(timeout=60)
    finally:
        cat.close()


def test_processes_racing_to_swap_the_same_segments_exactly_one_wins(catalog_url: str) -> None:
    cat = Catalog(catalog_url)
    try:
        groups = []
        for r in range(SWAP_ROUNDS):
            ids = ingest(cat, seg(f"g{r}/a"), seg(f"g{r}/b"), seg(f"g{r}/c"))
            groups.append(list(ids.values()))
    finally:
        cat.close()
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_swapper, args=(catalog_url, name, groups, barrier, results))
             for name in ("x", "y")]
    for p in procs:
        p.start()
    outcomes: list[tuple[int, str, list[int] | None]] = []
    try:
        while len(outcomes) < 2 * SWAP_ROUNDS:
            outcomes.append(results.get(timeout=60))
    except queue.Empty:
        pass
    _join(procs)

    assert len(outcomes) == 2 * SWAP_ROUNDS
    winners: dict[int, tuple[str, list[int]]] = {}
    for r, name, new in outcomes:
        if new is not None:
            assert r not in winners, f"round {r}: both won"
            winners[r] = (name, new)
    assert sorted(winners) == list(range(SWAP_ROUNDS)), "a round nobody won"

    cat = Catalog(catalog_url)
    try:
        assert {r.id: r.path for r in cat.live_segments()} == {
            new[0]: f"{name}/{r}" for r, (name, new) in winners.items()}
        assert {r.id for r in cat.retired()} == {i for ids in groups for i in ids}
        assert cat.totals() == {"segments": SWAP_ROUNDS, "rows": 3 * SWAP_ROUNDS, "bytes": 300 * SWAP_ROUNDS}
        assert sorted((e.at_us - 1, e.actor) for e in cat.audit_log(limit=1000)) == [
            (r, name) for r, (name, _) in sorted(winners.items())]
    finally:
        cat.close()
    assert integrity(catalog_url) == "ok"


INGEST_WRITERS = 3
INGEST_COMMITS = 40
BUCKET = 10                # compaction merges only within a bucket of ts (an "hour")
EXPIRED_BEFORE = 20        # retention retires segments whose last row is before this: the first two buckets


def rows_of(partition: int, i: int) -> int:
    return 1 + (7 * partition + 3 * i) % 5


def _ingester(url: str, partition: int, start: Any) -> None:
    start.wait(timeout=60)
    cat = Catalog(url)
    try:
        for i in range(INGEST_COMMITS):
            cat.commit([PartitionCommit(TOPIC, partition, 0, i, i + 1,
                                        [seg(f"w{partition}/{i}", i, i, rows=rows_of(partition, i))],
                                        {("t", f"src-{partition}"): (i + 1) * 10})])
    finally:
        cat.close()


def _compactor(url: str, start: Any, stop: Any, results: Any) -> None:
    """Merges two to four live segments of the oldest bucket that has several, until the writers are done
    and it has won at least once."""
    start.wait(timeout=60)
    cat = Catalog(url)
    wins = conflicts = 0
    try:
        for n in range(100_000):
            final = stop.is_set()
            buckets: dict[int, list[SegmentRow]] = {}
            for s in cat.live_segments("t"):
                buckets.setdefault(s.min_ts_us // BUCKET, []).append(s)
            batch = next((b[:2 + n % 3] for _, b in sorted(buckets.items()) if len(b) >= 2), [])
            if not batch:
                if final:
                    break
                time.sleep(0.001)
                continue
            out = seg(f"compacted/{n}", min(s.min_ts_us for s in batch), max(s.max_ts_us for s in batch),
                      rows=sum(s.rows for s in batch))
            try:
                cat.swap([s.id for s in batch], [out], generation=max(s.generation for s in batch) + 1)
                wins += 1
            except CatalogConflict:
                conflicts += 1
            if final and wins:
                break
    finally:
        cat.close()
        results.put(("compactor", wins, conflicts, 0))


def _retention(url: str, start: Any, stop: Any, results: Any) -> None:
    """Retires every live segment that ended before EXPIRED_BEFORE, until none is left after the writers."""
    start.wait(timeout=60)
    cat = Catalog(url)
    wins = conflicts = retired_rows = 0
    try:
        for _ in range(100_000):
            final = stop.is_set()
            expired = [s for s in cat.live_segments("t") if s.max_ts_us < EXPIRED_BEFORE]
            if not expired:
                if final:
                    break
                time.sleep(0.001)
                continue
            rows = sum(s.rows for s in expired)
            try:
                cat.swap([s.id for s in expired], [],
                         audit=[AuditEntry("retention test", "retention", "t", "*", None, EXPIRED_BEFORE,
                                           len(expired), rows, sum(s.bytes for s in expired),
                                           {"ids": [s.id for s in expired]})])
                wins += 1
                retired_rows += rows
            except CatalogConflict:
                conflicts += 1
    finally:
        cat.close()
        results.put(("retention", wins, conflicts, retired_rows))


def test_ingest_compaction_and_retention_at_once_lose_and_duplicate_nothing(catalog_url: str) -> None:
    ctx = mp.get_context("spawn")
    start, stop, results = ctx.Barrier(INGEST_WRITERS + 2), ctx.Event(), ctx.Queue()
    writers = [ctx.Process(target=_ingester, args=(catalog_url, p, start)) for p in range(INGEST_WRITERS)]
    others = [ctx.Process(target=_compactor, args=(catalog_url, start, stop, results)),
              ctx.Process(target=_retention, args=(catalog_url, start, stop, results))]
    for p in writers + others:
        p.start()
    try:
        _join(writers)
    finally:
        stop.set()
    reports: dict[str, tuple[int, int, int]] = {}
    try:
        while len(reports) < 2:
            name, wins, conflicts, rows = results.get(timeout=60)
            reports[name] = (wins, conflicts, rows)
    except queue.Empty:
        pass
    _join(others)

    assert set(reports) == {"compactor", "retention"}
    assert reports["compactor"][0] >= 1 and reports["retention"][0] >= 1, reports
    retention_rows = reports["retention"][2]
    committed = {f"w{p}/{i}": rows_of(p, i) for p in range(INGEST_WRITERS) for i in range(INGEST_COMMITS)}

    cat = Catalog(catalog_url)                 # the catalog opens fine after all that
    try:
        assert cat.schema_version() == len(MIGRATIONS)
        assert cat.partition_states(TOPIC) == {p: PartitionState(0, INGEST_COMMITS) for p in range(INGEST_WRITERS)}
        assert cat.source_marks() == {("t", f"src-{p}"): INGEST_COMMITS * 10 for p in range(INGEST_WRITERS)}
        live, retired = cat.live_segments(), cat.retired()
        assert cat.known_paths().keys() == {r.path for r in live} | {r.path for r in retired}
        assert len(live) + len(retired) == len(cat.known_paths())
        # Every committed segment is still known: live, or retired by a swap that won.
        assert set(committed) <= cat.known_paths().keys()
        assert {r.path for r in live + retired} - set(committed) <= {f"compacted/{n}" for n in range(100_000)}
        # Rows: compaction keeps them all, retention takes exactly what it reported.
        assert sum(r.rows for r in live) == sum(committed.values()) - retention_rows
        assert cat.totals()["rows"] == sum(committed.values()) - retention_rows
        assert all(r.max_ts_us >= EXPIRED_BEFORE for r in live)
        assert all(r.min_ts_us // BUCKET == r.max_ts_us // BUCKET for r in live)
        # Compaction stays within a bucket, so retention took exactly the expired buckets' rows.
        assert retention_rows == sum(n for path, n in committed.items() if int(path.split("/")[1]) < EXPIRED_BEFORE)
        audit = cat.audit_log(limit=100_000)
        assert len(audit) == reports["retention"][0]
        assert sum(e.rows for e in audit) == retention_rows
        # Each segment was retired at most once: no id is in two winning retention runs.
        retired_ids = [i for e in audit for i in e.detail["ids"]]
        assert len(retired_ids) == len(set(retired_ids))
        assert {r.id for r in retired} >= set(retired_ids)
    finally:
        cat.close()
    assert integrity(catalog_url) == "ok"
