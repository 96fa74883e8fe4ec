"""The Loghub samples' ground truth (beside the checkout, never in it) and the grouping accuracy of a parse.

Grouping accuracy (GA) as Zhu et al. define it ("Tools and Benchmarks for Automated Log Parsing",
ICSE-SEIP 2019): a message is parsed correctly when the set of messages its mined group holds is
exactly the set of messages of its ground-truth event; GA is the share of messages parsed correctly.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Hashable, Sequence
from pathlib import Path

LOGHUB = Path(__file__).resolve().parents[3] / "shared" / "data" / "loghub"
SYSTEMS = ("Android", "Apache", "HDFS", "Hadoop", "HealthApp", "Linux", "OpenSSH", "OpenStack", "Spark", "Zookeeper")


def structured_csv(system: str) -> Path:
    return LOGHUB / system / f"{system}_2k.log_structured.csv"


def load_structured(system: str) -> tuple[list[str], list[str]]:
    """(each line's ``Content``, its ground-truth ``EventId``)."""
    with structured_csv(system).open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["Content"] for r in rows], [r["EventId"] for r in rows]


def grouping_accuracy(mined: Sequence[Hashable], truth: Sequence[Hashable]) -> float:
    """GA of ``mined`` (a group key per message) against ``truth`` (an event per message)."""
    if len(mined) != len(truth):
        raise ValueError("one group and one event per message")
    if not truth:
        return 1.0
    groups: dict[Hashable, set[int]] = defaultdict(set)
    events: dict[Hashable, set[int]] = defaultdict(set)
    for i, (g, e) in enumerate(zip(mined, truth, strict=True)):
        groups[g].add(i)
        events[e].add(i)
    right = sum(len(members) for members in groups.values() if events[truth[next(iter(members))]] == members)
    return right / len(truth)
