"""The data root: where segment files live, a local directory or an S3 prefix.

Everything that writes, lists, reads or deletes segment files goes through
:class:`DataRoot`, which is pyarrow's own filesystem layer (``LocalFileSystem``
or ``S3FileSystem``) plus what each needs to be safe: on local disk a write
goes to a temporary name, is fsynced and renamed; on S3 a PUT is atomic
already (an object is there whole or not at all). DuckDB reads the same files
by URL (a path, or ``s3://`` through the httpfs extension bundled by the
``duckdb-extension-httpfs`` wheel: nothing is downloaded at run time).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from loglake.core.config import S3Config, StorageConfig
from storage import tokens
from storage.errors import StorageError
from storage.tokens import SegmentIndex

#: Columns written with dictionary encoding (low-cardinality labels and attribute keys).
DICTIONARY_COLUMNS = ["service", "host", "source", "level", "attrs.key_value.key"]
#: ``raw`` is dictionary-encoded too when at most this share of a sample of its values differ. A
#: service's JSON skeletons repeat (5 or 6 distinct in 200,000 rows of the benchmark lakes): encoded so,
#: a settled segment is 0.7-0.9% smaller (1.5-2.2% at ingest's zstd level), written 3-13% faster,
#: and one row's ``raw`` reads 18% faster. Where every line's skeleton differs a dictionary cost 3%
#: more bytes and 8% more time (measured), so those are written plain.
RAW_DICTIONARY_SHARE = 0.25
_RAW_SAMPLE = 4096
#: Min/max statistics only where a row group's range can prune a query: the times and the columns
#: a segment is sorted or filtered by. A message's, an attribute's or a random id's range spans
#: nearly everything in every row group; writing them cost 12% of writing a segment (measured).
STATISTICS_COLUMNS = ["ts", "observed_ts", "service", "host", "source", "level", "severity"]
#: Times, sorted within a service, shrink to small deltas (1.5% of a segment, measured).
COLUMN_ENCODING = {"ts": "DELTA_BINARY_PACKED", "observed_ts": "DELTA_BINARY_PACKED"}


@dataclass(frozen=True, slots=True)
class FileStat:
    size: int
    mtime_us: int | None


@dataclass(frozen=True, slots=True)
class SegmentFooter:
    """What a query wants from a segment's footer: its trigram index and its columns."""

    index: SegmentIndex | None
    columns: frozenset[str]


def httpfs_extension() -> Path:
    """The httpfs extension file shipped in the ``duckdb-extension-httpfs`` wheel."""
    import duckdb_extension_httpfs

    base = Path(duckdb_extension_httpfs.__file__).parent
    found = sorted(base.glob(f"extensions/v{duckdb.__version__}/httpfs.duckdb_extension"))
    if not found:
        raise StorageError(f"no httpfs extension for DuckDB {duckdb.__version__} in {base}; "
                           "install duckdb-extension-httpfs of the same version")
    return found[0]


def s3_credentials(s3: S3Config) -> tuple[str, str]:
    key, secret = os.environ.get(s3.access_key_id_env, ""), os.environ.get(s3.secret_access_key_env, "")
    if not key or not secret:
        raise StorageError(f"S3 credentials missing: set {s3.access_key_id_env} and {s3.secret_access_key_env}")
    return key, secret


