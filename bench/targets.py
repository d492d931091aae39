"""A figure's target, read by a small fixed grammar, and its status in the run that measured it.

Targets stay the short text the table shows, but only these forms are accepted (anything else
gets the status "unchecked: target not machine-readable", never a silent "met"):

  ≥ 3× cryptofeed              ratio (value / baseline) ≥ 3; the baseline named must be the figure's
  ≥ 50 %                       ratio ≥ 0.50
  ≤ json parse                 value ≤ baseline value; the baseline named must be the figure's
  < 2 s (SLO)                  value < 2 in the figure's own unit (s, ms, µs); a "(...)" remark is ignored
  < 0.1 s at 20k ev/s          the same, holding at a load of 20,000 events/s
  total ≤ 10 % of one core     value ≤ 10 in %core (a leading word before the operator is a label)

A figure may name a ``floor``: another figure of the same run that bounds it (the least work the
product must do, done bare, against the same baseline). A missed target is "floor: ..." (out of
reach) only when that floor itself misses the target; a floor that meets it excuses nothing.
For a target "at R ev/s" the floor may instead be a rate (events/s): the most the machine
carries, which puts the target out of reach when it is below R.

Pure functions, no I/O: bench/run_all.py calls ``statuses`` on each benchmark's figures.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

OPS = {"≥": operator.ge, ">=": operator.ge, ">": operator.gt, "≤": operator.le, "<=": operator.le, "<": operator.lt}
RATES = ("events/s", "ev/s")

_HEAD = re.compile(r"^\s*(?:(?P<label>[a-z]+)\s+)?(?P<op>≥|>=|≤|<=|<|>)\s*(?P<rest>.+?)\s*$")
_NUM = r"(?P<n>\d+(?:\.\d+)?)"
_TIMES = re.compile(rf"^{_NUM}\s*[×x]\s*(?P<base>\S.*)$")
_CORE = re.compile(rf"^{_NUM}\s*%\s*of one core$")
_PCT = re.compile(rf"^{_NUM}\s*%$")
_VALUE = re.compile(
    rf"^{_NUM}\s*(?P<unit>s|ms|µs)(?:\s+at\s+(?P<rate>\d+(?:\.\d+)?)(?P<k>k?)\s*ev/s)?(?:\s*\([^)]*\))?$"
)


@dataclass(frozen=True)
class Target:
    op: str  # one of OPS
    on: str  # "ratio": value / baseline; "value": the value itself; "baseline": value against baseline value
    bound: float = 1.0  # the number compared against (for "baseline": the ratio bound, 1)
    unit: str | None = None  # "value" targets: the unit the figure must be in
    baseline: str | None = None  # the baseline the target names (the figure's baseline must start with it)
    at_rate: float | None = None  # "at R ev/s": the load the target holds at
    pct: bool = False  # written as a percentage (for describing a ratio)


def parse_target(text: str | None) -> Target | None:
    """The target of one of the forms above, or None for any other text (an empty target too)."""
    m = _HEAD.match(text or "")
    if not m:
        return None
    op, rest = m["op"], m["rest"]
    if m["label"] not in (None, "total"):
        return None
    if x := _TIMES.match(rest):
        return Target(op, "ratio", float(x["n"]), baseline=x["base"].strip())
    if x := _CORE.match(rest):
        return Target(op, "value", float(x["n"]), unit="%core")
    if x := _PCT.match(rest):
        return Target(op, "ratio", float(x["n"]) / 100, pct=True)
    if x := _VALUE.match(rest):
        rate = x["rate"] and float(x["rate"]) * (1000 if x["k"] else 1)
        return Target(op, "value", float(x["n"]), unit=x["unit"], at_rate=rate or None)
    if op in ("≤", "<=", "≥", ">=") and not re.match(r"^[\d.]", rest):
        return Target(op, "baseline", 1.0, baseline=rest)
    return None


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def _ratio(fig: dict) -> float | None:
    r = _num(fig.get("ratio"))
    if r is not None:
        return r
    v, b = _num(fig.get("value")), _num(fig.get("baseline_value"))
    return v / b if v is not None and b else None


def comparable(t: Target, fig: dict) -> str:
    """Why ``fig`` cannot be judged against ``t`` ("" when it can)."""
    if t.baseline is not None and not (fig.get("baseline") or "").startswith(t.baseline):
        return f"target names baseline {t.baseline!r}, figure's is {fig.get('baseline')!r}"
    if t.unit is not None and fig.get("unit") != t.unit:
        return f"target in {t.unit}, figure in {fig.get('unit')}"
    return ""


def meets(t: Target, fig: dict) -> bool | None:
    """Whether the figure meets the target; None when it cannot say (no baseline measured,
    or the figure is in another unit / against another baseline than the target names).
    An unmeasured value (null) does not meet it."""
    if comparable(t, fig):
        return None
    if _num(fig.get("value")) is None:
        return False
    if t.on == "value":
        return OPS[t.op](_num(fig["value"]), t.bound)
    if _num(fig.get("baseline_value")) is None:
        return None
    return OPS[t.op](_ratio(fig), t.bound)


def describe(t: Target, fig: dict) -> str:
    """The figure's value as the target reads it, for a status line."""
    v = _num(fig.get("value"))
    if v is None:
        return "not measured"
    if fig.get("unit") in RATES and t.at_rate is not None:
        return f"{v:,.0f} {fig['unit']} < {t.at_rate:,.0f}" if v < t.at_rate else f"{v:,.0f} {fig['unit']}"
    if t.on == "ratio":
        r = _ratio(fig)
        return "no baseline" if r is None else (f"{r * 100:.0f} %" if t.pct else f"{r:.2f}×")
    if t.on == "baseline":
        b = _num(fig.get("baseline_value"))
        return f"{v:,.2f} {fig.get('unit')} vs {b or 0:,.2f} ({_ratio(fig) or 0:.2f}×)"
    return f"{v:,.3g} {fig.get('unit')}"


