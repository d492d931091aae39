"""ClickHouse tables of the analytics layer and the SQL that fills them (no Dagster here).

One module owns every ClickHouse table definition and statement, so the hourly assets,
the live `feature.*` consumer and the tests agree on names, columns and keys. Table
layout follows one rule: `PARTITION BY toDate(ts) ORDER BY (symbol, ts)`, with the event
time (window or bucket start for derived tables) always named `ts`; venue, market,
symbol and side are LowCardinality (a handful of distinct values per part, used in
every filter). Column types come from the Arrow schemas of schemas/ and features/ so a
lake hour inserts with `insert_arrow` without per-column glue.

Values are always bound as clickhouse-connect server-side parameters (`{name:Type}`);
only identifiers (database, table) and the TTL day count are formatted into DDL, and
they are validated first. Symbols reaching a WHERE clause are checked with
schemas.symbols.validate_canonical.

Idempotent hour loads: delete the hour's rows (lightweight DELETE, synchronous), then
insert the hour. Re-running a load replaces exactly that hour of that table. We chose
this over REPLACE PARTITION via a staging table because partitions are days: swapping a
day to change one hour would copy the other 23 hours on every load.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client

from features.spec import FEATURE_SCHEMA
from schemas.model import EventType
from schemas.symbols import validate_canonical
from schemas.tables import INSTRUMENT_FIELDS, TABLES, TS, TableSpec

DEFAULT_DATABASE = "ticklake"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
LOW_CARDINALITY = frozenset(
    {
        "exchange",
        "market",
        "symbol",
        "taker_side",
        "side",
        "kind",
        "shard",
        "qty_unit",
        "contract_value",
        "contract_value_ccy",
    }
)
#: Lightweight deletes must be visible before the insert that follows them.
DELETE_SETTINGS = {"lightweight_deletes_sync": 2}
DT64 = "DateTime64(6, 'UTC')"


def ident(name: str) -> str:
    """A validated identifier (database or table name) for DDL/DML text."""
    if not isinstance(name, str) or not _IDENT.fullmatch(name):
        raise ValueError(f"not a safe ClickHouse identifier: {name!r}")
    return name


def ch_type(field: pa.Field) -> str:
    t = field.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        base = "String"
    elif pa.types.is_timestamp(t):
        if t.unit != "us":
            raise TypeError(f"{field.name}: only µs timestamps are used in the lake, got {t}")
        base = DT64
    elif pa.types.is_int64(t):
        base = "Int64"
    elif pa.types.is_int32(t):
        base = "Int32"
    elif pa.types.is_float64(t):
        base = "Float64"
    elif pa.types.is_decimal(t):
        base = f"Decimal({t.precision}, {t.scale})"
    else:
        raise TypeError(f"{field.name}: no ClickHouse mapping for {t}")
    if field.name in LOW_CARDINALITY and base == "String":
        return "LowCardinality(Nullable(String))" if field.nullable else "LowCardinality(String)"
    return f"Nullable({base})" if field.nullable else base


def rename_ts(schema: pa.Schema, source: str = "exchange_ts") -> pa.Schema:
    """The schema with `source` renamed to `ts` (the analytics event-time column)."""
    return pa.schema([f.with_name("ts") if f.name == source else f for f in schema])


@dataclass(frozen=True, slots=True)
class ChTable:
    name: str
    schema: pa.Schema  # Arrow schema of what is inserted / stored; has `ts`
    engine: str = "MergeTree"
    order_by: tuple[str, ...] = ("symbol", "ts")
    description: str = ""

    def ddl(self, database: str, ttl_days: int | None) -> str:
        cols = ",\n  ".join(f"`{f.name}` {ch_type(f)}" for f in self.schema)
        ttl = f"\nTTL toDateTime(ts) + INTERVAL {ttl_interval(ttl_days)} DAY" if ttl_days else ""
        return (
            f"CREATE TABLE IF NOT EXISTS {ident(database)}.{ident(self.name)} (\n  {cols}\n)\n"
            f"ENGINE = {self.engine}\nPARTITION BY toDate(ts)\nORDER BY ({', '.join(self.order_by)}){ttl}"
        )


#: toDateTime(ts) + TTL must stay below DateTime's end (2106); beyond it the sum wraps
#: around and every row looks expired.
MAX_TTL_DAYS = 20_000


def ttl_interval(days: int | None) -> int:
    if days is None or isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_TTL_DAYS:
        raise ValueError(f"ttl_days must be an integer in 1..{MAX_TTL_DAYS}, got {days!r}")
    return days


# -- table definitions ------------------------------------------------------------------

TRADES_SCHEMA = rename_ts(TABLES[EventType.TRADE].schema)
FEATURES_CH_SCHEMA = rename_ts(FEATURE_SCHEMA)

_BAR_FIELDS = [
    *INSTRUMENT_FIELDS,
    pa.field("ts", TS, False),
    pa.field("price_scale", pa.int32(), False),
    pa.field("size_scale", pa.int32(), False),
]
#: Bar and book-statistics sizes (volume, depth) are BASE-ASSET quantities at size_scale.
OHLCV_SCHEMA = pa.schema(
    _BAR_FIELDS
    + [
        pa.field("trade_count", pa.int64(), False),
        pa.field("volume", pa.int64(), False),
        pa.field("buy_volume", pa.int64(), False),
        pa.field("sell_volume", pa.int64(), False),
        pa.field("open_px", pa.int64(), False),
        pa.field("high_px", pa.int64(), False),
        pa.field("low_px", pa.int64(), False),
        pa.field("close_px", pa.int64(), False),
        pa.field("notional", pa.decimal128(38, 0), False),  # sum(px*qty) at price_scale+size_scale
        pa.field("vwap", pa.float64(), True),  # price units (notional / volume / 10**ps)
    ]
)
BOOK_STATS_SCHEMA = pa.schema(
    _BAR_FIELDS
    + [
        pa.field("book_seconds", pa.int64(), False),  # 1 s feature rows with a two-sided book
        pa.field("spread_min_px", pa.int64(), False),
        pa.field("spread_max_px", pa.int64(), False),
        pa.field("spread_mean_px", pa.float64(), False),  # scaled price units
        pa.field("spread_mean_bps", pa.float64(), False),
        pa.field("depth_bid_10bps_mean", pa.float64(), False),  # scaled size units
        pa.field("depth_ask_10bps_mean", pa.float64(), False),
        pa.field("imbalance_10_mean", pa.float64(), False),
        pa.field("mid_close", pa.float64(), False),
    ]
)

CH_TRADES = ChTable("trades", TRADES_SCHEMA, description="lake market.trades, one row per trade")
CH_FEATURES = ChTable("features_1s", FEATURES_CH_SCHEMA, description="lake market.features_1s (batch)")
CH_FEATURES_LIVE = ChTable(
    "features_live",
    FEATURES_CH_SCHEMA,
    engine="ReplacingMergeTree",
    order_by=("symbol", "ts", "event_id"),
    description="feature.* topics as published (live); duplicates collapse on event_id, read with FINAL",
)
CH_OHLCV_1S = ChTable("ohlcv_1s", OHLCV_SCHEMA, description="1 s OHLCV/VWAP from ClickHouse trades")
CH_OHLCV_1M = ChTable("ohlcv_1m", OHLCV_SCHEMA, description="1 min OHLCV/VWAP from ClickHouse trades")
CH_BOOK_STATS_1M = ChTable(
    "book_stats_1m", BOOK_STATS_SCHEMA, description="1 min spread/depth/imbalance statistics from features_1s"
)
CH_TABLES: dict[str, ChTable] = {
    t.name: t for t in (CH_TRADES, CH_FEATURES, CH_FEATURES_LIVE, CH_OHLCV_1S, CH_OHLCV_1M, CH_BOOK_STATS_1M)
}

#: The finalized 1 min bars written back to the lake (Iceberg market.bars_1m): OHLCV/VWAP
#: joined with the book statistics of the same minute. `exchange_ts` = minute start.
BARS_1M_SCHEMA = pa.schema(
    [pa.field("exchange_ts" if f.name == "ts" else f.name, f.type, f.nullable) for f in _BAR_FIELDS]
    + [pa.field(f.name, f.type, True) for f in OHLCV_SCHEMA if f.name not in {x.name for x in _BAR_FIELDS}]
    + [pa.field(f.name, f.type, True) for f in BOOK_STATS_SCHEMA if f.name not in {x.name for x in _BAR_FIELDS}]
)
BARS_1M_TABLE = TableSpec("bars_1m", BARS_1M_SCHEMA)


# -- statements ---------------------------------------------------------------------------


def ensure_tables(
    client: Client,
    database: str = DEFAULT_DATABASE,
    ttl_days: int | None = None,
    tables: Iterable[ChTable] | None = None,
) -> list[str]:
    """Create the database and tables if missing; align each table's TTL with `ttl_days`
    (MODIFY/REMOVE TTL without rewriting existing parts). Returns the table names."""
    db = ident(database)
    client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    names = []
    for t in tables if tables is not None else CH_TABLES.values():
        client.command(t.ddl(db, ttl_days))
        # a table created before a column was added to its schema (e.g. the unit columns of
        # trades) gains it; added columns are nullable, so older rows read as null
        have = {
            r[0]
            for r in client.query(
                "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String}",
                parameters={"db": db, "t": t.name},
            ).result_rows
        }
        for f in t.schema:
            if f.name not in have and f.nullable:
                client.command(
                    f"ALTER TABLE {db}.{ident(t.name)} ADD COLUMN IF NOT EXISTS `{ident(f.name)}` {ch_type(f)}"
                )
        engine_full = client.query(
            "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
            parameters={"db": db, "t": t.name},
        ).result_rows[0][0]
        has_ttl = " TTL " in f" {engine_full} "
        want = f"toIntervalDay({ttl_days})" if ttl_days else None
        if want and want not in engine_full:
            client.command(
                f"ALTER TABLE {db}.{ident(t.name)} MODIFY TTL toDateTime(ts) + INTERVAL {ttl_interval(ttl_days)} DAY",
                settings={"materialize_ttl_after_modify": 0},
            )
        elif not want and has_ttl:
            client.command(f"ALTER TABLE {db}.{ident(t.name)} REMOVE TTL")
        names.append(t.name)
    return names


def hour_bounds(hour_start: datetime) -> tuple[datetime, datetime]:
    if hour_start.tzinfo is None:
        raise ValueError("hour_start must be timezone-aware (UTC)")
    start = hour_start.astimezone(UTC)
    if start.minute or start.second or start.microsecond:
        raise ValueError(f"not an hour boundary: {hour_start.isoformat()}")
    return start, start + timedelta(hours=1)


_HOUR_WHERE = f"ts >= {{start:{DT64}}} AND ts < {{end:{DT64}}}"


def delete_hour(client: Client, database: str, table: str, hour_start: datetime) -> None:
    start, end = hour_bounds(hour_start)
    client.command(
        f"DELETE FROM {ident(database)}.{ident(table)} WHERE {_HOUR_WHERE}",
        parameters={"start": start, "end": end},
        settings=DELETE_SETTINGS,
    )


def count_hour(client: Client, database: str, table: str, hour_start: datetime, final: bool = False) -> int:
    start, end = hour_bounds(hour_start)
    fin = " FINAL" if final else ""
    return int(
        client.query(
            f"SELECT count() FROM {ident(database)}.{ident(table)}{fin} WHERE {_HOUR_WHERE}",
            parameters={"start": start, "end": end},
        ).result_rows[0][0]
    )


def to_ch_rows(table: ChTable, rows: pa.Table, ts_source: str = "exchange_ts") -> pa.Table:
    """Lake rows -> the ClickHouse table's columns (rename the event time to `ts`, cast)."""
    names = ["ts" if n == ts_source else n for n in rows.column_names]
    return rows.rename_columns(names).select(table.schema.names).cast(table.schema)


