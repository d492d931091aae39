"""Collector shard configuration: what a shard collects, from where, through which IPs.

A shard is one venue + market and a group of symbols, spread over the egress IPs it may
use. The list of shards lives in one YAML file ($TICKLAKE_COLLECTORS, default
$TICKLAKE_HOME/collectors.yaml) read by the supervisor sensor (which keeps one run per
enabled shard) and by the shard run itself, so the UI, the CLI and the runs agree.
Plain Python (no Dagster): the runner and tests build ShardConfig directly.

Example::

    defaults:
      egress_ips: [10.0.0.11, 10.0.0.12]
    shards:
      - name: binance-spot-majors
        exchange: binance
        market: spot
        symbols: [BTC-USDT, ETH-USDT]
      - name: okx-perp-0
        exchange: okx
        market: perp
        symbols: [BTC-USDT-PERP]
        enabled: false
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pydantic import Field

from collectors.exchanges import registry
from collectors.exchanges.venue import Endpoints
from runtime.service_cli import ServiceSettings
from schemas.model import Exchange, Market
from schemas.symbols import native_symbol, validate_canonical

COLLECTORS_ENV = "TICKLAKE_COLLECTORS"
HOME_ENV = "TICKLAKE_HOME"
DEFAULT_FILE = "collectors.yaml"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,62}$")


class ConfigError(ValueError):
    """A shard configuration that cannot run; the message names the field."""


def _validate_ip(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError as exc:
        raise ConfigError(f"egress IP {ip!r} is not an IP address") from exc


@dataclass(frozen=True, slots=True)
class ShardConfig:
    name: str
    exchange: Exchange
    market: Market
    symbols: tuple[str, ...]  # canonical (BTC-USDT, BTC-USDT-PERP)
    egress_ips: tuple[str, ...] = ()  # empty: the OS picks the source address
    ws_url: str = ""  # empty: the venue's own (collectors/exchanges/<venue>_venue.py)
    rest_url: str = ""
    enabled: bool = True
    max_symbols_per_connection: int = 200
    #: planned reconnect before the venue's 24 h cut; the new connection opens first.
    rotation_s: float = 23.0 * 3600
    #: no frame for this long on a subscribed connection means it is dead.
    watchdog_s: float = 30.0
    #: longest overlap of old and new connection during rotation/failover.
    handover_timeout_s: float = 30.0
    dedup_window: int = 200_000
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    #: extra keyword arguments for the venue adapter constructor (e.g. book depth).
    adapter_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ConfigError(f"shard name must match {_NAME_RE.pattern}: {self.name!r}")
        object.__setattr__(self, "exchange", Exchange(self.exchange))
        object.__setattr__(self, "market", Market(self.market))
        if not self.symbols:
            raise ConfigError(f"shard {self.name}: no symbols")
        try:
            syms = tuple(validate_canonical(s) for s in self.symbols)
        except ValueError as exc:
            raise ConfigError(f"shard {self.name}: {exc}") from exc
        if len(set(syms)) != len(syms):
            raise ConfigError(f"shard {self.name}: duplicate symbols")
        for s in syms:  # every symbol must have a venue spelling for this market
            try:
                native_symbol(self.exchange, self.market, s)
            except ValueError as exc:
                raise ConfigError(f"shard {self.name}: {exc}") from exc
        object.__setattr__(self, "symbols", syms)
        ips = tuple(_validate_ip(i) for i in self.egress_ips)
        if len(set(ips)) != len(ips):
            raise ConfigError(f"shard {self.name}: duplicate egress IPs")
        object.__setattr__(self, "egress_ips", ips)
        for attr in ("max_symbols_per_connection", "dedup_window"):
            if int(getattr(self, attr)) < 1:
                raise ConfigError(f"shard {self.name}: {attr} must be >= 1")
        for attr in ("rotation_s", "watchdog_s", "handover_timeout_s", "backoff_base_s", "backoff_cap_s"):
            if float(getattr(self, attr)) <= 0:
                raise ConfigError(f"shard {self.name}: {attr} must be > 0")
        for url in (self.ws_url, self.rest_url):
            if url and not re.match(r"^(wss?|https?)://", url):
                raise ConfigError(f"shard {self.name}: not a ws/http URL: {url!r}")
        object.__setattr__(self, "adapter_options", dict(self.adapter_options))

    @property
    def endpoints(self) -> Endpoints:
        default = registry.endpoints(self.exchange, self.market)
        return Endpoints(self.ws_url or default.ws, self.rest_url or default.rest)

    @property
    def native_symbols(self) -> tuple[str, ...]:
        return tuple(native_symbol(self.exchange, self.market, s) for s in self.symbols)

    def canonical_of(self) -> dict[str, str]:
        return dict(zip(self.native_symbols, self.symbols, strict=True))

    @property
    def service_tag(self) -> str:
        """Value of the Dagster run tag that marks this shard's live run."""
        return f"collector:{self.name}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exchange"], d["market"] = str(self.exchange), str(self.market)
        d["symbols"], d["egress_ips"] = list(self.symbols), list(self.egress_ips)
        # plain lists, so the dict survives yaml.safe_dump and JSON alike
        d["adapter_options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.adapter_options.items()}
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> ShardConfig:
        merged = {**(defaults or {}), **data}
        known = {f.name for f in fields(cls)}
        unknown = set(merged) - known
        if unknown:
            raise ConfigError(f"unknown shard keys {sorted(unknown)}; known: {sorted(known)}")
        for key in ("symbols", "egress_ips"):
            if key in merged:
                val = merged[key]
                if isinstance(val, str) or not isinstance(val, Sequence):
                    raise ConfigError(f"{key} must be a list")
                merged[key] = tuple(str(v) for v in val)
        try:
            return cls(**merged)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"shard {merged.get('name')!r}: {exc}") from exc

    def with_overrides(self, **changes: Any) -> ShardConfig:
        return replace(self, **changes)


