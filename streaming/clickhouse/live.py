"""Live analytics: feature.* topics -> ClickHouse `features_live`, continuously.

Why not ClickHouse's own Kafka engine + materialized view (the seed's design): locally the
engine is chdb, and `CREATE TABLE ... ENGINE = Kafka` fails there with "Code: 49 ...
Shutdown was called (LOGICAL_ERROR)" — against the embedded broker and against an
unreachable one alike (chdb 4.4 / ClickHouse 26.9, checked). chdb is a library without the
server's background schedule pool that drives Kafka consumers and MVs. The embedded
broker also does not filter aborted transactions, so even a working engine would ingest
the aborted copies a restarted feature processor leaves behind. Against a ClickHouse
server the engine is an option; this consumer works against both with the same code.

Delivery: a read_committed consumer group; each poll batch is decoded, inserted with one
`insert_arrow`, and only then are the offsets committed (at-least-once). Duplicates —
replays after a crash, and aborted copies the broker did not hide (byte-identical rows
with the same event_id) — collapse in the ReplacingMergeTree on (symbol, ts, event_id);
readers use FINAL. A record that is not a feature row goes to dlq.features with the
reason and is counted; it never stops the service.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from features.records import decode_row, rows_to_table
from runtime import kafka_config as kc
from runtime import metrics as obs
from runtime.dlq import DlqCounters, dead_letter, record_source
from runtime.metrics import LoopCounters
from runtime.service_cli import LoopSettings, service_main
from runtime.service_loop import ServiceLoop
from schemas.model import Exchange, Market
from schemas.symbols import validate_canonical
from schemas.topics import DlqStage, feature_topic
from streaming.clickhouse import sql as cs
from streaming.kafka.io import check, release_clients

log = logging.getLogger(__name__)
GROUP_ID = "ticklake-clickhouse-live"
#: Service name (Dagster run tag value, status and metrics label).
SERVICE_NAME = "clickhouse-live"


def live_topics(exchanges: Iterable[str] | None = None, markets: Iterable[str] | None = None) -> list[str]:
    exs = [Exchange(e) for e in exchanges] if exchanges else list(Exchange)
    mks = [Market(m) for m in markets] if markets else list(Market)
    return [feature_topic(m, x) for x in exs for m in mks]


def parse_record(value: bytes | None) -> dict:
    """A feature row from a record value, or ValueError with the reason."""
    if value is None:
        raise ValueError("empty: record has no value")
    try:
        row = decode_row(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"decode: {exc}") from None
    try:
        Exchange(row["exchange"])
        Market(row["market"])
        validate_canonical(row["symbol"])
    except ValueError as exc:
        raise ValueError(f"mismatch: {exc}") from None
    return row


@dataclass(slots=True)
class LiveStats(LoopCounters):
    rows: int = 0
    dlq: DlqCounters = field(default_factory=lambda: DlqCounters(DlqStage.FEATURES.value))


class ClickHouseLive(ServiceLoop):
    """The live consumer loop (lifecycle: runtime.service_loop.ServiceLoop)."""

    name = SERVICE_NAME

    def __init__(
        self,
        conn: kc.KafkaConnection,
        client: Client,
        topics: list[str],
        *,
        database: str = cs.DEFAULT_DATABASE,
        group_id: str = GROUP_ID,
        batch_max_records: int = 5000,
        batch_max_ms: int = 500,
        session_timeout_ms: int = 6000,
        ttl_days: int | None = None,
    ):
        super().__init__()
        self.conn = conn
        self.client = client
        self.topics = topics
        self.database = cs.ident(database)
        self.group_id = group_id
        self.batch_max_records = batch_max_records
        self.batch_max_ms = batch_max_ms
        self.session_timeout_ms = session_timeout_ms
        self.ttl_days = ttl_days
        self.stats = LiveStats()
        self._assigned = False
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.lag_snapshot = obs.LagSnapshot()

    def start(self) -> None:
        cs.ensure_tables(self.client, self.database, self.ttl_days, tables=[cs.CH_FEATURES_LIVE])
        self.consumer = Consumer(
            kc.consumer_config(
                self.conn,
                self.group_id,
                read_committed=True,
                session_timeout_ms=self.session_timeout_ms,
                fetch_wait_max_ms=kc.SERVICE_FETCH_WAIT_MAX_MS,
            )
        )
        self.consumer.subscribe(self.topics)
        self.producer = Producer(kc.producer_config(self.conn, linger_ms=5))
        obs.register_lag_provider(SERVICE_NAME, self.lag_snapshot.get)

    def lag(self) -> list[tuple[str, int, int]]:
        """Per assigned partition (this loop's thread; the scrape reads lag_snapshot)."""
        consumer = self.consumer
        if consumer is None:
            return []
        return obs.loop_lag(consumer)  # the shared definition, over the group's assignment

    def run_once(self) -> int:
        """One poll batch: insert its rows, dead-letter the bad ones, then commit offsets."""
        assert self.consumer is not None and self.producer is not None
        self.lag_snapshot.maybe_update(self.lag)
        msgs = [
            m for m in self.consumer.consume(self.batch_max_records, self.batch_max_ms / 1000) if check(m) is not None
        ]
        if not self._assigned and self.consumer.assignment():
            self._assigned = True
            self.mark_progress()  # idle time counts from joining the group
        if not msgs:
            return 0
        rows = []
        for m in msgs:
            try:
                rows.append(parse_record(m.value()))
            except ValueError as exc:
                self._dead_letter(str(exc), m)
        if rows:
            table = rows_to_table(rows)
            self.client.insert_arrow(
                f"{self.database}.{cs.CH_FEATURES_LIVE.name}", cs.to_ch_rows(cs.CH_FEATURES_LIVE, table)
            )
        if self.producer.flush(30) != 0:
            raise RuntimeError("dead letters were not delivered; not committing the batch")
        ends: dict[tuple[str, int], int] = {}
        for m in msgs:
            tp = (m.topic(), m.partition())
            ends[tp] = max(ends.get(tp, 0), m.offset() + 1)
        self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()], asynchronous=False)
        self.stats.consumed(SERVICE_NAME, [m.topic() for m in msgs])
        self.stats.rows += len(rows)
        return len(msgs)

    def _dead_letter(self, reason: str, m: Message) -> None:
        self.stats.dlq.count(reason)
        dl = dead_letter(
            DlqStage.FEATURES,
            f"{reason} (clickhouse-live)",
            source=record_source(m.topic(), m.partition(), m.offset()),
            raw=m.value(),
        )
        self.producer.produce(dl.topic, value=dl.value, key=dl.key, headers=dl.headers)

    @property
    def started(self) -> bool:
        return self.consumer is not None

    def close(self) -> None:
        obs.unregister_lag_provider(SERVICE_NAME)
        release_clients(self)


