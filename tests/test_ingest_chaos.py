"""Chaos with real processes: ingest workers killed, joining and leaving, the broker paused.

Every test writes lines that each carry a unique id (``id=fNN-NNNNNNN``) into
real files, ships them with the real ``loglake ship`` through a real tansu
broker into real ``loglake ingest`` workers (the chaos test also has a plain
Kafka producer send single-line messages), waits until the pipeline has
drained (every file acknowledged by the broker, every partition's catalog
offset at the log end), then reads the stored rows with DuckDB from exactly the
Parquet files the catalog lists as live, and compares the multiset of ids with
what was written: each id exactly once.

``CHAOS_SEED`` replays the chaos test's random choices; ``CHAOS_PAUSE_S`` sets
the broker pause.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from loglake.broker import start_broker, stop_process
from storage.catalog import Catalog, PartitionState
from tests.helpers.processes import Stack, free_port, wait_until

ID_SQL_RE = r"id=(f[0-9]{2}-[0-9]{7})"


# -- writing ----------------------------------------------------------------


def make_block(f: int, start: int, stop: int) -> str:
    """Lines ``start..stop-1`` of file ``f``: a leading timestamp and level, then the unique id."""
    now = datetime.now(UTC)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    level = ("INFO", "WARN", "ERROR", "DEBUG")
    return "".join(f"{stamp} {level[i % 4]} chaos.writer - id=f{f:02d}-{i:07d} seq={i} pad=abcdefghij\n"
                   for i in range(start, stop))


class PacedWriter(threading.Thread):
    """Appends ``per_file`` lines to each of ``files`` files, spread evenly over ``duration_s``."""

    def __init__(self, directory: Path, files: int, per_file: int, duration_s: float, bursts: int) -> None:
        super().__init__(daemon=True, name="paced-writer")
        self.paths = [directory / f"chaos-{f:02d}.log" for f in range(files)]
        self.per_file, self.duration_s, self.bursts = per_file, duration_s, bursts
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            start = time.monotonic()
            step = -(-self.per_file // self.bursts)
            for k, lo in enumerate(range(0, self.per_file, step)):
                hi = min(lo + step, self.per_file)
                for f, path in enumerate(self.paths):
                    with open(path, "a") as out:
                        out.write(make_block(f, lo, hi))
                # pacing the writer (a rate, not a wait for a condition)
                due = start + (k + 1) * self.duration_s / self.bursts
                time.sleep(max(0.0, due - time.monotonic()))
        except BaseException as e:  # reported by the test
            self.error = e


class StreamWriter(threading.Thread):
    """Appends ``burst`` lines to each file every ``every_s`` until stopped; knows how many it wrote."""

    def __init__(self, directory: Path, files: int, burst: int, every_s: float) -> None:
        super().__init__(daemon=True, name="stream-writer")
        self.paths = [directory / f"stream-{f:02d}.log" for f in range(files)]
        self.burst, self.every_s = burst, every_s
        self.per_file = 0               # lines written to each file so far
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                lo, hi = self.per_file, self.per_file + self.burst
                for f, path in enumerate(self.paths):
                    with open(path, "a") as out:
                        out.write(make_block(f, lo, hi))
                self.per_file = hi
                self.stop.wait(self.every_s)
        except BaseException as e:
            self.error = e

    @property
    def written(self) -> int:
        return self.per_file * len(self.paths)


class PlainProducer(threading.Thread):
    """A third-party producer: ``count`` single-line messages (no loglake frame), ids ``fNN-...``, over ``duration_s``.

    Such records carry no source id and byte range, so ingest's per-source marks cannot drop a second
    copy: any Kafka offset stored twice (or skipped) shows in them.
    """

    def __init__(self, bootstrap: str, topic: str, prefix: int, count: int, duration_s: float, bursts: int) -> None:
        super().__init__(daemon=True, name="plain-producer")
        self.bootstrap, self.topic, self.prefix = bootstrap, topic, prefix
        self.count, self.duration_s, self.bursts = count, duration_s, bursts
        self.acked = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._produce())
        except BaseException as e:  # reported by the test
            self.error = e

    async def _produce(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=20)
        await producer.start()
        try:
            start = time.monotonic()
            step = -(-self.count // self.bursts)
            for k, lo in enumerate(range(0, self.count, step)):
                hi = min(lo + step, self.count)
                block = make_block(self.prefix, lo, hi).splitlines()
                # No key: the default partitioner spreads them over every partition.
                futures = [await producer.send(self.topic, line.encode()) for line in block]
                for fut in futures:
                    await fut                # acknowledged, or the test fails with the error
                self.acked = hi
                await asyncio.sleep(max(0.0, start + (k + 1) * self.duration_s / self.bursts - time.monotonic()))
        finally:
            await producer.stop()


# -- observing the pipeline ------------------------------------------------


def open_catalog(stack: Stack) -> Catalog:
    path = stack.data_root / "catalog.sqlite"
    wait_until(path.exists, 60, what=f"catalog {path} created by an ingest worker")
    return Catalog(f"sqlite:///{path}")


def kafka_end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The true log end offset of every partition of ``topic`` (a plain consumer, no group).

    Not ``end_offsets()`` alone: the embedded tansu (v0.6.0) answers ListOffsets(latest) with
    the base offset of the partition's last record batch + 1, short of the end whenever that
    batch holds more than one record. The high watermark in a Fetch response is right, so this
    fetches from just before the listed end and takes the partition's high watermark.
    """

    async def go() -> dict[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest", request_timeout_ms=10_000)
        await consumer.start()
        try:
            await consumer.topics()
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            if not tps:
                return {}
            listed = await consumer.end_offsets(tps)
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, max(listed[tp] - 1, 0))
            deadline = time.monotonic() + 10
            while any(consumer.highwater(tp) is None for tp in tps):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no high watermark for {[tp for tp in tps if consumer.highwater(tp) is None]}")
                await consumer.getmany(timeout_ms=200, max_records=1)
            return {tp.partition: consumer.highwater(tp) for tp in tps}
        finally:
            await consumer.stop()

    return asyncio.run(go())