def check_hour_rows(rows: pa.Table, hour_start: datetime) -> None:
    """Every row's ts lies in the hour (a load must not touch other hours)."""
    if rows.num_rows == 0:
        return
    start, end = hour_bounds(hour_start)
    ts = rows.column("ts")
    lo, hi = pc.min(ts).as_py(), pc.max(ts).as_py()
    if lo < start or hi >= end:
        raise ValueError(f"rows from {lo} to {hi} fall outside hour {start.isoformat()}")


def replace_hour(client: Client, database: str, table: ChTable, hour_start: datetime, rows: pa.Table) -> int:
    """Make the table's hour exactly `rows` (already in the table's schema): delete, insert."""
    check_hour_rows(rows, hour_start)
    delete_hour(client, database, table.name, hour_start)
    if rows.num_rows:
        client.insert_arrow(f"{ident(database)}.{ident(table.name)}", rows)
    return rows.num_rows


def _ohlcv_select(database: str, seconds: int) -> str:
    """Bars sum trade sizes in the BASE ASSET (base_qty at base_size_scale, computed per
    trade by schemas/units.py when the lake row was built): contract sizes of OKX
    SWAP/FUTURES and Bybit inverse would otherwise add 1 contract of 100 USD as 1 BTC.
    Rows loaded before units existed have null base_qty and are base already."""
    order = "(ts, seq, event_id)"
    return f"""
SELECT exchange, market, symbol, toStartOfInterval(ts, toIntervalSecond({seconds:d})) AS bucket,
       price_scale, ifNull(base_size_scale, size_scale) AS bar_size_scale,
       toInt64(count()) AS trade_count,
       sum(ifNull(base_qty, qty)) AS volume,
       sumIf(ifNull(base_qty, qty), taker_side = 'buy') AS buy_volume,
       sumIf(ifNull(base_qty, qty), taker_side = 'sell') AS sell_volume,
       argMin(px, {order}) AS open_px, max(px) AS high_px, min(px) AS low_px, argMax(px, {order}) AS close_px,
       sum(toDecimal128(px, 0) * toDecimal128(ifNull(base_qty, qty), 0)) AS notional,
       if(volume = 0, NULL, toFloat64(notional) / (toFloat64(volume) * pow(10, price_scale))) AS vwap
FROM {ident(database)}.{CH_TRADES.name}
WHERE {_HOUR_WHERE}
GROUP BY exchange, market, symbol, bucket, price_scale, bar_size_scale"""


