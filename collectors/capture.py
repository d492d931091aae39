"""Readers for recorded exchange traffic, all yielding one uniform record stream.

Formats (auto-detected by ``detect``):

- ``cryptofeed``: cryptofeed's raw-data files. ``<name>.ws.<n>.<m>`` has a first line
  ``<url> <-> <ts>`` (connection opened), then ``<ts>: <frame>`` per received frame and
  ``<url> <- <ts>: <msg>`` per message the client sent; REST responses are in
  ``<name>.http.<n>.<m>`` beside it (found by the shared prefix), one
  ``<url> -> <ts>: <body>`` per line. Times are seconds with a fraction.
- ``hftbacktest``: gzip of ``<local_recv_ns> <json>`` lines, Binance combined-stream frames
  with the REST depth snapshot inline (a bare ``{"lastUpdateId":...}`` line). It names no
  URL, so the venue flavour is told from the frames (USD-M diffs carry ``pu``) and the
  snapshot's request URL is rebuilt from the symbol.
- ``bybit_history``: Bybit's public order-book history file (a zip holding one ``.data``
  file, or the ``.data`` file itself): one v5 websocket message per line; the message
  ``ts`` stands in for the receive time.
- ``tardis_fixture``: JSON lines of venue messages without receive times (``recv_ts_us`` is
  0). Lines marked ``"generated": true`` are tardis-made: a Binance ``@depthSnapshot`` is
  the REST snapshot tardis fetched (yielded as a ``rest`` record, as tardis documents it);
  other generated lines are skipped.

Every reader yields ``Record(recv_ts_us, kind, url, payload)`` in receive order, where
``kind`` is ``ws`` (a frame the venue sent), ``rest`` (a REST response body; ``url`` is
the request) or, only with ``include_sent=True``, ``ws_out`` (a message the recording
client sent). ``payload`` is the bytes as recorded.
"""

from __future__ import annotations

import gzip
import heapq
import io
import json
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collectors.exchanges import registry
from schemas.model import Exchange

WS, REST, WS_OUT = "ws", "rest", "ws_out"

_CF_LINE = re.compile(rb"^(\S+) (<->|<-|->) (\d+(?:\.\d+)?)(?:: (.*))?$", re.DOTALL)
_CF_FRAME = re.compile(rb"^(\d+(?:\.\d+)?): (.*)$", re.DOTALL)
_HFT_LINE = re.compile(rb"^(\d{10,20}) (.*)$", re.DOTALL)
_CF_NAME = re.compile(r"^(?P<prefix>.+)\.(?P<kind>ws|http)\.\d+\.\d+$")


#: lines of an hftbacktest file read to learn its venue flavour and streams (files run to GBs)
PRESCAN_LINES = 20_000


class CaptureError(ValueError):
    """A file that is not a capture we can read, or is corrupt where it must not be."""


@dataclass(frozen=True, slots=True)
class Record:
    recv_ts_us: int
    kind: str
    url: str
    payload: bytes


@dataclass(frozen=True)
class CaptureInfo:
    """What a capture holds, as far as the file itself tells."""

    path: Path
    format: str  # cryptofeed | hftbacktest | bybit_history | tardis_fixture
    exchange: Exchange | None
    flavor: str  # binance: spot|usdm; bybit: spot|linear|inverse; okx: mixed
    ws_url: str = ""
    files: tuple[Path, ...] = ()  # every file the records come from
    symbols: tuple[str, ...] = field(default=())


def seconds_to_us(text: bytes | str) -> int:
    """'1633998512.0633569' -> 1633998512063356 exactly (no float)."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    whole, _, frac = text.partition(".")
    return int(whole) * 1_000_000 + int((frac + "000000")[:6])


# -- detection -----------------------------------------------------------------------------------


def _head(path: Path, n: int = 4096) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _unreadable(path: Path, exc: BaseException) -> CaptureError:
    """One line for any way a file's content defeats a reader (bad gzip or zip, JSON nested past
    the parser's recursion limit, a value of the wrong type, undecodable bytes): the CLI
    prints it and exits 2 instead of a traceback."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return CaptureError(f"{path}: not a readable capture ({text[:200]})")


def detect(path: str | Path) -> CaptureInfo:
    """Identify a capture's format and venue. Raises CaptureError for anything else."""
    try:
        return _detect(Path(path))
    except CaptureError:
        raise
    except Exception as exc:  # noqa: BLE001 - file content decides; see _unreadable
        raise _unreadable(Path(path), exc) from exc


