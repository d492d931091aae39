"""`ticklake capture verify PATH`: replay a capture through the project's own adapters and
books and report, per instrument, whether the venue's sync rules held.

The capture's REST snapshots are served when the replay reaches them in receive order
(as they were recorded), whatever the adapter asked; the adapter decides whether a
snapshot is usable. Exit status is 0 only when no instrument had a gap, a crossed book,
a BBO mismatch or a bad checksum.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from collectors.capture import (
    REST,
    WS,
    CaptureError,
    CaptureInfo,
    detect,
    read,
    rest_params,
)
from collectors.exchanges import registry
from collectors.exchanges.base import FrameResult, RestRequest
from collectors.exchanges.common import AdapterBase
from schemas.model import Exchange

FAIL_KEYS = ("gaps", "crossed", "bbo_mismatched", "checksum_bad")


@dataclass
class ReplayResult:
    info: CaptureInfo
    adapters: list[AdapterBase]
    frames: int = 0
    rest: int = 0
    events: dict[str, int] = field(default_factory=dict)  # per native symbol
    dead_letters: list[tuple[str, str]] = field(default_factory=list)  # (native, reason)
    requests: int = 0
    sends: int = 0

    def rows(self) -> list[dict]:
        out = []
        for ad in self.adapters:
            for native, st in ad.states.items():
                row = {
                    "exchange": str(ad.exchange),
                    "market": str(st.market),
                    "symbol": st.symbol,
                    "native_symbol": native,
                }
                row.update(st.stats.as_dict())
                row["synced"] = st.book.synced
                row["events"] = self.events.get(native, 0)
                row["dead_letters"] = sum(1 for n, _ in self.dead_letters if n == native)
                out.append(row)
        return out

    @property
    def ok(self) -> bool:
        return all(row[k] == 0 for row in self.rows() for k in FAIL_KEYS)


def adapter_for(info: CaptureInfo, bybit_category: str | None = None) -> AdapterBase:
    """The adapter of the feed a capture was recorded from (the registry's, as a shard's)."""
    if info.exchange is None:
        raise CaptureError(f"{info.path}: venue not recognised from the capture (url {info.ws_url!r})")
    flavor = (bybit_category if info.exchange is Exchange.BYBIT else None) or info.flavor
    feed = registry.feed_of_flavor(info.exchange, flavor)
    if feed is None:
        raise CaptureError(f"{info.path}: {info.exchange} {flavor!r} feed is not one the adapters speak; cannot verify")
    return registry.adapter_for_feed(info.exchange, feed)


def replay(
    path: str | Path | CaptureInfo, *, bybit_category: str | None = None, frames: Iterable | None = None
) -> ReplayResult:
    """Feed every record of a capture to one adapter; ``frames`` overrides the records
    (tests inject faults into genuine frames this way)."""
    info = path if isinstance(path, CaptureInfo) else detect(path)
    adapter = adapter_for(info, bybit_category)
    res = ReplayResult(info, [adapter])
    records = read(info) if frames is None else frames
    for rec in records:
        if rec.kind == WS:
            res.frames += 1
            _tally(res, adapter.on_frame(rec.payload, rec.recv_ts_us))
        elif rec.kind == REST:
            res.rest += 1
            on_rest = getattr(adapter, "on_rest", None)
            if on_rest is None:
                continue
            try:
                params = rest_params(rec.url)
                path = urlsplit(rec.url).path
            except ValueError as e:  # e.g. "Invalid IPv6 URL"
                raise CaptureError(f"{info.path}: REST record with an unusable URL {rec.url[:80]!r}: {e}") from None
            req = RestRequest(path=path, params=tuple(params.items()), native_symbol=params.get("symbol", ""))
            _tally(res, on_rest(req, 200, rec.payload, rec.recv_ts_us))
    return res


def _tally(res: ReplayResult, out: FrameResult) -> None:
    for env in out.events:
        res.events[env.native_symbol] = res.events.get(env.native_symbol, 0) + 1
    for dl in out.dead_letters:
        res.dead_letters.append((dl.native_symbol, dl.reason))
    res.requests += len(out.requests)
    res.sends += len(out.sends)


# -- CLI -------------------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        res = replay(args.path, bybit_category=args.bybit_category)
    except CaptureError as e:
        print(f"ticklake: {e}", file=sys.stderr)
        return 2
    rows = res.rows()
    for row in rows:
        print(json.dumps(row, separators=(",", ":")))
    if args.verbose:
        for native, reason in res.dead_letters:
            print(f"dead letter [{native}]: {reason}", file=sys.stderr)
        info = res.info
        print(
            f"{info.format} {info.exchange} {info.flavor}: {res.frames} frames, {res.rest} REST bodies, "
            f"{sum(res.events.values())} events, {len(res.dead_letters)} dead letters",
            file=sys.stderr,
        )
    if not rows:
        print("ticklake: no instruments found in the capture", file=sys.stderr)
        return 1
    return 0 if res.ok else 1


def add_capture_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `capture verify` on the `ticklake` CLI (called from pipelines/local/cli.py)."""
    cap = subparsers.add_parser("capture", help="work with recorded exchange traffic")
    sub = cap.add_subparsers(dest="capture_command", metavar="ACTION", required=True)
    p = sub.add_parser(
        "verify",
        help="replay a capture through the adapters and books; one JSON line per instrument",
        description=(
            "Replay a capture (cryptofeed raw data, hftbacktest .gz, Bybit history zip, tardis "
            "fixture JSON lines; detected automatically) through the collectors' venue adapters "
            "and L2 books, and print one JSON object per instrument with snapshots, deltas "
            "applied/stale, gaps, resyncs, crossed books, BBO checks (against bookTicker/bbo "
            "frames whose update id equals the last applied delta) and OKX checksum results. "
            "Exit status 0 only when no instrument had a gap, a crossed book, a BBO mismatch "
            "or a bad checksum; 2 when the file is not a capture."
        ),
    )
    p.add_argument("path", type=Path, help="capture file (for cryptofeed, either the .ws or .http file)")
    p.add_argument(
        "--bybit-category",
        choices=("spot", "linear", "inverse"),
        help="Bybit files do not record their category; override the guess from the symbol",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="dead-letter reasons and totals on stderr")
    p.set_defaults(func=cmd_verify)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ticklake")
    add_capture_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