def config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get(COLLECTORS_ENV):
        return Path(env[COLLECTORS_ENV])
    return Path(env.get(HOME_ENV) or ".ticklake") / DEFAULT_FILE


def parse_shards(doc: Mapping[str, Any] | None) -> list[ShardConfig]:
    if not doc:
        return []
    if not isinstance(doc, Mapping):
        raise ConfigError("collectors config must be a mapping with a 'shards' list")
    unknown = set(doc) - {"defaults", "shards"}
    if unknown:
        raise ConfigError(f"unknown top-level keys {sorted(unknown)}; expected defaults, shards")
    defaults = doc.get("defaults") or {}
    shards = [ShardConfig.from_dict(s, defaults) for s in doc.get("shards") or []]
    names = [s.name for s in shards]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"duplicate shard names {sorted(dup)}")
    return shards


def load_shards(path: str | Path | None = None) -> list[ShardConfig]:
    """All shards of the config file; a missing file means no shards (nothing to supervise)."""
    import yaml

    p = Path(path) if path is not None else config_path()
    if not p.exists():
        return []
    with p.open() as fh:
        return parse_shards(yaml.safe_load(fh))


def dump_shards(shards: Sequence[ShardConfig], path: str | Path) -> Path:
    import yaml

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump({"shards": [s.to_dict() for s in shards]}, sort_keys=False))
    return p


#: What `ticklake up` collects out of the box (written to $TICKLAKE_HOME/collectors.yaml
#: when that file is absent; the user edits it there): BTC and ETH on each venue's spot and
#: linear perpetual market, one shard per (venue, market) named as below.
DEFAULT_SHARD_NAMES = {
    Exchange.BINANCE: {Market.SPOT: "binance-spot", Market.PERP: "binance-usdm"},
    Exchange.BYBIT: {Market.SPOT: "bybit-spot", Market.PERP: "bybit-linear"},
    Exchange.OKX: {Market.SPOT: "okx-spot", Market.PERP: "okx-swap"},
}
DEFAULT_SYMBOLS = {Market.SPOT: ("BTC-USDT", "ETH-USDT"), Market.PERP: ("BTC-USDT-PERP", "ETH-USDT-PERP")}