def _guarded(path: Path, records: Iterator[Record]) -> Iterator[Record]:
    try:
        yield from records
    except CaptureError:
        raise
    except Exception as exc:  # noqa: BLE001 - file content decides; see _unreadable
        raise _unreadable(path, exc) from exc


def _detect(p: Path) -> CaptureInfo:
    if not p.is_file():
        raise CaptureError(f"no such capture file: {p}")
    head = _head(p)
    if head[:2] == b"\x1f\x8b":
        with gzip.open(p, "rb") as f:
            first = f.readline()
        if _HFT_LINE.match(first.rstrip(b"\r\n")):
            return _detect_hftbacktest(p)
        raise CaptureError(f"{p}: gzip file that is not an hftbacktest '<ns> <json>' capture")
    if head[:4] == b"PK\x03\x04":
        return _detect_bybit_history(p)
    m = _CF_NAME.match(p.name)
    first = head.split(b"\n", 1)[0]
    if m or _CF_LINE.match(first):
        return _detect_cryptofeed(p)
    if first.startswith(b"{"):
        try:
            obj = json.loads(first)
        except ValueError:
            raise CaptureError(f"{p}: first line is not JSON") from None
        if isinstance(obj, dict) and "topic" in obj and "ts" in obj and p.suffix in (".data", ""):
            return _detect_bybit_history(p)
        return _detect_tardis(p)
    raise CaptureError(f"{p}: unrecognised capture format")


def _cryptofeed_files(p: Path) -> tuple[Path | None, list[Path]]:
    m = _CF_NAME.match(p.name)
    if not m:
        return p, []
    prefix = m.group("prefix")
    ws = sorted(q for q in p.parent.glob(f"{glob_escape(prefix)}.ws.*") if _CF_NAME.match(q.name))
    http = sorted(q for q in p.parent.glob(f"{glob_escape(prefix)}.http.*") if _CF_NAME.match(q.name))
    if m.group("kind") == "ws":
        ws = [p]
    return (ws[0] if ws else None), http


def _stream_url(exchange: Exchange, flavor: str) -> str:
    """The production stream URL of a feed, for captures that do not record one (the venue
    declares it: collectors/exchanges/<venue>_venue.py)."""
    feed = registry.feed_of_flavor(exchange, flavor)
    return feed.stream_url if feed is not None else ""


def _depth_url(info: CaptureInfo) -> str:
    """The REST depth snapshot URL of the capture's feed (Binance spot or USD-M)."""
    feed = registry.feed_of_flavor(info.exchange, info.flavor) if info.exchange is not None else None
    return feed.depth_url if feed is not None else ""


def glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)


def _detect_cryptofeed(p: Path) -> CaptureInfo:
    ws, http = _cryptofeed_files(p)
    url = ""
    if ws is not None:
        first = _head(ws).split(b"\n", 1)[0]
        m = _CF_LINE.match(first)
        if not m or m.group(2) != b"<->":
            raise CaptureError(f"{ws}: first line must be '<url> <-> <ts>'")
        url = m.group(1).decode()
    elif http:
        m = _CF_LINE.match(_head(http[0]).split(b"\n", 1)[0])
        url = m.group(1).decode() if m else ""
    ex, flavor = registry.flavor_of_url(url)
    files = tuple(([ws] if ws else []) + http)
    return CaptureInfo(p, "cryptofeed", ex, flavor, url, files, _symbols_from_url(url))


def _symbols_from_url(url: str) -> tuple[str, ...]:
    if "streams=" not in url:
        return ()
    names = url.split("streams=", 1)[1].split("/")
    return tuple(dict.fromkeys(n.split("@", 1)[0].upper() for n in names if "@" in n))


def _detect_hftbacktest(p: Path) -> CaptureInfo:
    streams: dict[str, None] = {}
    usdm = False
    venue: Exchange | None = None
    with gzip.open(p, "rb") as f:
        for n, raw in enumerate(f):
            if n >= PRESCAN_LINES and venue is not None:
                break
            m = _HFT_LINE.match(raw.rstrip(b"\r\n"))
            if not m:
                continue
            try:
                obj = json.loads(m.group(2))
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue
            if "stream" in obj:
                venue = Exchange.BINANCE
                streams[obj["stream"]] = None
                usdm = usdm or _binance_usdm_frame(obj.get("data"))
            elif "topic" in obj:
                venue = Exchange.BYBIT
    if venue is None:
        raise CaptureError(f"{p}: hftbacktest capture with no recognisable venue frames")
    if venue is Exchange.BYBIT:
        return CaptureInfo(p, "hftbacktest", venue, "linear", "", (p,))
    flavor = "usdm" if usdm else "spot"
    url = _stream_url(venue, flavor) + "?streams=" + "/".join(streams)
    return CaptureInfo(p, "hftbacktest", venue, flavor, url, (p,), _symbols_from_url(url))


