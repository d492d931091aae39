"""One collector shard: websocket sessions -> venue adapter -> Kafka raw.* topics.

The shard's symbols are planned onto its egress IPs (sharding.py); each planned
connection is a Worker with its own adapter (books, sequence state, keep-alive timer)
and one websocket session per URL the adapter needs (Binance USD-M routes streams over
two). Sessions reconnect forever with jittered backoff; a Worker's adapter survives its
reconnects, so a missed stretch shows up as a gap and a per-symbol resync, as the venue
rules require.

Changes of plan are make-before-break: a planned 24 h rotation, a venue's "going away"
notice, an IP that got throttled/banned (its symbols move to healthy IPs) or recovered
(they move back) all start the new Worker first and retire the old one only when the new
one has been receiving for ``handover_overlap_s``. While both run, the same venue events
arrive twice and hash to the same event_id; a bounded dedup window publishes each once.

Every event goes to raw.<market>.<domain>[.<type>].<exchange> keyed by canonical symbol
(schemas/serde.py) with the producer settings of ARCHITECTURE §3; every refused frame
goes to dlq.collector as a DeadLetter with the adapter's reason. Stopping (cancel, stop
event, SIGTERM in the Dagster run) closes the sockets and flushes the producer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from collectors import metrics
from collectors.backoff import Backoff, BackoffPolicy
from collectors.config import ShardConfig
from collectors.dedup import DedupWindow
from collectors.exchanges import registry
from collectors.exchanges.base import DeadLetter, FrameResult, RestRequest
from collectors.logs import get_logger, log_event
from collectors.ratelimit import IpState
from collectors.rest_client import DEFAULT_IP, RestPool
from collectors.sharding import ConnectionSpec, plan_connections, preference
from collectors.status import (
    REPORT_INTERVAL_S,
    short_url,
    status_file,
    summarize,
    write_report,
)
from collectors.ws_client import SessionEnded, WsSession, WsSettings, now_us
from runtime.dlq import DLQ_SYMBOL_MAX, clip_raw
from runtime.kafka_config import is_idempotent
from schemas.gen.ticklake.v1 import events_pb2 as pb
from schemas.model import (
    event_type_from_pb,
    exchange_from_pb,
    market_from_pb,
)
from schemas.serde import SCHEMA_HEADER, SCHEMA_VERSION, encode
from schemas.topics import DlqStage, Stage, dlq_topic, event_topic

log = get_logger()


def _shard_log(shard: str, level: int, event: str, **fields: object) -> None:
    """Every line a shard logs names the shard, so one grep follows one shard through a log."""
    log_event(log, level, event, shard=shard, **fields)


DLQ_TOPIC = dlq_topic(DlqStage.COLLECTOR)


# -- adapters --------------------------------------------------------------------------------------


def make_adapter(cfg: ShardConfig, **extra: Any):
    """The venue adapter for a shard, with the shard's adapter_options."""
    # frames about symbols the shard does not collect are refused, not tracked (memory, labels)
    opts = {"subscribed": cfg.native_symbols, **cfg.adapter_options, **extra, "shard": cfg.name}
    return registry.make_adapter(cfg.exchange, cfg.market, cfg.symbols, **opts)


def adapter_urls(adapter: Any, base: str, natives: list[str]) -> list[str]:
    if hasattr(adapter, "ws_urls"):
        return list(adapter.ws_urls(base, natives))
    return [adapter.ws_url(base, natives)]


# -- Kafka side ------------------------------------------------------------------------------------


@dataclass
class ShardStats:
    frames_in: int = 0
    events_out: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    resyncs: Counter = field(default_factory=Counter)
    reconnects: int = 0
    sessions_opened: int = 0
    rotations: int = 0
    workers_started: int = 0
    producer_retries: int = 0
    #: records the broker refused for good (too large, invalid): dropped, logged
    delivery_errors: int = 0
    #: records whose delivery failed for a passing reason (broker down past
    #: message.timeout.ms, producer fenced or fatal): produced again, never dropped
    redelivered: int = 0
    producers_replaced: int = 0
    delivered: int = 0
    rest_requests: int = 0
    rest_status: Counter = field(default_factory=Counter)
    session_ends: Counter = field(default_factory=Counter)  # reason kind -> count
    ip_events: list = field(default_factory=list)  # (ts, ip, state)

    def as_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, Counter) else v) for k, v in self.__dict__.items() if k != "ip_events"}


#: Delivery errors no retry can fix: the record itself is refused.
_PERMANENT_DELIVERY_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_RECORD,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.TOPIC_EXCEPTION,
    }
)


