"""push: records/s from an HTTP push (OTLP protobuf and JSON, Loki protobuf+snappy, Elasticsearch bulk,
NDJSON) into stored rows, against the shipper's path for the same records in the same run.

Each path gets a fresh broker; the timed span runs from the first request (or the shipper's start)
until one ingest worker has committed every row: the pushes first (each answered once the broker
acknowledged it), then the worker. Request bodies are encoded before the clock starts (OTLP by the
OpenTelemetry SDK's own encoder), so what is measured is loglake's side, as for the shipper, whose
file is written beforehand. Four client threads post batches of 1,000 records to one `loglake
receive` process.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import Result
from benchmarks.pipeline import WORK, broker, config, free_port, ingest_until, ship_once, wait_ready

BATCH = 1000
_SERVICES = ("checkout", "cart", "search", "auth")
_LEVELS = ((9, "info"), (13, "warn"), (17, "error"), (5, "debug"))


def _records(n: int, base_ns: int) -> list[dict[str, Any]]:
    return [{"ts": base_ns + i * 1000, "service": _SERVICES[i % 4], "sev": _LEVELS[i % 4],
             "message": f"request {i} handled in {i % 997} ms for user u{i % 5003} path /api/v1/items/{i % 211}",
             "attrs": {"http.status": 200 + (i % 3) * 100, "user": f"u{i % 5003}", "region": "eu-west-1"}}
            for i in range(n)]


def _otlp_bodies(records: list[dict[str, Any]], as_json: bool) -> list[bytes]:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    bodies = []
    for start in range(0, len(records), BATCH):
        req = ExportLogsServiceRequest()
        by_service: dict[str, Any] = {}
        for r in records[start:start + BATCH]:
            if r["service"] not in by_service:
                rl = req.resource_logs.add()
                for k, v in (("service.name", r["service"]), ("host.name", "bench-host")):
                    kv = rl.resource.attributes.add(key=k)
                    kv.value.string_value = v
                by_service[r["service"]] = rl.scope_logs.add()
                by_service[r["service"]].scope.name = "bench"
            lr = by_service[r["service"]].log_records.add(time_unix_nano=r["ts"], severity_number=r["sev"][0],
                                                          severity_text=r["sev"][1].upper())
            lr.body.string_value = r["message"]
            for k, v in r["attrs"].items():
                kv = lr.attributes.add(key=k)
                if isinstance(v, int):
                    kv.value.int_value = v
                else:
                    kv.value.string_value = v
        bodies.append(json.dumps(json_format.MessageToDict(req)).encode() if as_json else req.SerializeToString())
    return bodies


def _loki_bodies(records: list[dict[str, Any]]) -> list[bytes]:
    import cramjam

    from receive.loki import PushRequest

    bodies = []
    for start in range(0, len(records), BATCH):
        req = PushRequest()
        streams: dict[str, Any] = {}
        for r in records[start:start + BATCH]:
            if r["service"] not in streams:
                streams[r["service"]] = req.streams.add(
                    labels=f'{{service_name="{r["service"]}", host="bench-host"}}'.encode())
            e = streams[r["service"]].entries.add(line=r["message"].encode())
            e.timestamp.seconds, e.timestamp.nanos = divmod(r["ts"], 1_000_000_000)
            for k, v in (("level", r["sev"][1]), *((k, str(v)) for k, v in r["attrs"].items())):
                e.structuredMetadata.add(name=k.encode(), value=v.encode())
        bodies.append(bytes(cramjam.snappy.compress_raw(req.SerializeToString())))
    return bodies


def _json_line(r: dict[str, Any]) -> bytes:
    return json.dumps({"ts": r["ts"], "service": r["service"], "level": r["sev"][1], "message": r["message"],
                       "host": "bench-host", **r["attrs"]}).encode()


def _bulk_bodies(records: list[dict[str, Any]]) -> list[bytes]:
    return [b"".join(b'{"index":{}}\n' + _json_line(r) + b"\n" for r in records[s:s + BATCH])
            for s in range(0, len(records), BATCH)]


def _ndjson_bodies(records: list[dict[str, Any]]) -> list[bytes]:
    return [b"".join(_json_line(r) + b"\n" for r in records[s:s + BATCH]) for s in range(0, len(records), BATCH)]


PROTOCOLS: dict[str, tuple[str, dict[str, str], Callable[[list[dict[str, Any]]], list[bytes]]]] = {
    "otlp": ("/v1/logs", {"Content-Type": "application/x-protobuf"}, lambda rs: _otlp_bodies(rs, False)),
    "otlp_json": ("/v1/logs", {"Content-Type": "application/json"}, lambda rs: _otlp_bodies(rs, True)),
    "loki": ("/loki/api/v1/push", {"Content-Type": "application/x-protobuf"}, _loki_bodies),
    "elasticsearch": ("/bench/_bulk", {"Content-Type": "application/x-ndjson"}, _bulk_bodies),
    "ndjson": ("/api/v1/ingest", {"Content-Type": "application/x-ndjson"}, _ndjson_bodies),
}


def _receiver(address: str, topic: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGLAKE_")}
    env.update(LOGLAKE_KAFKA__BOOTSTRAP_SERVERS=address, LOGLAKE_KAFKA__TOPIC=topic, LOGLAKE_KAFKA__PARTITIONS="3",
               LOGLAKE_AUTH__ENABLED="false", LOGLAKE_RECEIVE__PORT=str(port), LOGLAKE_LOG__LEVEL="warning",
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "loglake", "receive"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _push_path(name: str, records: list[dict[str, Any]], work: Path) -> tuple[float, float, int]:
    path, headers, encode = PROTOCOLS[name]
    bodies = encode(records)
    with broker(cores={0}) as address:
        topic = f"bench.push.{name}"
        cfg = config(work, address, topic, [])
        port = free_port()
        proc = _receiver(address, topic, port, work / f"receive-{name}.log")
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, proc, work / f"receive-{name}.log")
            clients = [httpx.Client(timeout=60) for _ in range(4)]

            def post(i: int) -> None:
                r = clients[i % 4].post(url + path, content=bodies[i], headers=headers)
                if r.status_code >= 300 or b'"errors":true' in r.content:
                    raise RuntimeError(f"{name}: {r.status_code} {r.text[:300]}")
            t0 = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(post, range(len(bodies))))
            sent_s = time.perf_counter() - t0
            for c in clients:
                c.close()
        finally:
            proc.terminate()
            proc.wait(30)
        run = asyncio.run(ingest_until(cfg, len(records), timeout_s=600))
    return sent_s, run.seconds, run.rows


def _shipper_path(records: list[dict[str, Any]], work: Path) -> tuple[float, float, int]:
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "app.log", "wb") as f:
        f.writelines(_json_line(r) + b"\n" for r in records)
    with broker(cores={0}) as address:
        cfg = config(work, address, "bench.push.shipper", [str(logs / "*.log")])
        t0 = time.perf_counter()
        asyncio.run(ship_once(cfg))
        sent_s = time.perf_counter() - t0
        run = asyncio.run(ingest_until(cfg, len(records), timeout_s=600))
    return sent_s, run.seconds, run.rows


def run(lines: int, repetitions: int = 1) -> Result:
    records = _records(lines, time.time_ns() - 3_600_000_000_000)
    r = Result("push", lines)
    rates: dict[str, float] = {}
    for name in ("shipper", *PROTOCOLS):
        work = WORK / f"push-{name}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        sent_s, ingest_s, rows = _shipper_path(records, work) if name == "shipper" else \
            _push_path(name, records, work)
        r.check(f"{name}.rows", rows == lines, f"{rows} rows stored of {lines}")
        rates[name] = lines / (sent_s + ingest_s)
        r.metrics[f"{name}.records_per_s"] = rates[name]
        r.metrics[f"{name}.send_records_per_s"] = lines / sent_s
        r.metrics[f"{name}.ingest_s"] = ingest_s
        shutil.rmtree(work, ignore_errors=True)
    r.baselines = {"shipper.records_per_s": rates["shipper"]}
    r.ratios = {f"{name}/shipper": rates[name] / rates["shipper"] for name in PROTOCOLS}
    r.notes.append(f"batches of {BATCH} records, 4 client threads, one receiver; sequential: pushes, then one "
                   "ingest worker until every row is committed")
    return r