def aggregate_ohlcv(client: Client, database: str, hour_start: datetime, seconds: int) -> int:
    """Recompute the hour of ohlcv_1s / ohlcv_1m from the trades table (delete, INSERT SELECT)."""
    target = {1: CH_OHLCV_1S, 60: CH_OHLCV_1M}.get(seconds)
    if target is None:
        raise ValueError("bars are 1 s or 60 s")
    start, end = hour_bounds(hour_start)
    delete_hour(client, database, target.name, hour_start)
    cols = ", ".join(target.schema.names)
    # INSERT ... SELECT maps columns by position; the SELECT lists them in schema order.
    client.command(
        f"INSERT INTO {ident(database)}.{target.name} ({cols}) {_ohlcv_select(database, seconds)}",
        parameters={"start": start, "end": end},
    )
    return count_hour(client, database, target.name, hour_start)


def aggregate_book_stats(client: Client, database: str, hour_start: datetime) -> int:
    """Recompute the hour of book_stats_1m from features_1s rows that have a two-sided book."""
    start, end = hour_bounds(hour_start)
    db = ident(database)
    delete_hour(client, database, CH_BOOK_STATS_1M.name, hour_start)
    cols = ", ".join(CH_BOOK_STATS_1M.schema.names)
    client.command(
        f"""
INSERT INTO {db}.{CH_BOOK_STATS_1M.name} ({cols})
SELECT exchange, market, symbol, toStartOfInterval(ts, toIntervalSecond(60)) AS bucket, price_scale, size_scale,
       toInt64(count()) AS book_seconds,
       assumeNotNull(min(spread_px)), assumeNotNull(max(spread_px)),
       avg(assumeNotNull(spread_px)),
       avg(assumeNotNull(spread_px) / (assumeNotNull(mid_px) * pow(10, price_scale)) * 10000),
       avg(toFloat64(assumeNotNull(depth_bid_10bps))), avg(toFloat64(assumeNotNull(depth_ask_10bps))),
       avg(assumeNotNull(imbalance_10)),
       argMax(assumeNotNull(mid_px), ts)
FROM {db}.{CH_FEATURES.name}
WHERE {_HOUR_WHERE} AND mid_px IS NOT NULL AND imbalance_10 IS NOT NULL
GROUP BY exchange, market, symbol, bucket, price_scale, size_scale""",
        parameters={"start": start, "end": end},
    )
    return count_hour(client, database, CH_BOOK_STATS_1M.name, hour_start)


