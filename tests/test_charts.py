"""Charts for the captured hour: rendered through Dagster into a real artifact store, then
opened as images (PNG via PIL: size, non-blank pixels) and XML (SVG: elements, labels)."""

from __future__ import annotations

import io
import warnings
import xml.etree.ElementTree as ET

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from assets.batch_features import features_1s
from assets.chart_render import chart_key
from assets.charts import market_charts
from resources.artifacts import ArtifactStoreResource, InvalidArtifactKey
from resources.home import resolve_home
from schemas.symbols import SymbolError
from tests import analytics_support as a

warnings.filterwarnings("ignore", category=getattr(dg, "PreviewWarning", Warning))
H = a.CAPTURE_HOUR


@pytest.fixture(scope="module")
def charted(tmp_path_factory):
    root = tmp_path_factory.mktemp("charts")
    home = resolve_home(root / "home").ensure()
    lake = a.write_lake(home, a.processed_capture(), seal=(H,))
    store = ArtifactStoreResource(root=str(root / "artifacts"))
    res = dg.materialize([features_1s, market_charts], partition_key=H,
                         resources={"lake": lake.lake, "artifacts": store})
    assert res.success
    mats = [m for m in res.get_asset_materialization_events() if m.asset_key == market_charts.key]
    return store, mats[0].materialization.metadata


def test_png_and_svg_are_stored_under_the_hour_key_and_listed(charted):
    store, meta = charted
    key = chart_key("binance", "BTC-USDT", a.utc(H))
    assert key == "binance/BTC-USDT/dt=2024-08-08/hour=23/market_overview.png"
    assert store.list("binance/BTC-USDT/dt=2024-08-08/hour=23/") == [key, key[:-3] + "svg"]
    assert meta["dagster/row_count"].value == 1
    assert meta["charts"].value["binance/BTC-USDT"]["png"] == store.uri_for(key)
    assert "data:image/png;base64," in meta["preview"].value


def test_png_opens_with_the_expected_size_and_real_content(charted):
    store, _ = charted
    img = Image.open(io.BytesIO(store.get_bytes(chart_key("binance", "BTC-USDT", a.utc(H)))))
    img.verify()
    img = Image.open(io.BytesIO(store.get_bytes(chart_key("binance", "BTC-USDT", a.utc(H))))).convert("RGB")
    assert img.size == (1200, 900)
    px = np.asarray(img).astype(int)
    non_white = np.any(px < 245, axis=2)
    assert non_white.mean() > 0.03                     # axes, lines, bars, text

    def near(rgb) -> int:
        return int((np.abs(px - np.array(rgb)).sum(axis=2) < 60).sum())
    assert near((255, 127, 14)) > 200                  # microprice (over the mid line)
    assert near((44, 160, 44)) > 500                   # book imbalance
    assert near((127, 127, 127)) > 2000                # volume bars
    assert near((214, 39, 40)) > 100                   # VWAP steps


def test_svg_parses_and_carries_labels_and_plotted_paths(charted):
    store, _ = charted
    svg = store.get_bytes(chart_key("binance", "BTC-USDT", a.utc(H), ext="svg"))
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and root.get("width") == "864pt" and root.get("height") == "648pt"
    ns = "{http://www.w3.org/2000/svg}"
    paths = root.iter(f"{ns}path")
    assert sum(1 for p in paths if len(p.get("d", "")) > 200) >= 4   # series, band, bars
    text = svg.decode()
    for label in ("time (UTC)", "price (USDT)", "traded volume (BTC)", "VWAP (USDT)", "microprice",
                  "2024-08-08 23:00"):
        assert label in text, label


def test_chart_keys_refuse_unsafe_names():
    with pytest.raises(SymbolError):
        chart_key("binance", "../../etc", a.utc(H))
    with pytest.raises(ValueError):
        chart_key("nasdaq", "BTC-USDT", a.utc(H))
    with pytest.raises(InvalidArtifactKey):
        ArtifactStoreResource(root="/tmp/x").put_bytes("../x.png", b"")