#: Delivery errors that mean the producer's own id/epoch is no longer valid on the broker
#: (e.g. a broker restart after timeouts): not fatal to librdkafka, but every later record
#: of this producer fails the same way, so the publisher starts a new producer.
_PRODUCER_STATE_ERRORS = frozenset(
    {
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
    }
)
#: Seconds between two rounds of producing failed records again (a broker that is down
#: must not turn redelivery into a busy loop).
REDELIVERY_INTERVAL_S = 0.5
#: librdkafka statistics interval of a shard's producer: they say when its producer id arrived
#: (Publisher.wait_ready), which the shard waits for before connecting: about 1 s at start. ~30 KB
#: of JSON each (8 topics), so not more often.
READY_STATS_INTERVAL_MS = 1000
#: How long a shard waits for its producer id before connecting anyway (a broker down at start:
#: the records then queue in the producer as they did before, and the shard says so).
PRODUCER_READY_TIMEOUT_S = 15.0


class Publisher:
    """Serializes and produces; the only code in a shard that touches Kafka.

    Given a config, it asks librdkafka for delivery reports of failures only: a Python
    callback per acknowledged record would cost about as much as the produce call, and
    the delivered count follows from what is still queued (see ``delivered``)."""

    def __init__(self, cfg: ShardConfig, producer: Producer | dict[str, Any], stats: ShardStats) -> None:
        self.cfg = cfg
        self.stats = stats
        self._per_message_cb = not isinstance(producer, dict)
        self._config: dict[str, Any] | None = None
        #: the producer may append what it is given at once (wait_ready)
        self.ready = True
        if isinstance(producer, dict):
            self._config = {**producer, "delivery.report.only.error": True, "on_delivery": self._on_delivery}
            if is_idempotent(self._config):
                self._config |= {"statistics.interval.ms": READY_STATS_INTERVAL_MS, "stats_cb": self._on_stats}
            producer = self._new_producer()
        self.producer = producer
        #: records to produce again (their delivery failed for a passing reason)
        self._redeliver: list[tuple[str, bytes | None, bytes | None, Any]] = []
        self._topics: dict[tuple[int, int, int], str] = {}
        self._pending = 0
        self._produced = 0

    def topic_for(self, env: pb.Envelope) -> str:
        key = (env.exchange, env.market, env.event_type)
        t = self._topics.get(key)
        if t is None:
            t = self._topics[key] = event_topic(
                Stage.RAW,
                market_from_pb(env.market),
                event_type_from_pb(env.event_type),
                exchange_from_pb(env.exchange),
            )
        return t

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            if err.code() in _PERMANENT_DELIVERY_ERRORS:
                self.stats.delivery_errors += 1
                _shard_log(self.cfg.name, logging.ERROR, "delivery failed", topic=msg.topic(), error=str(err))
                return
            # A broker outage longer than message.timeout.ms, or a producer that turned
            # fatal (e.g. the broker lost its idempotence state in a restart): the venue
            # will not send this event again, so it is produced again (a copy that did land
            # has the same event id, and consumers dedup by it).
            self.stats.redelivered += 1
            self._redeliver.append((msg.topic(), msg.key(), msg.value(), msg.headers()))
            if err.fatal() or err.code() in _PRODUCER_STATE_ERRORS:
                self._fatal = True
            if self.stats.redelivered == 1 or self.stats.redelivered % 10_000 == 0:
                _shard_log(
                    self.cfg.name,
                    logging.WARNING,
                    "delivery failed; producing again",
                    topic=msg.topic(),
                    error=str(err),
                    redelivered=self.stats.redelivered,
                )
        elif self._per_message_cb:
            self.stats.delivered += 1

    _fatal = False

    def _new_producer(self) -> Producer:
        assert self._config is not None
        self.ready = not is_idempotent(self._config)
        return Producer(self._config)

    def _on_stats(self, stats_json: str) -> None:
        if not self.ready:
            self.ready = json.loads(stats_json).get("eos", {}).get("idemp_state") == "Assigned"

    def wait_ready(self, timeout: float) -> bool:
        """Until the idempotent producer holds its producer id (False if `timeout` passed first).

        The feature processor's upstream gate trusts a raw record's CreateTime (the produce()
        call) to be at most APPEND_MARGIN_S before the record reaches the broker. A new
        idempotent producer sends nothing until the broker has given it a producer id:
        librdkafka asks on a timer, measured 0.50 s after creation on the embedded broker. A
        shard that subscribed at once stamped its first records half a second before they
        could land, and the gate cleared past them (docs/decisions.md, "Spot features lost at
        replay start: the shard's first records waited for a producer id"). Waiting here, before any
        connection, keeps that promise; the venue (or the emulator, which holds a capture's
        frames until their stream is subscribed) sends nothing meanwhile."""
        deadline = time.monotonic() + timeout
        while not self.ready and time.monotonic() < deadline:
            self.producer.poll(0.05)
        return self.ready

    def _replace_producer(self) -> None:
        """A fatal producer error (idempotence state lost) leaves the producer unusable: queue
        what it still holds for redelivery and continue with a new one."""
        if self._config is None:
            raise KafkaException("producer failed fatally and was not built by the publisher")
        old = self.producer
        old.purge()  # queued/in-flight records come back as failed deliveries -> _redeliver
        old.poll(0)
        self._produced -= len(old)  # anything it still reports is not counted as delivered
        self.producer = self._new_producer()
        self._fatal = False
        self.stats.producers_replaced += 1
        _shard_log(
            self.cfg.name,
            logging.WARNING,
            "producer replaced after a fatal error",
            redeliver=len(self._redeliver),
        )

    _last_redelivery = 0.0

    def _flush_redeliveries(self) -> None:
        now = time.monotonic()
        if now - self._last_redelivery < REDELIVERY_INTERVAL_S:
            return
        self._last_redelivery = now
        if self._fatal:
            self._replace_producer()
        batch, self._redeliver = self._redeliver, []
        for topic, key, value, headers in batch:
            self._produce(topic, key, value, headers)

    def _produce(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        while True:
            try:
                if self._per_message_cb:
                    self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery)
                else:
                    self.producer.produce(topic, value=value, key=key, headers=headers)
                break
            except BufferError:
                # Local queue full: the broker is slower than the venue. Serve callbacks
                # (which frees the queue) and try again; never drop.
                self.stats.producer_retries += 1
                self.producer.poll(0.05)
            except KafkaException as exc:
                if not exc.args[0].fatal():
                    raise
                self._replace_producer()
        self._produced += 1
        self._pending += 1
        if self._pending >= 1000:
            self._pending = 0
            self.producer.poll(0)

    def publish(self, env: pb.Envelope) -> None:
        rec = encode(env)
        self._produce(self.topic_for(env), rec.key, rec.value, rec.headers)
        self.stats.events_out += 1

    def dead_letter(self, dl: DeadLetter, source: str, ingest_ts: int) -> None:
        # Clipped to what the broker accepts (a >1 MB frame raised MSG_SIZE_TOO_LARGE here and
        # killed the session); size and SHA-256 of the whole frame are kept.
        clip = clip_raw(dl.raw)
        reason, native = clip.annotate(dl.reason), dl.native_symbol[:DLQ_SYMBOL_MAX]
        msg = pb.DeadLetter(
            stage=str(DlqStage.COLLECTOR),
            reason=reason,
            source=source[:500],
            raw=clip.raw,
            ingest_ts=ingest_ts,
            exchange=str(self.cfg.exchange),
            native_symbol=native,
        )
        key = (native or str(self.cfg.exchange)).encode()
        self._produce(
            DLQ_TOPIC,
            key,
            msg.SerializeToString(),
            [
                (SCHEMA_HEADER, SCHEMA_VERSION.encode()),
                ("shard", self.cfg.name.encode()),
                ("reason", reason[:200].encode()),
                *clip.headers(),
            ],
        )
        self.stats.dead_letters += 1

    def poll(self) -> None:
        self.producer.poll(0)
        if self._redeliver or self._fatal:
            self._flush_redeliveries()
        self._update_delivered()

    def _update_delivered(self) -> None:
        if not self._per_message_cb:
            # produced - still queued or in flight - failed = acknowledged
            self.stats.delivered = (
                self._produced - len(self.producer) - self.stats.delivery_errors - self.stats.redelivered
            )

    def flush(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        left = self.producer.flush(timeout)
        while (self._redeliver or self._fatal) and time.monotonic() < deadline:
            time.sleep(min(REDELIVERY_INTERVAL_S, max(deadline - time.monotonic(), 0)))
            self._flush_redeliveries()
            left = self.producer.flush(max(deadline - time.monotonic(), 0))
        self._update_delivered()
        return left + len(self._redeliver)


# -- connections -----------------------------------------------------------------------------------


class Worker:
    """One planned connection: an adapter and a session per URL it needs."""

    def __init__(self, runner: ShardRunner, spec: ConnectionSpec, reason: str) -> None:
        self.runner = runner
        self.spec = spec
        self.reason = reason
        self.natives = [runner.native_of[s] for s in spec.symbols]
        self.adapter = make_adapter(runner.cfg, instruments=dict(runner.instruments))
        runner.adapters.append(self.adapter)
        self.urls = adapter_urls(self.adapter, runner.cfg.endpoints.ws, self.natives)
        self.sessions: dict[str, WsSession | None] = dict.fromkeys(self.urls)
        self.first_frame: dict[str, float] = {}
        #: per URL, for the shard's status report: consecutive failed connects, the last
        #: failure (wall time, reason), and the newest frame of an ended session (monotonic)
        self.failures: dict[str, int] = {}
        self.last_error: dict[str, tuple[float, str]] = {}
        self.last_frame: dict[str, float] = {}
        self.started = time.monotonic()
        self.alive = True
        self.successor: Worker | None = None
        self.retire_since: float | None = None
        self.replace_reason = ""
        self.tasks = [asyncio.create_task(self._session_loop(u), name=f"ws {spec.key} {u[:50]}") for u in self.urls]
        self.tasks.append(asyncio.create_task(self._keepalive(), name=f"keepalive {spec.key}"))

    @property
    def ip(self) -> str:
        return self.spec.ip

    def ready(self, overlap_s: float) -> bool:
        """Every URL has a live session that has been delivering for at least overlap_s and
        every book this connection keeps is synced: only then has the predecessor nothing
        left to contribute, so retiring it loses no update."""
        now = time.monotonic()
        if not all(
            self.sessions.get(u) is not None and u in self.first_frame and now - self.first_frame[u] >= overlap_s
            for u in self.urls
        ):
            return False
        book = getattr(self.adapter, "book", None)
        if book is None:
            return True
        for n in self.natives:
            b = book(n)
            if b is None or not b.synced:
                return False
        return True

    def connection_reports(self, now_mono: float, now_wall: float) -> list[dict[str, Any]]:
        """One entry per URL of this connection for the shard's status report."""
        out = []
        for url in self.urls:
            s = self.sessions.get(url)
            last = s.last_frame_at if s is not None and s.frames_in else self.last_frame.get(url)
            err = self.last_error.get(url)
            out.append(
                {
                    "url": short_url(url),
                    "ip": self.ip or "default",
                    "connected": s is not None,
                    "connected_for_s": round(s.age_s, 1) if s is not None else None,
                    "last_frame_age_s": round(now_mono - last, 1) if last is not None else None,
                    "failures": self.failures.get(url, 0),
                    "last_error": err[1] if err and s is None else "",
                    "last_error_age_s": round(now_wall - err[0], 1) if err else None,
                }
            )
        return out

    def any_session(self) -> WsSession | None:
        for s in self.sessions.values():
            if s is not None:
                return s
        return None

    async def _session_loop(self, url: str) -> None:
        r = self.runner
        cfg = r.cfg
        backoff = Backoff(
            BackoffPolicy(
                base_s=cfg.backoff_base_s, cap_s=cfg.backoff_cap_s, reset_after_s=max(cfg.backoff_cap_s, 10.0)
            ),
            r.rng,
        )
        gauge = metrics.CONNECTIONS.labels(cfg.name, self.ip or "default")
        while self.alive:
            try:
                async with r.connect_slots:
                    session = await WsSession.open(url, self.ip, r.ws_settings)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused, DNS, handshake, timeout: all transient to us
                why = f"connect failed: {type(exc).__name__}: {exc}"
                self.failures[url] = self.failures.get(url, 0) + 1
                self.last_error[url] = (time.time(), why[:300])
                r.on_session_end(self, url, why, opened=False)
                await asyncio.sleep(backoff.next_delay())
                continue
            self.failures[url] = 0
            self.sessions[url] = session
            r.stats.sessions_opened += 1
            gauge.inc()
            reason = "closed"
            try:
                r.handle(self, session, self.adapter.on_open(self.natives))
                async for frame, ts in session.frames():
                    if url not in self.first_frame:
                        self.first_frame[url] = time.monotonic()
                    r.on_frame(self, session, frame, ts)
            except SessionEnded as exc:
                reason = exc.reason
            except asyncio.CancelledError:
                reason = "stopped"
                raise
            except Exception as exc:  # noqa: BLE001 - never a quietly dead session: reconnect, counted
                reason = f"error: {type(exc).__name__}: {exc}"[:300]
                log.exception("session task failed; reconnecting")
            finally:
                self.sessions[url] = None
                self.first_frame.pop(url, None)
                if session.frames_in:
                    self.last_frame[url] = session.last_frame_at
                gauge.dec()
                await session.close(reason)
            if not self.alive:
                return
            self.last_error[url] = (time.time(), reason[:300])
            r.on_session_end(self, url, reason, opened=True)
            backoff.note_uptime(session.age_s)
            await asyncio.sleep(backoff.next_delay())

    async def _keepalive(self) -> None:
        while self.alive:
            await asyncio.sleep(1.0)
            try:
                res = self.adapter.keepalive(now_us())
                if res.sends or res.events or res.requests:
                    # Application pings are per connection: every session of this worker gets them.
                    for s in list(self.sessions.values()):
                        if s is not None:
                            self.runner.handle(self, s, res)
            except Exception:  # noqa: BLE001 - a dead keepalive task would let the venue drop us
                log.exception("keepalive failed; retrying next tick")

    async def stop(self, reason: str) -> None:
        self.alive = False
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        _shard_log(self.runner.cfg.name, logging.INFO, "connection retired", conn=self.spec.key, reason=reason)


# -- the shard -------------------------------------------------------------------------------------


class ShardRunner:
    def __init__(
        self,
        cfg: ShardConfig,
        *,
        producer: Producer | None = None,
        producer_config: dict[str, Any] | None = None,
        ws_settings: WsSettings | None = None,
        handover_overlap_s: float = 2.0,
        reconcile_interval_s: float = 0.25,
        max_concurrent_connects: int = 8,
        clock: Callable[[], float] = time.time,
        rng: Any = None,
        status_path: Path | None = None,
        status_interval_s: float = REPORT_INTERVAL_S,
        instruments_timeout_s: float = 20.0,
    ) -> None:
        if producer is None and producer_config is None:
            raise ValueError("pass a confluent_kafka Producer or a producer_config")
        import random

        self.cfg = cfg
        self.stats = ShardStats()
        self.publisher = Publisher(cfg, producer if producer is not None else producer_config, self.stats)
        self.rng = rng or random.Random()
        self.ips = list(cfg.egress_ips) or [DEFAULT_IP]
        self.pool = RestPool(
            cfg.endpoints.rest,
            self.ips,
            registry.rate_limit(cfg.exchange, cfg.market),
            clock=clock,
            on_state_change=self._on_ip_state,
        )
        self.ws_settings = ws_settings or WsSettings(watchdog_s=cfg.watchdog_s)
        self.handover_overlap_s = handover_overlap_s
        self.reconcile_interval_s = reconcile_interval_s
        self.connect_slots = asyncio.Semaphore(max_concurrent_connects)
        self.native_of = dict(zip(cfg.symbols, cfg.native_symbols, strict=True))
        self.canonical_of = {n: c for c, n in self.native_of.items()}
        self.dedup = DedupWindow(cfg.dedup_window)
        self.workers: list[Worker] = []
        self.adapters: list[Any] = []  # every adapter this run created, for sync statistics
        self.instruments: dict[str, Any] = {}
        self._rest_tasks: set[asyncio.Task] = set()
        self._stopping: set[asyncio.Task] = set()
        self._rest_failures: dict[tuple, int] = {}
        self._wake = asyncio.Event()
        self._lbl = (cfg.name, str(cfg.exchange), str(cfg.market))
        self._metered: dict[str, int] = {}
        metrics.SYMBOLS.labels(*self._lbl).set(len(cfg.symbols))
        _pol = registry.rate_limit(cfg.exchange, cfg.market)
        self._limit_statuses = _pol.throttle_statuses | _pol.ban_statuses
        # Counters start at 0 for every known label set, so each family has series (and
        # rate()/increase() see the first event) before anything went wrong.
        metrics.GAPS.labels(*self._lbl)
        for ip in self.ips:
            metrics.RECONNECTS.labels(cfg.name, ip or "default")
            for st in self._limit_statuses:
                metrics.RATE_LIMIT_HITS.labels(cfg.name, ip or "default", str(st))
        for native in self.native_of.values():
            metrics.RESYNCS.labels(cfg.name, native)
        self.running = asyncio.Event()
        #: where the shard reports its state for `ticklake status` (collectors/status.py)
        self.status_path = status_path
        self.status_interval_s = status_interval_s
        self.instruments_timeout_s = instruments_timeout_s

    # -- frame handling --------------------------------------------------------------------------

    def on_frame(self, worker: Worker, session: WsSession, frame: str | bytes, ts: int) -> None:
        self.stats.frames_in += 1
        self.handle(worker, session, worker.adapter.on_frame(frame, ts), ts)

    def handle(self, worker: Worker, session: WsSession | None, res: FrameResult, ts: int | None = None) -> None:
        pub = self.publisher
        for env in res.events:
            if self.dedup.first_time(env.event_id):
                pub.publish(env)
            else:
                self.stats.duplicates += 1
        if res.dead_letters:
            source = session.url if session is not None else self.cfg.endpoints.ws
            for dl in res.dead_letters:
                pub.dead_letter(dl, source, ts or now_us())
                self._symbol_warning("frame refused", dl.native_symbol, dl.reason, worker)
        if res.sends:
            target = session or worker.any_session()
            if target is not None:
                for s in res.sends:
                    target.send(s.payload)
        for req in res.requests:
            self._spawn_rest(worker, req)
        for rs in res.resyncs:
            self.stats.resyncs[rs.native_symbol] += 1
            metrics.RESYNCS.labels(self.cfg.name, rs.native_symbol).inc()
            if rs.reason.startswith("gap"):
                metrics.GAPS.labels(*self._lbl).inc()
            self._symbol_warning("resync", rs.native_symbol, rs.reason, worker)
        if getattr(res, "reconnect", "") and worker.alive and not worker.replace_reason:
            worker.replace_reason = res.reconnect
            self._wake.set()

    def _symbol_warning(self, event: str, symbol: str, reason: str, worker: Worker) -> None:
        """One symbol of one connection went wrong (a refused frame, a resync): the line names
        the shard, the symbol, the venue's reason and the connection."""
        _shard_log(self.cfg.name, logging.WARNING, event, symbol=symbol, reason=reason, conn=worker.spec.key)

    def _sync_metrics(self) -> None:
        """Per-frame counters move to Prometheus in batches (a locked inc per frame would
        cost a few percent of the loop)."""
        st = self.stats
        for name, counter, value in (
            ("in", metrics.MESSAGES_IN.labels(*self._lbl), st.frames_in),
            ("out", metrics.MESSAGES_OUT.labels(*self._lbl), st.events_out),
            ("parse", metrics.PARSE_ERRORS.labels(*self._lbl), st.dead_letters),
            ("dup", metrics.DUPLICATES.labels(self.cfg.name), st.duplicates),
            ("retry", metrics.PRODUCER_RETRIES.labels(self.cfg.name), st.producer_retries),
            ("err", metrics.DELIVERY_ERRORS.labels(self.cfg.name), st.delivery_errors),
        ):
            delta = value - self._metered.get(name, 0)
            if delta:
                counter.inc(delta)
                self._metered[name] = value
                if name == "in":
                    metrics.LAST_RECORD.labels(f"collector:{self.cfg.name}").set(time.time())

    # -- REST ------------------------------------------------------------------------------------

    def _spawn_rest(self, worker: Worker, req: RestRequest) -> None:
        t = asyncio.create_task(self._rest_guarded(worker, req), name=f"rest {req.path} {req.native_symbol}")
        self._rest_tasks.add(t)
        t.add_done_callback(self._rest_tasks.discard)

    async def _rest_guarded(self, worker: Worker, req: RestRequest) -> None:
        """A REST task that fails must not leave its symbol waiting forever for a snapshot
        nobody fetches: the failure is logged and counted and the request made again (paced)."""
        try:
            await self._rest(worker, req)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            key = (req.path, req.params)
            self._rest_failures[key] = self._rest_failures.get(key, 0) + 1
            self.stats.rest_status["error"] += 1
            log.exception("rest task failed; asking again")
            if worker.alive:
                self._spawn_rest(worker, req)

    async def _rest(self, worker: Worker, req: RestRequest) -> None:
        key = (req.path, req.params)
        fails = self._rest_failures.get(key, 0)
        if fails:
            # The adapter asks again right after a failure; pace it here, never give up.
            pol = BackoffPolicy(base_s=0.2, cap_s=self.cfg.backoff_cap_s)
            lo, hi = pol.bounds(fails - 1)
            await asyncio.sleep(lo + (hi - lo) * self.rng.random())
        canonical = self.canonical_of.get(req.native_symbol)
        order = [worker.ip] + (preference(canonical, self.ips) if canonical else list(self.ips))
        self.stats.rest_requests += 1
        resp = await self.pool.get(req, order)
        self.stats.rest_status[resp.status] += 1
        metrics.REST_RESPONSES.labels(self.cfg.name, resp.ip or "default", str(resp.status)).inc()
        if resp.status in self._limit_statuses:
            metrics.RATE_LIMIT_HITS.labels(self.cfg.name, resp.ip or "default", str(resp.status)).inc()
        self._rest_failures[key] = 0 if resp.status == 200 else fails + 1
        if resp.status != 200:
            _shard_log(
                self.cfg.name,
                logging.WARNING,
                "rest refused",
                symbol=req.native_symbol,
                path=req.path,
                status=resp.status,
                ip=resp.ip,
            )
        self._wake.set()  # a 429/418 may have changed an IP's health
        if worker.alive:
            self.handle(
                worker, worker.any_session(), worker.adapter.on_rest(req, resp.status, resp.body, resp.recv_ts_us)
            )

    async def _load_instruments(self, timeout: float = 20.0) -> None:
        """Exchange info once per shard, so every connection's adapter uses the venue's tick
        and lot scales (identical events from two connections must hash identically)."""
        probe = make_adapter(self.cfg, fetch_instruments=True)
        reqs = [r for r in probe.on_open(list(self.native_of.values())).requests if r.purpose == "instruments"]

        def unusable(req: RestRequest, reason: str) -> None:
            _shard_log(
                self.cfg.name,
                logging.WARNING,
                "instrument info unusable; scales inferred from frames",
                path=req.path,
                reason=reason[:300],
            )

        async def fetch(req: RestRequest) -> None:
            try:
                resp = await self.pool.get(req, self.ips)
                res = probe.on_rest(req, resp.status, resp.body, resp.recv_ts_us)
            except Exception as exc:  # noqa: BLE001 - one bad reference body must not crash-loop the shard
                unusable(req, f"{type(exc).__name__}: {exc}")
                return
            for dl in res.dead_letters:  # no connection exists yet to publish them on
                unusable(req, dl.reason)

        try:
            await asyncio.wait_for(asyncio.gather(*(fetch(r) for r in reqs)), timeout)
        except TimeoutError:
            _shard_log(self.cfg.name, logging.WARNING, "instrument info unavailable; scales inferred from frames")
        self.instruments = dict(getattr(probe, "specs", {}) or {})

    # -- health and planning ---------------------------------------------------------------------

    def _on_ip_state(self, ip: str, state: IpState) -> None:
        self.stats.ip_events.append((time.time(), ip, str(state)))
        metrics.FAILOVERS.labels(self.cfg.name, ip or "default", str(state)).inc()
        _shard_log(
            self.cfg.name,
            logging.WARNING if state is not IpState.HEALTHY else logging.INFO,
            "egress ip state",
            ip=ip,
            state=str(state),
        )
        self._wake.set()

    def on_session_end(self, worker: Worker, url: str, reason: str, opened: bool) -> None:
        self.stats.reconnects += 1
        self.stats.session_ends[reason.split(":")[0]] += 1
        metrics.RECONNECTS.labels(self.cfg.name, worker.ip or "default").inc()
        _shard_log(
            self.cfg.name,
            logging.WARNING,
            "session ended" if opened else "connect failed",
            conn=worker.spec.key,
            url=url[:120],
            reason=reason,
        )

    def carriers(self) -> dict[str, str]:
        """canonical symbol -> IP of the live, non-retiring worker carrying it."""
        out = {}
        for w in self.workers:
            if w.alive and w.retire_since is None:
                for s in w.spec.symbols:
                    out[s] = w.ip
        return out

    def _start_worker(self, spec: ConnectionSpec, reason: str) -> Worker:
        w = Worker(self, spec, reason)
        self.workers.append(w)
        self.stats.workers_started += 1
        _shard_log(
            self.cfg.name,
            logging.INFO,
            "connection planned",
            conn=spec.key,
            reason=reason,
            symbols=len(spec.symbols),
            failover=spec.is_failover,
        )
        return w

    def _reconcile(self) -> None:
        states = self.pool.poll_states()
        healthy = [ip for ip, st in states.items() if st is IpState.HEALTHY]
        desired = plan_connections(self.cfg.symbols, self.ips, healthy, self.cfg.max_symbols_per_connection)
        desired_set = set(desired)
        now = time.monotonic()
        live = [w for w in self.workers if w.alive]
        have = {w.spec for w in live if w.retire_since is None}
        for spec in desired:
            if spec not in have:
                self._start_worker(spec, "plan")
        # Planned rotation and venue "going away" notices: replace, then retire.
        for w in list(live):
            if w.retire_since is not None or w.successor is not None or w.spec not in desired_set:
                continue
            due = time.monotonic() - w.started >= self.cfg.rotation_s
            if due or w.replace_reason:
                why = w.replace_reason or "rotation"
                self.stats.rotations += 1
                metrics.ROTATIONS.labels(self.cfg.name, "rotation" if due and not w.replace_reason else "venue").inc()
                w.successor = self._start_worker(w.spec, why)
                w.retire_since = now
        # Retire workers that left the plan or have a successor, once their symbols are
        # carried by a ready replacement (or the handover has taken too long).
        for w in list(self.workers):
            if not w.alive:
                continue
            if w.spec not in desired_set and w.retire_since is None:
                w.retire_since = now
            if w.retire_since is None:
                continue
            covered = all(
                any(
                    o is not w
                    and o.alive
                    and o.retire_since is None
                    and s in o.spec.symbols
                    and o.ready(self.handover_overlap_s)
                    for o in self.workers
                )
                for s in w.spec.symbols
            )
            if covered or now - w.retire_since > self.cfg.handover_timeout_s:
                t = asyncio.create_task(w.stop("handover complete" if covered else "handover timeout"))
                self._stopping.add(t)
                t.add_done_callback(self._stopping.discard)
                w.alive = False
        self.workers = [w for w in self.workers if w.alive]

    def book_stats(self) -> dict[str, dict[str, int]]:
        """Sync counters per native symbol, summed over every connection's adapter."""
        out: dict[str, dict[str, int]] = {}
        for a in self.adapters:
            for native, st in (a.book_stats() if hasattr(a, "book_stats") else {}).items():
                acc = out.setdefault(native, {})
                for k, v in st.as_dict().items():
                    acc[k] = acc.get(k, 0) + v
        return out

    # -- status report ---------------------------------------------------------------------------

    def status_report(self, stopped: bool = False) -> dict[str, Any]:
        now_mono, now_wall = time.monotonic(), time.time()
        conns = [c for w in self.workers if w.alive for c in w.connection_reports(now_mono, now_wall)]
        verdict = summarize(
            conns, rest_error=self.pool.stats.last_transport_error, rest_url=self.cfg.endpoints.rest, stopped=stopped
        )
        st = self.stats
        return {
            "shard": self.cfg.name,
            "exchange": str(self.cfg.exchange),
            "market": str(self.cfg.market),
            "pid": os.getpid(),
            "updated_at": now_wall,
            **verdict,
            "connections": conns,
            "frames_in": st.frames_in,
            "events_out": st.events_out,
            "reconnects": st.reconnects,
            "resyncs": sum(st.resyncs.values()),
            "dead_letters": st.dead_letters,
        }

    def write_status(self, stopped: bool = False) -> None:
        if self.status_path is None:
            return
        try:
            write_report(self.status_path, self.status_report(stopped))
        except OSError as exc:  # a full or read-only disk must not stop collection
            _shard_log(self.cfg.name, logging.WARNING, "status report not written", error=str(exc))

    async def _report_loop(self) -> None:
        while True:
            self.write_status()
            await asyncio.sleep(self.status_interval_s)

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> ShardStats:
        """Run until ``stop`` is set or the task is cancelled; always flushes on the way out."""
        stop = stop or asyncio.Event()
        _shard_log(
            self.cfg.name,
            logging.INFO,
            "shard starting",
            exchange=str(self.cfg.exchange),
            market=str(self.cfg.market),
            symbols=len(self.cfg.symbols),
            ips=self.ips,
        )
        reporter = (
            asyncio.create_task(self._report_loop(), name=f"status {self.cfg.name}")
            if self.status_path is not None
            else None
        )
        try:
            await self._producer_ready()
            await self.pool.start()
            await self._load_instruments(self.instruments_timeout_s)
            self.running.set()
            while not stop.is_set():
                self._reconcile()
                self.publisher.poll()
                self._sync_metrics()
                self._wake.clear()
                waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
                nxt = self.pool.next_change_in()
                timeout = self.reconcile_interval_s if nxt is None else min(self.reconcile_interval_s, nxt + 0.01)
                _, pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for p in pending:
                    p.cancel()
        finally:
            if reporter is not None:
                reporter.cancel()
            await self.shutdown()
            self.write_status(stopped=True)
        return self.stats

    async def _producer_ready(self) -> None:
        """Publisher.wait_ready off the event loop (status reports go on meanwhile)."""
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(None, self.publisher.wait_ready, PRODUCER_READY_TIMEOUT_S)
        if ready:
            _shard_log(self.cfg.name, logging.INFO, "producer ready", waited_s=round(time.monotonic() - t0, 3))
        else:
            _shard_log(
                self.cfg.name,
                logging.WARNING,
                "producer has no producer id yet; connecting anyway",
                waited_s=round(time.monotonic() - t0, 3),
            )

    async def shutdown(self, flush_timeout: float = 30.0) -> None:
        workers, self.workers = self.workers, []
        await asyncio.gather(*(w.stop("shard stopping") for w in workers), *self._stopping, return_exceptions=True)
        for t in list(self._rest_tasks):
            t.cancel()
        await asyncio.gather(*self._rest_tasks, return_exceptions=True)
        await self.pool.close()
        loop = asyncio.get_running_loop()
        try:
            left = await loop.run_in_executor(None, self.publisher.flush, flush_timeout)
        except KafkaException as exc:
            left = -1
            _shard_log(self.cfg.name, logging.ERROR, "flush failed", error=str(exc))
        self._sync_metrics()
        _shard_log(self.cfg.name, logging.INFO, "shard stopped", unflushed=left, **self.stats.as_dict())


async def run_shard(
    cfg: ShardConfig, producer_config: dict[str, Any], stop: asyncio.Event | None = None, **kw: Any
) -> ShardStats:
    return await ShardRunner(cfg, producer_config=producer_config, **kw).run(stop)


# -- command line ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run one shard from the collectors config outside Dagster; SIGTERM/SIGINT stop it cleanly
    (sockets closed, producer flushed) and the last log line carries the final counts."""
    from collectors.config import CollectorShardSettings, resolve_shard
    from collectors.logs import configure_json_logging
    from runtime.service_cli import settings_from_args, settings_parser

    ap = settings_parser(CollectorShardSettings, prog="python -m collectors.runner", description=main.__doc__)
    ap.add_argument("--bootstrap", help="Kafka bootstrap (default $TICKLAKE_KAFKA_BOOTSTRAP)")
    args = ap.parse_args(argv)
    settings = settings_from_args(CollectorShardSettings, args)
    cfg = resolve_shard(settings)
    configure_json_logging()
    from runtime.service_status import service_run

    with service_run(f"collector:{cfg.name}", shard=cfg.name, port=settings.metrics_port or None):
        return _main(cfg, args, settings.max_seconds)


def _main(cfg: ShardConfig, args: Any, max_seconds: float = 0.0) -> int:
    import signal

    from runtime import kafka_config as kc

    conn = kc.connection_from_env(bootstrap_servers=args.bootstrap, client_id=f"ticklake-collector-{cfg.name}")

    async def run() -> ShardStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if max_seconds:
            loop.call_later(max_seconds, stop.set)
        return await ShardRunner(cfg, producer_config=kc.producer_config(conn), status_path=status_file(cfg.name)).run(
            stop
        )

    stats = asyncio.run(run())
    return 0 if stats.delivery_errors == 0 else 1


if __name__ == "__main__":
    import sys

    sys.exit(main())