def bars_1m(client: Client, database: str, hour_start: datetime) -> pa.Table:
    """The hour's finalized 1 min bars (OHLCV/VWAP full-joined with book statistics) in
    BARS_1M_SCHEMA, sorted by (exchange, market, symbol, exchange_ts)."""
    start, end = hour_bounds(hour_start)
    db = ident(database)
    keys = ["exchange", "market", "symbol", "ts", "price_scale", "size_scale"]
    o_cols = [f"o.{n}" for n in OHLCV_SCHEMA.names if n not in keys]
    b_cols = [f"b.{n}" for n in BOOK_STATS_SCHEMA.names if n not in keys]
    sql = f"""
SELECT {", ".join(keys)}, {", ".join(o_cols + b_cols)}
FROM (SELECT * FROM {db}.{CH_OHLCV_1M.name} WHERE {_HOUR_WHERE}) AS o
FULL OUTER JOIN (SELECT * FROM {db}.{CH_BOOK_STATS_1M.name} WHERE {_HOUR_WHERE}) AS b
USING ({", ".join(keys)})
ORDER BY exchange, market, symbol, ts"""
    t = client.query_arrow(sql, parameters={"start": start, "end": end}, settings={"join_use_nulls": 1})
    t = t.rename_columns([c.split(".", 1)[-1] for c in t.column_names])
    t = t.rename_columns(["exchange_ts" if c == "ts" else c for c in t.column_names])
    return _cast_strings(t).select(BARS_1M_SCHEMA.names).cast(BARS_1M_SCHEMA)


