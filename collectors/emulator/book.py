"""The emulator's own view of a venue order book, kept in the venue's strings.

A venue answers a snapshot request (REST, or the snapshot it pushes on subscribe) with
its *current* book, not the one a capture happened to record at one instant; a collector
that reconnects mid-replay must get the book as of the replay position or it could never
sync. So the emulator replays the capture's own snapshot and deltas into this book and
serves it. Levels keep the venue's exact strings because OKX checksums are computed over
the strings as sent ("0.10" and "0.1" hash differently).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

VenueLevel = Sequence[str]  # [px, sz] (Binance, Bybit) or [px, sz, "0", n_orders] (OKX)


class EmuBook:
    __slots__ = ("asks", "aux_seq", "bids", "cts_ms", "known", "prev_seq", "seq", "ts_ms")

    def __init__(self) -> None:
        self.bids: dict[float, list[str]] = {}
        self.asks: dict[float, list[str]] = {}
        self.seq = 0  # Binance lastUpdateId / Bybit u / OKX seqId
        self.prev_seq = -1
        self.aux_seq = 0  # Bybit cross-sequence "seq"
        self.ts_ms = 0
        self.cts_ms = 0
        self.known = False  # False until a snapshot was installed

    def reset(self, bids: Iterable[VenueLevel], asks: Iterable[VenueLevel], seq: int) -> None:
        self.bids = {float(lv[0]): list(lv) for lv in bids if float(lv[1]) != 0}
        self.asks = {float(lv[0]): list(lv) for lv in asks if float(lv[1]) != 0}
        self.seq = seq
        self.known = True

    def apply(self, bids: Iterable[VenueLevel], asks: Iterable[VenueLevel]) -> None:
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for lv in levels:
                px = float(lv[0])
                if float(lv[1]) == 0:
                    side.pop(px, None)
                else:
                    side[px] = list(lv)

    def top_bids(self, n: int | None = None) -> list[list[str]]:
        keys = sorted(self.bids, reverse=True)
        return [self.bids[k] for k in (keys if n is None else keys[:n])]

    def top_asks(self, n: int | None = None) -> list[list[str]]:
        keys = sorted(self.asks)
        return [self.asks[k] for k in (keys if n is None else keys[:n])]

    def crossed(self) -> bool:
        return bool(self.bids and self.asks and max(self.bids) >= min(self.asks))

    def okx_checksum(self) -> int:
        return okx_checksum(self.top_bids(25), self.top_asks(25))


def okx_checksum(bids: Sequence[VenueLevel], asks: Sequence[VenueLevel]) -> int:
    """OKX book checksum: CRC32 of "bidPx:bidSz:askPx:askSz:..." over the best 25 levels
    per side, interleaved while both sides have levels, as a signed 32-bit integer."""
    parts: list[str] = []
    for i in range(max(len(bids[:25]), len(asks[:25]))):
        if i < len(bids) and i < 25:
            parts.append(f"{bids[i][0]}:{bids[i][1]}")
        if i < len(asks) and i < 25:
            parts.append(f"{asks[i][0]}:{asks[i][1]}")
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= (1 << 31) else crc