def group_state(stack: Stack) -> tuple[str, int]:
    """The ingest consumer group's state and member count, as the broker describes them."""

    async def go() -> tuple[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap, request_timeout_ms=10_000)
        await admin.start()
        try:
            response = await admin.describe_consumer_groups([f"{stack.topic}-ingest"])
            _error, _name, state, _ptype, _protocol, members = response[0].groups[0]
            return state, len(members)
        finally:
            await admin.close()

    try:
        return asyncio.run(go())
    except Exception as e:  # the broker is busy: the caller asks again
        return f"unknown ({e!r})", -1


def shipper_acked(stack: Stack) -> dict[str, int]:
    """Acknowledged offset per path, from the shipper's checkpoint file."""
    try:
        data = json.loads((stack.root / "shipper" / "checkpoints.json").read_bytes())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {cp["path"]: cp["offset"] for cp in data.get("files", {}).values()}


def wait_drained(stack: Stack, catalog: Catalog, files: list[Path], partitions: int, timeout_s: float,
                 watch: list[str]) -> dict[int, int]:
    """Wait until the broker acknowledged every byte of every file and the catalog is at every log end."""
    status: dict[str, object] = {}

    def drained() -> bool:
        acked = shipper_acked(stack)
        unacked = {p.name: p.stat().st_size - acked.get(str(p), 0) for p in files}
        unacked = {k: v for k, v in unacked.items() if v}
        try:
            ends = kafka_end_offsets(stack.bootstrap, stack.topic)
        except Exception as e:    # the broker is busy: ask again
            status.update(error=repr(e))
            return False
        states = catalog.partition_states(stack.topic)
        lag = {p: ends.get(p, 0) - states.get(p, PartitionState(0, 0)).next_offset for p in range(partitions)}
        status.update(unacked_bytes=unacked, partition_lag=lag, ends=ends,
                      workers_alive=[n for n in watch if stack.procs[n].poll() is None])
        return not unacked and len(ends) == partitions and not any(lag.values())

    deadline = time.monotonic() + timeout_s
    while not drained():
        if time.monotonic() > deadline:
            tails = {n: stack.log_text(n).splitlines()[-8:] for n in [*watch, "ship"]}
            raise AssertionError(f"pipeline not drained after {timeout_s}s: {status}\nlog tails: "
                                 + json.dumps(tails, indent=1))
        time.sleep(1.0)
    return status["ends"]  # type: ignore[return-value]


