"""The Iceberg mirror: each tenant's live segments as an Apache Iceberg table, for outside engines.

loglake's catalog stays the source of truth. The mirror is brought up to it by
:meth:`IcebergMirror.sync`, a reconciler: per tenant it compares the live
segments in the catalog with the data files of the table's current snapshot
and commits the difference as one snapshot (new segments are added as data
files in place, never copied; segments that left the live set are removed).
Whatever happened in between (an ingest commit, a compaction swap, a
retention or deletion rewrite, a crash between loglake's commit and the
Iceberg one, an Iceberg commit lost to another writer), the next sync makes
the table hold exactly the live segments. The maintenance loop runs it on
its own interval and after each compaction and retention run; garbage
collection expires snapshots older than the grace period before it deletes
the files they name, so a snapshot an engine can still open names files
that are still there.

The segments carry no Parquet field ids: tables get a name mapping
(``schema.name-mapping.default``) at creation, which Iceberg readers use for
files without ids. Every field is optional, so a file whose columns are
required (as loglake writes them) reads under the table's schema. Tables are
partitioned by ``hour(ts)``: a segment never spans two hours.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from loglake.core.config import IcebergConfig
from storage.catalog import Catalog
from storage.errors import IcebergError
from storage.root import DataRoot, s3_credentials

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog as IcebergCatalog
    from pyiceberg.manifest import DataFile
    from pyiceberg.schema import Schema
    from pyiceberg.table import Table

log = logging.getLogger("loglake.iceberg")

#: Table properties: old metadata files are deleted after a commit (the last few kept), since a
#: mirror synced every minute would otherwise leave one behind per minute forever.
TABLE_PROPERTIES = {
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
    "loglake.mirror": "true",
    # A sync's difference is taken against one snapshot: PyIceberg's retry would replay it onto a
    # newer one (adding files twice). A lost commit is left to the next sync, which reads afresh.
    "commit.retry.num-retries": "0",
}


def record_schema() -> Schema:
    """The record model as an Iceberg schema: times as ``timestamptz`` (µs), dictionary columns as
    ``string``, ``severity`` (int8 in the files) as ``int``, ``attrs`` as ``map<string,string>``."""
    from pyiceberg.schema import Schema
    from pyiceberg.types import IntegerType, MapType, NestedField, StringType, TimestamptzType

    return Schema(
        NestedField(1, "ts", TimestamptzType(), required=False),
        NestedField(2, "observed_ts", TimestamptzType(), required=False),
        NestedField(3, "service", StringType(), required=False),
        NestedField(4, "host", StringType(), required=False),
        NestedField(5, "source", StringType(), required=False),
        NestedField(6, "level", StringType(), required=False),
        NestedField(7, "severity", IntegerType(), required=False),
        NestedField(8, "message", StringType(), required=False),
        NestedField(9, "attrs", MapType(14, StringType(), 15, StringType(), value_required=False), required=False),
        NestedField(10, "trace_id", StringType(), required=False),
        NestedField(11, "span_id", StringType(), required=False),
        # The original line's columns (storage/lines.py); segments written before them read as NULL.
        NestedField(12, "head", StringType(), required=False),
        NestedField(13, "raw", StringType(), required=False),
    )


def sql_catalog_uri(catalog_url: str) -> str:
    """loglake's catalog URL as SQLAlchemy's (PostgreSQL through psycopg 3, which loglake already uses)."""
    for prefix in ("postgresql://", "postgres://"):
        if catalog_url.startswith(prefix):
            return "postgresql+psycopg://" + catalog_url.removeprefix(prefix)
    return catalog_url


def duckdb_extensions() -> list[Path]:
    """The avro and iceberg extension files from their PyPI wheels (iceberg needs avro loaded first)."""
    import duckdb_extension_avro
    import duckdb_extension_iceberg

    out = []
    for name, module in (("avro", duckdb_extension_avro), ("iceberg", duckdb_extension_iceberg)):
        base = Path(module.__file__ or "").parent
        found = sorted(base.glob(f"extensions/v{duckdb.__version__}/{name}.duckdb_extension"))
        if not found:
            raise IcebergError(f"no {name} extension for DuckDB {duckdb.__version__} in {base}; "
                               f"install duckdb-extension-{name} of the same version")
        out.append(found[0])
    return out


def load_duckdb_iceberg(con: duckdb.DuckDBPyConnection) -> None:
    """Load DuckDB's iceberg extension (``iceberg_scan``) from the wheels: nothing is downloaded."""
    for path in duckdb_extensions():
        con.execute(f"LOAD '{path}'")


