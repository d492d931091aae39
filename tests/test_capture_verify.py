"""Capture readers (every shipped format) and `ticklake capture verify` run as a subprocess."""

from __future__ import annotations

import functools
import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from collectors.capture import (
    REST,
    WS,
    WS_OUT,
    CaptureError,
    detect,
    read,
    seconds_to_us,
)
from schemas.model import Exchange
from workloads.samples import (
    BINANCE_SPOT_CF,
    BINANCE_SPOT_HFT,
    BINANCE_SPOT_TARDIS,
    BINANCE_USDM_CF,
    BINANCE_USDM_TARDIS,
    BYBIT_OB500,
    OKX_CF,
    OKX_TARDIS_SPOT,
    SAMPLES,
    STREAM_CAPTURES,
)

TICKLAKE = Path(sys.executable).with_name("ticklake")
REQUIRED = [
    "exchange",
    "market",
    "symbol",
    "snapshots",
    "deltas_applied",
    "deltas_stale",
    "gaps",
    "resyncs",
    "crossed",
    "bbo_checked",
    "bbo_mismatched",
    "checksum_ok",
    "checksum_bad",
]


def test_seconds_to_us_is_exact():
    assert seconds_to_us("1633998512.0633569") == 1633998512063356
    assert seconds_to_us(b"1633998512.1") == 1633998512100000
    assert seconds_to_us("1633998512") == 1633998512000000


def test_cryptofeed_reader_merges_ws_and_rest_by_time():
    ws_lines = [x for x in BINANCE_SPOT_CF.read_text().splitlines() if x.strip()]
    http_path = BINANCE_SPOT_CF.with_name("cryptofeed_BINANCE.http.0.0")
    http_lines = [x for x in http_path.read_text().splitlines() if x.strip()]
    info = detect(BINANCE_SPOT_CF)
    assert (info.format, info.exchange, info.flavor) == ("cryptofeed", Exchange.BINANCE, "spot")
    assert info.symbols == ("NKNUSDT", "BLZETH", "LRCBTC", "RUNEEUR")
    recs = list(read(BINANCE_SPOT_CF))
    assert sum(r.kind == WS for r in recs) == len(ws_lines) - 1  # minus the "<url> <->" line
    assert sum(r.kind == REST for r in recs) == len(http_lines) == 4
    assert all(a.recv_ts_us <= b.recv_ts_us for a, b in zip(recs, recs[1:]))
    first_frame = ws_lines[1].split(": ", 1)
    assert recs[0].payload == first_frame[1].encode() and recs[0].recv_ts_us == seconds_to_us(first_frame[0])
    rest = [r for r in recs if r.kind == REST]
    assert rest[0].url == "https://api.binance.com/api/v3/depth?symbol=NKNUSDT&limit=1000"
    assert json.loads(rest[0].payload)["lastUpdateId"] == 499869752
    assert [r.payload for r in read(http_path)] == [r.payload for r in recs]  # either file names the capture
    assert all(r.url == info.ws_url for r in recs if r.kind == WS)


def test_cryptofeed_okx_sent_messages_are_optional():
    recs = list(read(OKX_CF))
    sent = [r for r in read(OKX_CF, include_sent=True) if r.kind == WS_OUT]
    raw = OKX_CF.read_text().splitlines()
    assert len(recs) == sum(1 for x in raw if re.match(r"^\d+(\.\d+)?: ", x))
    assert len(sent) == sum(1 for x in raw if " <- " in x) == 3
    assert json.loads(sent[-1].payload)["op"] == "subscribe"
    assert detect(OKX_CF).exchange is Exchange.OKX


def test_hftbacktest_reader_tells_spot_from_frames_and_rebuilds_the_snapshot_url():
    with gzip.open(BINANCE_SPOT_HFT, "rt") as f:
        lines = f.read().splitlines()
    info = detect(BINANCE_SPOT_HFT)
    assert (info.format, info.exchange, info.flavor, info.symbols) == (
        "hftbacktest",
        Exchange.BINANCE,
        "spot",
        ("BTCUSDT",),
    )
    recs = list(read(info))
    assert len(recs) == len(lines)
    (rest,) = [r for r in recs if r.kind == REST]
    assert rest.url == "https://api.binance.com/api/v3/depth?symbol=BTCUSDT&limit=1000"
    assert rest.payload.startswith(b'{"lastUpdateId":50093239218')
    assert recs[0].recv_ts_us == int(lines[0].split(" ", 1)[0]) // 1000


def test_hftbacktest_usdm_detected_by_pu(tmp_path):
    # the same file format carrying a USD-M diff (pu present) is told apart by its frames
    line = (
        '1626992741081672000 {"stream":"sushiusdt@depth@100ms","data":{"e":"depthUpdate","E":1626992741037,'
        '"T":1626992741024,"s":"SUSHIUSDT","U":1,"u":2,"pu":0,"b":[],"a":[]}}\n'
    )
    p = tmp_path / "usdm.gz"
    with gzip.open(p, "wt") as f:
        f.write(line)
        f.write('1626992741181672000 {"lastUpdateId":5,"E":1,"T":1,"bids":[],"asks":[]}\n')
    info = detect(p)
    assert info.flavor == "usdm"
    assert [r.url for r in read(info) if r.kind == REST] == [
        "https://fapi.binance.com/fapi/v1/depth?symbol=SUSHIUSDT&limit=1000"
    ]


