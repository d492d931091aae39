"""Rendering of the per exchange/symbol/hour market chart (matplotlib Agg, no Dagster).

Input is one instrument's 1 s feature rows of one hour (features/spec.py schema), so the
chart shows exactly what the feature spec computed: mid and microprice inside the
best bid/ask band, top-10 order-book imbalance, traded volume per second and VWAP per
minute. Axes carry units (quote currency, base currency) and times are UTC.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.model import Exchange
from schemas.symbols import validate_canonical

CHART_NAME = "market_overview"
FIGSIZE = (12.0, 9.0)  # inches; at dpi 100 -> 1200 x 900 px


@dataclass(frozen=True, slots=True)
class ChartFiles:
    png: bytes
    svg: bytes
    preview_png: bytes


def chart_key(exchange: str, symbol: str, hour: datetime, name: str = CHART_NAME, ext: str = "png") -> str:
    """Artifact key exchange/symbol/dt=YYYY-MM-DD/hour=HH/<name>.<ext> (inputs validated)."""
    ex = Exchange(exchange).value
    sym = validate_canonical(symbol)
    h = hour.astimezone(UTC)
    if ext not in ("png", "svg"):
        raise ValueError(f"chart extension must be png or svg, got {ext!r}")
    return f"{ex}/{sym}/dt={h:%Y-%m-%d}/hour={h:%H}/{name}.{ext}"


def _series(rows: pa.Table) -> dict[str, np.ndarray]:
    rows = rows.sort_by("exchange_ts")
    t = np.array(pc.cast(rows["exchange_ts"], pa.int64()).to_numpy(zero_copy_only=False), dtype="datetime64[us]")
    ps = rows["price_scale"].to_numpy()
    ss = rows["size_scale"].to_numpy()

    def f(col: str, scale: np.ndarray | None = None) -> np.ndarray:
        v = np.array([np.nan if x is None else float(x) for x in rows[col].to_pylist()])
        return v / np.power(10.0, scale) if scale is not None else v

    vol = f("volume", ss)
    return {
        "t": t,
        "bid": f("best_bid_px", ps),
        "ask": f("best_ask_px", ps),
        "mid": f("mid_px"),
        "micro": f("microprice"),
        "imb": f("imbalance_10"),
        "vol": vol,
        "vwap": f("vwap"),
    }


def _minute_vwap(t: np.ndarray, vol: np.ndarray, vwap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    minute = t.astype("datetime64[m]")
    keys = np.unique(minute)
    out = []
    for k in keys:
        m = (minute == k) & (vol > 0) & ~np.isnan(vwap)
        out.append(np.sum(vwap[m] * vol[m]) / np.sum(vol[m]) if m.any() else np.nan)
    return keys.astype("datetime64[us]"), np.array(out)


def _pyplot():
    """matplotlib's pyplot and dates on the Agg backend (no display: charts are rendered in
    workers and tests), imported on the first render: every process that loads the code
    location imports this module, and pyplot alone took ~0.4 s of each one's start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    return plt, mdates


def render(
    rows: pa.Table, exchange: str, market: str, symbol: str, hour: datetime, *, dpi: int = 100, preview_dpi: int = 40
) -> ChartFiles:
    """PNG, SVG and a small preview PNG of one instrument-hour."""
    validate_canonical(symbol)
    base, quote = symbol.split("-")[0], symbol.split("-")[1]
    s = _series(rows)
    h = hour.astimezone(UTC)
    plt, mdates = _pyplot()
    fig, (ax1, ax2, ax3) = plt.subplots(
        3, 1, figsize=FIGSIZE, sharex=True, gridspec_kw={"height_ratios": [3, 1.2, 1.8]}
    )
    try:
        has_book = ~np.isnan(s["bid"]) & ~np.isnan(s["ask"])
        ax1.fill_between(
            s["t"],
            s["bid"],
            s["ask"],
            where=has_book,
            color="tab:blue",
            alpha=0.25,
            step="post",
            label="spread (best bid .. best ask)",
        )
        ax1.plot(s["t"], s["mid"], color="tab:blue", lw=1.0, label="mid")
        ax1.plot(s["t"], s["micro"], color="tab:orange", lw=0.9, label="microprice")
        ax1.set_ylabel(f"price ({quote})")
        ax1.legend(loc="upper left", fontsize=8)
        ax1.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax1.set_title(f"{exchange} {market} {symbol} — {h:%Y-%m-%d %H:%M}–{(h + timedelta(hours=1)):%H:%M} UTC")

        ax2.plot(s["t"], s["imb"], color="tab:green", lw=0.9)
        ax2.axhline(0.0, color="grey", lw=0.6)
        ax2.set_ylim(-1.05, 1.05)
        ax2.set_ylabel("book imbalance\n(top 10, bid−ask)/(bid+ask)")

        ax3.bar(s["t"], s["vol"], width=1 / 86_400, color="tab:grey", label=f"volume per second ({base})")
        ax3.set_ylabel(f"traded volume ({base})")
        vt, vw = _minute_vwap(s["t"], s["vol"], s["vwap"])
        if vt.size:  # close the last step at its minute's end
            vt, vw = np.append(vt, vt[-1] + np.timedelta64(60, "s")), np.append(vw, vw[-1])
        ax4 = ax3.twinx()
        ax4.step(vt, vw, where="post", color="tab:red", lw=1.2, label=f"VWAP per minute ({quote})")
        ax4.set_ylabel(f"VWAP ({quote})")
        ax4.ticklabel_format(axis="y", useOffset=False, style="plain")
        lines = ax3.get_legend_handles_labels()
        lines4 = ax4.get_legend_handles_labels()
        ax3.legend(lines[0] + lines4[0], lines[1] + lines4[1], loc="upper left", fontsize=8)
        ax3.set_xlabel("time (UTC)")
        ax3.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))
        ax3.set_xlim(
            np.datetime64(h.replace(tzinfo=None), "us") if s["t"].size == 0 else s["t"].min(),
            np.datetime64((h + timedelta(hours=1)).replace(tzinfo=None), "us")
            if s["t"].size == 0
            else s["t"].max() + np.timedelta64(1, "s"),
        )
        for ax in (ax1, ax2, ax3):
            ax.grid(True, alpha=0.3)
        fig.tight_layout()
        out = {}
        for fmt, d in (("png", dpi), ("svg", dpi), ("preview", preview_dpi)):
            buf = io.BytesIO()
            fig.savefig(
                buf, format="svg" if fmt == "svg" else "png", dpi=d, metadata={"Date": None} if fmt == "svg" else None
            )
            out[fmt] = buf.getvalue()
    finally:
        plt.close(fig)
    return ChartFiles(out["png"], out["svg"], out["preview"])