class _QuietDictionaryWarnings(logging.Filter):
    # PyIceberg logs a warning per dictionary-encoded column, and per column written without
    # statistics (on purpose: see storage/root.py), of every file it reads the footer of.
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return "does not have a dictionary type" not in text and "statistics missing for column" not in text


@dataclass
class MirrorReport:
    """What one sync committed: per tenant, files added and removed."""

    tables: int = 0
    commits: int = 0
    added: int = 0
    removed: int = 0
    conflicts: int = 0
    created: int = 0
    changes: dict[str, str] = field(default_factory=dict)     # tenant -> append | replace | overwrite | delete


def change_kind(added_rows: int, removed_rows: int, added: int, removed: int) -> str:
    """How a sync's difference reads: ``append`` (ingest), ``replace`` (compaction: same rows in
    other files), ``delete`` (segments dropped whole), ``overwrite`` (rows rewritten away)."""
    if not removed:
        return "append"
    if not added:
        return "delete"
    return "replace" if added_rows == removed_rows else "overwrite"


class IcebergMirror:
    """The Iceberg tables of one lake: created on first sync, reconciled with the catalog."""

    def __init__(self, cfg: IcebergConfig, root: DataRoot, catalog: Catalog) -> None:
        self.cfg, self.root, self.catalog = cfg, root, catalog
        self._iceberg: IcebergCatalog | None = None
        logging.getLogger("pyiceberg.io.pyarrow").addFilter(_QuietDictionaryWarnings())

    # -- the Iceberg catalog ---------------------------------------------------------------

    def properties(self) -> dict[str, str]:
        """The PyIceberg catalog's properties: where it is, where metadata goes, how to reach the files."""
        warehouse = self.cfg.warehouse or (f"{self.root.url}/_iceberg" if not self.root.local
                                           else f"file://{self.root.url}/_iceberg")
        props = {"warehouse": warehouse, "py-io-impl": "pyiceberg.io.pyarrow.PyArrowFileIO"}
        if self.cfg.catalog_uri:
            props |= {"type": "rest", "uri": self.cfg.catalog_uri}
            if self.cfg.token_env:
                import os

                props["token"] = os.environ.get(self.cfg.token_env, "")
        else:
            props |= {"type": "sql", "uri": sql_catalog_uri(self.catalog.url)}
        if not self.root.local:
            s3 = self.root.s3
            key, secret = s3_credentials(s3)
            props |= {"s3.access-key-id": key, "s3.secret-access-key": secret, "s3.region": s3.region,
                      "s3.force-virtual-addressing": str(not s3.path_style).lower()}
            if s3.endpoint_url:
                props["s3.endpoint"] = s3.endpoint_url
        return props

    @property
    def iceberg(self) -> IcebergCatalog:
        if self._iceberg is None:
            from pyiceberg.catalog import load_catalog

            try:
                self._iceberg = load_catalog("loglake", **self.properties())
                self._iceberg.create_namespace_if_not_exists(self.cfg.namespace)
            except Exception as e:
                self._iceberg = None
                raise IcebergError(f"Iceberg catalog: {type(e).__name__}: {e}") from e
        return self._iceberg

    def close(self) -> None:
        if self._iceberg is not None:
            engine = getattr(self._iceberg, "engine", None)
            if engine is not None:
                engine.dispose()
            self._iceberg = None

    def identifier(self, tenant: str) -> tuple[str, str]:
        return (self.cfg.namespace, tenant)

    def table(self, tenant: str, *, create: bool = True) -> Table | None:
        """The tenant's table (created, empty, when missing and ``create``)."""
        from pyiceberg.exceptions import NoSuchTableError, TableAlreadyExistsError
        from pyiceberg.partitioning import PartitionField, PartitionSpec
        from pyiceberg.transforms import HourTransform

        try:
            return self.iceberg.load_table(self.identifier(tenant))
        except NoSuchTableError:
            if not create:
                return None
        schema = record_schema()
        spec = PartitionSpec(PartitionField(source_id=1, field_id=1000, transform=HourTransform(), name="ts_hour"))
        props = TABLE_PROPERTIES | {"schema.name-mapping.default": schema.name_mapping.model_dump_json()}
        try:
            return self.iceberg.create_table(self.identifier(tenant), schema=schema, partition_spec=spec,
                                             properties=props)
        except TableAlreadyExistsError:       # another maintenance process made it meanwhile
            return self.iceberg.load_table(self.identifier(tenant))

    def tenants(self) -> list[str]:
        """The tenants that have a table."""
        return sorted(ident[-1] for ident in self.iceberg.list_tables(self.cfg.namespace))

    def metadata_locations(self) -> dict[str, str]:
        """Each tenant's current metadata file: what ``iceberg_scan`` and engines without a catalog read."""
        out = {}
        for tenant in self.tenants():
            t = self.table(tenant, create=False)
            if t is not None:
                out[tenant] = t.metadata_location
        return out

    # -- reconciling --------------------------------------------------------------------------

    def file_url(self, rel: str) -> str:
        """A segment's absolute location, as the table names it."""
        url = self.root.file_url(rel)
        return url if not self.root.local else f"file://{url}"

    def sync(self, tenant: str | None = None) -> MirrorReport:
        """Make each table (of ``tenant``) hold exactly the tenant's live segments; one snapshot per change.

        A commit that loses to another writer is counted in ``conflicts`` and left to the next sync.
        """
        from pyiceberg.exceptions import CommitFailedException

        live: dict[str, dict[str, int]] = {}
        for seg in self.catalog.live_segments(tenant):
            live.setdefault(seg.tenant, {})[self.file_url(seg.path)] = seg.rows
        tenants = sorted(set(live) | ({tenant} if tenant else set(self.tenants())))
        report = MirrorReport()
        for t in tenants:
            report.tables += 1
            try:
                self._sync_table(t, live.get(t, {}), report)
            except CommitFailedException as e:
                report.conflicts += 1
                log.info("iceberg commit lost a race; the next sync retries", extra={"tenant": t, "reason": str(e)})
        return report

    def _sync_table(self, tenant: str, live: dict[str, int], report: MirrorReport) -> None:
        from pyiceberg.io.pyarrow import parquet_files_to_data_files

        existed = self.table(tenant, create=False)
        table = existed if existed is not None else self.table(tenant)
        assert table is not None
        if existed is None:
            report.created += 1
        current = dict(_data_files(table))
        add = sorted(u for u in live if u not in current)
        drop = [df for url, df in current.items() if url not in live]
        if not add and not drop:
            return
        kind = change_kind(sum(live[u] for u in add), sum(df.record_count for df in drop), len(add), len(drop))
        props = {"loglake.change": kind, "loglake.segments-added": str(len(add)),
                 "loglake.segments-removed": str(len(drop))}
        with table.transaction() as tx:
            files = list(parquet_files_to_data_files(table.io, tx.table_metadata, iter(add)))
            update = tx.update_snapshot(snapshot_properties=props)
            producer: Any = update.fast_append() if not drop else update.overwrite()
            with producer as p:
                for df in drop:
                    p.delete_data_file(df)
                for df in files:
                    p.append_data_file(df)
        report.commits += 1
        report.added += len(add)
        report.removed += len(drop)
        report.changes[tenant] = kind

    def expire(self, older_than_us: int) -> int:
        """Expire every snapshot but the current one taken before ``older_than_us``; returns how many.

        Only metadata goes: the data files are loglake's, deleted by its garbage collection.
        """
        from pyiceberg.exceptions import CommitFailedException

        expired = 0
        cut = datetime.fromtimestamp(older_than_us / 1e6, UTC)
        for tenant in self.tenants():
            table = self.table(tenant, create=False)
            if table is None:
                continue
            current = table.current_snapshot()
            keep = current.snapshot_id if current is not None else None
            old = [s.snapshot_id for s in table.snapshots()
                   if s.timestamp_ms * 1000 < older_than_us and s.snapshot_id != keep]
            if not old:
                continue
            try:
                table.maintenance.expire_snapshots().older_than(cut).commit()
            except CommitFailedException:
                continue
            expired += len(old)
        return expired


def _data_files(table: Table) -> Iterator[tuple[str, DataFile]]:
    """The data files of the table's current snapshot, by location."""
    snap = table.current_snapshot()
    if snap is None:
        return
    for manifest in snap.manifests(table.io):
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            yield entry.data_file.file_path, entry.data_file


