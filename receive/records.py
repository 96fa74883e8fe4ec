"""A pushed request as runs of records, its identity, and the frames that carry it to the topic.

Every protocol turns its request into :class:`Run`\\ s: records that share a service, host, source and
labels, each record one line of JSON that ingest's JSON parser maps to the record model (well-known
keys ``ts``, ``level``, ``message``, ``trace_id``, ``span_id``; every other key to ``attrs``). The
records then travel exactly as a shipper's do: in loglake frames, keyed by their source id, so ingest
and its exactly-once commit stay the single writer.

**Identity.** A request is a source of its own: its source id is ``@push:<protocol>:k:<hash of the
Idempotency-Key header>`` when the client sends one, else ``@push:<protocol>:h:<hash of what decides
its records>`` (the decompressed body and the route's parameters; never the compression, which a
client may redo on a retry). Its records are laid end to end as a virtual file and each frame
names its byte range in it, as a shipper names a range of a file. The same request sent again
(a retry after a lost answer, a timeout, a 503) makes the same source id and the same ranges, so
ingest drops its records as already stored (``ingest/marks.py``), also when both copies reach the
topic; and since the Kafka key is the source id, both copies land in one partition. Ingest forgets
a pushed request's ranges after ``receive.dedup_window_s``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from loglake.core.frame import PUSHED_SOURCE_PREFIX, FrameMeta, encode_frame
from receive.errors import BadRequest

#: Frame meta is a u16-length JSON object; labels beyond this cannot travel.
MAX_META_BYTES = 60_000


@dataclass(slots=True)
class Run:
    """Records sharing service, host, source and labels; each record one line, no newline in it."""

    service: str
    host: str
    source: str
    labels: dict[str, str] = field(default_factory=dict)
    lines: list[bytes] = field(default_factory=list)


def request_id(protocol: str, idempotency_key: str | None, parts: Sequence[bytes]) -> str:
    """The source id of a request: from its Idempotency-Key, else from what decides its records."""
    h = hashlib.sha256()
    if idempotency_key:
        h.update(idempotency_key.encode("utf-8", "surrogatepass"))
        return f"{PUSHED_SOURCE_PREFIX}{protocol}:k:{h.hexdigest()[:32]}"
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return f"{PUSHED_SOURCE_PREFIX}{protocol}:h:{h.hexdigest()[:32]}"


def _chunks(lines: list[bytes], max_bytes: int) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    size = 0
    for line in lines:
        if chunk and size + len(line) + 1 > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        yield chunk


def encode_frames(source_id: str, tenant: str, runs: Sequence[Run], observed_us: int,
                  max_frame_bytes: int) -> list[bytes]:
    """The frames of a request: each run cut into frames of at most ``max_frame_bytes`` of records,
    at consecutive byte ranges of the request's virtual file."""
    frames: list[bytes] = []
    cursor = 0
    for run in runs:
        for chunk in _chunks(run.lines, max_frame_bytes):
            data = b"\n".join(chunk) + b"\n"
            offsets = np.zeros(len(chunk) + 1, dtype=np.int64)
            offsets[1:] = np.cumsum(np.fromiter((len(x) + 1 for x in chunk), dtype=np.int64, count=len(chunk)))
            meta = FrameMeta(source_id=source_id, source=run.source, host=run.host, service=run.service,
                             tenant=tenant, first_offset=cursor, end_offset=cursor + len(data),
                             observed_us=observed_us, count=len(chunk), labels=run.labels)
            if len(meta.to_json(0)) > MAX_META_BYTES:
                raise BadRequest(f"labels and resource attributes of one stream take over {MAX_META_BYTES} bytes")
            frames.append(encode_frame(meta, data, offsets.astype("<u4")))
            cursor += len(data)
    return frames