class DataRoot:
    """Segment files under one root, addressed by '/'-separated paths relative to it."""

    def __init__(self, url: str, s3: S3Config | None = None) -> None:
        self.s3 = s3 or S3Config()
        if url.startswith("s3://"):
            bucket_prefix = url.removeprefix("s3://").strip("/")
            key, secret = s3_credentials(self.s3)
            endpoint = self.s3.endpoint_url
            scheme = "http" if endpoint.startswith("http://") else "https"
            self.fs: pafs.FileSystem = pafs.S3FileSystem(
                access_key=key, secret_key=secret, region=self.s3.region,
                endpoint_override=endpoint.split("://", 1)[-1] if endpoint else None, scheme=scheme,
                force_virtual_addressing=not self.s3.path_style)
            self.base = bucket_prefix
            self.url = f"s3://{bucket_prefix}"
            self.local = False
        else:
            path = Path(url).resolve()
            path.mkdir(parents=True, exist_ok=True)
            self.fs = pafs.LocalFileSystem()
            self.base = str(path)
            self.url = str(path)
            self.local = True

    @classmethod
    def from_config(cls, storage: StorageConfig) -> DataRoot:
        return cls(storage.data_root, storage.s3)

    def _path(self, rel: str) -> str:
        if rel.startswith("/") or ".." in rel.split("/"):
            raise StorageError(f"segment path {rel!r} escapes the data root")
        return f"{self.base}/{rel}"

    def file_url(self, rel: str) -> str:
        """What DuckDB reads for the file at ``rel`` (refused if it would leave the root)."""
        self._path(rel)
        return f"{self.url}/{rel}"

    # -- files ---------------------------------------------------------------

    def write_parquet(self, rel: str, table: pa.Table, *, zstd_level: int = 3,
                      row_group_rows: int = 128 * 1024) -> int:
        """Write ``table`` as zstd Parquet at ``rel`` so it appears whole or not at all; returns its size."""
        if not self.local:
            with self.fs.open_output_stream(self._path(rel)) as out:
                write_segment(table, out, zstd_level=zstd_level, row_group_rows=row_group_rows)
            return self.fs.get_file_info(self._path(rel)).size
        dest = Path(self._path(rel))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            write_segment(table, f, zstd_level=zstd_level, row_group_rows=row_group_rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        return dest.stat().st_size

    def open_input(self, rel: str) -> Any:
        """The file at ``rel`` as a binary stream (``read(n)``), for copying it elsewhere."""
        return self.fs.open_input_stream(self._path(rel))

    @contextmanager
    def writer(self, rel: str) -> Iterator[Any]:
        """A binary stream that becomes the file at ``rel`` whole when the block ends, or not at all."""
        if not self.local:
            try:
                with self.fs.open_output_stream(self._path(rel)) as out:
                    yield out
            except BaseException:
                self.delete(rel)          # closing the stream uploaded what was written
                raise
            return
        dest = Path(self._path(rel))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(dest.parent)

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self._path(rel), filesystem=self.fs, columns=columns)

    def read_index(self, rel: str) -> SegmentIndex | None:
        """The trigram index in the footer of the segment at ``rel`` (None for a segment without one)."""
        return self.read_footer(rel).index

    def read_footer(self, rel: str) -> SegmentFooter:
        """The trigram index (None for a segment without one) and the top-level columns of the segment at ``rel``."""
        meta = pq.read_metadata(self._path(rel), filesystem=self.fs)
        index = SegmentIndex.from_metadata(meta.metadata, [meta.row_group(i).num_rows
                                                           for i in range(meta.num_row_groups)])
        return SegmentFooter(index, frozenset(meta.schema.to_arrow_schema().names))

    def delete(self, rel: str) -> bool:
        """Remove the file at ``rel``; False if it was not there."""
        try:
            self.fs.delete_file(self._path(rel))
        except FileNotFoundError:
            return False
        return True

    def stat(self, rel: str) -> FileStat | None:
        """Size and modification time of the file at ``rel``; None if there is none."""
        info = self.fs.get_file_info(self._path(rel))
        if info.type != pafs.FileType.File:
            return None
        return FileStat(info.size or 0, info.mtime_ns // 1000 if info.mtime_ns is not None else None)

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self._path(rel)).type == pafs.FileType.File

    def files(self, under: str = "") -> dict[str, FileStat]:
        """Every file below the root (or below ``under`` in it), by relative path."""
        start = self._path(under) if under else self.base
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(start, recursive=True, allow_not_found=True))
        except FileNotFoundError:
            return {}
        cut = len(self.base) + 1
        return {i.path[cut:]: FileStat(i.size or 0, i.mtime_ns // 1000 if i.mtime_ns is not None else None)
                for i in infos if i.type == pafs.FileType.File}

    # -- DuckDB --------------------------------------------------------------

    def configure_duckdb(self, con: duckdb.DuckDBPyConnection) -> None:
        """Let ``con`` read this root and nothing else (call before locking its configuration)."""
        if self.local:
            con.execute("SET allowed_directories = ?", [[self.url + "/"]])
            con.execute("SET enable_external_access = false")
            return
        con.execute(f"LOAD '{httpfs_extension()}'")
        key, secret = s3_credentials(self.s3)
        endpoint = self.s3.endpoint_url
        params: dict[str, str | bool] = {"KEY_ID": key, "SECRET": secret, "REGION": self.s3.region,
                                         "URL_STYLE": "path" if self.s3.path_style else "vhost"}
        if endpoint:
            params["ENDPOINT"] = endpoint.split("://", 1)[-1]
            params["USE_SSL"] = not endpoint.startswith("http://")
        # CREATE SECRET takes no bound parameters: values are quoted here (none is user query text).
        body = ", ".join(f"{k} {_sql_literal(v)}" for k, v in params.items())
        con.execute(f"CREATE OR REPLACE SECRET loglake_root (TYPE s3, SCOPE {_sql_literal(self.url)}, {body})")
        # Loaded first: with external access off, extensions can no longer be loaded.
        con.execute("SET allowed_directories = ?", [[self.url + "/"]])
        con.execute("SET enable_external_access = false")


def parquet_options(zstd_level: int, *, dictionary_raw: bool = False) -> dict[str, Any]:
    """How every segment is written (``pyarrow.parquet.ParquetWriter`` keywords)."""
    dictionary = [*DICTIONARY_COLUMNS, "raw"] if dictionary_raw else DICTIONARY_COLUMNS
    return dict(compression="zstd", compression_level=zstd_level, use_dictionary=dictionary,
                column_encoding=COLUMN_ENCODING, write_statistics=STATISTICS_COLUMNS, write_page_index=True)


def skeletons_repeat(table: pa.Table) -> bool:
    """Whether ``table``'s ``raw`` values repeat enough to be dictionary-encoded (a strided sample's
    distinct values at most :data:`RAW_DICTIONARY_SHARE` of it; rows are sorted by service)."""
    if "raw" not in table.column_names:
        return False
    raw = table["raw"]
    sample = raw.take(pa.array(range(0, len(raw), max(1, len(raw) // _RAW_SAMPLE)), pa.int64()))
    present = len(sample) - sample.null_count
    return present > 0 and pc.count_distinct(sample).as_py() <= present * RAW_DICTIONARY_SHARE


def write_segment(table: pa.Table, sink: Any, *, zstd_level: int, row_group_rows: int) -> None:
    """``table`` as one segment file, its trigram index in the footer."""
    options = parquet_options(zstd_level, dictionary_raw=skeletons_repeat(table))
    with pq.ParquetWriter(sink, table.schema, **options) as writer:
        writer.write_table(table, row_group_size=row_group_rows)
        writer.add_key_value_metadata(tokens.metadata(table["message"], row_group_rows))


def parquet_size(table: pa.Table, *, zstd_level: int, row_group_rows: int) -> int:
    """The bytes ``table`` would take as a segment (written to memory, not stored)."""
    sink = pa.BufferOutputStream()
    write_segment(table, sink, zstd_level=zstd_level, row_group_rows=row_group_rows)
    return sink.tell()


def _sql_literal(v: str | bool) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "'" + v.replace("'", "''") + "'"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
