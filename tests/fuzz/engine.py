"""The fuzz machinery: mutators over genuine inputs, drivers that feed them to the real code,
and a tally per target.

Targets and what counts as a failure:
- venue adapters (binance-spot, binance-usdm, bybit-linear, okx): genuine capture streams
  played from the start with a fraction of frames and REST bodies mutated. A *crash* is an
  exception out of ``on_frame``/``on_rest`` or an event that cannot be serialized for the
  broker (encode fails, id does not verify, record over 1 MB). A *divergence* is a synced
  book in the adapter that differs from the book rebuilt from the events it published
  (BOOK_SNAPSHOT replaces, BOOK_DELTA applies) -- what every downstream consumer sees.
- exchange info: genuine instrument bodies mutated into ``on_rest`` (the shard-start path)
  and the shared parsers (only InstrumentDataError may leave them).
- capture verify: mutated capture files into ``ticklake capture verify`` (exit 0, 1 or 2 and
  never a traceback).
- normalizer: raw envelopes the adapters made from genuine captures, mutated field-wise or
  byte-wise, into ``Normalizer.process`` (never raises).

A refusal is *specific* when its reason names the problem, *generic* when it came from a
catch-all handler ("unexpected ..."). Everything is driven by a ``random.Random`` the caller
seeds, so a run is reproducible.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import random
import re
import shutil
import tempfile
import traceback
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from collectors.capture import REST, WS, Record
from collectors.exchanges.base import RestRequest
from collectors.exchanges.binance import BinanceSpotAdapter, BinanceUsdmAdapter
from collectors.exchanges.bybit import BybitAdapter
from collectors.exchanges.okx import OkxAdapter
from collectors.exchanges.registry import parse_exchange_info
from orderbook import L2Book
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.ids import stamp_event_id
from schemas.instruments import InstrumentDataError, InstrumentRef
from schemas.model import EventType, event_type_from_pb, market_from_pb
from schemas.scaled import from_scaled
from schemas.serde import decode, encode
from schemas.topics import event_topic
from tests.support.adapters import rest_request_for
from workloads.samples import (
    BINANCE_SPOT_CF,
    BINANCE_SPOT_HFT,
    BINANCE_SPOT_TARDIS,
    BINANCE_USDM_CF,
    BINANCE_USDM_TARDIS,
    BYBIT_OB500,
    BYBIT_TARDIS_ALLLIQ,
    BYBIT_TARDIS_DERIV,
    OKX_CF,
    OKX_TARDIS_FUT,
    OKX_TARDIS_SPOT,
    OKX_TARDIS_SWAP,
    SAMPLES,
)

FULL_DEPTH = 1_000_000  # published snapshots carry the whole book, so it can be compared
MAX_RECORD_BYTES = 1_000_000  # librdkafka's default message.max.bytes
EVENT_BOOK_SNAPSHOT, EVENT_BOOK_DELTA = EventType.BOOK_SNAPSHOT.pb, EventType.BOOK_DELTA.pb

#: venue -> (adapter factory, [(capture, records used)]); records are read at run time
VENUES: dict[str, tuple[Callable[[], object], list[tuple[Path, int]]]] = {
    "binance-spot": (
        lambda: BinanceSpotAdapter(snapshot_depth=FULL_DEPTH),
        [(BINANCE_SPOT_CF, 300), (BINANCE_SPOT_HFT, 700), (BINANCE_SPOT_TARDIS, 20)],
    ),
    "binance-usdm": (
        lambda: BinanceUsdmAdapter(snapshot_depth=FULL_DEPTH),
        [(BINANCE_USDM_CF, 700), (BINANCE_USDM_TARDIS, 20)],
    ),
    "bybit-linear": (
        lambda: BybitAdapter(category="linear", snapshot_depth=FULL_DEPTH),
        [(BYBIT_OB500, 50), (BYBIT_TARDIS_DERIV, 20), (BYBIT_TARDIS_ALLLIQ, 5)],
    ),
    "okx": (
        lambda: OkxAdapter(snapshot_depth=FULL_DEPTH),
        [(OKX_CF, 420), (OKX_TARDIS_SPOT, 10), (OKX_TARDIS_SWAP, 10), (OKX_TARDIS_FUT, 20)],
    ),
}

_STREAMS: dict[Path, list[Record]] = {}


def stream(path: Path, limit: int) -> list[Record]:
    if path not in _STREAMS:
        recs = []
        for i, r in enumerate(_iter_records(path)):
            if i >= 1000:
                break
            recs.append(r)
        _STREAMS[path] = recs
    return _STREAMS[path][:limit]


def _iter_records(path: Path):
    from collectors.capture import read

    return read(path)


# -- tallies ---------------------------------------------------------------------------------------

COLUMNS = ("tried", "mutated", "specific", "generic", "accepted", "crashed", "divergences")


@dataclass
class Tally:
    tried: int = 0  # inputs fed (genuine and mutated)
    mutated: int = 0
    specific: int = 0  # refused with a reason naming the problem
    generic: int = 0  # refused by a catch-all handler ("unexpected ...")
    accepted: int = 0  # nothing refused
    crashed: int = 0
    divergences: int = 0
    reasons: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # first few crash/divergence descriptions
    generic_examples: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        if len(self.failures) < 8:
            self.failures.append(what[:2000])

    def merge(self, other: Tally) -> None:
        for c in COLUMNS:
            setattr(self, c, getattr(self, c) + getattr(other, c))
        self.reasons.update(other.reasons)
        for f in other.failures:
            self.fail(f)

    def row(self) -> dict[str, int]:
        return {c: getattr(self, c) for c in COLUMNS}


_GENERIC = re.compile(r"(?:^|: )unexpected:? [A-Z][A-Za-z]*:")


def is_generic(reason: str) -> bool:
    """Catch-all handlers say "unexpected <ExceptionType>: ..." (adapters) or "unexpected:
    <ExceptionType>: ..." (normalizer); "malformed JSON: unexpected character" is specific."""
    return _GENERIC.search(reason[:120]) is not None