@dataclass
class Comparison:
    expected: int
    stored_rows: int
    catalog_rows: int
    segments: int
    missing: int = 0
    missing_examples: list[str] = field(default_factory=list)
    duplicated_ids: int = 0
    extra_copies: int = 0
    duplicate_examples: list[tuple[str, int]] = field(default_factory=list)
    unexpected: int = 0
    unexpected_examples: list[str] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)

    def problems(self) -> str:
        out = []
        if self.missing:
            out.append(f"{self.missing} of {self.expected} ids missing, e.g. {self.missing_examples}")
        if self.duplicated_ids:
            out.append(f"{self.duplicated_ids} ids stored more than once ({self.extra_copies} extra rows), "
                       f"e.g. (id, copies) {self.duplicate_examples}")
        if self.unexpected:
            out.append(f"{self.unexpected} stored rows whose id was never written, e.g. {self.unexpected_examples}")
        if self.stored_rows != self.catalog_rows:
            out.append(f"the catalog says its {self.segments} live segments hold {self.catalog_rows} rows, "
                       f"their files hold {self.stored_rows}")
        return "; ".join(out)


def compare_stored(stack: Stack, catalog: Catalog, expected: dict[int, int]) -> Comparison:
    """The multiset of stored ids (from the catalog's live segments only) against ``{prefix NN: count}``."""
    listed = catalog.segments("default", -(1 << 62), 1 << 62)
    totals = catalog.totals()
    assert totals["segments"] == len(listed), (
        f"the catalog has {totals['segments']} live segments but only {len(listed)} for tenant 'default'")
    paths = [str(stack.data_root / s.path) for s in listed]
    on_disk = {str(p) for p in stack.data_root.rglob("*") if p.is_file() and p.name != "catalog.sqlite"
               and not p.name.startswith("catalog.sqlite-")}
    cmp = Comparison(expected=sum(expected.values()), stored_rows=0, catalog_rows=sum(s.rows for s in listed),
                     segments=len(listed), orphan_files=sorted(on_disk - set(paths)))
    assert paths, "the catalog lists no live segment at all"
    missing_files = [p for p in paths if not os.path.exists(p)]
    assert not missing_files, (
        f"{len(missing_files)} segments listed by the catalog are not on disk: {missing_files[:5]}")
    con = duckdb.connect()
    con.execute("CREATE TEMP TABLE stored AS SELECT message, regexp_extract(message, ?, 1) AS id"
                " FROM read_parquet(?)", [ID_SQL_RE, paths])
    con.execute("CREATE TEMP TABLE counts (f INTEGER, n BIGINT)")
    con.executemany("INSERT INTO counts VALUES (?, ?)", list(expected.items()))
    con.execute("CREATE TEMP TABLE expected AS SELECT printf('f%02d-%07d', f, i) AS id"
                " FROM counts JOIN range(?) r(i) ON r.i < counts.n", [max(expected.values(), default=0)])
    cmp.stored_rows = con.execute("SELECT count(*) FROM stored").fetchone()[0]
    cmp.missing, = con.execute("SELECT count(*) FROM expected ANTI JOIN stored USING (id)").fetchone()
    cmp.missing_examples = [r[0] for r in con.execute(
        "SELECT id FROM expected ANTI JOIN stored USING (id) ORDER BY id LIMIT 10").fetchall()]
    cmp.duplicated_ids, extra = con.execute(
        "SELECT count(*), coalesce(sum(c - 1), 0) FROM (SELECT id, count(*) c FROM stored GROUP BY id HAVING c > 1)"
    ).fetchone()
    cmp.extra_copies = int(extra)
    cmp.duplicate_examples = [tuple(r) for r in con.execute(
        "SELECT id, count(*) c FROM stored GROUP BY id HAVING c > 1 ORDER BY id LIMIT 10").fetchall()]
    cmp.unexpected, = con.execute("SELECT count(*) FROM stored ANTI JOIN expected USING (id)").fetchone()
    cmp.unexpected_examples = [r[0][:120] for r in con.execute(
        "SELECT message FROM stored ANTI JOIN expected USING (id) LIMIT 5").fetchall()]
    con.close()
    return cmp


