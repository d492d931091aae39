"""Builders of valid canonical envelopes of every event type, for tests."""

from __future__ import annotations

from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.ids import stamp_event_id
from schemas.model import EventType, Exchange, Market
from schemas.scaled import RATE_SCALE, to_scaled

BASE_TS = 1_723_161_600_000_000  # 2024-08-09T00:00:00Z in µs


def envelope(
    event_type: EventType,
    i: int = 0,
    *,
    exchange: Exchange = Exchange.BINANCE,
    market: Market = Market.PERP,
    symbol: str = "BTC-USDT-PERP",
    native: str = "BTCUSDT",
) -> pb.Envelope:
    env = pb.Envelope(
        exchange=exchange.pb,
        market=market.pb,
        event_type=event_type.pb,
        symbol=symbol,
        native_symbol=native,
        exchange_ts=BASE_TS + i * 1000,
        ingest_ts=BASE_TS + i * 1000 + 350,
        seq=1000 + i,
        price_scale=2,
        size_scale=3,
        shard="test",
    )
    px = to_scaled(f"{60000 + i}.10", 2)
    if event_type is EventType.TRADE:
        env.trade.CopyFrom(
            pb.Trade(
                trade_id=str(5000 + i),
                px=px,
                qty=to_scaled("0.015", 3),
                taker_side=pb.SIDE_SELL if i % 2 else pb.SIDE_BUY,
            )
        )
    elif event_type is EventType.BOOK_SNAPSHOT:
        env.book_snapshot.CopyFrom(
            pb.BookSnapshot(
                bids=[pb.PriceLevel(px=px - k, qty=1000 + k) for k in range(1, 4)],
                asks=[pb.PriceLevel(px=px + k, qty=2000 + k) for k in range(1, 4)],
                depth=3,
                reason=pb.SNAPSHOT_REASON_INITIAL,
            )
        )
    elif event_type is EventType.BOOK_DELTA:
        env.book_delta.CopyFrom(
            pb.BookDelta(
                bids=[pb.PriceLevel(px=px - 1, qty=0)],
                asks=[pb.PriceLevel(px=px + 5, qty=77)],
                first_seq=999 + i,
                prev_seq=998 + i,
            )
        )
    elif event_type is EventType.FUNDING:
        env.funding.CopyFrom(
            pb.Funding(
                rate=to_scaled("-0.00012500", RATE_SCALE, signed=True),
                next_funding_ts=BASE_TS + 3_600_000_000,
                mark_px=px,
            )
        )
    elif event_type is EventType.MARK_PRICE:
        env.mark_price.CopyFrom(pb.MarkPrice(mark_px=px, index_px=px - 3))
    elif event_type is EventType.LIQUIDATION:
        env.liquidation.CopyFrom(pb.Liquidation(side=pb.SIDE_SELL, px=px, qty=12, order_status="FILLED"))
    elif event_type is EventType.TICKER:
        env.ticker.CopyFrom(
            pb.Ticker(
                bid_px=px - 1, bid_qty=5, ask_px=px + 1, ask_qty=6, last_px=px, volume_24h=123456, open_interest=42
            )
        )
    return stamp_event_id(env)


def one_of_each(n: int = 2) -> list[pb.Envelope]:
    return [envelope(et, i) for et in EventType for i in range(n)]


def as_venue(envs: list[pb.Envelope], exchange: Exchange, shift_us: int = 0) -> list[pb.Envelope]:
    """Copies of `envs` from another exchange, `shift_us` earlier (event and ingest time), ids stamped again."""
    out = []
    for src in envs:
        e = pb.Envelope()
        e.CopyFrom(src)
        e.exchange = exchange.pb
        e.exchange_ts -= shift_us
        e.ingest_ts -= shift_us
        out.append(stamp_event_id(e))
    return out