_DEFAULT_HEADER = """\
# Collector shards: one long-running collector per enabled shard (started by the collector
# supervisor once `ticklake up` has turned the services on). Edit this file to choose what
# is collected; the supervisor picks changes up by itself. `ticklake status` shows each
# shard's connection, the age of its last frame and, if a venue cannot be reached, why.
#
# Per shard: name, exchange (binance | bybit | okx), market (spot | perp | future),
# symbols (canonical: BTC-USDT spot, BTC-USDT-PERP perpetual, BTC-USD-240927 dated),
# and optionally enabled: false, egress_ips: [...] (source addresses to spread symbols
# over), ws_url / rest_url (endpoint overrides), max_symbols_per_connection, watchdog_s,
# adapter_options (e.g. {depth: 50}). Field reference: collectors/config.py.
# `ticklake up --replay CAPTURE` puts this file aside while the replay runs.
"""

DEFAULT_COLLECTORS_YAML = (
    _DEFAULT_HEADER
    + "shards:\n"
    + "".join(
        f"  - name: {name}\n    exchange: {ex}\n    market: {mk}\n    symbols: [{', '.join(DEFAULT_SYMBOLS[mk])}]\n"
        for ex, names in DEFAULT_SHARD_NAMES.items()
        for mk, name in names.items()
    )
)


def ensure_default_config(path: str | Path) -> bool:
    """Write the default collectors config to ``path`` unless a file is there (True if
    written). An existing file is the user's and is never touched."""
    p = Path(path)
    if p.exists():
        return False
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(DEFAULT_COLLECTORS_YAML)
    os.replace(tmp, p)
    return True


def find_shard(name: str, path: str | Path | None = None) -> ShardConfig:
    for s in load_shards(path):
        if s.name == name:
            return s
    raise ConfigError(f"no shard named {name!r} in {path or config_path()}")


class CollectorShardSettings(ServiceSettings):
    """One shard run's settings: the Dagster run config (pipelines/services/collector.py) and
    the `python -m collectors.runner` options (runtime/service_cli.py)."""

    shard: str = Field("", json_schema_extra={"cli": "shard"})
    """Shard name in the collectors config file; the fields below override its values."""
    config_file: str = Field("", json_schema_extra={"cli": "--config"})
    """Collectors YAML (default $TICKLAKE_COLLECTORS, else $TICKLAKE_HOME/collectors.yaml)."""
    exchange: str = ""
    market: str = ""
    symbols: list[str] = []
    """Canonical symbols (BTC-USDT, BTC-USDT-PERP)."""
    egress_ips: list[str] = []
    """Source addresses to bind, one per egress IP (empty: the OS default)."""
    ws_url: str = ""
    """Websocket base URL (host only; the adapter adds the venue's paths). Empty: the venue."""
    rest_url: str = ""
    max_seconds: float = 0.0
    """Stop after this long (tests, demos); 0 = run until terminated."""
    metrics_port: int = 0
    """Serve Prometheus metrics on this port (0: an ephemeral port, recorded for `ticklake status`)."""


def resolve_shard(settings: CollectorShardSettings) -> ShardConfig:
    """The shard a run collects: from the config file by name, with explicit overrides."""
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "exchange": settings.exchange,
            "market": settings.market,
            "symbols": tuple(settings.symbols),
            "egress_ips": tuple(settings.egress_ips),
            "ws_url": settings.ws_url,
            "rest_url": settings.rest_url,
        }.items()
        if v
    }
    if settings.shard:
        try:
            base = find_shard(settings.shard, settings.config_file or None)
        except ConfigError:
            if not {"exchange", "market", "symbols"} <= overrides.keys():
                raise
            return ShardConfig.from_dict({"name": settings.shard, **overrides})
        return ShardConfig.from_dict({**base.to_dict(), **overrides}) if overrides else base
    if not {"exchange", "market", "symbols"} <= overrides.keys():
        raise ConfigError(f"give a shard name from {config_path()} or exchange, market and symbols")
    return ShardConfig.from_dict({"name": f"{overrides['exchange']}-{overrides['market']}", **overrides})