def test_bybit_history_reader():
    info = detect(BYBIT_OB500)
    assert (info.format, info.exchange, info.flavor) == ("bybit_history", Exchange.BYBIT, "linear")
    recs = list(read(info))
    assert len(recs) == 50 and all(r.kind == WS for r in recs)
    assert recs[0].recv_ts_us == json.loads(recs[0].payload)["ts"] * 1000


def test_tardis_fixture_generated_lines():
    recs = list(read(BINANCE_SPOT_TARDIS))
    raw = [json.loads(x) for x in BINANCE_SPOT_TARDIS.read_text().splitlines() if x.strip()]
    gen = [x for x in raw if x.get("generated")]
    assert sum(r.kind == REST for r in recs) == len(gen) == 2  # @depthSnapshot = the REST snapshot tardis took
    assert sum(r.kind == WS for r in recs) == len(raw) - len(gen)
    assert {r.url.split("symbol=")[1].split("&")[0] for r in recs if r.kind == REST} == {"BTCUSDC", "GNTBTC"}
    info = detect(BINANCE_USDM_TARDIS)
    assert info.flavor == "usdm"
    assert not any(b"openInterest" in r.payload for r in read(info))  # generated, not a venue frame


def test_not_a_capture(tmp_path):
    with pytest.raises(CaptureError):
        detect(SAMPLES / "cryptofeed_LICENSE.txt")
    with pytest.raises(CaptureError):
        detect(tmp_path / "missing")


# -- the CLI -------------------------------------------------------------------------------------------


@functools.cache
def verify(path: Path, *extra: str) -> tuple[int, list[dict], str]:
    """One `ticklake capture verify` process per (capture, options): the shipped captures are
    read-only and verification is deterministic, so tests asserting different things about the
    same capture share its run (callers must not mutate the rows)."""
    assert TICKLAKE.exists(), f"console script missing: {TICKLAKE}"
    p = subprocess.run(
        [str(TICKLAKE), "capture", "verify", str(path), *extra], capture_output=True, text=True, timeout=300
    )
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    return p.returncode, rows, p.stderr


@pytest.mark.parametrize("path", STREAM_CAPTURES, ids=lambda p: p.name)
def test_cli_verify_passes_on_every_shipped_stream_capture(path):
    code, rows, err = verify(path)
    assert code == 0, err
    assert rows
    for row in rows:
        assert all(k in row for k in REQUIRED)
        assert row["gaps"] == row["crossed"] == row["bbo_mismatched"] == row["checksum_bad"] == 0
    booked = [r for r in rows if r["snapshots"]]
    assert booked and all(r["deltas_applied"] > 0 for r in booked)


def test_cli_verify_counts_what_the_issue_states():
    _, rows, _ = verify(BINANCE_SPOT_HFT)
    (row,) = rows
    assert (row["deltas_stale"], row["deltas_applied"]) == (2, 3449) and row["bbo_checked"] > 0
    _, rows, _ = verify(OKX_CF)
    assert sum(r["checksum_ok"] for r in rows) == 290 and len(rows) == 3
    _, rows, _ = verify(BINANCE_SPOT_CF)
    assert len(rows) == 4 and all(r["snapshots"] == 1 for r in rows)
    _, rows, _ = verify(BINANCE_USDM_CF)
    assert {r["symbol"] for r in rows} == {"SUSHI-USDT-PERP", "AKRO-USDT-PERP", "KEEP-USDT-PERP", "CTK-USDT-PERP"}


def test_cli_verify_fails_on_a_gap(tmp_path):
    with gzip.open(BINANCE_SPOT_HFT, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    depth = [i for i, x in enumerate(lines) if b"@depth" in x[:80]]
    bad = tmp_path / "gap.gz"
    with gzip.open(bad, "wb") as f:
        f.writelines(x for i, x in enumerate(lines) if i != depth[1000])
    code, rows, _ = verify(bad)
    assert code == 1 and rows[0]["gaps"] == 1 and rows[0]["resyncs"] == 1


def test_cli_verify_fails_on_a_bad_checksum(tmp_path):
    out = []
    done = False
    for line in OKX_CF.read_text().splitlines(keepends=True):
        if not done and '"action":"update"' in line and 'BTC-USDT"' in line:
            line = re.sub(r'"checksum":(-?\d+)', lambda m: f'"checksum":{int(m.group(1)) ^ 1}', line)
            done = True
        out.append(line)
    bad = tmp_path / "cryptofeed_OKX.ws.1.0"
    bad.write_text("".join(out))
    code, rows, _ = verify(bad)
    by = {r["symbol"]: r for r in rows}
    assert code == 1 and by["BTC-USDT"]["checksum_bad"] == 1 and by["BTC-USDT"]["resyncs"] == 1
    assert by["UNI-USD-PERP"]["checksum_bad"] == 0 and by["UNI-USD-PERP"]["checksum_ok"] == 93


def test_cli_verify_reports_inconsistent_fixtures_and_rejects_non_captures():
    # tardis trims OKX book frames for its tests, so their checksums cannot verify
    code, rows, _ = verify(OKX_TARDIS_SPOT)
    assert code == 1 and any(r["checksum_bad"] for r in rows)
    # the binance-futures fixture pairs a futures book with spot-formatted asks: a crossed book
    code, rows, _ = verify(BINANCE_USDM_TARDIS)
    assert code == 1 and any(r["crossed"] for r in rows)
    code, rows, err = verify(SAMPLES / "cryptofeed_LICENSE.txt")
    assert code == 2 and rows == [] and "unrecognised capture format" in err
