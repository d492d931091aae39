"""A shard reaches out to its venue only once its producer can append what it produces.

The feature processor's upstream gate takes a raw record's CreateTime (the produce() call)
as at most APPEND_MARGIN_S before the record is in the broker. A fresh idempotent producer
holds everything until the broker gave it a producer id (about 0.5 s with librdkafka), so a
shard that subscribed at once stamped its first records too early; in a replay at speed max
the gate then cleared past a whole shard's first second and its features went to
dlq.features as late. Real broker, real emulator, real shard.
"""

from __future__ import annotations

import asyncio
import time

from collectors.runner import Publisher, ShardStats
from runtime.kafka_config import KafkaConnection, producer_config
from streaming.kafka.broker import find_free_port
from tests.support.collectors import RunningShard, ensure_collector_topics, synthetic_okx_spot


def test_a_shard_touches_its_venue_only_after_its_producer_has_an_id(kafka_broker):
    ensure_collector_topics(kafka_broker.bootstrap)
    seen: list[tuple[str, bool]] = []

    async def scenario():
        async with synthetic_okx_spot("ready") as cfg:
            shard = RunningShard(cfg, kafka_broker.bootstrap)
            runner = shard.runner
            first_network_call = runner.pool.start

            async def noting_start():
                seen.append(("rest pool start", runner.publisher.ready))
                await first_network_call()

            runner.pool.start = noting_start
            created = time.monotonic()
            async with shard:
                waited = time.monotonic() - created
                return waited, runner.publisher.ready

    waited, ready_at_end = asyncio.run(scenario())
    assert seen == [("rest pool start", True)], seen
    assert ready_at_end and waited > 0  # the wait really happened on the shard's own producer


def test_an_unreachable_broker_does_not_keep_a_shard_waiting_forever():
    port = find_free_port()  # nobody listens there
    pub = Publisher(None, producer_config(KafkaConnection(bootstrap_servers=f"127.0.0.1:{port}")), ShardStats())
    try:
        assert pub.wait_ready(0.3) is False
    finally:
        pub.producer.purge()
        pub.producer.close()  # else it keeps reconnecting (connection-refused lines) until collected


def test_a_producer_without_idempotence_is_ready_at_once():
    cfg = producer_config(KafkaConnection(bootstrap_servers="127.0.0.1:9"), enable_idempotence=False, acks="1")
    pub = Publisher(None, cfg, ShardStats())
    try:
        assert pub.ready and pub.wait_ready(0.0)
        assert "stats_cb" not in pub._config
    finally:
        pub.producer.close()
