"""Daily lake maintenance: expire old snapshots, then delete data files nobody references.

pyiceberg's expire_snapshots only rewrites metadata; the files of expired snapshots stay on
storage, and so do files a crashed sink or seal wrote but never committed. Deleting them
is done here, conservatively:

* a data file is deleted only if no remaining snapshot (of any branch or tag) lists it as
  live in its manifests, AND it is older than `min_age` — the sink writes files seconds
  before committing them and a seal minutes before, so a young unreferenced file may be
  about to be committed and is left alone;
* only files under the table's data/ directory with a .parquet name are candidates;
  metadata, manifests and anything unknown are never touched;
* snapshot expiry never removes the current snapshot, branch/tag heads, the newest
  `retain_last` snapshots, or the newest sink snapshot (its summary holds the offsets the
  sink resumes from: losing it would make the sink re-read its topics from the start).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pyarrow.fs import FileSelector, FileSystem, FileType
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.table import Table

from streaming.lake.state import ancestors, latest_sink_state

log = logging.getLogger(__name__)

DEFAULT_SNAPSHOT_MAX_AGE = timedelta(days=5)
DEFAULT_RETAIN_LAST = 10
DEFAULT_ORPHAN_MIN_AGE = timedelta(days=1)


@dataclass(slots=True)
class MaintenanceResult:
    table: str
    snapshots_before: int = 0
    snapshots_expired: list[int] = field(default_factory=list)
    referenced_files: int = 0
    orphans_deleted: list[str] = field(default_factory=list)
    orphans_too_young: int = 0
    bytes_deleted: int = 0


def snapshots_to_expire(table: Table, older_than: datetime, retain_last: int) -> list[int]:
    meta = table.metadata
    cutoff_ms = int(older_than.timestamp() * 1000)
    keep: set[int] = {ref.snapshot_id for ref in meta.refs.values()}
    keep |= {s.snapshot_id for s in list(ancestors(table))[: max(1, retain_last)]}
    sink = latest_sink_state(table).snapshot_id
    if sink is not None:
        # Kept even when parents between it and the current snapshot expire: then
        # latest_sink_state finds it among the table's snapshots instead of by ancestry.
        keep.add(sink)
    return [s.snapshot_id for s in meta.snapshots if s.timestamp_ms < cutoff_ms and s.snapshot_id not in keep]


def referenced_data_files(table: Table) -> set[str]:
    """Every data file some remaining snapshot lists as live (normalized paths)."""
    io = table.io
    out: set[str] = set()
    seen_manifests: set[str] = set()
    for snap in table.metadata.snapshots:
        for manifest in snap.manifests(io):
            if manifest.manifest_path in seen_manifests:
                continue
            seen_manifests.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=True):
                out.add(_normalize(entry.data_file.file_path))
    return out


def _normalize(path: str) -> str:
    return path.removeprefix("file://")


def _filesystem(table: Table) -> tuple[FileSystem, str]:
    location = table.location().rstrip("/") + "/data"
    io = table.io
    if isinstance(io, PyArrowFileIO):
        scheme, netloc, path = io.parse_location(location)
        return io.fs_by_scheme(scheme, netloc), path
    fs, path = FileSystem.from_uri(location)
    return fs, path


def _to_table_path(table: Table, fs_path: str) -> str:
    loc = table.location()
    if loc.startswith(("file://", "/")):
        return fs_path
    scheme = loc.split("://", 1)[0]
    return f"{scheme}://{fs_path}"


def delete_orphan_files(
    table: Table,
    *,
    min_age: timedelta = DEFAULT_ORPHAN_MIN_AGE,
    now: datetime | None = None,
    dry_run: bool = False,
    result: MaintenanceResult | None = None,
) -> MaintenanceResult:
    res = result or MaintenanceResult(".".join(table.name()))
    now = now or datetime.now(tz=UTC)
    referenced = referenced_data_files(table)
    res.referenced_files = len(referenced)
    fs, root = _filesystem(table)
    try:
        infos = fs.get_file_info(FileSelector(root, recursive=True, allow_not_found=True))
    except FileNotFoundError:
        infos = []
    for info in infos:
        if info.type != FileType.File or not info.path.endswith(".parquet"):
            continue
        path = _to_table_path(table, info.path)
        if _normalize(path) in referenced:
            continue
        mtime = info.mtime
        if mtime is None or now - mtime.astimezone(UTC) < min_age:
            res.orphans_too_young += 1
            continue
        if not dry_run:
            fs.delete_file(info.path)
        res.orphans_deleted.append(path)
        res.bytes_deleted += info.size or 0
    return res


def maintain_table(
    table: Table,
    *,
    snapshot_max_age: timedelta = DEFAULT_SNAPSHOT_MAX_AGE,
    retain_last: int = DEFAULT_RETAIN_LAST,
    orphan_min_age: timedelta = DEFAULT_ORPHAN_MIN_AGE,
    now: datetime | None = None,
    dry_run: bool = False,
) -> MaintenanceResult:
    """Expire, then delete orphans (in that order: expiry is what turns files into orphans)."""
    now = now or datetime.now(tz=UTC)
    table = table.refresh()
    res = MaintenanceResult(".".join(table.name()), snapshots_before=len(table.metadata.snapshots))
    expire = snapshots_to_expire(table, now - snapshot_max_age, retain_last)
    if expire and not dry_run:
        table.maintenance.expire_snapshots().by_ids(expire).commit()
        table = table.refresh()
    res.snapshots_expired = expire
    return delete_orphan_files(table, min_age=orphan_min_age, now=now, dry_run=dry_run, result=res)