class ClickHouseLiveSettings(LoopSettings):
    """The live loader's settings: the Dagster run config (pipelines/services/clickhouse_live.py)
    and the `python -m streaming.clickhouse.live` options (runtime/service_cli.py)."""

    exchanges: list[str] = []
    """Limit to these exchanges (empty: all)."""
    markets: list[str] = []
    """Limit to these markets (empty: all)."""
    database: str = cs.DEFAULT_DATABASE
    ttl_days: int | None = None
    batch_max_records: int = 5000
    batch_max_ms: int = 500
    session_timeout_ms: int = 10_000
    """Consumer group session; the embedded broker admits a member after about half of it."""


def live_from_settings(conn: kc.KafkaConnection, client: Client, settings: ClickHouseLiveSettings) -> ClickHouseLive:
    """The loader a Dagster run and the standalone entry both run."""
    return ClickHouseLive(
        conn,
        client,
        live_topics(settings.exchanges or None, settings.markets or None),
        database=settings.database,
        batch_max_records=settings.batch_max_records,
        batch_max_ms=settings.batch_max_ms,
        ttl_days=settings.ttl_days,
        session_timeout_ms=settings.session_timeout_ms,
    )


def _standalone_live(
    conn: kc.KafkaConnection, a: argparse.Namespace, settings: ClickHouseLiveSettings
) -> ClickHouseLive:
    import clickhouse_connect  # the CLI builds its own client; the Dagster job uses the resource

    client = clickhouse_connect.get_client(dsn=a.dsn)
    return live_from_settings(conn, client, settings)


main = service_main(
    __name__,
    ClickHouseLiveSettings,
    _standalone_live,
    service=SERVICE_NAME,
    add_arguments=lambda ap: ap.add_argument(
        "--dsn",
        required=True,
        help="http(s)://host:port (locally: the local ClickHouse server, `ticklake status` prints it)",
    ),
)


if __name__ == "__main__":
    sys.exit(main())