def floor_meets(t: Target, floor: dict, fig: dict) -> tuple[bool | None, str]:
    """Whether the floor figure meets the target of ``fig`` (None: not comparable, with why).
    A rate floor for an "at R ev/s" target meets it when it reaches R; any other floor is judged
    as the figure is, and must be against the same baseline."""
    if t.at_rate is not None and floor.get("unit") in RATES:
        v = _num(floor.get("value"))
        return (None, "floor not measured") if v is None else (v >= t.at_rate, "")
    if floor.get("unit") != fig.get("unit"):
        return None, f"floor in {floor.get('unit')}, figure in {fig.get('unit')}"
    if t.on != "value" and floor.get("baseline") != fig.get("baseline"):
        return None, f"floor against {floor.get('baseline')!r}, figure against {fig.get('baseline')!r}"
    ok = meets(t, floor)
    return ok, "" if ok is not None else "floor has no baseline value"


def status(fig: dict, by_name: dict[str, dict]) -> str:
    """ "met", "floor: <floor> <its value> (target out of reach)", "MISS ...", or for a target
    this cannot judge "unchecked: ..."; "" for a figure without a target."""
    text = fig.get("target") or ""
    if not text.strip():
        return ""
    t = parse_target(text)
    if t is None:
        return "unchecked: target not machine-readable"
    why = comparable(t, fig)
    if why:
        return f"unchecked: {why}"
    ok = meets(t, fig)
    if ok is None:
        return "unchecked: no baseline value"
    if ok:
        return "met"
    name = fig.get("floor")
    if not name:
        return "MISS"
    floor = by_name.get(name)
    if floor is None:
        return f"MISS (floor {name!r} not measured in this run)"
    fok, why = floor_meets(t, floor, fig)
    if fok is None:
        return f"MISS (floor {name!r} not comparable: {why})"
    if fok:
        return f"MISS (its floor {name} {describe(t, floor)} meets the target)"
    return f"floor: {name.removeprefix('floor: ')} {describe(t, floor)} (target out of reach)"


def statuses(figs: list[dict]) -> list[str]:
    """The status of each figure of one benchmark run (floors are looked up among them)."""
    by_name = {f["name"]: f for f in figs}
    return [status(f, by_name) for f in figs]
