"""Iceberg schema, partition spec and sort order derived from schemas/tables.py."""

from __future__ import annotations

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchTableError,
)
from pyiceberg.expressions import And, BooleanExpression, GreaterThanOrEqual, LessThan
from pyiceberg.io.pyarrow import _ConvertToIcebergWithoutIDs, visit_pyarrow
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema, assign_fresh_schema_ids
from pyiceberg.table import Table
from pyiceberg.table.sorting import NullOrder, SortDirection, SortField, SortOrder
from pyiceberg.transforms import (
    DayTransform,
    HourTransform,
    IdentityTransform,
    Transform,
)

from schemas.tables import NAMESPACE, TABLES, TableSpec

_TRANSFORMS: dict[str, Transform] = {
    "hour": HourTransform(),
    "day": DayTransform(),
    "identity": IdentityTransform(),
}
#: Data files are written with zstd; small local targets, production overrides per catalog.
DEFAULT_TABLE_PROPERTIES = {
    "write.parquet.compression-codec": "zstd",
    "write.parquet.compression-level": "3",
    "format-version": "2",
}


def iceberg_schema(spec: TableSpec) -> Schema:
    return assign_fresh_schema_ids(visit_pyarrow(spec.schema, _ConvertToIcebergWithoutIDs()))


def partition_spec(spec: TableSpec, schema: Schema) -> PartitionSpec:
    fields = []
    for i, (col, transform) in enumerate(spec.partition_by):
        name = col if transform == "identity" else f"{col}_{transform}"
        fields.append(
            PartitionField(
                source_id=schema.find_field(col).field_id,
                field_id=1000 + i,
                transform=_TRANSFORMS[transform],
                name=name,
            )
        )
    return PartitionSpec(*fields)


def sort_order(spec: TableSpec, schema: Schema) -> SortOrder:
    return SortOrder(
        *[
            SortField(
                source_id=schema.find_field(c).field_id,
                transform=IdentityTransform(),
                direction=SortDirection.ASC,
                null_order=NullOrder.NULLS_FIRST,
            )
            for c in spec.sort_by
        ]
    )


def ensure_table(catalog: Catalog, spec: TableSpec, properties: dict[str, str] | None = None) -> Table:
    """Create the table if missing; an existing table gains the spec's columns it lacks
    (idempotent). Evolution is additive only: a column added to a spec after tables exist
    must be nullable (Iceberg adds optional columns to tables with data; older files read
    as null), e.g. the quantity-unit columns of schemas/tables.py."""
    try:
        return evolve_table(catalog.load_table(spec.identifier), spec)
    except NoSuchTableError:
        pass
    schema = iceberg_schema(spec)
    return catalog.create_table_if_not_exists(
        spec.identifier,
        schema=schema,
        partition_spec=partition_spec(spec, schema),
        sort_order=sort_order(spec, schema),
        properties={**DEFAULT_TABLE_PROPERTIES, **(properties or {})},
    )


def evolve_table(table: Table, spec: TableSpec) -> Table:
    """Add the spec's missing columns (optional) to an existing table; never drops or retypes."""
    have = {f.name for f in table.schema().fields}
    missing = [f for f in spec.schema if f.name not in have]
    if not missing:
        return table
    required = [f.name for f in missing if not f.nullable]
    if required:
        raise ValueError(f"{spec.identifier}: cannot add required columns {required} to an existing table")
    try:
        with table.update_schema() as upd:
            upd.union_by_name(iceberg_schema(spec))
    except CommitFailedException:
        # another service (lake sink, hourly asset) evolved it at the same moment: re-check
        table = table.refresh()
        if any(f.name not in {x.name for x in table.schema().fields} for f in missing):
            raise
    return table.refresh()


def ensure_namespace(catalog: Catalog, namespace: str = NAMESPACE) -> None:
    try:
        catalog.create_namespace(namespace)
    except NamespaceAlreadyExistsError:
        pass


def ensure_all_tables(catalog: Catalog, properties: dict[str, str] | None = None) -> dict[str, Table]:
    ensure_namespace(catalog)
    return {spec.name: ensure_table(catalog, spec, properties) for spec in TABLES.values()}


def ts_range(start_us: int, end_us: int) -> BooleanExpression:
    """Rows with exchange_ts in [start, end): the hourly partition source of every table, so a
    scan with it reads only the files of those hours."""
    return And(GreaterThanOrEqual("exchange_ts", start_us), LessThan("exchange_ts", end_us))
