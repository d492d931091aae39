"""Hourly charts per exchange/symbol: PNG and SVG in the artifact store, previewed in the UI.

Reads the hour of market.features_1s (the local batch features of the sealed lake hour),
renders one chart per instrument (assets/chart_render.py) and stores it under
`exchange/symbol/dt=YYYY-MM-DD/hour=HH/market_overview.{png,svg}`. The materialization's
metadata lists every stored path and shows small inline previews (base64 data URIs in
markdown, capped so the event log stays small) — the full-size files are one click away.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import base64

import dagster as dg
import pyarrow.compute as pc

from assets.automation import HOURLY_CHAIN
from assets.batch_features import BATCH_FEATURES_KEY, hour_us
from assets.chart_render import CHART_NAME, chart_key, render
from assets.partitions import HOURLY, hour_start
from resources.artifacts import ArtifactStoreResource
from resources.lake import LakeResource
from streaming import feature_lake as fl

CHARTS_KEY = dg.AssetKey(["charts", CHART_NAME])


class ChartConfig(dg.Config):
    dpi: int = 100
    """PNG resolution: 12 x 9 in, so 100 dpi gives 1200 x 900 px."""
    max_previews: int = 6
    """Inline previews in the metadata (each a ~20 kB thumbnail); all paths are listed regardless."""


@dg.asset(
    key=CHARTS_KEY,
    partitions_def=HOURLY,
    deps=[BATCH_FEATURES_KEY],
    group_name="charts",
    kinds={"matplotlib"},
    tags={"ticklake/layer": "analytics"},
    automation_condition=HOURLY_CHAIN,
    description="Per exchange/symbol/hour: mid and microprice with the spread band, top-10 order-book imbalance, "
                "traded volume and VWAP (PNG + SVG in the artifact store, previews in the metadata).",
)
def market_charts(context: dg.AssetExecutionContext, config: ChartConfig, lake: LakeResource,
                  artifacts: ArtifactStoreResource) -> dg.MaterializeResult:
    h = hour_start(context.partition_key)
    rows = fl.read_hour_rows(fl.ensure_spec_table(lake.load_catalog()), hour_us(context.partition_key))
    instruments = sorted({(r["exchange"], r["market"], r["symbol"])
                          for r in rows.select(["exchange", "market", "symbol"]).to_pylist()})
    paths: dict[str, dict[str, str]] = {}
    previews: list[str] = []
    for ex, mk, sym in instruments:
        mask = pc.and_(pc.and_(pc.equal(rows["exchange"], ex), pc.equal(rows["market"], mk)), pc.equal(rows["symbol"], sym))
        files = render(rows.filter(mask), ex, mk, sym, h, dpi=config.dpi)
        png_key, svg_key = chart_key(ex, sym, h, ext="png"), chart_key(ex, sym, h, ext="svg")
        paths[f"{ex}/{sym}"] = {"png": artifacts.put_bytes(png_key, files.png, "image/png"),
                                "svg": artifacts.put_bytes(svg_key, files.svg, "image/svg+xml")}
        if len(previews) < config.max_previews:
            b64 = base64.b64encode(files.preview_png).decode()
            previews.append(f"**{ex} {mk} {sym}** — [{png_key}]({paths[f'{ex}/{sym}']['png']})\n\n"
                            f"![{ex} {sym}](data:image/png;base64,{b64})")
    context.log.info("charts %s: %d instruments", context.partition_key, len(instruments))
    meta = {"dagster/row_count": len(instruments), "charts": dg.MetadataValue.json(paths)}
    if previews:
        meta["preview"] = dg.MetadataValue.md("\n\n".join(previews))
        first = next(iter(paths.values()))["png"]
        meta["first_chart"] = dg.MetadataValue.path(first)
    return dg.MaterializeResult(metadata=meta)


assets = [market_charts]
asset_checks: list = []
jobs: list = []
sensors: list = []
