"""Each new file goes to the least loaded partition and stays there: the placement rule, then a
real shipper on the real broker, read back partition by partition."""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from loglake.core.config import Config
from loglake.core.frame import decode_frame
from shippers.checkpoint import CheckpointStore
from shippers.placement import PartitionLoad, place
from shippers.shipper import Shipper

_topics = itertools.count()

# -- the rule ----------------------------------------------------------------------------------


def test_largest_first_each_to_the_least_loaded_partition() -> None:
    new = [("a", 10), ("b", 100), ("c", 60), ("d", 50), ("e", 5)]
    # b (100) takes one partition, c (60) the other, then d (50) joins c, a (10) joins b, and e (5)
    # meets two partitions of 110.
    chosen = place(new, [0.0, 0.0])
    by = dict(zip((s for s, _ in new), chosen, strict=True))
    assert by["b"] != by["c"] and by["d"] == by["c"] and by["a"] == by["b"]
    loads: collections.Counter[int] = collections.Counter()
    for (_, n), p in zip(new, chosen, strict=True):
        loads[p] += n
    assert sorted(loads.values()) == [110, 115]


def test_what_partitions_already_carry_counts() -> None:
    assert place([("x", 1), ("y", 1)], [500.0, 0.0, 20.0]) == [1, 1]
    assert place([("big", 1000)], [30.0, 10.0, 20.0]) == [1]


def test_ties_are_broken_by_the_source_id_the_same_way_every_time() -> None:
    ids = [f"host-{i}:fp:{i}:1" for i in range(64)]
    first = [place([(s, 0)], [0.0] * 4)[0] for s in ids]
    assert first == [place([(s, 0)], [0.0] * 4)[0] for s in ids]
    # Shippers on other hosts do not all start on partition 0.
    assert set(first) == {0, 1, 2, 3}


def test_no_partitions_is_an_error() -> None:
    with pytest.raises(ValueError, match="no partitions"):
        place([("a", 1)], [])


def test_acknowledged_bytes_decay_with_the_half_life() -> None:
    load = PartitionLoad(half_life_s=10.0)
    load.sent(1, 1000, now=100.0)
    load.sent(2, 1000, now=110.0)
    p0, p1, p2 = load.recent(3, now=110.0)
    assert p0 == 0 and p1 == pytest.approx(500) and p2 == pytest.approx(1000)
    assert load.recent(3, now=130.0)[2] == pytest.approx(250)


# -- a real shipper, the real broker ----------------------------------------------------------


def _config(tmp_path: Path, broker: str, topic: str, partitions: int) -> Config:
    return Config.model_validate({
        "kafka": {"bootstrap_servers": broker, "topic": topic, "partitions": partitions},
        "shipper": {"include": [str(tmp_path / "logs" / "*.log")], "state_dir": str(tmp_path / "state"),
                    "host": "placement-test"},
    })


def _write(path: Path, lines: int, start: int = 0) -> None:
    with open(path, "a") as f:
        for i in range(start, start + lines):
            f.write(json.dumps({"msg": f"line {i} of {path.name}", "pad": "x" * 40}) + "\n")


def _ship_once(cfg: Config) -> None:
    async def go() -> None:
        await asyncio.wait_for(Shipper(cfg).run(asyncio.Event(), once=True), 60)

    asyncio.run(go())


@dataclass(frozen=True)
class Shipped:
    partition: int
    file: str
    source_id: str
    first_offset: int
    lines: int
    nbytes: int


def _messages(broker: str, topic: str, partitions: int) -> list[tuple[int, bytes]]:
    """Every message on the topic, with its partition."""
    async def go() -> list[tuple[int, bytes]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False,
                                    auto_offset_reset="earliest", fetch_max_bytes=16 << 20)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            out: list[tuple[int, bytes]] = []
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                    out += [(tp.partition, m.value or b"") for m in messages]
            return out
        finally:
            await consumer.stop()

    return asyncio.run(go())


def _read(broker: str, topic: str, partitions: int) -> list[Shipped]:
    """Every frame on the topic."""
    out = []
    for partition, value in _messages(broker, topic, partitions):
        meta = decode_frame(value).meta
        out.append(Shipped(partition, Path(meta.source).name, meta.source_id, meta.first_offset, meta.count,
                           meta.end_offset - meta.first_offset))
    return out


def _partition_per_file(frames: list[Shipped]) -> dict[str, set[int]]:
    where: dict[str, set[int]] = collections.defaultdict(set)
    for f in frames:
        where[f.file].add(f.partition)
    return where