def classify(tally: Tally, reasons: list[str]) -> None:
    if not reasons:
        tally.accepted += 1
        return
    if any(is_generic(r) for r in reasons):
        tally.generic += 1
    else:
        tally.specific += 1
    for r in reasons:
        tally.reasons[_reason_code(r)] += 1


def _reason_code(reason: str) -> str:
    if is_generic(reason):
        return "unexpected " + _GENERIC.search(reason[:120]).group(0).split()[-1].rstrip(":")
    return reason.split(":", 1)[0].split("(", 1)[0].strip()[:50]


def report(tallies: dict[str, Tally]) -> str:
    """The table both the CI test and the long run print."""
    w = max(len(k) for k in tallies) + 2
    lines = ["target".ljust(w) + "".join(c.rjust(12) for c in COLUMNS) + "   generic %"]
    for name, t in tallies.items():
        pct = 100.0 * t.generic / t.tried if t.tried else 0.0
        lines.append(name.ljust(w) + "".join(str(getattr(t, c)).rjust(12) for c in COLUMNS) + f"   {pct:8.3f}")
    for name, t in tallies.items():
        for f in t.failures:
            lines.append(f"--- {name}: {f}")
    return "\n".join(lines)


# -- mutators --------------------------------------------------------------------------------------

_ODD_STRINGS = [
    "",
    " ",
    "abc",
    "-1",
    "-0.5",
    "1e5",
    "1E-30",
    "NaN",
    "inf",
    "-inf",
    "0",
    "0.0",
    "00001",
    "1" * 30,
    "9" * 25 + ".5",
    "0." + "0" * 30 + "1",
    "1.2.3",
    "1,5",
    "+1",
    "1_000",
    "１２３",
    "٣",
    "²",
    "1\n",
    "\n",
    "\x00",
    "null",
    "true",
    "[]",
    "{}",
    "\ud800"[:0] + "é",
    "x" * 300,
]


