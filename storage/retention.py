"""Retention: what the policies say must go, and making it really go.

Each (tenant, service) gets the most specific policy that sets an age: the
tenant's own for that service, else the tenant's for every service, else
every tenant's for that service, else every tenant's for every service. A
legal hold on a tenant, or on one service in it, keeps everything it covers.

A run, per tenant:

1. whole segments whose every row is past its service's cut-off leave the
   catalog in one transaction with their audit entries (the files follow after
   the grace period);
2. a segment that straddles a cut-off is rewritten without the expired rows;
3. if the tenant still holds more than its ``max_bytes``, its oldest whole
   segments go next (never one holding a service under a hold).
"""

from __future__ import annotations

import fnmatch
import functools
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from loglake.core.config import RetentionConfig, RetentionPolicy
from storage.catalog import AuditEntry, Catalog, SegmentRow
from storage.errors import CatalogConflict
from storage.rewrite import Removed, rewrite_segment
from storage.root import DataRoot


@dataclass(frozen=True)
class Rules:
    """The configured policies and holds, resolved for (tenant, service) pairs."""

    policies: tuple[RetentionPolicy, ...]
    holds: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, cfg: RetentionConfig) -> Rules:
        return cls(tuple(cfg.policies), tuple((h.tenant, h.service) for h in cfg.holds))

    def held(self, tenant: str, service: str = "*") -> bool:
        """Whether a hold covers ``service`` of ``tenant`` ("*": the tenant as a whole)."""
        return any(fnmatch.fnmatchcase(tenant, t) and (s == "*" or s == service) for t, s in self.holds)

    def age_policy(self, tenant: str, service: str) -> RetentionPolicy | None:
        best: tuple[int, RetentionPolicy] | None = None
        for p in self.policies:
            if p.max_age_s is None:
                continue
            if p.tenant not in ("*", tenant) or p.service not in ("*", service):
                continue
            rank = (p.tenant != "*") * 2 + (p.service != "*")
            if best is None or rank > best[0]:
                best = (rank, p)
        return best[1] if best else None

    def bytes_policy(self, tenant: str) -> RetentionPolicy | None:
        own = [p for p in self.policies if p.max_bytes_n is not None and p.tenant == tenant]
        candidates = own or [p for p in self.policies if p.max_bytes_n is not None and p.tenant == "*"]
        return candidates[0] if candidates else None

    def cutoffs(self, tenant: str, services: Sequence[str], now_us: int) -> dict[str, tuple[int, RetentionPolicy]]:
        """Per service of ``tenant`` not under a hold: (rows before this are expired, the policy)."""
        out: dict[str, tuple[int, RetentionPolicy]] = {}
        if self.held(tenant):
            return out
        for s in services:
            p = self.age_policy(tenant, s)      # (one with a max_age_s, if any)
            if p is not None and p.max_age_s is not None and not self.held(tenant, s):
                out[s] = (now_us - int(p.max_age_s * 1e6), p)
        return out


def actor_of(p: RetentionPolicy, what: str) -> str:
    return f"retention policy tenant={p.tenant} service={p.service} {what}"


@dataclass
class Action:
    """One thing a run does to one segment."""

    segment: SegmentRow
    kind: str                                   # "drop" (whole) | "rewrite" (expired rows only) | "bytes"
    #: For a rewrite: service -> rows of it before this time go.
    cutoffs: dict[str, int] = field(default_factory=dict)
    #: Per service, the policy that removes its rows (for the audit).
    actors: dict[str, str] = field(default_factory=dict)


def plan(segments: list[SegmentRow], rules: Rules, now_us: int | None = None) -> list[Action]:
    """What a run would do to these live segments, in order."""
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    by_tenant: dict[str, list[SegmentRow]] = defaultdict(list)
    for s in segments:
        by_tenant[s.tenant].append(s)
    actions: list[Action] = []
    for tenant in sorted(by_tenant):
        segs = sorted(by_tenant[tenant], key=lambda s: (s.max_ts_us, s.id))
        kept_bytes = 0
        untouched: list[SegmentRow] = []
        for s in segs:
            cut = rules.cutoffs(tenant, list(s.services), now_us)
            expired = {svc: c for svc, (c, _) in cut.items() if s.min_ts_us < c}
            actors = {svc: actor_of(p, f"max_age={p.max_age}") for svc, (_, p) in cut.items() if svc in expired}
            if expired and len(cut) == len(s.services) and all(s.max_ts_us < c for c, _ in cut.values()):
                actions.append(Action(s, "drop", actors=actors))
                continue
            if expired:
                actions.append(Action(s, "rewrite", expired, actors))
            else:
                untouched.append(s)
            kept_bytes += s.bytes
        cap = rules.bytes_policy(tenant)
        if cap is None or rules.held(tenant):
            continue
        limit = cap.max_bytes_n or 0
        rewriting = {a.segment.id for a in actions if a.kind == "rewrite"}
        for s in segs:                                       # oldest first
            if kept_bytes <= limit:
                break
            if s.id in rewriting or any(a.segment.id == s.id for a in actions):
                continue
            if any(rules.held(tenant, svc) for svc in s.services):
                continue
            actor = actor_of(cap, f"max_bytes={cap.max_bytes}")
            actions.append(Action(s, "bytes", actors={svc: actor for svc in s.services}))
            kept_bytes -= s.bytes
    return actions