def test_files_of_very_different_sizes_are_spread_evenly_each_in_one_partition(broker: str, tmp_path: Path) -> None:
    topic, partitions = f"placement.{next(_topics)}", 4
    (tmp_path / "logs").mkdir()
    sizes = {f"svc{k:02d}.log": 6000 // k for k in range(1, 13)}        # Zipf: 6,000 lines down to 500
    for name, n in sizes.items():
        _write(tmp_path / "logs" / name, n)
    _ship_once(_config(tmp_path, broker, topic, partitions))

    frames = _read(broker, topic, partitions)
    assert sum(f.lines for f in frames) == sum(sizes.values())
    where = _partition_per_file(frames)
    assert all(len(ps) == 1 for ps in where.values()), where
    per_partition: collections.Counter[int] = collections.Counter()
    for f in frames:
        per_partition[f.partition] += f.nbytes
    total, largest = sum(per_partition.values()), (tmp_path / "logs" / "svc01.log").stat().st_size
    # The best split here: the largest file (a third of the bytes) alone, the rest shared by three.
    # Hashing the source ids put another file beside it 24 times in 25.
    assert max(per_partition.values()) == largest, per_partition
    assert min(per_partition.values()) >= 0.75 * (total - largest) / 3, per_partition
    assert len(per_partition) == partitions
    # The checkpoints keep where each file went.
    stored = CheckpointStore(tmp_path / "state").load()
    assert {Path(cp.path).name: {cp.partition} for cp in stored.values()} == dict(where)


def test_a_file_keeps_its_partition_after_a_restart_and_a_new_file_goes_to_the_least_loaded(
        broker: str, tmp_path: Path) -> None:
    topic, partitions = f"placement.{next(_topics)}", 3
    logs = tmp_path / "logs"
    logs.mkdir()
    for name, n in (("big.log", 3000), ("mid.log", 1500), ("small.log", 200)):
        _write(logs / name, n)
    cfg = _config(tmp_path, broker, topic, partitions)
    _ship_once(cfg)
    before = _partition_per_file(_read(broker, topic, partitions))
    assert len(set().union(*before.values())) == 3, before
    # Another run of the shipper: the old files grow, and a new one appears, bigger than what they add.
    for name, n in (("big.log", 3000), ("mid.log", 1500), ("small.log", 200)):
        _write(logs / name, 100, start=n)
    _write(logs / "new.log", 1000)
    _ship_once(cfg)
    after = _partition_per_file(_read(broker, topic, partitions))
    assert {k: after[k] for k in before} == before, "a file's frames moved to another partition"
    # A fresh process knows only the unsent bytes: 100 lines on each partition, so the new file
    # goes where its source id's hash breaks the tie, alone on it among the new bytes.
    assert len(after["new.log"]) == 1


def test_a_file_checkpointed_before_placement_stays_with_kafkas_hash(broker: str, tmp_path: Path) -> None:
    topic, partitions = f"placement.{next(_topics)}", 4
    logs = tmp_path / "logs"
    logs.mkdir()
    _write(logs / "old.log", 500)
    cfg = _config(tmp_path, broker, topic, partitions)
    _ship_once(cfg)
    size = (logs / "old.log").stat().st_size
    # The checkpoint as a shipper before placement wrote it: version 3, no partition.
    file = tmp_path / "state" / "checkpoints.json"
    data = json.loads(file.read_text())
    for cp in data["files"].values():
        del cp["partition"]
    file.write_text(json.dumps({**data, "version": 3}))
    _write(logs / "old.log", 300, start=500)
    _ship_once(cfg)

    frames = _read(broker, topic, partitions)
    assert sum(f.lines for f in frames) == 800
    (source_id,) = {f.source_id for f in frames}
    hashed = DefaultPartitioner()(source_id.encode(), list(range(partitions)), list(range(partitions)))
    resumed = [f for f in frames if f.first_offset >= size]
    assert sum(f.lines for f in resumed) == 300
    assert {f.partition for f in resumed} == {hashed}
    # Saved again, the checkpoint is version 4 and still says: Kafka's hash.
    assert json.loads(file.read_text())["version"] == 4
    assert [cp.partition for cp in CheckpointStore(tmp_path / "state").load().values()] == [-1]


def test_a_file_read_again_after_copytruncate_is_placed_before_its_first_new_frame(broker: str,
                                                                                    tmp_path: Path) -> None:
    topic, partitions = f"placement.{next(_topics)}", 4
    logs = tmp_path / "logs"
    logs.mkdir()
    _write(logs / "app.log", 2000)
    cfg = _config(tmp_path, broker, topic, partitions)

    async def go() -> None:
        s = Shipper(cfg)
        await s._ensure_topic()
        s.producer = await s._start_producer()
        try:
            s.files.scan(first=True)
            await s._send_available()
            await s._collect_acks(wait=True)
            # Truncated and written again, shorter than before: the pass that notices it sends too.
            (logs / "app.log").write_text("")
            _write(logs / "app.log", 300, start=2000)
            await s._send_available()
            await s._collect_acks(wait=True)
            _write(logs / "app.log", 100, start=2300)
            await s._send_available()
            await s._collect_acks(wait=True)
        finally:
            await s.producer.stop()
            s.files.close()

    asyncio.run(go())
    frames = _read(broker, topic, partitions)
    by_source: dict[str, set[int]] = collections.defaultdict(set)
    for f in frames:
        by_source[f.source_id].add(f.partition)
    assert sum(f.lines for f in frames) == 2400 and len(by_source) == 2
    assert all(len(ps) == 1 for ps in by_source.values()), by_source
    # ... and the one its checkpoint names.
    (cp,) = CheckpointStore(tmp_path / "state").load().values()
    assert by_source[cp.source_id] == {cp.partition}


def test_a_partitions_load_counts_the_files_bytes_not_the_compressed_frames(broker: str, tmp_path: Path) -> None:
    topic, partitions = f"placement.{next(_topics)}", 2
    logs = tmp_path / "logs"
    logs.mkdir()
    _write(logs / "app.log", 3000)          # repetitive JSON: lz4 frames far smaller than the lines
    cfg = _config(tmp_path, broker, topic, partitions)

    async def go() -> list[float]:
        s = Shipper(cfg)
        await s._ensure_topic()
        s.producer = await s._start_producer()
        try:
            s.files.scan(first=True)
            while await s._send_available():
                await s._collect_acks(wait=True)
            await s._collect_acks(wait=True)
            return s.partition_load.recent(partitions)
        finally:
            await s.producer.stop()
            s.files.close()

    load = asyncio.run(go())
    frame_bytes = sum(len(value) for _, value in _messages(broker, topic, partitions))
    size = (logs / "app.log").stat().st_size
    assert frame_bytes < size / 2
    # Unread bytes and acknowledged ones are then in one unit (within the decay of a few seconds).
    assert sum(load) == pytest.approx(size, rel=0.05)