def owned_partitions(stack: Stack, name: str, since: int) -> tuple[list[int], float]:
    """The partitions worker ``name`` owns now and for how many seconds, from its log since ``since`` (bytes)."""
    owned: list[int] = []
    assigned_at = time.time()
    with open(stack.logs / f"{name}.log", "rb") as f:
        f.seek(since)
        for raw in f:
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(rec, dict) or rec.get("msg") not in ("partitions assigned", "partitions revoked"):
                continue
            # partitions are logged as numbers, or as "topic/partition"
            parts = [int(str(p).rpartition("/")[2]) for p in rec["partitions"]]
            if rec["msg"] == "partitions assigned":
                owned = parts
                assigned_at = datetime.fromisoformat(rec["ts"]).timestamp()
            else:
                owned = [p for p in owned if p not in parts]
    return owned, (time.time() - assigned_at if owned else 0.0)


def longest_rebalance(stack: Stack, names: list[str]) -> tuple[float, str]:
    """The longest time from a worker giving up its partitions to the next assignment, and when it began."""
    events = []
    for name in names:
        for raw in stack.log_text(name).splitlines():
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("msg") in ("partitions assigned", "partitions revoked"):
                events.append((datetime.fromisoformat(rec["ts"]).timestamp(), rec["msg"], bool(rec["partitions"])))
    longest, began, pending = 0.0, "", None
    for t, msg, some in sorted(events):
        if msg == "partitions revoked" and some and pending is None:
            pending = t
        elif msg == "partitions assigned" and pending is not None:
            if t - pending > longest:
                longest, began = t - pending, datetime.fromtimestamp(pending, UTC).strftime("%H:%M:%S")
            pending = None
    return longest, began


def log_lines(stack: Stack, name: str, needle: str) -> list[str]:
    return [ln for ln in stack.log_text(name).splitlines() if needle in ln]


# -- 1. workers killed while a million records flow ---------------------------

