"""Charts for the captured hour: rendered through Dagster into a real artifact store, then
opened as images (PNG via PIL: size, non-blank pixels) and XML (SVG: elements, labels); the
previews in the metadata are URLs the local artifact server (a real process) serves."""

from __future__ import annotations

import io
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
import warnings
import xml.etree.ElementTree as ET

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from assets.batch_features import features_1s
from assets.chart_render import chart_key
from assets.charts import market_charts
from resources import artifact_server
from resources.artifacts import (
    ARTIFACTS_URL_ENV,
    ArtifactStoreResource,
    InvalidArtifactKey,
)
from runtime.home import resolve_home
from schemas.symbols import SymbolError
from workloads import binance_hour as a

warnings.filterwarnings("ignore", category=getattr(dg, "PreviewWarning", Warning))
H = a.CAPTURE_HOUR


def start_server(root, state):
    """The artifact server as `ticklake up` runs it; returns (process, its recorded URL)."""
    proc = subprocess.Popen(artifact_server.command(root, state))
    deadline = time.monotonic() + 60
    while not state.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "artifact server did not start"
        time.sleep(0.1)
    return proc, json.loads(state.read_text())["url"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    proc, url = start_server(root / "artifacts", root / "artifacts.json")
    yield root / "artifacts", url
    proc.terminate()
    assert proc.wait(timeout=30) == 0
    assert not (root / "artifacts.json").exists()  # the record goes with the server


@pytest.fixture(scope="module")
def charted(tmp_path_factory, served):
    root = tmp_path_factory.mktemp("charts")
    home = resolve_home(root / "home").ensure()
    lake = a.write_lake(home, a.processed_capture(), seal=(H,))
    store = ArtifactStoreResource(root=str(served[0]), base_url=served[1])
    res = dg.materialize(
        [features_1s, market_charts], partition_key=H, resources={"lake": lake.lake, "artifacts": store}
    )
    assert res.success
    mats = [m for m in res.get_asset_materialization_events() if m.asset_key == market_charts.key]
    return store, mats[0].materialization.metadata


@pytest.mark.dagster
def test_png_and_svg_are_stored_under_the_hour_key_and_listed(charted):
    store, meta = charted
    key = chart_key("binance", "BTC-USDT", a.utc(H))
    assert key == "binance/BTC-USDT/dt=2024-08-08/hour=23/market_overview.png"
    preview = "binance/BTC-USDT/dt=2024-08-08/hour=23/market_overview_preview.png"
    assert store.list("binance/BTC-USDT/dt=2024-08-08/hour=23/") == [key, key[:-3] + "svg", preview]
    assert meta["dagster/row_count"].value == 1
    assert meta["charts"].value["binance/BTC-USDT"]["png"] == store.uri_for(key)


@pytest.mark.dagster
def test_previews_are_images_the_ui_can_load_by_url(charted, served):
    """The UI's markdown renderer drops `data:` images: previews are http URLs, and the
    artifact server answers them with the stored PNG."""
    store, meta = charted
    md = meta["preview"].value
    assert "data:" not in md
    images = re.findall(r"!\[[^\]]*\]\((http://[^)]+)\)", md)
    assert images == [f"{served[1]}/binance/BTC-USDT/dt=2024-08-08/hour=23/market_overview_preview.png"]
    with urllib.request.urlopen(images[0], timeout=10) as resp:
        assert resp.headers["Content-Type"] == "image/png"
        body = resp.read()
    assert body == store.get_bytes("binance/BTC-USDT/dt=2024-08-08/hour=23/market_overview_preview.png")
    assert Image.open(io.BytesIO(body)).size == (480, 360)
    assert meta["first_chart_url"].value == f"{served[1]}/{chart_key('binance', 'BTC-USDT', a.utc(H))}"


@pytest.mark.parametrize("path", ["/", "/binance/", "/binance/.hidden.tmp", "/../../etc/passwd", "/nope.png"])
def test_artifact_server_serves_files_only(served, path):
    (served[0] / "binance").mkdir(parents=True, exist_ok=True)
    (served[0] / "binance" / ".hidden.tmp").write_bytes(b"half a chart")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(served[1] + path, timeout=10)
    assert err.value.code in (400, 404)


def test_store_url_comes_from_setting_env_or_the_local_server(ticklake_home, monkeypatch):
    key = "binance/BTC-USDT/x.png"
    assert ArtifactStoreResource().url_for(key) is None  # nothing serves the store
    artifact_server.state_path(ticklake_home).parent.mkdir(parents=True, exist_ok=True)
    artifact_server.state_path(ticklake_home).write_text(json.dumps({"url": "http://127.0.0.1:1", "pid": 1}))
    assert ArtifactStoreResource().url_for(key) == "http://127.0.0.1:1/binance/BTC-USDT/x.png"
    assert ArtifactStoreResource(root=str(ticklake_home.root / "elsewhere")).url_for(key) is None
    monkeypatch.setenv(ARTIFACTS_URL_ENV, "https://cdn.example/charts/")
    assert ArtifactStoreResource(root="s3://bucket/charts").url_for(key) == "https://cdn.example/charts/" + key
    assert ArtifactStoreResource(base_url="https://x.example").url_for(key) == "https://x.example/" + key


@pytest.mark.dagster
def test_png_opens_with_the_expected_size_and_real_content(charted):
    store, _ = charted
    img = Image.open(io.BytesIO(store.get_bytes(chart_key("binance", "BTC-USDT", a.utc(H)))))
    img.verify()
    img = Image.open(io.BytesIO(store.get_bytes(chart_key("binance", "BTC-USDT", a.utc(H))))).convert("RGB")
    assert img.size == (1200, 900)
    px = np.asarray(img).astype(int)
    non_white = np.any(px < 245, axis=2)
    assert non_white.mean() > 0.03  # axes, lines, bars, text

    def near(rgb) -> int:
        return int((np.abs(px - np.array(rgb)).sum(axis=2) < 60).sum())

    assert near((255, 127, 14)) > 200  # microprice (over the mid line)
    assert near((44, 160, 44)) > 500  # book imbalance
    assert near((127, 127, 127)) > 2000  # volume bars
    assert near((214, 39, 40)) > 100  # VWAP steps


@pytest.mark.dagster
def test_svg_parses_and_carries_labels_and_plotted_paths(charted):
    store, _ = charted
    svg = store.get_bytes(chart_key("binance", "BTC-USDT", a.utc(H), ext="svg"))
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and root.get("width") == "864pt" and root.get("height") == "648pt"
    ns = "{http://www.w3.org/2000/svg}"
    paths = root.iter(f"{ns}path")
    assert sum(1 for p in paths if len(p.get("d", "")) > 200) >= 4  # series, band, bars
    text = svg.decode()
    for label in ("time (UTC)", "price (USDT)", "traded volume (BTC)", "VWAP (USDT)", "microprice", "2024-08-08 23:00"):
        assert label in text, label


def test_chart_keys_refuse_unsafe_names():
    with pytest.raises(SymbolError):
        chart_key("binance", "../../etc", a.utc(H))
    with pytest.raises(ValueError):
        chart_key("nasdaq", "BTC-USDT", a.utc(H))
    with pytest.raises(InvalidArtifactKey):
        ArtifactStoreResource(root="/tmp/x").put_bytes("../x.png", b"")
