"""Writing the buffers out: normalise, write segments, send dead letters, commit once.

A flush normalises the rows of all its buffers per tenant in one DuckDB statement, writes
one segment per partition, tenant and hour, sends what could not become rows to the
dead-letter topic, and then commits the segments, each partition's new offset and the
per-source stored byte ranges in one catalog transaction. Kafka's committed offsets are
updated afterwards, for monitoring only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from ingest.batch import RecordRun, raw_table
from ingest.buffers import IngestState, Key, PartitionBuffer
from ingest.deadletters import DeadLetter, DeadLetterProducer, Reason
from ingest.flush_policy import FlushPolicy
from ingest.layouts import LayoutSummary, SourceLayout, summarise
from ingest.normalise import Normaliser, ParseSettings, normalise_safely
from ingest.router import RecordRouter
from ingest.source_stats import SourceKey, SourceTally, count_rows
from ingest.sources import source_key
from loglake.core.config import Config
from loglake.core.frame import PUSHED_SOURCE_PREFIX
from storage.catalog import Catalog, PartitionCommit, PartitionState, SourceLayoutRow
from storage.errors import CatalogConflict, StorageError
from storage.root import DataRoot
from storage.segments import SegmentInfo, segment_name, write_segments

log = logging.getLogger("loglake.ingest")

#: What was learned of the sources flushed is written to the catalog when it changes, and at least
#: this often for every source seen meanwhile (its counts and updated time): one small transaction.
LAYOUTS_REFRESH_S = 60.0


class FlushFailed(RuntimeError):
    """A flush could not send its dead letters or commit; its buffers are kept for a retry."""


class Flusher:
    """Turns buffers into committed segments; on a conflict re-reads from the catalog, on a failure
    keeps the buffers and tells ``policy`` to back off."""

    def __init__(self, cfg: Config, catalog: Catalog, state: IngestState, router: RecordRouter,
                 policy: FlushPolicy) -> None:
        self.storage = cfg.storage
        self.dedup_window_s = cfg.receive.dedup_window_s
        self._next_forget = 0.0
        self.catalog = catalog
        self.state = state
        self.router = router
        self.policy = policy
        self.root = DataRoot.from_config(cfg.storage)
        ing = cfg.ingest
        self.normaliser = Normaliser(ParseSettings(default_timezone=ing.default_timezone,
                                                   max_ahead_s=ing.max_ahead_s,
                                                   patterns=ing.patterns(),
                                                   pattern_ts_formats=ing.pattern_ts_formats(),
                                                   max_attrs=ing.max_attrs))
        self.dead_letters = DeadLetterProducer(cfg)
        #: Set while the worker runs: told the new offsets (advisory) and where to read again on a rewind.
        self.consumer: AIOKafkaConsumer | None = None
        # A rebalance callback may flush while the loop is flushing; one at a time.
        self._lock = asyncio.Lock()
        #: Why flushes fail, while they do (the data stays buffered): /readyz and metrics report it.
        self.fault: str | None = None
        self.fault_since: float | None = None
        self.last_flush = time.monotonic()
        self.dead_letter_counts: Counter[str] = Counter()
        #: Committed rows per source, and those whose time, format or level was not read (for /metrics).
        self.source_counts = SourceTally(ing.metrics_max_sources)
        # Counts of the rows written but not yet committed, per partition (a failed flush drops them).
        self._pending_counts: dict[Key, list[tuple[str, dict[tuple[str, str], Counter[str]]]]] = {}
        # Sources flushed since the layouts were last written, and what was last written of each.
        self._active: set[SourceKey] = set()
        self._written: dict[SourceKey, tuple[str, str, str]] = {}
        self._layouts_at = 0.0
        self._summaries: dict[tuple[SourceKey, SourceLayout], LayoutSummary] = {}

    async def flush(self, keys: list[Key] | None = None) -> None:
        """Write and commit every non-empty buffer (or those of ``keys``); raises ``FlushFailed``."""
        async with self._lock:
            await self._flush(keys)

    async def _flush(self, keys: list[Key] | None) -> None:
        todo = {k: b for k, b in self.state.buffers.items()
                if b.last_offset is not None and (keys is None or k in keys)}
        if not todo:
            return
        started = time.monotonic()
        try:
            # A full disk or an unreachable object store fails here; the same names are written again
            # on the retry, so nothing is left behind twice.
            written = await asyncio.to_thread(self.write_all, todo)
            commits = [c for c, _ in written]
            dead = [d for b in todo.values() for d in b.dead] + [d for _, ds in written for d in ds]
            # Dead letters first: once the catalog moves past them they exist nowhere else.
            await self.dead_letters.send(dead)
            await asyncio.to_thread(self.catalog.commit, commits)
        except CatalogConflict as e:
            # Someone else stored these offsets (we lost the partition meanwhile):
            # drop ours and resume from what the catalog says.
            self.state.stats["conflicts"] += 1
            log.warning("commit conflict; discarding batch and re-reading", extra={"reason": str(e)})
            self.rewind(list(todo))
            return
        except Exception as e:
            # Nothing was committed; the buffers stay and the flush is retried.
            self._failed(e)
            raise FlushFailed(str(e)) from e
        self._committed(list(todo), commits, dead, started)
        await self._commit_offsets(commits)
        await asyncio.to_thread(self.record_layouts)

    def write(self, key: Key, buf: PartitionBuffer) -> tuple[PartitionCommit, list[DeadLetter]]:
        """Normalise and write ``buf``'s segments; the catalog commit for them and the rows that failed."""
        return self.write_all({key: buf})[0]

    def write_all(self, todo: dict[Key, PartitionBuffer]) -> list[tuple[PartitionCommit, list[DeadLetter]]]:
        """Normalise and write the segments of every buffer of ``todo`` (one per partition, tenant and
        hour); each one's catalog commit and the rows that failed, in ``todo``'s order.

        Each tenant's rows of all the partitions are normalised in one statement and split back by
        position: planning it costs about 0.1 s however few the rows, which a flush every second
        of three partitions would otherwise pay three times."""
        # Per tenant, its runs of every partition (and how many records each partition has), made
        # into one batch at once: concatenating per-partition tables would copy every line again.
        runs_of: dict[str, list[RecordRun]] = defaultdict(list)
        parts_of: dict[str, list[tuple[Key, int]]] = defaultdict(list)
        names: dict[Key, str] = {}
        for key, buf in todo.items():
            assert buf.last_offset is not None
            names[key] = segment_name(key[0], key[1], buf.state.epoch, buf.state.next_offset, buf.last_offset)
            by_tenant: dict[str, list[RecordRun]] = defaultdict(list)
            for tenant, run in self.router.runs(key[0], buf):
                by_tenant[tenant].append(run)
            for tenant, runs in by_tenant.items():
                rows = sum(len(r.records) for r in runs)
                if rows:
                    runs_of[tenant] += runs
                    parts_of[tenant].append((key, rows))
            self._pending_counts[key] = []
        segments: dict[Key, list[SegmentInfo]] = {key: [] for key in todo}
        dead: dict[Key, list[DeadLetter]] = {key: [] for key in todo}
        for tenant, parts in parts_of.items():
            whole = raw_table(runs_of[tenant])
            records, failed = normalise_safely(self.normaliser, whole, tenant)
            starts = np.cumsum([0] + [rows for _, rows in parts])
            failed_in: list[list[tuple[int, str]]] = [[] for _ in parts]
            for i, err in failed:
                k = int(np.searchsorted(starts, i, side="right")) - 1
                failed_in[k].append((i - int(starts[k]), err))
            taken = 0
            for (key, rows), bad, start in zip(parts, failed_in, starts[:-1].tolist(), strict=True):
                raw = whole.slice(start, rows)
                buf = todo[key]
                topic, partition = key
                for i, err in bad:
                    row = raw.slice(i, 1).to_pylist()[0]
                    dead[key].append(DeadLetter(
                        Reason.UNPARSEABLE, (row["line"] or "").encode(), topic, partition, buf.state.next_offset,
                        detail=err, context={"tenant": tenant, "source": row["source"] or "",
                                             "service": row["service"] or "", "host": row["host"] or ""}))
                # The records keep the input's order, less the failed rows.
                mine = records.slice(taken, raw.num_rows - len(bad))
                taken += mine.num_rows
                if mine.num_rows:
                    self._pending_counts[key].append((tenant, count_rows(mine)))
                    segments[key] += write_segments(self.root, tenant, mine, names[key],
                                                    zstd_level=self.storage.zstd_level,
                                                    row_group_rows=self.storage.row_group_rows)
        out = []
        for key, buf in todo.items():
            assert buf.last_offset is not None
            commit = PartitionCommit(key[0], key[1], buf.state.epoch, buf.state.next_offset, buf.last_offset + 1,
                                     segments[key], source_ranges={k: list(v) for k, v in buf.ranges.items()},
                                     last_record=buf.last_record)
            out.append((commit, dead[key]))
        return out

    def _failed(self, e: Exception) -> None:
        self.state.stats["flush_errors"] += 1
        self.policy.failed(time.monotonic())
        self.fault = f"{type(e).__name__}: {e}"[:500]
        self.fault_since = self.fault_since or time.monotonic()
        log.error("flush failed; will retry", extra={"reason": self.fault})

    def _committed(self, keys: list[Key], commits: list[PartitionCommit], dead: list[DeadLetter],
                   started: float) -> None:
        """Count a successful flush and start each flushed partition's next buffer where it ended."""
        if self.fault is not None:
            log.info("flushing again", extra={"fault_s": round(time.monotonic() - (self.fault_since or 0), 1)})
        self.policy.succeeded()
        self.fault, self.fault_since = None, None
        self.last_flush = time.monotonic()
        stats = self.state.stats
        rows = sum(s.rows for c in commits for s in c.segments)
        stats["records"] += rows
        stats["segments"] += sum(len(c.segments) for c in commits)
        stats["flushes"] += 1
        self.dead_letter_counts.update(d.reason.value for d in dead)
        for k, c in zip(keys, commits, strict=True):
            self.state.buffers[k] = PartitionBuffer(PartitionState(c.epoch, c.new_next, c.last_record))
            for tenant, counts in self._pending_counts.pop(k, []):
                self.source_counts.add(tenant, counts)
                self._active.update((tenant, service, source) for service, source in counts)
        self._forget_pushed()
        log.info("flushed", extra={"rows": rows, "segments": sum(len(c.segments) for c in commits),
                                   "dead_letters": len(dead), "partitions": sorted(f"{t}/{p}" for t, p in keys),
                                   "seconds": round(time.monotonic() - started, 3)})

    def layout_row(self, key: SourceKey) -> SourceLayoutRow:
        """What the normaliser learned of one source, as the catalog keeps it."""
        tenant, service, source = key
        n = self.normaliser
        fmt = n.formats.get((tenant, service, source), "text")
        state = n.sources.sources.get(source_key(tenant, service, source)) if fmt == "text" else None
        layout = state.layout if state is not None else None
        zone = n.settings.default_timezone
        detail: dict[str, object] = {}
        if state is not None:
            detail.update(lines=state.lines, matched=state.matched, time_only=state.time_only,
                          unmatched=state.unmatched, learned_from=state.learned_from)
        if layout is not None and state is not None:
            summary = self._summaries.get((key, layout))
            if summary is None:
                if len(self._summaries) > 4 * self.source_counts.max_sources:
                    self._summaries.clear()
                summary = self._summaries[(key, layout)] = summarise(layout, state.sample)
            detail.update(time=layout.time.name, example=summary.written or layout.time.example,
                          strptime=summary.strptime, token=layout.token, share=round(layout.share, 4))
            if summary.zoned >= 0.5:
                zone = "in the line"
        elif fmt == "text":
            zone = ""           # no time is read from these lines
        return SourceLayoutRow(tenant, service, source, fmt, layout.describe() if layout is not None else "",
                               zone, detail)

    def record_layouts(self, force: bool = False) -> int:
        """Write to the catalog what changed in the flushed sources' layouts (all of them when due);
        returns the rows written. A failure is logged, never a failed flush."""
        now = time.monotonic()
        due = force or now - self._layouts_at >= LAYOUTS_REFRESH_S
        rows = []
        for key in sorted(self._active):
            row = self.layout_row(key)
            mark = (row.format, row.layout, row.zone)
            if due or self._written.get(key) != mark:
                rows.append((key, mark, row))
        if not rows:
            return 0
        try:
            self.catalog.record_source_layouts([r for _, _, r in rows])
        except Exception as e:
            log.warning("could not record source layouts", extra={"reason": str(e)[:300]})
            return 0
        self._written.update((key, mark) for key, mark, _ in rows)
        if due:
            self._active.clear()
            self._layouts_at = now
        return len(rows)

    def _forget_pushed(self) -> None:
        """Now and then, forget pushed requests older than ``receive.dedup_window_s``, in memory and
        in the catalog: a pushed request is a source of its own, so they would otherwise pile up."""
        window = self.dedup_window_s
        now = time.monotonic()
        if window <= 0 or now < self._next_forget:
            return
        self._next_forget = now + min(60.0, window / 10)
        try:
            gone = self.catalog.forget_sources(PUSHED_SOURCE_PREFIX, time.time_ns() // 1000 - int(window * 1e6))
        except StorageError as e:
            log.warning("could not forget old pushed requests; will try again", extra={"reason": str(e)})
            return
        dropped = self.state.forget_pushed(window, now)
        if gone or dropped:
            log.info("forgot pushed requests past the de-duplication window",
                     extra={"catalog": gone, "memory": dropped, "window_s": window})

    async def _commit_offsets(self, commits: list[PartitionCommit]) -> None:
        """Tell Kafka the new offsets: advisory only (for lag monitoring), the catalog is the truth."""
        if self.consumer is None:
            return
        try:
            await self.consumer.commit({TopicPartition(c.topic, c.partition): OffsetAndMetadata(c.new_next, "")
                                        for c in commits})
        except Exception as e:
            log.debug("kafka offset commit failed", extra={"reason": str(e)})

    def rewind(self, keys: list[Key]) -> None:
        """Drop the buffers of ``keys`` and read them again from the catalog's offsets."""
        self.state.reload_ranges(self.catalog)
        for topic, partition in keys:
            self._pending_counts.pop((topic, partition), None)
            state = self.catalog.partition_states(topic).get(partition, PartitionState(0, 0))
            self.state.buffers[(topic, partition)] = PartitionBuffer(state)
            if self.consumer is not None:
                self.consumer.seek(TopicPartition(topic, partition), state.next_offset)

    async def stop(self) -> None:
        await self.dead_letters.stop()
