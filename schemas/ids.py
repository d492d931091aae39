"""The deterministic event id: the idempotency key at every stage.

Two collectors (or one collector across a planned reconnect) that receive the same venue
event must produce the same id so that duplicates vanish downstream; so the id hashes
only what the venue said (exchange, market, symbol, type, exchange time, sequence and the
payload), never our own clock or shard.
"""

from __future__ import annotations

from hashlib import blake2b

from schemas.gen.ticklake.v1 import events_pb2 as pb


def compute_event_id(env: pb.Envelope) -> str:
    """Hex blake2b-128 over the identity fields and the deterministic payload bytes.

    The identity fields are joined with 0x1f in one ``%`` format and hashed in one call:
    every collector event passes here, and this form costs about 15 % less than a join of
    seven formatted parts fed to ``update`` (bench/bench_parse.py, stage "event_id")."""
    which = env.WhichOneof("payload")
    payload = getattr(env, which).SerializeToString(deterministic=True) if which else b""
    return blake2b(
        b"%d\x1f%d\x1f%b\x1f%d\x1f%d\x1f%d\x1f%d:%d\x1f%b"
        % (
            env.exchange,
            env.market,
            env.symbol.encode(),
            env.event_type,
            # a stand-in receipt time is not what the venue said (see the .proto)
            0 if env.exchange_ts_is_receipt else env.exchange_ts,
            env.seq,
            env.price_scale,
            env.size_scale,
            payload,
        ),
        digest_size=16,
    ).hexdigest()


def stamp_event_id(env: pb.Envelope) -> pb.Envelope:
    env.event_id = compute_event_id(env)
    return env
