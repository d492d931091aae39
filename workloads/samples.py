"""Where the genuine exchange captures are: the one definition of the samples path.

The captures are read in place at test and benchmark time, never copied or edited. They
live beside the checkout (`../shared/samples`); TICKLAKE_SAMPLES points elsewhere when a
machine keeps them in another place.
"""

from __future__ import annotations

import os
from pathlib import Path

SAMPLES_ENV = "TICKLAKE_SAMPLES"
REPO = Path(__file__).resolve().parents[1]
SAMPLES = Path(os.environ.get(SAMPLES_ENV) or REPO.parent / "shared" / "samples")

BINANCE_SPOT_CF = SAMPLES / "binance" / "cryptofeed_BINANCE.ws.1.0"
#: hftbacktest's Binance spot BTCUSDT file, 2024-08-08 23:54:14 .. 2024-08-09 00:00:01 UTC.
BINANCE_SPOT_HFT = SAMPLES / "binance" / "hftbacktest_spot_btcusdt_20240808.gz"
BINANCE_SPOT_TARDIS = SAMPLES / "binance" / "tardis_node_fixture_binance_spot.jsonl"
BINANCE_USDM_CF = SAMPLES / "binance_futures" / "cryptofeed_BINANCE_FUTURES.ws.1.0"
BINANCE_USDM_TARDIS = SAMPLES / "binance_futures" / "tardis_node_fixture_binance_futures_markprice_forceorder.jsonl"
BINANCE_VISION = SAMPLES / "binance_vision"
#: Bybit's own ob500 history file (XRPUSDT linear, 2024-12-01 00:00).
BYBIT_OB500 = SAMPLES / "bybit" / "nautilus_2024-12-01_XRPUSDT_ob500.data.zip"
BYBIT_TARDIS_DERIV = SAMPLES / "bybit" / "tardis_node_fixture_bybit_v5_linear_inverse.jsonl"
BYBIT_TARDIS_SPOT = SAMPLES / "bybit" / "tardis_node_fixture_bybit_v5_spot.jsonl"
BYBIT_TARDIS_ALLLIQ = SAMPLES / "bybit" / "tardis_node_fixture_bybit_v5_allLiquidation.jsonl"
OKX_CF = SAMPLES / "okx" / "cryptofeed_OKX.ws.1.0"
OKX_TARDIS_SPOT = SAMPLES / "okx" / "tardis_node_fixture_okx_v5_spot.jsonl"
OKX_TARDIS_SWAP = SAMPLES / "okx" / "tardis_node_fixture_okx_v5_swap_funding.jsonl"
OKX_TARDIS_FUT = SAMPLES / "okx" / "tardis_node_fixture_okx_v5_futures_liquidations.jsonl"
#: Venue REST reference bodies (instrument lists) kept beside the captures.
REFERENCE = SAMPLES / "reference"

#: The captures that are continuous streams (books replayable from their first frame).
STREAM_CAPTURES = [BINANCE_SPOT_CF, BINANCE_SPOT_HFT, BINANCE_USDM_CF, BYBIT_OB500, OKX_CF]
