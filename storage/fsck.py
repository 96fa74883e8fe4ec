"""``loglake fsck``: the files and the catalog, compared.

- An orphan is a segment file (or a writer's temporary) the catalog does not
  know: a crashed writer's or compactor's output. Older than the grace
  period, repair deletes it; younger, it may be a commit under way and is
  only reported.
- A missing segment is a live catalog row whose file is gone: queries would
  fail on it. Repair takes it out of the live set (state ``missing``, kept
  for the record) and audits it; its rows are lost and the report says so.
- A retired segment whose file is already gone is simply forgotten.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from storage.catalog import AuditEntry, Catalog, SegmentRow
from storage.compaction import is_segment_file
from storage.root import DataRoot


@dataclass
class FsckReport:
    #: (path, bytes, age in seconds or None)
    orphans: list[tuple[str, int, float | None]] = field(default_factory=list)
    missing: list[SegmentRow] = field(default_factory=list)
    retired_gone: list[SegmentRow] = field(default_factory=list)
    #: Orphans younger than the grace period: maybe a commit under way.
    young_orphans: list[tuple[str, int, float | None]] = field(default_factory=list)
    repaired: bool = False
    deleted_orphans: int = 0

    @property
    def clean(self) -> bool:
        return not (self.orphans or self.missing or self.retired_gone)


def fsck(root: DataRoot, catalog: Catalog, *, repair: bool = False, grace_s: float = 600.0,
         now_us: int | None = None) -> FsckReport:
    """Compare ``root`` with ``catalog``; with ``repair``, fix what is safe to fix."""
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    report = FsckReport(repaired=repair)
    # The catalog's live set before the files: a segment committed in between has its file listed.
    live = catalog.live_segments()
    files = {rel: st for rel, st in root.files().items() if is_segment_file(rel)}
    known = catalog.known_paths()
    for rel, st in sorted(files.items()):
        if rel in known:
            continue
        age = (now_us - st.mtime_us) / 1e6 if st.mtime_us is not None else None
        entry = (rel, st.size, age)
        (report.orphans if age is None or age >= grace_s else report.young_orphans).append(entry)
    by_path = {s.path: s for s in live}
    report.missing = [s for p, s in sorted(by_path.items()) if p not in files and not root.exists(p)]
    report.retired_gone = [s for s in catalog.retired() if s.path not in files]
    if not repair:
        return report
    for rel, _, _ in report.orphans:
        report.deleted_orphans += root.delete(rel)
    if report.missing:
        catalog.mark_missing([s.id for s in report.missing])
        catalog.swap([], [], audit=[
            AuditEntry("fsck --repair", "missing", s.tenant, svc, s.min_ts_us, s.max_ts_us, 1, rows,
                       s.bytes * rows // max(1, s.rows), {"segment": s.path, "reason": "file not found"})
            for s in report.missing for svc, rows in sorted(s.services.items())])
    catalog.forget([s.id for s in report.retired_gone])
    return report
