"""The store lists a partition's batches from the lowest offset a Fetch in flight asks for
(streaming/kafka/fetch_floors.py): the registry, and the store's listing with and without it."""

from __future__ import annotations

import re

from streaming.kafka.broker_store import ObjectStore, handle
from streaming.kafka.fetch_floors import FetchFloors

TOPIC_ID = "01a24bd2-b71e-7143-be34-11fa95b8c3db"
RECORDS = "clusters/c/topics/t/partitions/0000000000/records/"


def test_the_floor_is_the_lowest_offset_in_flight_and_unknown_fetches_turn_it_off():
    floors = FetchFloors()
    assert floors.floor(("t",), 0) is None  # nothing in flight: list everything
    a = floors.begin({("t", 0): 100, ("t", 1): 7})
    b = floors.begin({(TOPIC_ID, 0): 40})
    assert floors.floor(("t", TOPIC_ID), 0) == 40  # by name and by id, the lowest of both
    assert floors.floor(("t",), 0) == 100 and floors.floor(("t",), 1) == 7
    c = floors.begin({("t", 0): 100})
    floors.end(b)
    assert floors.floor(("t", TOPIC_ID), 0) == 100
    unread = floors.begin(None)  # a Fetch whose partitions could not be read
    assert floors.floor(("t",), 0) is None
    floors.end(unread)
    floors.end(a)
    assert floors.floor(("t",), 0) == 100  # c still asks for 100
    floors.end(c)
    assert floors.floor(("t",), 0) is None and floors.floor(("t",), 1) is None
    floors.end(c)  # released twice (a torn-down connection): nothing goes negative
    assert floors.floor(("t",), 0) is None


def _listed(store: ObjectStore, prefix: str) -> list[str]:
    """Every key a ListObjectsV2 of `prefix` returns, following continuation pages."""
    keys: list[str] = []
    token = ""
    while True:
        q = f"/b?list-type=2&prefix={prefix}&max-keys=1000" + (f"&continuation-token={token}" if token else "")
        body = handle(store, "GET", q, {}, b"").body.decode()
        keys += re.findall(r"<Key>([^<]+)</Key>", body)
        m = re.search(r"<NextContinuationToken>([^<]+)</NextContinuationToken>", body)
        if m is None:
            return keys
        token = m.group(1)


def test_a_partitions_batches_are_listed_from_the_floor_and_kept_current(tmp_path):
    floors = FetchFloors()
    store = ObjectStore(tmp_path, fetch_floors=floors)
    store.create_bucket("b")
    handle(store, "PUT", "/b/clusters/c/meta.json", {}, f'{{"topics": {{"t": {{"id": "{TOPIC_ID}"}}}}}}'.encode())
    offsets = list(range(0, 2500, 5))  # 500 batches of 5 records: listings run over pages
    for o in offsets:
        handle(store, "PUT", f"/b/{RECORDS}{o:020d}.batch", {}, b"x")
    handle(store, "PUT", "/b/clusters/c/topics/t/partitions/0000000000/watermark.json", {}, b"{}")
    everything = [f"{RECORDS}{o:020d}.batch" for o in offsets]
    assert _listed(store, RECORDS) == everything  # no Fetch in flight
    token = floors.begin({(TOPIC_ID, 0): 2000})  # Fetch v13+ names the topic by its id
    assert _listed(store, RECORDS) == everything[400:]
    other = floors.begin({("t", 0): 1003})  # by name, in the middle of a batch
    assert _listed(store, RECORDS) == everything[201:]  # batches at or past 1003
    floors.end(other)
    # written and deleted while listed: the kept index follows
    handle(store, "PUT", f"/b/{RECORDS}{2500:020d}.batch", {}, b"x")
    handle(store, "DELETE", f"/b/{RECORDS}{2495:020d}.batch", {}, b"")
    assert _listed(store, RECORDS) == [*everything[400:-1], f"{RECORDS}{2500:020d}.batch"]
    floors.end(token)
    # other prefixes are listed as before, whatever is in flight
    floors.begin({("t", 0): 2000})
    whole = _listed(store, "clusters/c/topics/t/")
    assert len(whole) == 500 + 1 and whole[-1].endswith("watermark.json")  # 500 batches, the watermark
    # a restarted proxy (a new store on the same directory) lists the same
    again = ObjectStore(tmp_path, fetch_floors=floors)
    assert _listed(again, RECORDS)[0] == f"{RECORDS}{2000:020d}.batch"