def _odd_value(rnd: random.Random):
    k = rnd.randrange(14)
    if k == 0:
        return None
    if k == 1:
        return rnd.choice([True, False])
    if k == 2:
        return rnd.choice([0, -1, 1, 2**31, 2**63 - 1, 2**63, 2**64 + 5, -(2**63) - 1, 10**30])
    if k == 3:
        return rnd.choice([0.5, -1.5, 1e308, 1e-300, 3.0])
    if k in (4, 5, 6):
        return rnd.choice(_ODD_STRINGS)
    if k == 7:
        return []
    if k == 8:
        return {}
    if k == 9:
        return [["1", "2"], ["3"]]
    if k == 10:
        return [rnd.choice(_ODD_STRINGS) for _ in range(rnd.randrange(1, 4))]
    if k == 11:
        return {"a": [1, {"b": None}]}
    if k == 12:
        return "x" * rnd.choice([2000, 70_000])
    return rnd.choice(
        [
            "BTCUSDT",
            "ETHUSDT",
            "NOPE",
            "BTC-USDT",
            "BTC-USDT-SWAP",
            "XRPUSDT",
            "btcusdt",
            "BTC-USD-220527",
            "ZZZ-YYY-ZZZ",
            "../etc",
            "BTCUSDT\n",
        ]
    )


def _tweak_str(s: str, rnd: random.Random) -> str:
    k = rnd.randrange(16)
    if k == 0:
        return s + str(rnd.randrange(1, 10**6))
    if k == 1:
        return "-" + s
    if k == 2:
        return s + rnd.choice(["e5", "e-30", "E+2", "e999999"])
    if k == 3:
        return " " + s + rnd.choice(["", "\n", "\t"])
    if k == 4:
        return "0" * rnd.randrange(1, 40) + s
    if k == 5:
        return s + ("0" * rnd.randrange(1, 40) if "." in s else "." + "0" * rnd.randrange(1, 40))
    if k == 6:
        return s.replace(".", "")
    if k == 7:
        return s + "."
    if k == 8:
        return "." + s
    if k == 9:
        return s + s
    if k == 10:
        return "+" + s
    if k == 11:
        return s[:-1]
    if k == 12 and s:
        i = rnd.randrange(len(s))
        return s[:i] + rnd.choice("０١x_,;- ") + s[i + 1 :]
    if k == 13:
        return s + "1" * rnd.randrange(10, 30)
    if k == 14:
        return s.upper() if s.islower() else s.lower()
    return str(rnd.randrange(-5, 10 ** rnd.randrange(1, 25)))


def _tweak_int(v: int, rnd: random.Random):
    return rnd.choice(
        [
            v + 1,
            v - 1,
            -v,
            v * 10 ** rnd.randrange(1, 20),
            2**63,
            2**63 - 1,
            -1,
            0,
            str(v),
            float(v),
            v + rnd.randrange(2, 10**6),
            str(v) + "0",
        ]
    )


def _slots(obj) -> list[tuple[object, object]]:
    """Every (container, key) holding a value, iteratively (frames may be deep)."""
    out: list[tuple[object, object]] = []
    stack = [obj]
    while stack:
        c = stack.pop()
        items = c.items() if isinstance(c, dict) else enumerate(c)
        for k, v in items:
            out.append((c, k))
            if isinstance(v, (dict, list)) and len(out) < 50_000:
                stack.append(v)
    return out


def mutate_json(obj, rnd: random.Random) -> str:
    """One structural or value mutation somewhere in a parsed JSON document."""
    slots = _slots(obj) if isinstance(obj, (dict, list)) else []
    if not slots:
        return json.dumps(_odd_value(rnd))
    c, k = rnd.choice(slots)
    v = c[k]
    op = rnd.randrange(9)
    if op == 0:
        del c[k]
    elif op == 1:
        c[k] = _odd_value(rnd)
    elif op in (2, 3, 4) and isinstance(v, str):
        c[k] = _tweak_str(v, rnd)
    elif op in (2, 3, 4) and isinstance(v, int) and not isinstance(v, bool):
        c[k] = _tweak_int(v, rnd)
    elif op == 5 and isinstance(c, list):
        c.insert(k, json.loads(json.dumps(v)))
    elif op == 6 and isinstance(c, list) and len(c) > 1:
        j = rnd.randrange(len(c))
        c[k], c[j] = c[j], c[k]
    elif op == 7 and isinstance(c, dict):
        c[rnd.choice(["x", "e", "s", "u", "U", "pu", "data", "topic", "arg", "event", "action"])] = _odd_value(rnd)
    else:
        c[k] = _odd_value(rnd)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=rnd.random() < 0.5)


