"""The deterministic event id: the idempotency key at every stage.

Two collectors (or one collector across a planned reconnect) that receive the same venue
event must produce the same id so that duplicates vanish downstream; so the id hashes
only what the venue said (exchange, market, symbol, type, exchange time, sequence and the
payload), never our own clock or shard.
"""

from __future__ import annotations

import hashlib

from schemas.gen.ticklake.v1 import events_pb2 as pb

_SEP = b"\x1f"


def compute_event_id(env: pb.Envelope) -> str:
    """Hex blake2b-128 over the identity fields and the deterministic payload bytes."""
    which = env.WhichOneof("payload")
    payload = getattr(env, which).SerializeToString(deterministic=True) if which else b""
    h = hashlib.blake2b(digest_size=16)
    h.update(
        _SEP.join(
            (
                b"%d" % env.exchange,
                b"%d" % env.market,
                env.symbol.encode(),
                b"%d" % env.event_type,
                # a stand-in receipt time is not what the venue said (see the .proto)
                b"0" if env.exchange_ts_is_receipt else b"%d" % env.exchange_ts,
                b"%d" % env.seq,
                b"%d:%d" % (env.price_scale, env.size_scale),
            )
        )
    )
    h.update(_SEP)
    h.update(payload)
    return h.hexdigest()


def stamp_event_id(env: pb.Envelope) -> pb.Envelope:
    env.event_id = compute_event_id(env)
    return env