@dataclass
class RetentionReport:
    """What a run deleted (or, dry, would delete): per (tenant, service)."""

    dry_run: bool
    removed: list[Removed] = field(default_factory=list)
    conflicts: int = 0
    #: (tenant, service) -> {"segments", "rows", "bytes", "min_ts_us", "max_ts_us"}
    totals: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)

    def add(self, r: Removed) -> None:
        self.removed.append(r)
        total_rows = max(1, r.rows)
        for svc, rows in r.by_service.items():
            lo, hi = r.range_of(svc)
            t = self.totals.setdefault((r.segment.tenant, svc), {"segments": 0, "rows": 0, "bytes": 0,
                                                                 "min_ts_us": lo or 0, "max_ts_us": hi or 0})
            t["segments"] += 1
            t["rows"] += rows
            t["bytes"] += r.bytes * rows // total_rows
            if lo is not None and hi is not None:
                t["min_ts_us"] = min(t["min_ts_us"], lo)
                t["max_ts_us"] = max(t["max_ts_us"], hi)


def _whole(seg: SegmentRow) -> Removed:
    return Removed(seg, seg.rows, seg.bytes, dict(seg.services), seg.min_ts_us, seg.max_ts_us)


def audit_entries(removed: Removed, actors: dict[str, str] | str, action: str = "retention",
                  detail: dict[str, object] | None = None) -> list[AuditEntry]:
    """One audit entry per service that lost rows in ``removed``, each naming what removed them."""
    total = max(1, removed.rows)
    return [AuditEntry(actors if isinstance(actors, str) else actors.get(svc, "retention"), action,
                       removed.segment.tenant, svc, *removed.range_of(svc), 1, rows, removed.bytes * rows // total,
                       {"segment": removed.segment.path, **(detail or {})})
            for svc, rows in sorted(removed.by_service.items())]


def _expired_mask(cutoffs: dict[str, int]) -> Callable[[pa.Table], pa.ChunkedArray]:
    def drop(table: pa.Table) -> pa.ChunkedArray:
        service = table["service"].cast(pa.string())
        ts = pc.cast(table["ts"], pa.int64())
        mask = None
        for svc, cut in cutoffs.items():
            hit = pc.and_(pc.equal(service, svc), pc.less(ts, cut))
            mask = hit if mask is None else pc.or_(mask, hit)
        return mask if mask is not None else pc.not_equal(ts, ts)      # nothing expired
    return drop


def run(root: DataRoot, catalog: Catalog, rules: Rules, *, dry_run: bool = False, now_us: int | None = None,
        tenant: str | None = None, progress: Callable[[int], None] | None = None,
        zstd_level: int = 9) -> RetentionReport:
    """Apply the rules once; ``progress`` is called after each segment with its bytes."""
    report = RetentionReport(dry_run)
    actions = plan(catalog.live_segments(tenant), rules, now_us)
    # Whole segments first, per tenant in one transaction each: the cheap, big part.
    drops: dict[str, list[Action]] = defaultdict(list)
    for a in actions:
        if a.kind in ("drop", "bytes"):
            drops[a.segment.tenant].append(a)
    for group in drops.values():
        removed = [(_whole(a.segment), a.actors) for a in group]
        if not dry_run:
            try:
                catalog.swap([a.segment for a in group], [],
                             audit=[e for r, actor in removed for e in audit_entries(r, actor)])
            except CatalogConflict:
                report.conflicts += 1       # compaction swapped one; the next run sees the new segment
                continue
        for r, _ in removed:
            report.add(r)
            if progress is not None:
                progress(r.segment.bytes)
    for a in actions:
        if a.kind != "rewrite":
            continue
        try:
            rewritten = rewrite_segment(root, catalog, a.segment, _expired_mask(a.cutoffs), dry_run=dry_run,
                                        audit=functools.partial(audit_entries, actors=a.actors),
                                        zstd_level=zstd_level)
        except CatalogConflict:
            report.conflicts += 1
            continue
        if rewritten is not None:
            report.add(rewritten)
        if progress is not None:
            progress(a.segment.bytes)
    return report