def _bybit_lines(p: Path) -> Iterator[bytes]:
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            names = [n for n in z.namelist() if not n.endswith("/")]
            if len(names) != 1:
                raise CaptureError(f"{p}: expected one file in the zip, found {names}")
            with z.open(names[0]) as f:
                yield from io.BufferedReader(f)
    else:
        with open(p, "rb") as f:
            yield from f


def bybit_category(symbol: str, depth: int | None = None) -> str:
    """Best guess at a Bybit v5 category from a symbol (files do not record it).

    Depth 500 exists only for contracts; USD-quoted names without a stablecoin are inverse.
    Spot and linear share names (BTCUSDT), so spot captures must say so explicitly.
    """
    s = symbol.upper()
    if re.search(r"USD[FGHJKMNQUVXZ]\d\d$", s) or (s.endswith("USD") and not s.endswith(("USDT", "USDC"))):
        return "inverse"
    return "linear"


def _binance_usdm_frame(data: object) -> bool:
    """A Binance combined-stream payload only USD-M sends (mark price, liquidations, or a depth
    diff carrying `pu`): what tells a futures capture from a spot one, whose hosts differ."""
    return isinstance(data, dict) and (
        data.get("e") in ("markPriceUpdate", "forceOrder") or (data.get("e") == "depthUpdate" and "pu" in data)
    )


def _json_lines(p: Path, lines: Iterable[bytes]) -> Iterator[tuple[bytes, Any]]:
    """(line, its JSON value) for each non-blank line of a JSON-lines capture; a line that is
    not JSON refuses the whole file (a capture is told and read whole or not at all)."""
    for raw in lines:
        raw = raw.strip()
        if not raw:
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            raise CaptureError(f"{p}: line is not JSON: {raw[:80]!r}") from None
        yield raw, obj


def _detect_bybit_history(p: Path) -> CaptureInfo:
    for raw, obj in _json_lines(p, _bybit_lines(p)):
        topic = str(obj.get("topic", ""))
        parts = topic.split(".")
        if len(parts) < 2:
            raise CaptureError(f"{p}: not a Bybit v5 message: {raw[:80]!r}")
        symbol = parts[-1]
        depth = int(parts[1]) if parts[0] == "orderbook" and parts[1].isdigit() and parts[1].isascii() else None
        cat = bybit_category(symbol, depth)
        return CaptureInfo(p, "bybit_history", Exchange.BYBIT, cat, _stream_url(Exchange.BYBIT, cat), (p,), (symbol,))
    raise CaptureError(f"{p}: empty Bybit history file")


def _detect_tardis(p: Path) -> CaptureInfo:
    venue: Exchange | None = None
    usdm = False
    symbols: dict[str, None] = {}
    with open(p, "rb") as f:
        for _raw, obj in _json_lines(p, f):
            if not isinstance(obj, dict):
                continue
            if "stream" in obj:
                venue = Exchange.BINANCE
                symbols[obj["stream"].split("@", 1)[0].upper()] = None
                usdm = usdm or _binance_usdm_frame(obj.get("data"))
            elif "topic" in obj:
                venue = Exchange.BYBIT
                symbols[str(obj["topic"]).split(".")[-1]] = None
            elif "arg" in obj:
                venue = Exchange.OKX
                inst = obj["arg"].get("instId") if isinstance(obj["arg"], dict) else None
                if inst:
                    symbols[inst] = None
    if venue is None:
        raise CaptureError(f"{p}: JSON lines with no recognisable venue messages")
    flavor = {Exchange.BINANCE: "usdm" if usdm else "spot", Exchange.OKX: "mixed", Exchange.BYBIT: "linear"}[venue]
    return CaptureInfo(p, "tardis_fixture", venue, flavor, _stream_url(venue, flavor), (p,), tuple(symbols))


# -- reading -------------------------------------------------------------------------------------


def read(path: str | Path | CaptureInfo, *, include_sent: bool = False) -> Iterator[Record]:
    """All records of a capture in receive order (see the module docstring)."""
    info = path if isinstance(path, CaptureInfo) else detect(path)
    if info.format == "cryptofeed":
        return _guarded(info.path, _read_cryptofeed(info, include_sent))
    if info.format == "hftbacktest":
        return _guarded(info.path, _read_hftbacktest(info))
    if info.format == "bybit_history":
        return _guarded(info.path, _read_bybit_history(info))
    return _guarded(info.path, _read_tardis(info))


