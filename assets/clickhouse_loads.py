"""Hourly ClickHouse materializations of sealed lake hours, and bars written back to the lake.

Lineage: lake/trades -> clickhouse/trades -> clickhouse/ohlcv (1 s and 1 min bars);
lake/features_1s -> clickhouse/features_1s -> clickhouse/book_stats_1m;
{ohlcv, book_stats_1m} -> lake/bars_1m (Iceberg market.bars_1m, the finalized 1 min bars).
Every load replaces exactly its hour (streaming/clickhouse/sql.py: delete the hour, insert),
so re-running or backfilling an hour never duplicates rows and touches nothing else. No
Dagster pool: locally every step is just another HTTP client of the one local ClickHouse
server (streaming/clickhouse/server.py), which serves them and the live consumer at once.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import dagster as dg

from assets.automation import hourly_chain_asset
from assets.batch_features import BATCH_FEATURES_KEY, hour_us, require_sealed
from assets.lake_hours import LAKE_HOUR_ASSETS
from assets.partitions import hour_start
from resources.clickhouse import ClickHouseResource
from resources.lake import LakeResource
from streaming.clickhouse import sql as cs
from streaming.lake import features as fl
from streaming.lake.seal import read_hour

GROUP = "clickhouse"
CH_TRADES_KEY = dg.AssetKey(["clickhouse", "trades"])
CH_FEATURES_KEY = dg.AssetKey(["clickhouse", "features_1s"])
CH_OHLCV_KEY = dg.AssetKey(["clickhouse", "ohlcv"])
CH_BOOK_STATS_KEY = dg.AssetKey(["clickhouse", "book_stats_1m"])
BARS_KEY = dg.AssetKey(["lake", cs.BARS_1M_TABLE.name])


class ClickHouseConfig(dg.Config):
    database: str = cs.DEFAULT_DATABASE
    require_sealed: bool = True
    """Refuse to load a lake hour that still holds unsealed micro-batch files (not closed yet)."""
    ttl_days: int | None = None
    """Rows older than this many days (by ts) are dropped by ClickHouse; None keeps them."""


def _client(clickhouse: ClickHouseResource, config: ClickHouseConfig):
    client = clickhouse.get_client()
    cs.ensure_tables(client, config.database, config.ttl_days)
    return client


def _hour_asset(key: dg.AssetKey, deps: list, description: str, kinds: tuple[str, ...] = ("clickhouse",)):
    """The decorator of one hour load: an hourly chain asset of this group, analytics layer."""
    return hourly_chain_asset(key, deps, description, group=GROUP, layer="analytics", kinds=set(kinds))


def load_lake_hour(client, database: str, ch_table: cs.ChTable, lake_rows, partition_key: str) -> int:
    return cs.replace_hour(client, database, ch_table, hour_start(partition_key), cs.to_ch_rows(ch_table, lake_rows))


@_hour_asset(
    CH_TRADES_KEY,
    [LAKE_HOUR_ASSETS["trades"]],
    "ClickHouse `trades`: the sealed lake hour of market.trades (hour replaced on each run).",
)
def clickhouse_trades(
    context: dg.AssetExecutionContext, config: ClickHouseConfig, lake: LakeResource, clickhouse: ClickHouseResource
) -> dg.MaterializeResult:
    client = _client(clickhouse, config)
    table = lake.ensure_tables()["trades"]
    if config.require_sealed:
        require_sealed({"trades": table}, context.partition_key)
    rows = read_hour(table, hour_us(context.partition_key))
    n = load_lake_hour(client, config.database, cs.CH_TRADES, rows, context.partition_key)
    stored = cs.count_hour(client, config.database, cs.CH_TRADES.name, hour_start(context.partition_key))
    return dg.MaterializeResult(
        metadata={"dagster/row_count": stored, "lake_rows": n, "table": f"{config.database}.{cs.CH_TRADES.name}"}
    )


@_hour_asset(
    CH_FEATURES_KEY,
    [BATCH_FEATURES_KEY],
    "ClickHouse `features_1s`: the hour of the lake's market.features_1s (local batch output).",
)
def clickhouse_features(
    context: dg.AssetExecutionContext, config: ClickHouseConfig, lake: LakeResource, clickhouse: ClickHouseResource
) -> dg.MaterializeResult:
    client = _client(clickhouse, config)
    table = fl.ensure_spec_table(lake.load_catalog())
    rows = fl.read_hour_rows(table, hour_us(context.partition_key))
    n = load_lake_hour(client, config.database, cs.CH_FEATURES, rows, context.partition_key)
    return dg.MaterializeResult(metadata={"dagster/row_count": n, "table": f"{config.database}.{cs.CH_FEATURES.name}"})


def _aggregation(key: dg.AssetKey, deps: list, description: str, aggregate):
    """An hour computed inside ClickHouse from tables already loaded: `aggregate(client,
    database, hour_start)` runs the SQL and returns the materialization's metadata."""

    @_hour_asset(key, deps, description)
    def _asset(
        context: dg.AssetExecutionContext, config: ClickHouseConfig, clickhouse: ClickHouseResource
    ) -> dg.MaterializeResult:
        client = _client(clickhouse, config)
        return dg.MaterializeResult(metadata=aggregate(client, config.database, hour_start(context.partition_key)))

    return _asset


