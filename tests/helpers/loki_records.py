"""Generated records for the Loki API's tests, written the way ingest writes them, and the reference.

Seeded random lines of a JSON-logged service (``checkout``: attributes with dotted, dashed, digit-first
and non-ASCII keys, nested objects, trace and span ids), a logfmt service (``billing``), a text service
with a header (``auth``), a JSON service of awkward keys (``edge``: keys that collide once made
label-safe, keys named as stream labels, empty values), one whose every line has an id of its own
(``bulk``) and text lines of no service at all (``service`` empty: Loki's ``unknown_service``) go
through ingest's real ``Normaliser`` and storage's ``write_segments`` into a real catalog. The reference
computes, in plain Python, what Loki shows of each stored record: its stream labels (``service_name``
among them), its structured metadata (Loki's label names), what ``| json`` and ``| logfmt`` extract.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingest.normalise import Normaliser
from query.timerange import parse_time_us
from storage.catalog import Catalog, PartitionCommit
from storage.segments import write_segments
from tests.helpers.normalising import raw
from tests.helpers.server import config_for

T0 = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
T0_US = parse_time_us("2024-03-01T10:00:00Z")
HOUR_US = 3_600_000_000
START, END = str((T0_US - HOUR_US) * 1000), str((T0_US + 2 * HOUR_US) * 1000)
CATEGORIZE = {"X-Loki-Response-Encoding-Flags": "categorize-labels"}
#: Stream labels: the label columns, and ``service_name`` as Loki's distributor adds it.
STREAM = ("service", "service_name", "host", "level", "source")
#: Names no attribute takes (stream labels, column-backed metadata, Loki's errors).
RESERVED = {*STREAM, "trace_id", "span_id", "detected_level", "__error__", "__error_details__"}

REGIONS = ["us-east-1", "eu-west-1", "ap-south-1"]
USERS = ["u-1", "u-2", "u-3", "u-4"]
LEVELS = ["info", "info", "warn", "error", "debug"]
MESSAGES = ["payment accepted", "card declined", "timeout talking to bank", "cart updated"]


# -- the reference: Loki's label names, computed here --------------------------------------------------

def loki_name(key: str) -> str:
    """Prometheus' label name for ``key``; a reserved name gains ``_extracted``."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", key)
    if name[:1].isdigit():
        name = "_" + name
    return name + "_extracted" if name in RESERVED else name


def metadata_of(row: dict[str, Any]) -> dict[str, str]:
    """A stored record's structured metadata: its attributes under their label names (of several keys
    with one name, the key that is the name, else the smallest key), its ids, its detected level."""
    candidates: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key, value in row["attrs"] or []:
        if value and loki_name(key):
            candidates[loki_name(key)].append((key, value))
    out = {}
    for name, pairs in candidates.items():
        exact = [v for k, v in pairs if k == name]
        out[name] = exact[0] if exact else min(pairs)[1]
    for column in ("trace_id", "span_id"):
        if row[column]:
            out[column] = row[column]
    out["detected_level"] = row["level"]
    return out


def service_name_of(row: dict[str, Any]) -> str:
    """Loki's ``discover_service_name`` on a stream whose labels are the row's columns: its ``service``
    when not empty (``host``, ``level`` and ``source`` are not on Loki's list), else ``unknown_service``."""
    return row["service"] or "unknown_service"


def stream_of(row: dict[str, Any]) -> dict[str, str]:
    """A stored record's stream labels: its label columns that have a value, and its service name."""
    out = {name: row[name] for name in ("service", "host", "level", "source") if row[name]}
    out["service_name"] = service_name_of(row)
    return out


