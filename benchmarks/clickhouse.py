"""The ClickHouse baseline (chdb, in process): the same rows in a MergeTree ordered by (service, ts)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

_COLUMNS = """
    ts          DateTime64(6, 'UTC') CODEC(Delta, ZSTD(3)),
    observed_ts DateTime64(6, 'UTC') CODEC(Delta, ZSTD(3)),
    service     LowCardinality(String) CODEC(ZSTD(3)),
    host        LowCardinality(String) CODEC(ZSTD(3)),
    source      LowCardinality(String) CODEC(ZSTD(3)),
    level       LowCardinality(String) CODEC(ZSTD(3)),
    severity    Int8 CODEC(ZSTD(3)),
    message     String CODEC(ZSTD(3)),
    attrs       Map(LowCardinality(String), String) CODEC(ZSTD(3)),
    trace_id    Nullable(String) CODEC(ZSTD(3)),
    span_id     Nullable(String) CODEC(ZSTD(3))
"""
#: The columns that keep each record's original line (storage/lines.py), for a like-for-like load.
_ORIGINAL = """,
    head        Nullable(String) CODEC(ZSTD(3)),
    raw         Nullable(String) CODEC(ZSTD(3))
"""


class ClickHouse:
    """A chdb session holding one ``logs`` table loaded from our segment files."""

    def __init__(self, path: Path) -> None:
        from chdb.session import Session  # installed with the bench extra

        shutil.rmtree(path, ignore_errors=True)
        self.session = Session(str(path))
        self.session.query("CREATE DATABASE IF NOT EXISTS bench")

    def load(self, segment_glob: str, *, token_index: bool, original: bool = False) -> None:
        """Our segments' rows into ``bench.logs``; with ``original``, their original lines' columns too."""
        index = ",\n    INDEX message_tokens lower(message) TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 1" \
            if token_index else ""
        extra = _ORIGINAL if original else ""
        self.session.query("DROP TABLE IF EXISTS bench.logs")
        self.session.query(f"CREATE TABLE bench.logs ({_COLUMNS}{extra}{index}) ENGINE = MergeTree "
                           "ORDER BY (service, ts)")
        self.session.query(f"INSERT INTO bench.logs SELECT ts, observed_ts, service, host, source, level, severity, "
                           f"message, attrs, trace_id, span_id{', head, raw' if original else ''} "
                           f"FROM file('{segment_glob}', Parquet)")
        self.session.query("OPTIMIZE TABLE bench.logs FINAL")

    def bytes_on_disk(self) -> int:
        return int(self.scalar("SELECT sum(bytes_on_disk) FROM system.parts "
                               "WHERE database = 'bench' AND table = 'logs' AND active"))

    def scalar(self, sql: str) -> Any:
        return self.session.query(sql, "CSV").bytes().decode().strip().strip('"')

    def rows(self, sql: str) -> list[list[str]]:
        out = self.session.query(sql, "TabSeparated").bytes().decode()
        return [line.split("\t") for line in out.splitlines() if line]

    def close(self) -> None:
        self.session.close()
