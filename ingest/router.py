"""From a Kafka message to records in the right tenant's run of its partition's buffer.

A message is a shipper's frame (decoded, its records checked against the source's stored
byte ranges, each record over ``max_record_bytes`` set aside) or a third-party producer's
single record. What cannot become a row goes into the buffer as a dead letter. Each run
carries the parsing format configured for its topic, service and source.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.batch import RecordRun
from ingest.buffers import IngestState, PartitionBuffer, fingerprint
from ingest.deadletters import DeadLetter, Reason
from ingest.marks import add_range, drop_stored
from loglake.core.config import Config, SourceFormat, TopicInput, check_timezone
from loglake.core.frame import PUSHED_SOURCE_PREFIX, FrameError, FrameMeta, decode_frame
from storage.errors import StorageError
from storage.segments import check_tenant

log = logging.getLogger("loglake.ingest")

#: The end of year 9999: later times have no calendar date (segments are filed by date and hour).
MAX_OBSERVED_MS = 253_402_300_800_000


class RecordRouter:
    """Takes Kafka messages into the buffers of ``state``."""

    def __init__(self, cfg: Config, state: IngestState) -> None:
        self.ingest = cfg.ingest
        self.tenant_header = cfg.kafka.tenant_header
        self.inputs: dict[str, TopicInput] = {t.name: t for t in cfg.ingest.topics}
        self.state = state
        self._formats: dict[tuple[str, str, str], str] = {}
        self._zones: dict[tuple[str, str, str, str], str] = {}

    # -- configuration ---------------------------------------------------------

    def format_for(self, topic: str, service: str, source: str) -> str:
        """The configured format of a source ("" to detect per line); the first matching rule wins."""
        key = (topic, service, source)
        if key not in self._formats:
            fmt, patterns = "", 0
            for rule in self.ingest.formats:
                if _matches(rule, topic, service, source):
                    fmt = f"pattern{patterns}" if rule.format == "pattern" else rule.format
                    break
                patterns += rule.format == "pattern"
            self._formats[key] = "" if fmt == "auto" else fmt
        return self._formats[key]

    def zone_for(self, topic: str, service: str, source: str, sent: str = "") -> str:
        """The zone of a source's zone-less times ("" for the default): the first matching format rule's,
        else the one its shipper sent (when it names a zone), else its topic's."""
        key = (topic, service, source, sent)
        if key not in self._zones:
            zone = next((r.timezone for r in self.ingest.formats
                         if r.timezone and _matches(r, topic, service, source)), "")
            if not zone and sent:
                try:
                    zone = check_timezone(sent)
                except ValueError:
                    log.warning("a frame names an unknown time zone; using the default", extra={"zone": sent[:64]})
            if not zone and topic in self.inputs:
                zone = self.inputs[topic].timezone
            self._zones[key] = zone
        return self._zones[key]

    def _pinned(self, topic: str) -> str:
        """The tenant configured for ``topic`` ("" when it has none)."""
        return self.inputs[topic].tenant if topic in self.inputs else ""

    def _tenant(self, topic: str, headers: list[tuple[str, bytes]]) -> str:
        fixed = self._pinned(topic)
        if fixed:
            return fixed
        for k, v in headers or ():
            if k == self.tenant_header and v:
                return v.decode("utf-8", "replace")
        return self.ingest.default_tenant

    # -- taking ----------------------------------------------------------------

    def take_all(self, topic: str, partition: int, messages: Sequence[Any]) -> None:
        """Take a fetched run of one partition's messages (aiokafka ``ConsumerRecord``s)."""
        if not messages:
            return
        buf = self.state.buffers[(topic, partition)]
        for m in messages:
            try:
                self.take(topic, partition, m.offset, m.value, list(m.headers or ()), m.timestamp)
            except Exception as e:
                # A record that breaks ingest in a way nobody foresaw must not stop
                # the worker, nor the partition behind it: it is set aside, visibly.
                log.exception("record failed ingest", extra={"offset": m.offset})
                self._dead(buf, DeadLetter(Reason.UNPARSEABLE, m.value or b"", topic, partition,
                                           m.offset, detail=f"{type(e).__name__}: {e}"[:1000]))
        last = messages[-1]
        buf.last_record = fingerprint(last.timestamp, last.value)

    def take(self, topic: str, partition: int, offset: int, value: bytes | None,
             headers: list[tuple[str, bytes]], timestamp_ms: int) -> None:
        """Take one message into its partition's buffer (a row, a duplicate, or a dead letter)."""
        buf = self.state.buffers[(topic, partition)]
        if buf.last_offset is None:
            buf.started = time.monotonic()
            buf.arrived_after = self.state.log_end_at
        buf.last_offset = offset
        if not value:
            return
        self.state.stats["input_bytes"] += len(value)
        tenant = self._tenant(topic, headers)
        where: dict[str, Any] = {"topic": topic, "partition": partition, "offset": offset}
        if value[:4] != b"LLKF":
            self._take_message(buf, topic, tenant, value, timestamp_ms, where)
        else:
            self._take_frame(buf, topic, tenant, value, where)

    def _take_frame(self, buf: PartitionBuffer, topic: str, tenant: str, value: bytes,
                    where: dict[str, Any]) -> None:
        """A shipper's frame: its records that are not stored yet, as one run."""
        try:
            frame = decode_frame(value, self.ingest.max_frame_bytes)
        except FrameError as e:
            self._dead(buf, DeadLetter(Reason.CORRUPT_FRAME, value, detail=str(e), context={"tenant": tenant},
                                       **where))
            return
        meta, records = frame.meta, frame.records
        # A topic's configured tenant wins over the frame's, or anyone who may write to a pinned
        # third-party topic could file records under any tenant by sending a frame naming it.
        pinned = self._pinned(topic)
        if pinned and meta.tenant != pinned:
            if meta.tenant:
                self.state.stats["tenant_overridden"] += len(records)
            meta = replace(meta, tenant=pinned)
        tenant = meta.tenant or tenant
        context = {"tenant": tenant, "source": meta.source, "service": meta.service, "host": meta.host}
        try:
            check_tenant(tenant)
        except StorageError as e:
            self._dead(buf, DeadLetter(Reason.INVALID_TENANT, value, detail=str(e), context=context, **where))
            return
        key = (tenant, meta.source_id)
        if meta.source_id.startswith(PUSHED_SOURCE_PREFIX):
            self.state.pushed.setdefault(key, time.monotonic())
        ranges = self.state.ranges.get(key, [])
        kept = drop_stored(records, meta.first_offset, ranges)
        self.state.stats["deduplicated"] += len(records) - len(kept)
        records = kept
        self.state.ranges[key] = buf.ranges[key] = add_range(ranges, meta.first_offset, meta.end_offset)
        if not len(records):
            return
        records = self._drop_oversized(buf, records, context, where)
        if meta.truncated_from:
            meta = replace(meta, labels={**meta.labels, "truncated": "true",
                                         "original_length": str(meta.truncated_from)})
        buf.runs.append((tenant, RecordRun(meta, records, self.format_for(topic, meta.service, meta.source),
                                           zone=self.zone_for(topic, meta.service, meta.source, meta.timezone))))
        buf.rows += len(records)
        buf.bytes += records.nbytes

    def _drop_oversized(self, buf: PartitionBuffer, records: pa.BinaryArray, context: dict[str, str],
                        where: dict[str, Any]) -> pa.BinaryArray:
        limit = self.ingest.max_record_bytes
        lengths = pc.binary_length(records).to_numpy(zero_copy_only=False)
        if lengths.max(initial=0) <= limit:
            return records
        big = lengths > limit
        for i in np.flatnonzero(big).tolist():
            self._dead(buf, DeadLetter(Reason.OVERSIZED, records[i].as_py(),
                                       detail=f"record of {int(lengths[i])} bytes is over max_record_bytes={limit}",
                                       context=context, **where))
        return records.filter(pa.array(~big))

    def _take_message(self, buf: PartitionBuffer, topic: str, tenant: str, value: bytes, timestamp_ms: int,
                      where: dict[str, Any]) -> None:
        """A third-party producer's message: one plain-text line or one JSON object."""
        context = {"tenant": tenant, "source": f"kafka:{topic}"}
        try:
            check_tenant(tenant)
        except StorageError as e:
            self._dead(buf, DeadLetter(Reason.INVALID_TENANT, value, detail=str(e), context=context, **where))
            return
        if len(value) > self.ingest.max_record_bytes:
            self._dead(buf, DeadLetter(Reason.OVERSIZED, value, context=context,
                                       detail=f"record of {len(value)} bytes is over "
                                              f"max_record_bytes={self.ingest.max_record_bytes}",
                                       **where))
            return
        pending = buf.pending[tenant]
        pending.values.append(value)
        # Old message formats carry no timestamp (-1 or None), and a producer's clock can be absurd
        # (past year 9999 a timestamp has no date): then it is observed now.
        pending.observed_ms.append(timestamp_ms if timestamp_ms and 0 < timestamp_ms < MAX_OBSERVED_MS
                                   else int(time.time() * 1000))
        buf.rows += 1
        buf.bytes += len(value)

    @staticmethod
    def _dead(buf: PartitionBuffer, letter: DeadLetter) -> None:
        buf.dead.append(letter)
        log.error("record set aside for the dead-letter topic",
                  extra={"reason": letter.reason.value, "detail": letter.detail[:200], "topic": letter.topic,
                         "partition": letter.partition, "offset": letter.offset})

    # -- at flush --------------------------------------------------------------

    def runs(self, topic: str, buf: PartitionBuffer) -> list[tuple[str, RecordRun]]:
        """The buffer's runs, with its third-party messages as one run per tenant."""
        runs = list(buf.runs)
        service = self.inputs[topic].service if topic in self.inputs else "unknown"
        source = f"kafka:{topic}"
        for tenant, p in buf.pending.items():
            if not p.values:
                continue
            meta = FrameMeta(source_id="", source=source, host="", service=service, tenant=tenant,
                             first_offset=0, end_offset=0, observed_us=0, count=len(p.values))
            runs.append((tenant, RecordRun(meta, pa.array(p.values, pa.binary()),
                                           self.format_for(topic, service, source),
                                           observed_us=np.asarray(p.observed_ms, dtype=np.int64) * 1000,
                                           zone=self.zone_for(topic, service, source))))
        return runs


def _matches(rule: SourceFormat, topic: str, service: str, source: str) -> bool:
    return all(not pattern or fnmatch.fnmatchcase(value, pattern)
               for pattern, value in ((rule.topic, topic), (rule.service, service), (rule.source, source)))