def json_parsed(line: str) -> dict[str, str]:
    """What Loki's ``| json`` extracts from ``line``: nested keys joined by ``_``, label-safe, a name taken
    by a stream label as ``x_extracted``."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                part = re.sub(r"[^A-Za-z0-9_]", "_", k)
                walk(f"{prefix}_{part}" if prefix else ("_" + part if part[:1].isdigit() else part), v)
        else:
            text = "true" if value is True else "false" if value is False else str(value)
            out[prefix + "_extracted" if prefix in STREAM else prefix] = text

    walk("", json.loads(line))
    return out


def logfmt_parsed(line: str) -> dict[str, str]:
    out = {}
    for m in re.finditer(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)', line):
        key, value = re.sub(r"[^A-Za-z0-9_]", "_", m[1]), m[2]
        value = json.loads(value) if value.startswith('"') else value
        if value:
            out[key + "_extracted" if key in STREAM else key] = value
    return out


# -- the data ---------------------------------------------------------------------------------------

def _ts(rng: random.Random, i: int) -> datetime:
    """Distinct times in 10:00-11:00, none on a whole second."""
    return datetime.fromtimestamp((T0_US + i * 9_000_000 + rng.randrange(1, 999) * 1000) / 1e6, UTC)


def checkout_line(rng: random.Random, at: datetime) -> str:
    doc: dict[str, Any] = {"ts": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                           "level": rng.choice(LEVELS), "msg": rng.choice(MESSAGES)}
    if rng.random() < 0.6:
        doc["trace_id"] = f"{rng.getrandbits(128):032x}"
    if rng.random() < 0.4:
        doc["span_id"] = f"{rng.getrandbits(64):016x}"
    optional = {
        "region": lambda: rng.choice(REGIONS), "user_id": lambda: rng.choice(USERS),
        "http.status": lambda: rng.choice([200, 404, 500]), "http": lambda: {"method": rng.choice(["GET", "POST"])},
        "k8s.pod.name": lambda: f"checkout-{rng.randrange(3)}", "user-agent": lambda: rng.choice(["curl/8.5", "Go"]),
        "9lives": lambda: rng.choice([True, False]), "latency_ms": lambda: rng.choice([1.5, 12, 250]),
        "source": lambda: rng.choice(["web", "mobile"]), "naïve": lambda: rng.choice(["ü", "ß"]),
    }
    for key, make in optional.items():
        if rng.random() < 0.7:
            doc[key] = make()
    return json.dumps(doc, ensure_ascii=False)


def billing_line(rng: random.Random, at: datetime) -> str:
    line = (f"ts={at.isoformat(timespec='milliseconds').replace('+00:00', 'Z')} level={rng.choice(LEVELS)} "
            f'msg="{rng.choice(MESSAGES)}" user={rng.choice(USERS)} dur={rng.choice(["12ms", "1.5s"])}')
    if rng.random() < 0.7:
        line += f" region={rng.choice(REGIONS)}"
    if rng.random() < 0.5:
        line += f" http.status={rng.choice([200, 402])}"
    return line


def auth_line(rng: random.Random, at: datetime) -> str:
    stamp = at.strftime("%Y-%m-%d %H:%M:%S,") + f"{at.microsecond // 1000:03d}"
    return f"{stamp} {rng.choice(['INFO', 'WARN', 'ERROR'])} [worker-{rng.randrange(3)}] com.acme.Auth: " \
           f"{rng.choice(MESSAGES)} for {rng.choice(USERS)}"


def edge_line(rng: random.Random, at: datetime) -> str:
    doc: dict[str, Any] = {"ts": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "msg": "edge"}
    for group in ([("a.b", "dot"), ("a_b", "underscore")], [("c.d", "dot"), ("c-d", "dash")],
                  [("source", "payments")], [("empty", "")], [("détail", "é")], [("9z", "nine")],
                  [("x", {"y.z": "nested"})], [("x_y_z", "flat")]):
        if rng.random() < 0.6:
            doc.update(group)
    return json.dumps(doc, ensure_ascii=False)


SERVICES = {"checkout": checkout_line, "billing": billing_line, "auth": auth_line, "edge": edge_line}
PER_SERVICE = 90
#: Records of a service whose every line has an id of its own: more label sets than Loki answers.
BULK = 510
#: Records whose shipper named no service (``service`` empty).
UNNAMED = 24


def generate(seed: int) -> list[tuple[str, str, datetime]]:
    """(service, line, time) for every record."""
    rng = random.Random(seed)
    out = []
    i = 0
    for service, make in SERVICES.items():
        for _ in range(PER_SERVICE):
            at = _ts(rng, i)
            i += 1
            out.append((service, make(rng, at), at))
    for j in range(BULK):
        at = datetime.fromtimestamp((T0_US + 20 * 60_000_000 + j * 3_000_000 + 7_000) / 1e6, UTC)
        stamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        out.append(("bulk", json.dumps({"ts": stamp, "msg": "bulk", "req_id": f"r-{j}"}), at))
    for j in range(UNNAMED):
        at = datetime.fromtimestamp((T0_US + 50 * 60_000_000 + j * 7_000_000 + 3_000) / 1e6, UTC)
        stamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        out.append(("", f"{stamp} {rng.choice(['INFO', 'WARN'])} kernel: eth{j % 2} link {rng.choice(['up', 'down'])}",
                    at))
    return out


def write_records(root: Path, seed: int = 2201) -> list[dict[str, Any]]:
    """The generated lines through ingest's normaliser and into segments of a data root under ``root``
    (configured by ``config_for(root, root / "data")``), committed to its catalog; the stored rows, each
    with its ``line`` as written and its time as ``ts_us``."""
    cfg = config_for(root, root / "data")
    catalog = Catalog(cfg.storage.resolved_catalog_url())
    normaliser = Normaliser()
    rows: list[dict[str, Any]] = []
    written = []
    by_service: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
    for service, line, at in generate(seed):
        by_service[service].append((line, at))
    for service, items in by_service.items():
        for host in ("web-1", "web-2"):
            part = [(line, at) for j, (line, at) in enumerate(items) if j % 2 == (host == "web-2")]
            table = normaliser(raw([line for line, _ in part], observed=T0, service=service, host=host,
                                   source=f"/var/log/{service}.log"))
            stored = table.to_pylist()
            for row, (line, at) in zip(stored, part, strict=True):
                assert row["ts"] == at, f"the normaliser read {row['ts']} from {line!r}"
                row["line"], row["ts_us"] = line, parse_time_us(at.isoformat())
            rows += stored
            written += write_segments(cfg.storage.data_root, "default", table, f"{service}-{host}.parquet")
    catalog.commit([PartitionCommit(topic="meta", partition=0, epoch=0, expected_next=0,
                                    new_next=len(written), segments=written)])
    catalog.close()
    return rows


def of(rows: list[dict[str, Any]], service: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["service"] == service]


def ns(row: dict[str, Any]) -> int:
    return int(row["ts_us"]) * 1000