def _text_lines(f: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """(index, line without its line ending) of each non-blank line of a text capture; the
    index counts blank lines too, so ``n + 1`` in a refusal is the file's line number."""
    for n, raw in enumerate(f):
        line = raw.rstrip(b"\r\n")
        if line:
            yield n, line


def _read_cf_ws(path: Path, include_sent: bool) -> Iterator[tuple[int, int, Record]]:
    url = ""
    with open(path, "rb") as f:
        for n, line in _text_lines(f):
            m = _CF_FRAME.match(line)
            if m:
                yield seconds_to_us(m.group(1)), n, Record(seconds_to_us(m.group(1)), WS, url, m.group(2))
                continue
            m = _CF_LINE.match(line)
            if not m:
                raise CaptureError(f"{path}:{n + 1}: not a cryptofeed line: {line[:80]!r}")
            ts = seconds_to_us(m.group(3))
            if m.group(2) == b"<->":
                url = m.group(1).decode()
            elif m.group(2) == b"<-" and include_sent:
                yield ts, n, Record(ts, WS_OUT, m.group(1).decode(), m.group(4) or b"")


def _read_cf_http(path: Path) -> Iterator[tuple[int, int, Record]]:
    with open(path, "rb") as f:
        for n, line in _text_lines(f):
            m = _CF_LINE.match(line)
            if not m or m.group(2) != b"->":
                raise CaptureError(f"{path}:{n + 1}: not a cryptofeed REST line: {line[:80]!r}")
            ts = seconds_to_us(m.group(3))
            yield ts, n, Record(ts, REST, m.group(1).decode(), m.group(4) or b"")


def _read_cryptofeed(info: CaptureInfo, include_sent: bool) -> Iterator[Record]:
    sources = []
    for f in info.files:
        kind = _CF_NAME.match(f.name).group("kind") if _CF_NAME.match(f.name) else "ws"
        sources.append(_read_cf_ws(f, include_sent) if kind == "ws" else _read_cf_http(f))
    # Files are each in time order; merge them by receive time (ties keep file order).
    for _, _, rec in heapq.merge(*sources, key=lambda t: t[0]):
        yield rec


def _read_hftbacktest(info: CaptureInfo) -> Iterator[Record]:
    rest_base = _depth_url(info)
    symbol = info.symbols[0] if info.symbols else ""
    with gzip.open(info.path, "rb") as f:
        for n, line in _text_lines(f):
            m = _HFT_LINE.match(line)
            if not m:
                raise CaptureError(f"{info.path}:{n + 1}: not '<ns> <json>': {line[:80]!r}")
            ts = int(m.group(1)) // 1000
            body = m.group(2)
            if body.startswith(b'{"lastUpdateId"') or (b'"lastUpdateId"' in body[:40] and b'"stream"' not in body[:20]):
                yield Record(ts, REST, f"{rest_base}?symbol={symbol}&limit=1000", body)
            else:
                yield Record(ts, WS, info.ws_url, body)


def _read_bybit_history(info: CaptureInfo) -> Iterator[Record]:
    for n, raw in enumerate(_bybit_lines(info.path)):
        line = raw.strip()
        if not line:
            continue
        m = re.search(rb'"ts":(\d+)', line)
        if not m:
            raise CaptureError(f"{info.path}:{n + 1}: line without ts")
        yield Record(int(m.group(1)) * 1000, WS, info.ws_url, line)


def _read_tardis(info: CaptureInfo) -> Iterator[Record]:
    with open(info.path, "rb") as f:
        for raw in f:
            line = raw.strip()
            if not line:
                continue
            if b'"generated":true' not in line.replace(b" ", b""):
                yield Record(0, WS, info.ws_url, line)
                continue
            obj = json.loads(line)
            stream = str(obj.get("stream", ""))
            if info.exchange is Exchange.BINANCE and stream.endswith("@depthSnapshot"):
                sym = stream.split("@", 1)[0].upper()
                body = json.dumps(obj["data"], separators=(",", ":")).encode()
                yield Record(0, REST, f"{_depth_url(info)}?symbol={sym}&limit=1000", body)


def rest_params(url: str) -> dict[str, str]:
    """Query parameters of a recorded REST URL."""
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(url).query))


__all__ = [
    "REST",
    "WS",
    "WS_OUT",
    "CaptureError",
    "CaptureInfo",
    "Record",
    "bybit_category",
    "detect",
    "read",
    "rest_params",
    "seconds_to_us",
]