def _cast_strings(t: pa.Table) -> pa.Table:
    """query_arrow returns LowCardinality as dictionaries and strings as binary; make them plain strings."""
    cols = []
    for f, col in zip(t.schema, t.columns, strict=True):
        typ = f.type
        if pa.types.is_dictionary(typ):
            col = col.cast(typ.value_type)
            typ = typ.value_type
        if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
            col = col.cast(pa.string())
        cols.append(col)
    return pa.table(cols, names=t.column_names)


def query_hour(
    client: Client,
    database: str,
    table: ChTable,
    hour_start: datetime,
    *,
    symbols: Sequence[str] | None = None,
    final: bool = False,
) -> pa.Table:
    """One hour of a table as Arrow in the table's schema (optionally only some symbols)."""
    start, end = hour_bounds(hour_start)
    params: dict = {"start": start, "end": end}
    where = _HOUR_WHERE
    if symbols is not None:
        params["symbols"] = [validate_canonical(s) for s in symbols]
        where += " AND symbol IN {symbols:Array(String)}"
    fin = " FINAL" if final else ""
    t = client.query_arrow(
        f"SELECT {', '.join(table.schema.names)} FROM {ident(database)}.{ident(table.name)}{fin} "
        f"WHERE {where} ORDER BY exchange, market, symbol, ts",
        parameters=params,
    )
    return _cast_strings(t).cast(table.schema)


def features_from_ch(rows: pa.Table) -> pa.Table:
    """ClickHouse features rows (ts) -> FEATURE_SCHEMA (exchange_ts)."""
    return (
        rows.rename_columns(["exchange_ts" if c == "ts" else c for c in rows.column_names])
        .select(FEATURE_SCHEMA.names)
        .cast(FEATURE_SCHEMA)
    )