def mutate_bytes(data: bytes, rnd: random.Random) -> bytes:
    k = rnd.randrange(7)
    n = len(data)
    if k == 0 and n:
        return data[: rnd.randrange(n)]
    if k == 1 and n:
        i = rnd.randrange(n)
        return data[:i] + bytes([data[i] ^ (1 << rnd.randrange(8))]) + data[i + 1 :]
    if k == 2:
        i = rnd.randrange(n + 1)
        return data[:i] + bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 8))) + data[i:]
    if k == 3:
        i = rnd.randrange(n + 1)
        depth = rnd.choice([600, 3000, 100_000])
        return data[:i] + b"[" * depth + b"]" * depth + data[i:]
    if k == 4:
        return data + b"\xff\xfe\x80"
    if k == 5 and n > 2:
        i, j = sorted(rnd.randrange(n) for _ in range(2))
        return data[:i] + data[j:]
    return data[: n // 2] + data[n // 2 :][::-1]


def mutate_payload(data: bytes, rnd: random.Random) -> bytes:
    """A venue frame or REST body: mostly one JSON-level change (so it reaches the deep code),
    sometimes bytes."""
    if rnd.random() < 0.8:
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            return mutate_bytes(data, rnd)
        text = mutate_json(obj, rnd)
        return text.encode("utf-8", "surrogatepass")
    return mutate_bytes(data, rnd)


# -- venue adapters --------------------------------------------------------------------------------


def _book_of_levels(bids, asks) -> L2Book:
    b = L2Book()
    b.apply_snapshot([(lv.px, lv.qty) for lv in bids], [(lv.px, lv.qty) for lv in asks])
    return b


def _copy_book(src: L2Book) -> L2Book:
    b = L2Book()
    b.apply_snapshot(list(src.bids.items()), list(src.asks.items()), src.seq)
    return b


def check_event(env: pb.Envelope) -> str:
    """'' when the broker would take the event and a consumer read it back, else why not."""
    try:
        rec = encode(env)
        if len(rec.value) + len(rec.key) > MAX_RECORD_BYTES:
            return f"event of {len(rec.value)} bytes exceeds the broker's record limit"
        back = decode(rec.value, rec.headers, verify_id=True)
        if back.event_id != env.event_id:
            return "event id changed through serde"
    except Exception as exc:  # noqa: BLE001 - the fuzz reports whatever breaks
        return f"serde: {type(exc).__name__}: {exc}"
    return ""


def run_stream(venue: str, path: Path, limit: int, rnd: random.Random, p: float, tally: Tally) -> None:
    """Play one capture through a fresh adapter, mutating each record with probability p."""
    factory, _ = VENUES[venue]
    ad = factory()
    rebuilt: dict[str, L2Book] = {}
    for i, rec in enumerate(stream(path, limit)):
        payload = rec.payload
        mutated = rnd.random() < p
        if mutated:
            payload = mutate_payload(payload, rnd)
            tally.mutated += 1
        tally.tried += 1
        where = f"{path.name}#{i} {'mutated' if mutated else 'genuine'} {payload[:300]!r}"
        try:
            if rec.kind == WS:
                res = ad.on_frame(payload, rec.recv_ts_us)
            elif rec.kind == REST:
                res = ad.on_rest(rest_request_for(rec), 200, payload, rec.recv_ts_us)
            else:
                continue
        except Exception:  # noqa: BLE001
            tally.crashed += 1
            tally.fail(f"crash at {where}\n{traceback.format_exc(limit=6)}")
            continue
        classify(tally, [d.reason for d in res.dead_letters])
        if len(tally.generic_examples) < 30:
            tally.generic_examples += [
                f"{d.reason[:200]} <- {where[:400]}" for d in res.dead_letters if is_generic(d.reason)
            ]
        for env in res.events:
            bad = check_event(env)
            if bad:
                tally.crashed += 1
                tally.fail(f"unpublishable event at {where}: {bad}")
                continue
            if env.event_type == EVENT_BOOK_SNAPSHOT:
                rebuilt[env.native_symbol] = _book_of_levels(env.book_snapshot.bids, env.book_snapshot.asks)
            elif env.event_type == EVENT_BOOK_DELTA and env.native_symbol in rebuilt:
                d = env.book_delta
                rebuilt[env.native_symbol].apply([(lv.px, lv.qty) for lv in d.bids], [(lv.px, lv.qty) for lv in d.asks])
        for native, st in ad.states.items():
            book = st.book
            if not book.synced:
                continue
            r = rebuilt.get(native)
            if r is None or r.bids != book.bids or r.asks != book.asks:
                tally.divergences += 1
                tally.fail(
                    f"book of {native} differs from its published stream after {where} "
                    f"(reasons {[d.reason for d in res.dead_letters]})"
                )
                rebuilt[native] = _copy_book(book)  # count each divergence once


def fuzz_venue(venue: str, rnd: random.Random, *, streams: int, p: float, tally: Tally) -> None:
    _, sources = VENUES[venue]
    for _ in range(streams):
        path, limit = rnd.choice(sources)
        run_stream(venue, path, rnd.randrange(min(limit, 40), limit + 1), rnd, p, tally)


# -- exchange info ---------------------------------------------------------------------------------

INSTRUMENTS_REQ = RestRequest(path="/instruments", params=(), purpose="instruments")


def _info_bodies() -> list[tuple[str, Callable[[], object], bytes, dict]]:
    from tests.test_adapters_reference import BINANCE_FAPI_BODY

    return [
        ("binance-usdm", lambda: BinanceUsdmAdapter(), BINANCE_FAPI_BODY.encode(), {}),
        (
            "bybit-inverse",
            lambda: BybitAdapter(category="inverse"),
            (SAMPLES / "reference" / "nautilus_bybit_instruments_inverse.json").read_bytes(),
            {"category": "inverse"},
        ),
        (
            "okx-swap",
            lambda: OkxAdapter(),
            (SAMPLES / "reference" / "nautilus_okx_instruments_swap.json").read_bytes(),
            {},
        ),
    ]


_PROBE_FRAMES = {
    "binance-usdm": [
        (
            b'{"stream":"btcusdt@markPrice@1s","data":{"e":"markPriceUpdate","E":1597536008000,"s":"BTCUSDT",'
            b'"p":"11857.56000000","i":"11851.86949091","r":"0.00015640","T":1597564800000}}'
        ),
        (
            b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1,"s":"BTCUSDT","a":5,"p":"11857.5",'
            b'"q":"0.010","f":1,"l":2,"T":1597536008000,"m":true}}'
        ),
    ],
    "bybit-inverse": [
        (
            b'{"topic":"tickers.BTCUSD","type":"snapshot","data":{"symbol":"BTCUSD","lastPrice":"28560.00",'
            b'"markPrice":"28560.00","indexPrice":"28566.94","openInterest":"449736676","volume24h":"6615",'
            b'"fundingRate":"0.0001","nextFundingTime":"1680681600000","bid1Price":"28560.00",'
            b'"bid1Size":"340549","ask1Price":"28560.50","ask1Size":"70817"},"cs":1,"ts":1680673822776}'
        )
    ],
    "okx-swap": [
        (
            b'{"arg":{"channel":"mark-price","instId":"ETH-USDT-SWAP"},"data":[{"instId":"ETH-USDT-SWAP",'
            b'"instType":"SWAP","markPx":"2.1729","ts":"1640131259180"}]}'
        ),
        (
            b'{"arg":{"channel":"trades","instId":"BTC-USD-SWAP"},"data":[{"instId":"BTC-USD-SWAP",'
            b'"tradeId":"1","px":"43250.3","sz":"3","side":"buy","ts":"1640131259180"}]}'
        ),
    ],
}


def fuzz_exchange_info(rnd: random.Random, *, n: int, tally: Tally) -> None:
    bodies = _info_bodies()
    for _ in range(n):
        name, factory, body, kw = rnd.choice(bodies)
        mutated = mutate_payload(body, rnd)
        tally.tried += 1
        tally.mutated += 1
        where = f"{name} body {mutated[:300]!r}"
        ad = factory()
        try:
            res = ad.on_rest(INSTRUMENTS_REQ, 200, mutated, 1)
            for f in _PROBE_FRAMES[name]:
                out = ad.on_frame(f, 1_700_000_000_000_000)
                for env in out.events:
                    bad = check_event(env)
                    if bad:
                        tally.crashed += 1
                        tally.fail(f"unpublishable event after {where}: {bad}")
        except Exception:  # noqa: BLE001
            tally.crashed += 1
            tally.fail(f"crash loading {where}\n{traceback.format_exc(limit=6)}")
            continue
        classify(tally, [d.reason for d in res.dead_letters])
        try:
            parse_exchange_info(ad.exchange, ad.market, mutated, rejects=[], **kw)
        except InstrumentDataError:
            pass
        except Exception:  # noqa: BLE001
            tally.crashed += 1
            tally.fail(f"parser raised past InstrumentDataError on {where}\n{traceback.format_exc(limit=6)}")


# -- capture verify --------------------------------------------------------------------------------


def _capture_sources() -> list[tuple[str, list[Path]]]:
    """Small genuine captures (a cryptofeed pair counts as one capture of two files)."""
    return [
        ("cryptofeed_BINANCE.ws.1.0", [BINANCE_SPOT_CF, BINANCE_SPOT_CF.with_name("cryptofeed_BINANCE.http.0.0")]),
        ("cryptofeed_OKX.ws.1.0", [OKX_CF]),
        ("nautilus_2024-12-01_XRPUSDT_ob500.data.zip", [BYBIT_OB500]),
        ("tardis_node_fixture_binance_futures_markprice_forceorder.jsonl", [BINANCE_USDM_TARDIS]),
        ("tardis_node_fixture_okx_v5_swap_funding.jsonl", [OKX_TARDIS_SWAP]),
        ("tardis_node_fixture_bybit_v5_linear_inverse.jsonl", [BYBIT_TARDIS_DERIV]),
        ("hft_head.gz", [BINANCE_SPOT_HFT]),
    ]


def _hft_head() -> bytes:
    with gzip.open(BINANCE_SPOT_HFT, "rb") as f:
        lines = [f.readline() for _ in range(300)]
    return gzip.compress(b"".join(lines))


def _mutate_lines(text: bytes, rnd: random.Random) -> bytes:
    lines = text.split(b"\n")
    i = rnd.randrange(len(lines))
    line = lines[i]
    head, sep, body = line.partition(b": ") if b"{" not in line[:3] else (b"", b"", line)
    j = body.find(b"{")
    if j > 0 and not sep:
        head, body = body[:j], body[j:]
    lines[i] = head + sep + mutate_payload(body, rnd) if body else mutate_bytes(line, rnd)
    return b"\n".join(lines)


def mutate_capture(name: str, data: bytes, rnd: random.Random) -> bytes:
    """Whole-file byte damage, or one line's JSON mutated inside the container."""
    if rnd.random() < 0.3:
        return mutate_bytes(data, rnd)
    if name.endswith(".gz"):
        return gzip.compress(_mutate_lines(gzip.decompress(data), rnd))
    if name.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            member = z.namelist()[0]
            inner = z.read(member)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(member, _mutate_lines(inner, rnd))
        return buf.getvalue()
    return _mutate_lines(data, rnd)


def fuzz_capture_verify(rnd: random.Random, *, n: int, tally: Tally) -> None:
    from collectors.verify import main as verify_main

    sources = _capture_sources()
    tmp = Path(tempfile.mkdtemp(prefix="ticklake-fuzz-"))
    try:
        for k in range(n):
            name, files = rnd.choice(sources)
            d = tmp / str(k)
            d.mkdir()
            victim = rnd.randrange(len(files))
            for j, f in enumerate(files):
                data = _hft_head() if name == "hft_head.gz" else f.read_bytes()
                if j == victim:
                    data = mutate_capture(name if name.endswith((".gz", ".zip")) else f.name, data, rnd)
                (d / (name if j == 0 else f.name)).write_bytes(data)
            tally.tried += 1
            tally.mutated += 1
            out, err = io.StringIO(), io.StringIO()
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    code = verify_main(["capture", "verify", str(d / name)])
            except SystemExit as e:  # argparse: not expected for a path argument
                code = e.code
            except Exception:  # noqa: BLE001
                tally.crashed += 1
                tally.fail(f"capture verify raised on a mutated {name}\n{traceback.format_exc(limit=8)}")
                continue
            finally:
                shutil.rmtree(d, ignore_errors=True)
            lines = err.getvalue().strip().splitlines()
            if code == 2:
                if len(lines) != 1 or not lines[0].startswith("ticklake: "):
                    tally.crashed += 1
                    tally.fail(f"exit 2 without one clear line on {name}: {err.getvalue()[:500]}")
                else:
                    tally.specific += 1
                    tally.reasons["exit 2"] += 1
            elif code in (0, 1):
                tally.accepted += 1
                tally.reasons[f"exit {code}"] += 1
            else:
                tally.crashed += 1
                tally.fail(f"capture verify exit {code!r} on {name}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- normalizer ------------------------------------------------------------------------------------

_RAW_EVENTS: list[tuple[str, pb.Envelope]] = []


def raw_events() -> list[tuple[str, pb.Envelope]]:
    """(raw topic, envelope) of what the adapters make of the genuine captures, unmutated."""
    if not _RAW_EVENTS:
        for factory, sources in VENUES.values():
            for path, limit in sources:
                ad = factory()
                for rec in stream(path, min(limit, 300)):
                    res = (
                        ad.on_frame(rec.payload, rec.recv_ts_us)
                        if rec.kind == WS
                        else ad.on_rest(rest_request_for(rec), 200, rec.payload, rec.recv_ts_us)
                    )
                    for env in res.events:
                        if env.ingest_ts < 1_262_304_000_000_000:  # tardis fixtures carry no receive time
                            env.ingest_ts = env.exchange_ts + 1000
                            stamp_event_id(env)
                        topic = event_topic(
                            "raw", market_from_pb(env.market), event_type_from_pb(env.event_type), ad.exchange
                        )
                        _RAW_EVENTS.append((topic, env))
    return _RAW_EVENTS


def _catalog_for(events):
    from streaming.processors.instruments import InstrumentCatalog

    refs = {}
    for _, env in events:
        key = (env.exchange, env.market, env.native_symbol)
        if key in refs:
            continue
        base, _, rest = env.symbol.partition("-")
        quote = rest.split("-")[0]
        ex = ("", "binance", "bybit", "okx")[env.exchange] if env.exchange < 4 else "binance"
        refs[key] = InstrumentRef(
            ex,
            str(market_from_pb(env.market)),
            env.native_symbol,
            env.symbol,
            base,
            quote,
            from_scaled(1, env.price_scale) if env.price_scale else "1",
            from_scaled(1, env.size_scale) if env.size_scale else "1",
        )
    return InstrumentCatalog(refs.values())


def _scalar_fields(msg, out, prefix=()):
    for fd, value in msg.ListFields():
        if fd.message_type is not None:
            if hasattr(value, "add"):  # repeated message field
                for i, m in enumerate(value):
                    _scalar_fields(m, out, prefix + ((fd.name, i),))
            else:
                _scalar_fields(value, out, prefix + ((fd.name, None),))
        else:
            out.append((msg, fd))
    return out


def mutate_envelope(env: pb.Envelope, rnd: random.Random) -> pb.Envelope:
    e = pb.Envelope()
    e.CopyFrom(env)
    fields = _scalar_fields(e, [])
    msg, fd = rnd.choice(fields)
    t = fd.cpp_type
    if t in (fd.CPPTYPE_INT64, fd.CPPTYPE_INT32):
        big = 2**63 - 1 if t == fd.CPPTYPE_INT64 else 2**31 - 1
        v = rnd.choice(
            [
                0,
                -1,
                1,
                big,
                -big - 1,
                getattr(msg, fd.name) * 10,
                -getattr(msg, fd.name),
                getattr(msg, fd.name) + 1,
                rnd.randrange(-big, big),
            ]
        )
        setattr(msg, fd.name, max(-big - 1, min(big, v)))
    elif t in (fd.CPPTYPE_UINT64, fd.CPPTYPE_UINT32):
        setattr(msg, fd.name, rnd.choice([0, 1, 2**32 - 1]))
    elif t == fd.CPPTYPE_ENUM:
        setattr(msg, fd.name, rnd.choice([0, 1, 2, 3, 7, 99]))
    elif t == fd.CPPTYPE_STRING:
        setattr(msg, fd.name, rnd.choice(["", "X", "BTC-USDT", "BTCUSDT\n", "ÿ" * 3, "a" * 500]))
    elif t == fd.CPPTYPE_BOOL:
        setattr(msg, fd.name, not getattr(msg, fd.name))
    if rnd.random() < 0.7:  # a consistent id, so the record reaches the deeper checks
        stamp_event_id(e)
    return e


def fuzz_normalizer(rnd: random.Random, *, n: int, tally: Tally) -> None:
    from streaming.processors.normalizer import Normalizer

    events = raw_events()
    norm = Normalizer(_catalog_for(events))
    for offset in range(n):
        topic, env = rnd.choice(events)
        k = rnd.random()
        tally.tried += 1
        tally.mutated += 1
        try:
            if k < 0.6:
                rec = encode(mutate_envelope(env, rnd))
                value, headers = rec.value, rec.headers
            else:
                rec = encode(env)
                value, headers = mutate_bytes(rec.value, rnd), rec.headers
            if rnd.random() < 0.05:
                headers = [(h, mutate_bytes(v, rnd)) for h, v in headers]
            if rnd.random() < 0.03:
                topic = rnd.choice(["raw.spot.trades.binance", "processed.perp.trades.okx", "raw.x", ""])
        except Exception:  # noqa: BLE001 - the mutation itself made an unencodable envelope
            tally.tried -= 1
            tally.mutated -= 1
            continue
        try:
            out = norm.process(topic, offset % 3, offset, value, headers)
        except Exception:  # noqa: BLE001
            tally.crashed += 1
            tally.fail(f"normalizer raised on {topic}\n{traceback.format_exc(limit=6)}")
            continue
        if out.kind == "dlq":
            classify(tally, [out.reason])
        else:
            tally.accepted += 1
            tally.reasons[out.kind] += 1


# -- everything ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    streams_per_venue: int = 6
    mutation_rate: float = 0.15
    exchange_info: int = 150
    captures: int = 25
    envelopes: int = 1500


def run_all(seed: int, budget: Budget) -> dict[str, Tally]:
    tallies: dict[str, Tally] = {}
    for i, venue in enumerate(VENUES):
        t = tallies[venue] = Tally()
        fuzz_venue(
            venue, random.Random(seed * 1000 + i), streams=budget.streams_per_venue, p=budget.mutation_rate, tally=t
        )
    t = tallies["exchange-info"] = Tally()
    fuzz_exchange_info(random.Random(seed * 1000 + 10), n=budget.exchange_info, tally=t)
    t = tallies["capture-verify"] = Tally()
    fuzz_capture_verify(random.Random(seed * 1000 + 11), n=budget.captures, tally=t)
    t = tallies["normalizer"] = Tally()
    fuzz_normalizer(random.Random(seed * 1000 + 12), n=budget.envelopes, tally=t)
    return tallies