N_FILES = 16
PER_FILE = 62_500                       # 1,000,000 records in all, through the shipper
PLAIN = 30_000                          # and single-record messages from a plain Kafka producer
PLAIN_PREFIX = 99
PARTITIONS = 6
WRITE_S = 120.0                         # the records flow for this long; workers die meanwhile


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_chaos_workers_killed_while_1m_records_flow(stack: Stack) -> None:
    seed = int(os.environ.get("CHAOS_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    print(f"\nchaos seed {seed} (CHAOS_SEED={seed} replays the same schedule, timing aside)")
    env = {"LOGLAKE_KAFKA__PARTITIONS": str(PARTITIONS)}
    started = time.monotonic()
    stack.start("ingest", name="w1", **env)
    stack.start("ingest", name="w2", **env)
    stack.start("ship", **env)
    catalog = open_catalog(stack)
    try:
        writer = PacedWriter(stack.input_dir, N_FILES, PER_FILE, WRITE_S, bursts=300)
        writer.start()
        plain = PlainProducer(stack.bootstrap, stack.topic, PLAIN_PREFIX, PLAIN, WRITE_S, bursts=300)
        expected = {**{f: PER_FILE for f in range(N_FILES)}, PLAIN_PREFIX: PLAIN}
        # The chaos begins once the pipeline is storing (so every kill lands mid-stream).
        wait_until(lambda: catalog.totals()["rows"] > 0, 60, what="first rows stored")
        partitions = sorted(kafka_end_offsets(stack.bootstrap, stack.topic))
        assert partitions == list(range(PARTITIONS)), f"the topic has partitions {partitions}"
        plain.start()

        kills: dict[str, int] = {"w1": 0, "w2": 0, "w3": 0}
        joins = leaves = 0
        restart_at: dict[str, float] = {}
        incarnation: dict[str, int] = {}    # where each worker's current process starts in its log

        def start(name: str) -> None:
            path = stack.logs / f"{name}.log"
            incarnation[name] = path.stat().st_size if path.exists() else 0
            stack.start("ingest", name=name, **env)

        def alive(name: str) -> bool:
            return name in stack.procs and stack.procs[name].poll() is None

        for name in ("w1", "w2"):
            incarnation[name] = 0

        def owned_for(name: str) -> float:
            return owned_partitions(stack, name, incarnation[name])[1] if alive(name) else 0.0

        next_kill = time.monotonic() + rng.uniform(1.0, 3.0)
        kill_after_owning = rng.uniform(0.3, 2.5)
        w3_wanted, w3_since, w3_stay, w3_away = False, time.monotonic(), 0.0, rng.uniform(1.0, 3.0)
        w3_asked, w3_leaving, w3_killable = 0.0, False, True
        w3_owned_at: float | None = None         # when w3 first owned partitions since it joined
        while writer.is_alive() or plain.is_alive():
            now = time.monotonic()
            for name, at in list(restart_at.items()):
                if now >= at:
                    del restart_at[name]
                    if name != "w3" or w3_wanted:
                        start(name)
            # The third worker joins, works a while and leaves cleanly (SIGTERM). It leaves a stable group,
            # with the kills held meanwhile: a worker told to stop while it joins finishes joining, then
            # leaves at once, and that can wedge the embedded broker's group for minutes (a broker bug
            # this test does not mean to hit; see the report).
            if w3_wanted:
                if w3_owned_at is None and owned_for("w3") > 0:
                    w3_owned_at = now
                w3_leaving = w3_leaving or (w3_owned_at is not None and now - w3_owned_at >= w3_stay)
                if w3_leaving and now >= w3_asked + 0.5:
                    w3_asked = now
                    if group_state(stack)[0] == "Stable":
                        stack.kill("w3", signal.SIGTERM)
                        leaves += 1
                        w3_wanted, w3_leaving, w3_since, w3_away = False, False, now, rng.uniform(2.0, 5.0)
            elif now - w3_since >= w3_away:
                start("w3")
                joins += 1
                w3_wanted, w3_since, w3_stay, w3_owned_at = True, now, rng.uniform(1.0, 4.0), None
                w3_killable = rng.random() < 0.3      # this time the kills may hit it before it leaves
            # SIGKILL a random worker that has owned partitions for a moment (it dies holding a buffer,
            # or mid-flush), and bring it back after a moment. Only in a stable group: a member that dies
            # while the group rebalances can hold the embedded broker's group for minutes (see the report).
            if now >= next_kill and not w3_leaving:
                owners = [n for n in ("w1", "w2", "w3") if owned_for(n) >= kill_after_owning
                          and (n != "w3" or w3_killable)]
                if owners and group_state(stack)[0] != "Stable":
                    owners, next_kill = [], now + 0.5
                if owners:
                    victim = rng.choice(owners)
                    stack.kill(victim)
                    kills[victim] += 1
                    restart_at[victim] = time.monotonic() + rng.uniform(0.3, 1.5)
                    next_kill = now + rng.uniform(1.5, 4.0)
                    kill_after_owning = rng.uniform(0.3, 2.5)
            time.sleep(0.05)                # the chaos schedule's tick
        writer.join()
        plain.join(60)
        assert writer.error is None, f"writer failed: {writer.error!r}"
        assert plain.error is None and plain.acked == PLAIN, (
            f"plain producer: {plain.acked} of {PLAIN} acknowledged, error {plain.error!r}")
        chaos_s = time.monotonic() - started
        stored_at_chaos_end = catalog.totals()["rows"]
        # Bring everyone back and let the pipeline drain.
        for name in ("w1", "w2"):
            if not alive(name):
                start(name)
        files = writer.paths
        watch = ["w1", "w2", "w3"] if "w3" in stack.procs else ["w1", "w2"]
        # Allow for one stall of the group up to the consumer's rebalance timeout (300 s).
        ends = wait_drained(stack, catalog, files, PARTITIONS, timeout_s=400, watch=watch)
        total_s = time.monotonic() - started
        cmp = compare_stored(stack, catalog, expected)

        n = N_FILES * PER_FILE + PLAIN
        conflicts = sum(len(log_lines(stack, w, "commit conflict")) for w in ("w1", "w2", "w3"))
        resets = [ln for w in ("w1", "w2", "w3") for ln in log_lines(stack, w, "starting a new epoch")]
        print(f"{n:,} records ({PLAIN:,} of them from a plain producer) through {PARTITIONS} partitions "
              f"(messages per partition {ends}) in {total_s:.1f} s ({n / total_s:,.0f} records/s end to end); "
              f"chaos for {chaos_s:.1f} s with {sum(kills.values())} SIGKILLs of a worker owning partitions {kills}, "
              f"w3 joined {joins}x and left cleanly {leaves}x; {stored_at_chaos_end:,} rows stored when the "
              f"chaos stopped; {cmp.segments} live segments, {len(cmp.orphan_files)} unreferenced files on disk; "
              f"{conflicts} commit conflicts, {len(resets)} epoch resets in the worker logs")
        gap, since = longest_rebalance(stack, ["w1", "w2", "w3"])
        print(f"longest rebalance: {gap:.0f} s (from {since} UTC)"
              + (": the group stalled, see the report on the embedded broker's group" if gap > 60 else ""))
        assert sum(kills.values()) >= 3 and leaves >= 2, (
            f"the chaos was too mild to mean anything: SIGKILLs {kills}, w3 left cleanly {leaves}x")
        assert stored_at_chaos_end < n, "every record was stored before the chaos ended: it landed on an idle pipeline"
        assert not cmp.problems(), cmp.problems()
        assert cmp.stored_rows == n

        # After the chaos: the workers restart cleanly, one at a time, on caught-up partitions. Each must
        # resume where the catalog says, on the same epoch: the broker never restarted, nothing was recreated.
        def settle(what: str) -> None:
            """Wait until w1 and w2 are the stable group's only members and own every partition."""
            seen: dict[str, object] = {}

            def settled() -> bool:
                owned = {w: owned_partitions(stack, w, incarnation[w])[0] for w in ("w1", "w2")}
                seen.update(owned=owned, group=group_state(stack))
                return {p for ps in owned.values() for p in ps} == set(range(PARTITIONS)) and (
                    seen["group"] == ("Stable", 2))

            try:
                wait_until(settled, 120, interval_s=0.5, what=what)
            except AssertionError as e:
                raise AssertionError(f"{e}; owned partitions {seen.get('owned')}, group {seen.get('group')}") from None

        if alive("w3"):
            wait_until(lambda: group_state(stack)[0] == "Stable", 120, interval_s=0.5, what="a stable group")
            stack.kill("w3", signal.SIGTERM)
        for name in ("w1", "w2"):
            settle(f"w1 and w2 alone in a stable group before {name} restarts")
            stack.kill(name, signal.SIGTERM)
            start(name)
        settle("the restarted workers to own every partition")
        wait_drained(stack, catalog, files, PARTITIONS, timeout_s=120, watch=["w1", "w2"])
        again = compare_stored(stack, catalog, expected)
        resets = [ln for w in ("w1", "w2", "w3") for ln in log_lines(stack, w, "starting a new epoch")]
        epochs = {p: st.epoch for p, st in catalog.partition_states(stack.topic).items()}
        print(f"after a clean restart of both workers: {len(resets)} epoch resets in all, epochs {epochs}")
        assert not again.problems(), "after restarting the workers: " + again.problems()
        assert not resets, (
            f"{len(resets)} times a worker took a live partition for a recreated topic and started a new offset "
            f"epoch (re-reading the partition from its beginning; records without a loglake frame would be "
            f"stored again), epochs now {epochs}; e.g. {resets[:3]}. The embedded broker answers ListOffsets "
            f"short of the log end: see kafka_end_offsets()")
    finally:
        catalog.close()


# -- 2. the broker paused mid-stream ------------------------------------------

#: Longer than the shipper's request timeout (15 s) and the consumer's session timeout (10 s), so the
#: shipper sees the outage, drops what is in flight and re-sends it, and ingest must drop the copies.
PAUSE_S = float(os.environ.get("CHAOS_PAUSE_S", "17"))


def test_broker_paused_mid_stream_loses_nothing(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    (tmp_path / "broker").mkdir()
    broker: subprocess.Popen[bytes] = start_broker(address, log_file=tmp_path / "broker" / "broker.log")
    stack = Stack(root=tmp_path, bootstrap=address, topic="pause.chaos")
    catalog: Catalog | None = None
    writer = StreamWriter(stack.input_dir, files=2, burst=100, every_s=0.05)   # ~4,000 lines/s
    try:
        started = time.monotonic()
        stack.start("ingest")
        stack.start("ship")
        catalog = open_catalog(stack)
        writer.start()
        wait_until(lambda: catalog.totals()["rows"] > 0, 30, what="first rows stored before the pause")
        before_pause = writer.written
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            time.sleep(PAUSE_S)             # the outage itself; the files keep growing meanwhile
            stored_in_pause = catalog.totals()["rows"]
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        during_pause = writer.written - before_pause
        # Keep writing after the broker is back, until the pipeline has stored past the pause.
        target = writer.written + 2_000
        wait_until(lambda: writer.written >= target and catalog.totals()["rows"] > stored_in_pause, 30,
                   what="lines written and stored after the pause")
        writer.stop.set()
        writer.join()
        assert writer.error is None, f"writer failed: {writer.error!r}"
        assert stack.procs["ingest"].poll() is None and stack.procs["ship"].poll() is None, (
            f"a process died: ingest {stack.procs['ingest'].poll()}, ship {stack.procs['ship'].poll()}")
        partitions = len(kafka_end_offsets(address, stack.topic))
        wait_drained(stack, catalog, writer.paths, partitions, timeout_s=60, watch=["ingest"])
        cmp = compare_stored(stack, catalog, {f: writer.per_file for f in range(len(writer.paths))})
        print(f"\n{cmp.expected:,} lines ({during_pause:,} written during the {PAUSE_S:.0f} s pause) stored in "
              f"{time.monotonic() - started:.1f} s; {cmp.segments} segments; shipper outage logged: "
              f"{bool(log_lines(stack, 'ship', 'cannot deliver to the broker'))}")
        assert during_pause > 0, "no line was written while the broker was paused"
        assert not cmp.problems(), cmp.problems()
        assert cmp.stored_rows == cmp.expected
    finally:
        writer.stop.set()
        stack.stop_all()
        if catalog is not None:
            catalog.close()
        if broker.poll() is None:
            os.kill(broker.pid, signal.SIGCONT)
        stop_process(broker)