def _ohlcv(client, database: str, start) -> dict:
    n1s = cs.aggregate_ohlcv(client, database, start, 1)
    n1m = cs.aggregate_ohlcv(client, database, start, 60)
    return {"dagster/row_count": n1m, "rows_1s": n1s, "rows_1m": n1m}


clickhouse_ohlcv = _aggregation(
    CH_OHLCV_KEY,
    [CH_TRADES_KEY],
    "ClickHouse `ohlcv_1s` and `ohlcv_1m`: OHLCV, buy/sell volume and VWAP per symbol, "
    "computed by ClickHouse from the hour's trades.",
    _ohlcv,
)
clickhouse_book_stats = _aggregation(
    CH_BOOK_STATS_KEY,
    [CH_FEATURES_KEY],
    "ClickHouse `book_stats_1m`: spread (min/max/mean, bps), depth within 10 bps and "
    "top-10 imbalance per symbol and minute, from the 1 s features.",
    lambda client, database, start: {"dagster/row_count": cs.aggregate_book_stats(client, database, start)},
)


@_hour_asset(
    BARS_KEY,
    [CH_OHLCV_KEY, CH_BOOK_STATS_KEY],
    f"`{cs.BARS_1M_TABLE.identifier}`: the finalized 1 min bars (ClickHouse OHLCV/VWAP joined "
    "with book statistics) written back to the lake; the hour is replaced atomically.",
    kinds=("clickhouse", "iceberg"),
)
def bars_1m(
    context: dg.AssetExecutionContext, config: ClickHouseConfig, lake: LakeResource, clickhouse: ClickHouseResource
) -> dg.MaterializeResult:
    client = _client(clickhouse, config)
    rows = cs.bars_1m(client, config.database, hour_start(context.partition_key))
    table = fl.ensure_spec_table(lake.load_catalog(), cs.BARS_1M_TABLE, dict(lake.table_properties) or None)
    table = fl.write_hour(
        table, rows, hour_us(context.partition_key), {"writer": "clickhouse-bars", "hour": context.partition_key}
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows.num_rows,
            "snapshot_id": dg.MetadataValue.text(str(table.current_snapshot().snapshot_id)),
        }
    )


#: Every hour load of this module (also part of the hourly chain's selection).
CLICKHOUSE_ASSETS = [clickhouse_trades, clickhouse_features, clickhouse_ohlcv, clickhouse_book_stats, bars_1m]
#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = dg.Definitions(assets=CLICKHOUSE_ASSETS)
