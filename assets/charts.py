"""Hourly charts per exchange/symbol: PNG and SVG in the artifact store, previewed in the UI.

Reads the hour of market.features_1s (the local batch features of the sealed lake hour),
renders one chart per instrument (assets/chart_render.py) and stores it under
`exchange/symbol/dt=YYYY-MM-DD/hour=HH/market_overview.{png,svg}` plus a small
`market_overview_preview.png`. The materialization's metadata lists every stored path and
shows the previews as markdown images loaded over http(s) from the artifact store's URL
(the local stack's artifact server, or TICKLAKE_ARTIFACTS_URL): the UI's markdown renderer
drops `data:` images, so inline base64 would show nothing. The full-size files are one
click away.
"""

# No `from __future__ import annotations`: Dagster inspects real annotation types.
import dagster as dg
import pyarrow.compute as pc

from assets.automation import hourly_chain_asset
from assets.batch_features import BATCH_FEATURES_KEY, hour_us
from assets.chart_render import CHART_NAME, chart_key, render
from assets.partitions import hour_start
from resources.artifacts import ARTIFACTS_URL_ENV, ArtifactStoreResource
from resources.lake import LakeResource
from streaming.lake import features as fl

CHARTS_KEY = dg.AssetKey(["charts", CHART_NAME])
PREVIEW_NAME = f"{CHART_NAME}_preview"


class ChartConfig(dg.Config):
    dpi: int = 100
    """PNG resolution: 12 x 9 in, so 100 dpi gives 1200 x 900 px."""
    max_previews: int = 6
    """Previews shown in the metadata (each a ~20 kB thumbnail, loaded by URL); all paths are listed regardless."""


def preview_markdown(artifacts: ArtifactStoreResource, title: str, png_key: str, svg_key: str, preview_key: str) -> str:
    """One instrument's preview: the thumbnail by URL, linked to the full-size PNG (the SVG is in
    the `charts` entry); without a URL for the store (nothing serves it) the keys, and how to
    get previews. Short on purpose: the UI shows markdown under 1000 characters inline."""
    png, thumb = artifacts.url_for(png_key), artifacts.url_for(preview_key)
    if not (png and thumb):
        return (
            f"**{title}** — `{png_key}`, `{svg_key}` (no preview: the artifact store has no http(s) "
            f"address; `ticklake up` serves it, elsewhere set {ARTIFACTS_URL_ENV})"
        )
    return f"**{title}**\n\n[![{title}]({thumb})]({png})"


@hourly_chain_asset(
    CHARTS_KEY,
    [BATCH_FEATURES_KEY],
    "Per exchange/symbol/hour: mid and microprice with the spread band, top-10 order-book imbalance, "
    "traded volume and VWAP (PNG + SVG in the artifact store, previews in the metadata).",
    group="charts",
    layer="analytics",
    kinds={"matplotlib"},
)
def market_charts(
    context: dg.AssetExecutionContext, config: ChartConfig, lake: LakeResource, artifacts: ArtifactStoreResource
) -> dg.MaterializeResult:
    h = hour_start(context.partition_key)
    rows = fl.read_hour_rows(fl.ensure_spec_table(lake.load_catalog()), hour_us(context.partition_key))
    instruments = sorted(
        {(r["exchange"], r["market"], r["symbol"]) for r in rows.select(["exchange", "market", "symbol"]).to_pylist()}
    )
    paths: dict[str, dict[str, str]] = {}
    previews: list[str] = []
    for ex, mk, sym in instruments:
        mask = pc.and_(
            pc.and_(pc.equal(rows["exchange"], ex), pc.equal(rows["market"], mk)), pc.equal(rows["symbol"], sym)
        )
        files = render(rows.filter(mask), ex, mk, sym, h, dpi=config.dpi)
        png_key, svg_key = chart_key(ex, sym, h, ext="png"), chart_key(ex, sym, h, ext="svg")
        preview_key = chart_key(ex, sym, h, name=PREVIEW_NAME, ext="png")
        paths[f"{ex}/{sym}"] = {
            "png": artifacts.put_bytes(png_key, files.png, "image/png"),
            "svg": artifacts.put_bytes(svg_key, files.svg, "image/svg+xml"),
            "preview": artifacts.put_bytes(preview_key, files.preview_png, "image/png"),
        }
        if len(previews) < config.max_previews:
            previews.append(preview_markdown(artifacts, f"{ex} {mk} {sym}", png_key, svg_key, preview_key))
    context.log.info("charts %s: %d instruments", context.partition_key, len(instruments))
    meta = {"dagster/row_count": len(instruments), "charts": dg.MetadataValue.json(paths)}
    if previews:
        meta["preview"] = dg.MetadataValue.md("\n\n".join(previews))
        first = next(iter(paths.values()))["png"]
        meta["first_chart"] = dg.MetadataValue.path(first)
        ex0, _, sym0 = instruments[0]
        first_url = artifacts.url_for(chart_key(ex0, sym0, h, ext="png"))
        if first_url:
            meta["first_chart_url"] = dg.MetadataValue.url(first_url)
    return dg.MaterializeResult(metadata=meta)


#: This area's part of the code location (pipelines/definitions.py merges every area's `defs`).
defs = dg.Definitions(assets=[market_charts])
