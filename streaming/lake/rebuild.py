"""Rebuild a broken hour of one lake table (the runbook of docs/lake.md, "Runbook: a broken hour").

1. Source. `processed.*` when the topics still hold every record the sink consumed for
   the hour, else the lake's own rows of the hour:
   * kafka - per partition of the table's topics, the start offset is found by binary
     search over record timestamps (streaming/processors/recompute.offset_for_time: the embedded
     broker has no timestamp index). A record is produced after its event happened, so a
     record stamped before hour start - margin holds no row of the hour. Records are read
     up to the offsets of the sink's newest snapshot (exactly what the sink consumed, never
     what it has still to consume, so the sink's dedup memory stays right). The source is
     complete only when the number of records of the hour equals the sink ledger's count
     for the hour; retention, a recreated topic or a too small margin all show up as fewer
     records. Rows other writers put into the hour (bulk history, `shard = bulk:*`) are not
     in Kafka and are carried over from the lake.
   * lake - the hour's rows as the table (or a chosen earlier snapshot) holds them,
     deduplicated by event_id: the "raw lake data" the runbook falls back to.
   Rows are deduplicated by event_id keeping the first copy, as the sink does.
2. Stage. Sorted files are written (the sealed layout) and committed to a staging branch
   created at the main snapshot the source was read against (Iceberg WAP: pyiceberg 0.12
   writes to branches), replacing the hour there only.
3. Validate. The staged hour is read back from the branch: row count, distinct event_ids
   and a content checksum must equal the source's.
4. Promote. ONE commit on main deletes the hour and adds the staged files (the same files,
   not rewritten), so readers see the old hour or the new one, never a mix. If anything
   committed into the hour meanwhile, the rebuild starts over; commits elsewhere (the sink
   appending the current hour) only cost a re-commit. The branch is removed afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table

from collectors.bulk.common import SHARD_PREFIX as BULK_SHARD_PREFIX
from runtime import kafka_config as kc
from schemas.arrow_convert import envelopes_to_table
from schemas.model import event_type_from_pb
from schemas.serde import SerdeError, decode
from schemas.tables import TABLES_BY_NAME, TableSpec
from streaming.kafka.io import TP, read_range, watermarks
from streaming.lake.seal import SEALED_PREFIX, hour_tasks, read_hour
from streaming.lake.sink import hour_filter
from streaming.lake.state import (
    HOUR_US,
    SEALED_HOUR_KEY,
    WRITER_KEY,
    HourCount,
    latest_sink_state,
)
from streaming.lake.writer import SEALED_COMPRESSION_LEVEL, LakeFileWriter, commit_files, ensure_writer_properties
from streaming.processors.recompute import offset_for_time

log = logging.getLogger(__name__)

REBUILD_WRITER = "lake-rebuild"
REBUILT_HOUR_KEY = "ticklake.rebuilt-hour"
REBUILD_SOURCE_KEY = "ticklake.rebuild-source"
REBUILD_CHECKSUM_KEY = "ticklake.rebuild-checksum"
REBUILD_ROWS_KEY = "ticklake.rebuild-rows"
STAGING_BRANCH_KEY = "ticklake.staging-branch"
SOURCES = ("auto", "kafka", "lake")
#: How far before the hour the Kafka search starts: records may be stamped up to this much
#: before the events they carry (producer clock skew); larger only costs reading.
DEFAULT_MARGIN_US = 15 * 60 * 1_000_000


class SourceUnavailable(RuntimeError):
    """The requested source cannot reproduce the hour (the message says why)."""


class ValidationFailed(RuntimeError):
    """The staged hour differs from its source; nothing was promoted."""


@dataclass(slots=True)
class SourceRows:
    kind: str  # "kafka" | "lake"
    rows: pa.Table  # deduplicated, table schema
    records: int  # records/rows read before dedup
    detail: str
    carried_over: int = 0  # lake rows of other writers kept (kafka source)


@dataclass(slots=True)
class RebuildReport:
    table: str
    hour: str
    source: str
    source_detail: str
    rows: int = 0
    source_records: int = 0
    duplicates_dropped: int = 0
    carried_over: int = 0
    checksum: str = ""
    staged_checksum: str = ""
    before_rows: int = 0
    before_checksum: str = ""
    missing_before: int = 0  # source ids the hour lacked
    extra_before: int = 0  # ids the hour had that the source does not
    files: int = 0
    files_before: int = 0
    bytes: int = 0
    staging_branch: str = ""
    staged_snapshot_id: int | None = None
    promoted_snapshot_id: int | None = None
    attempts: int = 1
    kafka_unavailable: str = ""
    changed: bool = True
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- checksums


def canonical(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """Rows in one canonical form: the table's Arrow schema without metadata, sorted by
    event_id, nulls turned into an explicit validity column plus a fixed fill value (the
    bytes under a null slot are undefined in Arrow)."""
    plain = pa.schema([pa.field(f.name, f.type, nullable=True) for f in schema])
    rows = rows.select(plain.names).cast(plain)
    rows = rows.take(pc.sort_indices(rows, sort_keys=[("event_id", "ascending")]))
    cols, names = [], []
    for f, col in zip(plain, rows.columns, strict=True):
        col = col.combine_chunks()
        if col.null_count:
            cols.append(pc.is_valid(col))
            names.append(f"{f.name}.valid")
            if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
                col = pc.fill_null(col, "")
            elif pa.types.is_integer(f.type) or pa.types.is_timestamp(f.type):
                col = pc.fill_null(col, pa.scalar(0, f.type))
        cols.append(col)
        names.append(f.name)
    return pa.Table.from_arrays(cols, names=names)


def checksum(rows: pa.Table, schema: pa.Schema) -> str:
    """Content checksum independent of row order, chunking and file layout: blake2b over
    the canonical rows serialized column by column as Arrow IPC."""
    t = canonical(rows, schema)
    h = hashlib.blake2b(digest_size=16)
    h.update(str(t.num_rows).encode())
    for name, col in zip(t.column_names, t.columns, strict=True):
        h.update(name.encode() + b"\x1f")
        sink = pa.BufferOutputStream()
        one = pa.Table.from_arrays([col], names=[name])
        with pa.ipc.new_stream(sink, one.schema) as w:
            w.write_table(one, max_chunksize=max(1, one.num_rows))
        h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()


def dedup_first(rows: pa.Table) -> pa.Table:
    """Keep the first row of each event_id (in the given order), as the sink does."""
    if rows.num_rows == 0:
        return rows
    idx = pa.table({"event_id": rows.column("event_id"), "i": pa.array(range(rows.num_rows), pa.int64())})
    first = idx.group_by("event_id", use_threads=False).aggregate([("i", "min")]).column("i_min")
    if len(first) == rows.num_rows:
        return rows
    return rows.take(pc.take(first, pc.sort_indices(first)))


# --------------------------------------------------------------------------- sources


def table_schema(table: Table) -> pa.Schema:
    return schema_to_pyarrow(table.schema(), include_field_ids=False)


def _conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    return rows.select(schema.names).cast(schema)


def fetched_high(consumer: Consumer, tp: TP, timeout_s: float = 10.0) -> int:
    """The partition's high watermark as a fetch response reports it (the embedded broker
    answers a ListOffsets(latest) query wrongly, fetch responses rightly)."""
    consumer.assign([TopicPartition(tp[0], tp[1], OFFSET_BEGINNING)])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            consumer.consume(1, 0.1)
            _, high = consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
            if high >= 0:
                return high
        raise TimeoutError(f"no fetch response for {tp[0]}[{tp[1]}] within {timeout_s}s")
    finally:
        consumer.unassign()


def kafka_hour(
    conn: kc.KafkaConnection,
    spec: TableSpec,
    offsets: dict[str, dict[int, int]],
    hour_us: int,
    expected_records: int,
    *,
    margin_us: int = DEFAULT_MARGIN_US,
    group: str = "ticklake-lake-rebuild",
    timeout_s: float = 60.0,
) -> tuple[pa.Table | None, int]:
    """Envelopes of the hour from the table's topics, up to the sink's offsets.

    Stops once `expected_records` records of the hour were read (the sink can have
    consumed no more). Returns (rows or None, records of the hour read)."""
    search = Consumer(kc.consumer_config(conn, f"{group}-search", read_committed=False, fetch_wait_max_ms=10))
    reader = Consumer(kc.consumer_config(conn, group, read_committed=True, fetch_wait_max_ms=10))
    envs = []
    try:
        target_ms = (hour_us - margin_us) // 1000
        for topic in sorted(offsets):
            for part in sorted(offsets[topic]):
                end = offsets[topic][part]
                tp: TP = (topic, part)
                low, _ = watermarks(search, tp)
                end = min(end, fetched_high(search, tp))  # a recreated topic can be shorter
                if end <= low:
                    continue
                start = offset_for_time(search, tp, target_ms)
                for m in read_range(reader, tp, max(start, low), end, timeout=timeout_s):
                    try:
                        env = decode(m.value(), m.headers())
                        if event_type_from_pb(env.event_type) is not spec.event_type:
                            continue  # the sink dead-lettered it; not in its ledger either
                    except (SerdeError, ValueError):
                        continue
                    if hour_us <= env.exchange_ts < hour_us + HOUR_US:
                        envs.append(env)
                        if len(envs) >= expected_records:
                            break
                if len(envs) >= expected_records:
                    break
            if len(envs) >= expected_records:
                break
    finally:
        search.close()
        reader.close()
    if not envs:
        return None, 0
    return envelopes_to_table(spec.event_type, envs), len(envs)


def lake_source(table: Table, hour_us: int, snapshot_id: int | None = None) -> SourceRows:
    schema = table_schema(table)
    if snapshot_id is not None:
        if table.metadata.snapshot_by_id(snapshot_id) is None:
            raise SourceUnavailable(f"snapshot {snapshot_id} does not exist (expired?)")
        rows = table.scan(row_filter=hour_filter(hour_us), snapshot_id=snapshot_id).to_arrow()
        where = f"snapshot {snapshot_id}"
    else:
        rows = read_hour(table, hour_us)
        where = "the current snapshot"
    rows = _conform(rows, schema)
    kept = dedup_first(
        rows.take(pc.sort_indices(rows, sort_keys=[("event_id", "ascending"), ("ingest_ts", "ascending")]))
    )
    return SourceRows("lake", kept, rows.num_rows, f"lake rows of the hour in {where}, deduplicated by event_id")


def kafka_source(
    table: Table,
    spec: TableSpec,
    conn: kc.KafkaConnection,
    hour_us: int,
    current: pa.Table,
    *,
    margin_us: int = DEFAULT_MARGIN_US,
) -> SourceRows:
    state = latest_sink_state(table)
    ledger: HourCount | None = state.ledger.get(hour_us)
    if ledger is None:
        raise SourceUnavailable(
            "the sink ledger has no entry for the hour (never consumed from processed.*, or "
            "older than the ledger window): processed.* cannot be shown to be complete"
        )
    if not state.offsets:
        raise SourceUnavailable("the table has no sink offsets")
    rows, n = kafka_hour(conn, spec, state.offsets, hour_us, ledger.records, margin_us=margin_us)
    if n != ledger.records:
        raise SourceUnavailable(
            f"processed.* holds {n} of the {ledger.records} records the sink consumed for the "
            "hour (retention passed, or the topics were recreated)"
        )
    schema = table_schema(table)
    rows = dedup_first(_conform(rows, schema))
    detail = f"processed.* records up to the sink's offsets ({n} records of the hour, ledger {ledger.records})"
    carried = 0
    if current.num_rows:
        # Rows of other writers (bulk history) never went through Kafka: keep them.
        shard = pc.fill_null(current.column("shard"), "")
        other = current.filter(pc.starts_with(shard, BULK_SHARD_PREFIX))
        if other.num_rows:
            other = other.filter(pc.invert(pc.is_in(other.column("event_id"), value_set=rows.column("event_id"))))
            other = dedup_first(_conform(other, schema))
            carried = other.num_rows
            if carried:
                rows = pa.concat_tables([rows, other])
                detail += f" + {carried} bulk rows kept from the lake"
    return SourceRows("kafka", rows, n, detail, carried_over=carried)


# --------------------------------------------------------------------------- stage / validate / promote


def staging_branch_name(spec: TableSpec, hour_us: int) -> str:
    return f"staging-{spec.name}-{datetime.fromtimestamp(hour_us / 1e6, tz=UTC):%Y%m%dT%H}-{uuid.uuid4().hex[:8]}"


def _commit_to_branch(
    table: Table,
    branch: str,
    base_snapshot: int,
    files: list[DataFile],
    hour_us: int,
    props: dict[str, str],
    attempts: int = 20,
) -> Table:
    """Create the branch at `base_snapshot`, then replace the hour on it (retried when a
    concurrent commit to main moved the metadata)."""
    for attempt in range(attempts):
        try:
            if branch not in table.metadata.refs:
                table.manage_snapshots().create_branch(snapshot_id=base_snapshot, branch_name=branch).commit()
                table = table.refresh()
            with table.transaction() as tx:
                tx.delete(delete_filter=hour_filter(hour_us), snapshot_properties=props, branch=branch)
                with tx.update_snapshot(snapshot_properties=props, branch=branch).fast_append() as append:
                    for f in files:
                        append.append_data_file(f)
            return table.refresh()
        except CommitFailedException:
            if attempt == attempts - 1:
                raise
            table = table.refresh()
    raise AssertionError("unreachable")


def _remove_branch(table: Table, branch: str) -> Table:
    for _ in range(20):
        table = table.refresh()
        if branch not in table.metadata.refs:
            return table
        try:
            table.manage_snapshots().remove_branch(branch).commit()
        except CommitFailedException:
            continue
    return table.refresh()


def _hour_files(table: Table, hour_us: int) -> set[str]:
    return {t.file.file_path for t in hour_tasks(table, hour_us)}


def rebuild_hour(
    table: Table,
    hour_us: int,
    *,
    source: str = "auto",
    conn: kc.KafkaConnection | None = None,
    snapshot_id: int | None = None,
    margin_us: int = DEFAULT_MARGIN_US,
    target_file_bytes: int | None = None,
    dry_run: bool = False,
    retries: int = 3,
    rebase_attempts: int = 50,
) -> RebuildReport:
    """Rebuild one hour of `table`; see the module docstring. `snapshot_id` (lake source
    only) rebuilds from an earlier state of the table, e.g. from before a bad commit.
    `dry_run` computes and compares, then stops before staging."""
    if hour_us % HOUR_US:
        raise ValueError(f"hour_us must be an hour boundary, got {hour_us}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if snapshot_id is not None and source == "kafka":
        raise ValueError("snapshot_id selects lake data; it cannot be combined with source='kafka'")
    spec = TABLES_BY_NAME[table.name()[-1]]
    hour_iso = datetime.fromtimestamp(hour_us / 1e6, tz=UTC).isoformat()
    table = ensure_writer_properties(table)
    schema = table_schema(table)
    for attempt in range(1, retries + 2):
        table = table.refresh()
        base = table.current_snapshot()
        read_set = _hour_files(table, hour_us)
        current = _conform(read_hour(table, hour_us), schema)
        src, kafka_why = _pick_source(
            table, spec, hour_us, current, source=source, conn=conn, snapshot_id=snapshot_id, margin_us=margin_us
        )
        rows = src.rows
        report = RebuildReport(
            table=spec.identifier,
            hour=hour_iso,
            source=src.kind,
            source_detail=src.detail,
            rows=rows.num_rows,
            source_records=src.records,
            carried_over=src.carried_over,
            duplicates_dropped=src.records + src.carried_over - rows.num_rows,
            checksum=checksum(rows, schema),
            before_rows=current.num_rows,
            before_checksum=checksum(current, schema),
            files_before=len(read_set),
            attempts=attempt,
            kafka_unavailable=kafka_why,
        )
        src_ids = pa.array(rows.column("event_id"))
        cur_ids = pa.array(current.column("event_id"))
        report.missing_before = int(pc.sum(pc.invert(pc.is_in(src_ids, value_set=cur_ids))).as_py() or 0)
        report.extra_before = len(set(cur_ids.to_pylist()) - set(src_ids.to_pylist()))
        report.changed = report.checksum != report.before_checksum
        if dry_run:
            report.notes.append("dry run: nothing staged or promoted")
            return report
        if base is None:
            if rows.num_rows:
                raise SourceUnavailable("the table has no snapshot to stage against")
            report.notes.append("empty table: nothing to rebuild")
            return report
        files = LakeFileWriter(
            table, target_file_bytes=target_file_bytes, compression_level=SEALED_COMPRESSION_LEVEL
        ).write(rows, prefix=SEALED_PREFIX)
        report.files = len(files)
        report.bytes = sum(f.file_size_in_bytes for f in files)
        branch = staging_branch_name(spec, hour_us)
        report.staging_branch = branch
        props = {
            WRITER_KEY: REBUILD_WRITER,
            REBUILT_HOUR_KEY: hour_iso,
            REBUILD_SOURCE_KEY: src.kind,
            REBUILD_CHECKSUM_KEY: report.checksum,
            REBUILD_ROWS_KEY: str(rows.num_rows),
            STAGING_BRANCH_KEY: branch,
            SEALED_HOUR_KEY: hour_iso,
        }
        try:
            table = _commit_to_branch(table, branch, base.snapshot_id, files, hour_us, props)
            staged_snap = table.snapshot_by_name(branch)
            report.staged_snapshot_id = staged_snap.snapshot_id
            staged = table.scan(row_filter=hour_filter(hour_us), snapshot_id=staged_snap.snapshot_id).to_arrow()
            report.staged_checksum = checksum(staged, schema)
            distinct = pc.count_distinct(staged.column("event_id")).as_py() if staged.num_rows else 0
            if (
                staged.num_rows != rows.num_rows
                or distinct != rows.num_rows
                or report.staged_checksum != report.checksum
            ):
                raise ValidationFailed(
                    f"staged hour on branch {branch}: {staged.num_rows} rows ({distinct} distinct), checksum "
                    f"{report.staged_checksum}; source: {rows.num_rows} rows, checksum {report.checksum}"
                )
        except BaseException:
            _remove_branch(table, branch)
            for f in files:  # only the removed branch ever referenced them
                table.io.delete(f.file_path)
            raise
        promoted = False
        for _ in range(rebase_attempts):
            # The commit is optimistic against `table`'s metadata, so the hour must still be
            # what the source was read against in exactly that metadata (staging refreshed it).
            if _hour_files(table, hour_us) != read_set:
                break  # rows arrived in the hour meanwhile: rebuild from the new state
            try:
                table = commit_files(table, files, props, delete_filter=hour_filter(hour_us))
                promoted = True
                break
            except CommitFailedException:
                table = table.refresh()
        if promoted:
            table = table.refresh()
            report.promoted_snapshot_id = table.current_snapshot().snapshot_id
            _remove_branch(table, branch)
            log.info(
                "rebuilt %s hour %s from %s: %d rows (%d before), checksum %s",
                spec.identifier,
                hour_iso,
                src.kind,
                report.rows,
                report.before_rows,
                report.checksum,
            )
            return report
        table = _remove_branch(table, branch)
        for f in files:
            table.io.delete(f.file_path)
        log.info("rebuild of %s hour %s: the hour changed while rebuilding; starting over", spec.identifier, hour_iso)
    raise CommitFailedException(
        f"rebuild of {spec.identifier} hour {hour_iso}: the hour kept changing under {retries + 1} attempts"
    )


def _pick_source(
    table: Table,
    spec: TableSpec,
    hour_us: int,
    current: pa.Table,
    *,
    source: str,
    conn: kc.KafkaConnection | None,
    snapshot_id: int | None,
    margin_us: int,
) -> tuple[SourceRows, str]:
    why = ""
    if source in ("auto", "kafka") and snapshot_id is None:
        try:
            if conn is None:
                raise SourceUnavailable("no Kafka connection configured")
            return kafka_source(table, spec, conn, hour_us, current, margin_us=margin_us), ""
        except SourceUnavailable as exc:
            if source == "kafka":
                raise
            why = str(exc)
            log.info("%s hour %s: processed.* not usable (%s); rebuilding from the lake", spec.identifier, hour_us, why)
    return lake_source(table, hour_us, snapshot_id), why
