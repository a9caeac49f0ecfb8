"""CloudFileStorage: an embedded storage whose durable home is an S3 bucket.

The records are StandaloneFileStorage's (`protobase.storage.wal`), and the
commit rules are the same code (`protobase.storage.records.RecordLog`);
what differs is where the records go. Under ``s3://bucket/prefix/``::

    manifest                      the root of everything (below); replaced by
                                  conditional writes only
    data/EEEEEE-NNNNNNNNNN        a data object: WAL records back to back,
                                  written once (IfNoneMatch="*")
    index/EEEEEE-NNNNNNNNNN       an index run: the index entries of records
                                  (`checkpoint.pack_records`), written once

E is the writer epoch that wrote the object, N a number from one counter
that only grows. The manifest (magic, xxh3-64 of the body, msgpack body)
holds: the writer epoch and the writer's random id, a sequence number,
``epochs`` (for each epoch, the first object number it used: an object's
key is found from its number), ``next_object``, ``runs`` (index runs,
oldest first, with their entry counts), ``tail`` (index entries of the
records that are in no run yet) and ``inline`` (the *open object*: number
and bytes of the data object being filled, not yet written on its own).

Invariants:

- **Acknowledged means in the manifest.** Committers append records to the
  open object in memory; one flusher thread replaces the manifest
  (``IfMatch`` its ETag) with one that carries the open object's bytes
  inline and names its new records in the tail. Only then are those
  commits acknowledged: the transactions that arrived during the previous
  manifest write share this one PUT (group commit). Once the open object
  passes `SEAL_BYTES`, or its records would fill the tail, it is *sealed*:
  written as a data object first, and the manifest names it instead of
  carrying it. A crash at any point leaves the last manifest, which names
  only objects written before it and carries the rest.
- **The next writer writes the open object out.** Opening a manifest that
  carries an open object writes those bytes as a data object of the new
  epoch and moves its records there before the takeover manifest.
- **One writer.** Opening a prefix takes it over: the manifest is replaced
  with a new epoch and writer id. A writer whose manifest write then fails
  its condition reads the manifest, and when another writer owns it, stops
  for good with `StorageError` ("fenced"): it never overwrites anything,
  because data objects carry their writer's epoch in their key and are
  written with ``IfNoneMatch``. Its unacknowledged commits are lost, as
  its caller is told.
- **Opening reads O(log n) objects**: the manifest and its index runs.
  When the tail reaches `TAIL_LIMIT` entries it becomes a new run; a run
  is merged with the one before it while it is at least a quarter of that
  one's size, so run sizes grow geometrically and there are about
  log4(records / TAIL_LIMIT) of them. No data object is read to open.
- **Reads.** A record is read from S3 with a byte range, checked against
  its checksum (`CorruptionError` naming the key and offset when it fails),
  and kept in a bounded local disk cache (`RecordCache`); records of the
  open (or sealing) object are read from memory.
- **Failure stops everything**, as in StandaloneFileStorage: when a group
  cannot be written within `commit_timeout` (S3 down) or the writer is
  fenced, every later call raises `StorageError` until the storage is
  reopened (which reads the last manifest).
- **Pack** rewrites every record of the data objects older than the open
  object into new data objects (keeping what is reachable), writes one
  index run for everything, and replaces the manifest; only then does it
  delete the objects no manifest names any more (the old data objects and
  runs, and the orphans of fenced writers).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import os
import secrets
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import xxhash

from ..atoms import AtomPointer
from ..errors import CorruptionError, StorageError
from ..s3 import (
    Bucket,
    ObjectMissing,
    PreconditionFailed,
    S3Location,
    S3Unavailable,
    ShortObject,
)
from . import wal
from .checkpoint import pack_records, unpack_records
from .records import RecordLog, placed

MANIFEST_NAME = "manifest"
MANIFEST_MAGIC = b"PBMAN\x00\x01\x00"
RUN_MAGIC = b"PBRUN\x00\x01\x00"
_HEADER = struct.Struct(">8sQ")
FORMAT = 1

TAIL_LIMIT = 256
"""Index entries the manifest carries before they become an index run."""
RUN_RATIO = 4
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
DEFAULT_COMMIT_TIMEOUT = 30.0
SEAL_BYTES = 64 * 1024
"""The open object's bytes travel inside the manifest until they pass this; then
the object is written as a data object of its own (and leaves the manifest)."""
FETCH_GAP = 1024 * 1024
"""Records of one object closer than this are fetched with one range read."""

Progress = Callable[[int, int], None]


@dataclass
class _Group:
    """The open object: records appended since the last seal, the next data object.

    Until it is sealed its bytes travel inline in the manifest; `named`
    records of it are in the manifest that was last written.
    """

    number: int
    buffer: bytearray = field(default_factory=bytearray)
    records: list[wal.RecordInfo] = field(default_factory=list)
    ticket: int = 0
    """`RecordLog._appended` after its last record."""
    named: int = 0


@dataclass(frozen=True, slots=True)
class _Run:
    number: int
    count: int


class CloudFileStorage(RecordLog):
    """A storage in ``s3://bucket/prefix``; see the module docstring.

    Args:
        bucket, prefix: where the database lives.
        endpoint_url: an S3-compatible endpoint (default: ``AWS_ENDPOINT_URL``,
            else AWS). Credentials come from boto3's usual chain.
        cache_dir: the local read cache (default: a temporary directory,
            removed on close). A directory given here is locked against a
            second user and emptied on open.
        cache_bytes: the cache's budget on disk.
        commit_timeout: how long a group may wait for S3 before the storage
            stops with `StorageError`.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        commit_timeout: float = DEFAULT_COMMIT_TIMEOUT,
        tail_limit: int = TAIL_LIMIT,
    ) -> None:
        if not isinstance(bucket, str) or not bucket:
            raise StorageError(f"bucket must be a non-empty string, not {bucket!r}")
        self.location = S3Location(bucket, prefix.strip("/"))
        self._bucket = Bucket.open(self.location, endpoint_url)
        self._commit_timeout = commit_timeout
        self._tail_limit = tail_limit
        self._init_index()
        self._work = threading.Condition(self._mutex)
        self._closed = False
        self._closing = False
        self._failed: BaseException | None = None
        self._durable = 0
        self._open_group: _Group | None = None
        self._inline: tuple[int, bytes] | None = None
        """(number, bytes) of the open object as the next manifest carries them."""
        self._unflushed: dict[int, bytearray] = {}
        self._tail: list[wal.RecordInfo] = []
        self._runs: list[_Run] = []
        self._read_generation = 0
        self._readers: dict[int, int] = {}
        """Reads in progress, by the index generation they resolved pointers in."""
        self._pack_lock = threading.Lock()
        """Held by the flusher from its manifest change to marking the group
        durable, and by pack's switch: each sees the other's work whole."""
        self._packing = threading.Lock()
        self.requests = {"GET": 0, "PUT": 0}
        """S3 requests this storage made, by kind (for tests and benchmarks)."""
        self._cache = RecordCache(cache_dir, cache_bytes)
        try:
            self._open()
        except BaseException:
            self._cache.close()
            raise
        self._fetcher = ThreadPoolExecutor(8, thread_name_prefix="protobase-s3-read")
        self._flusher = threading.Thread(
            target=self._flush_loop, name="protobase-s3-flush", daemon=True
        )
        self._flusher.start()

    # -- opening -----------------------------------------------------------------

    def _open(self) -> None:
        """Read the manifest and its runs, and take the prefix over (a new epoch)."""
        self._writer = secrets.token_bytes(16)
        for _ in range(10):
            try:
                fields, etag = self._get_manifest()
            except ObjectMissing:
                fields, etag = None, None
            if fields is None:
                self._epoch, self._sequence, self._next_object = 1, 1, 1
                self._epochs = [(1, 1)]
                try:
                    self._etag = self._put_manifest_bytes(None)
                except PreconditionFailed:
                    continue  # created meanwhile by another opener: take it over
                self._check_conditional_writes()
                self._root = self._root_from_history()
                return
            records = self._read_index(fields)
            self._epoch = int(fields["epoch"]) + 1
            self._sequence = int(fields["sequence"]) + 1
            self._next_object = int(fields["next_object"])
            self._epochs = [(int(f), int(e)) for f, e in fields["epochs"]]
            self._epochs.append((self._next_object, self._epoch))
            self._runs = [_Run(int(n), int(c)) for n, c in fields["runs"]]
            self._tail = unpack_records(fields["tail"])
            self._inline = None
            inline = fields.get("inline")
            if inline is not None:
                records = self._rehome(inline, records)
            try:
                self._etag = self._put_manifest_bytes(etag)
            except PreconditionFailed:
                self._runs, self._tail = [], []
                continue  # another opener took it over first: read its manifest
            self._reset_index(records)
            self._root = self._root_from_history()
            return
        raise StorageError(
            f"{self.location}: could not take the database over: other writers kept "
            "replacing its manifest; is another process opening it in a loop?"
        )

    def _check_conditional_writes(self) -> None:
        """Refuse an endpoint that ignores ``IfNoneMatch``: fencing would silently not work."""
        try:
            self._put_manifest_bytes(None)
        except PreconditionFailed:
            return
        raise StorageError(
            f"{self.location}: the endpoint {self._bucket.endpoint} accepted a second "
            "create-only write of the manifest: it does not enforce S3's conditional "
            "writes, which CloudFileStorage needs to keep a second writer from "
            "overwriting the first. Use an endpoint that does"
        )

    def _rehome(self, inline: Any, records: list[wal.RecordInfo]) -> list[wal.RecordInfo]:
        """Write the previous writer's open object as a data object of this epoch.

        Its records move to the new number (same offsets) in the tail and
        in `records`; the takeover manifest then names the data object.
        """
        try:
            old, data = int(inline[0]), bytes(inline[1])
        except (TypeError, ValueError, IndexError) as exc:
            raise CorruptionError(
                f"{self.location}: manifest's inline object is malformed"
            ) from exc
        number = self._next_object
        self._next_object += 1
        key = self._bucket.key(_object_name("data", number, self._epochs))
        deadline = time.monotonic() + self._commit_timeout
        self._retrying(deadline, lambda: self._put_once(key, data))

        def moved(record: wal.RecordInfo) -> wal.RecordInfo:
            return dataclasses.replace(record, segment=number) if record.segment == old else record

        self._tail = [moved(r) for r in self._tail]
        return [moved(r) for r in records]

    def _get_manifest(self) -> tuple[dict[str, Any], str]:
        key = self._bucket.key(MANIFEST_NAME)
        self.requests["GET"] += 1
        data, etag = self._bucket.get_with_etag(key)
        return _decode_framed(data, MANIFEST_MAGIC, str(self.location.child(MANIFEST_NAME))), etag

    def _read_index(self, fields: dict[str, Any]) -> list[wal.RecordInfo]:
        try:
            if int(fields["format"]) != FORMAT:
                raise StorageError(
                    f"{self.location}: manifest format {fields['format']} is not {FORMAT}; "
                    "use the ProtoBase version that wrote it"
                )
            epochs = [(int(f), int(e)) for f, e in fields["epochs"]]
            runs = [_Run(int(n), int(c)) for n, c in fields["runs"]]
            records: list[wal.RecordInfo] = []
            with ThreadPoolExecutor(8) as pool:
                for run_records in pool.map(lambda run: self._read_run(run, epochs), runs):
                    records.extend(run_records)
            records.extend(unpack_records(fields["tail"]))
            return records
        except (KeyError, TypeError, ValueError, struct.error) as exc:
            raise CorruptionError(f"{self.location}: manifest is malformed: {exc!r}") from exc

    def _read_run(self, run: _Run, epochs: list[tuple[int, int]]) -> list[wal.RecordInfo]:
        key = self._bucket.key(_object_name("index", run.number, epochs))
        self.requests["GET"] += 1
        fields = _decode_framed(self._bucket.get(key), RUN_MAGIC, key)
        records = unpack_records(fields)
        if len(records) != run.count:
            raise CorruptionError(
                f"s3://{self._bucket.name}/{key}: index run holds {len(records)} entries, "
                f"the manifest says {run.count}"
            )
        return records

    # -- RecordLog's primitives --------------------------------------------------

    def _describe(self) -> str:
        return str(self.location)

    def _append(self, record_bytes: bytes) -> wal.RecordInfo:
        if self._closing:
            raise StorageError(f"storage {self.location} is closing; nothing was appended")
        group = self._open_group
        if group is None:
            group = self._open_group = _Group(self._next_object)
            self._next_object += 1
            self._unflushed[group.number] = group.buffer
        record = placed(record_bytes, group.number, len(group.buffer))
        group.buffer += record_bytes
        group.records.append(record)
        group.ticket = self._appended + 1
        self._work.notify_all()
        return record

    def _wait_durable(self, ticket: int) -> None:
        while self._durable < ticket:
            self._check_usable()
            self._work.wait()

    def _read_slots(self, record: wal.RecordInfo, slots: Sequence[int]) -> list[bytes]:
        buffer = self._unflushed.get(record.segment)
        if buffer is not None:
            return _slots_in_memory(buffer, record, slots)
        found = self._cache.read_slots(record, slots)
        if found is None:
            found = _slots_in_bytes(
                self._fetch([record])[(record.segment, record.offset)], record, slots
            )
        return found

    def _record_bytes(self, record: wal.RecordInfo) -> bytes:
        buffer = self._unflushed.get(record.segment)
        if buffer is not None:
            return bytes(buffer[record.offset : record.offset + record.size])
        data = self._cache.read_record(record)
        if data is None:
            data = self._fetch([record])[(record.segment, record.offset)]
        return data

    # -- reads -------------------------------------------------------------------

    def get_atoms(self, pointers: Sequence[AtomPointer]) -> list[bytes]:
        found: list[bytes | None] = [None] * len(pointers)
        remote: list[tuple[int, wal.RecordInfo, int]] = []
        with self._mutex:
            self._check_usable()
            for position, pointer in enumerate(pointers):
                record, slot = self._find(pointer)
                buffer = self._unflushed.get(record.segment)
                if buffer is not None:
                    found[position] = _slots_in_memory(buffer, record, [slot])[0]
                else:
                    remote.append((position, record, slot))
            if not remote:
                return found  # type: ignore[return-value]
            generation = self._read_generation
            self._readers[generation] = self._readers.get(generation, 0) + 1
        try:
            missing = [r for _, r, _ in remote if not self._cache.has(r)]
            fetched = self._fetch(missing) if missing else {}
            for position, record, slot in remote:
                atoms = self._cache.read_slots(record, [slot])
                if atoms is None:  # evicted by a concurrent read: use the bytes fetched
                    data = fetched.get((record.segment, record.offset))
                    if data is None:
                        data = self._fetch([record])[(record.segment, record.offset)]
                    atoms = _slots_in_bytes(data, record, [slot])
                found[position] = atoms[0]
            return found  # type: ignore[return-value]
        finally:
            with self._mutex:
                self._readers[generation] -= 1
                if not self._readers[generation]:
                    del self._readers[generation]
                    self._work.notify_all()

    def _fetch(self, records: Iterable[wal.RecordInfo]) -> dict[tuple[int, int], bytes]:
        """Read records from S3 with byte ranges, verify them, and put them in the cache.

        Returns:
            (object number, offset) -> the bytes of each record, whether or not
            the cache kept it.
        """
        by_object: dict[int, list[wal.RecordInfo]] = {}
        for record in records:
            by_object.setdefault(record.segment, []).append(record)
        spans: list[tuple[int, list[wal.RecordInfo]]] = []
        for number, chosen in by_object.items():
            chosen = sorted(set(chosen), key=lambda r: r.offset)
            current = [chosen[0]]
            for record in chosen[1:]:
                if record.offset - (current[-1].offset + current[-1].size) <= FETCH_GAP:
                    current.append(record)
                else:
                    spans.append((number, current))
                    current = [record]
            spans.append((number, current))
        fetched: dict[tuple[int, int], bytes] = {}
        if len(spans) == 1:
            fetched.update(self._fetch_span(*spans[0]))
        else:
            for done in [self._fetcher.submit(self._fetch_span, n, rs) for n, rs in spans]:
                fetched.update(done.result())
        return fetched

    def _fetch_span(
        self, number: int, records: list[wal.RecordInfo]
    ) -> dict[tuple[int, int], bytes]:
        key = self._bucket.key(_object_name("data", number, self._epochs))
        start = records[0].offset
        end = records[-1].offset + records[-1].size
        self.requests["GET"] += 1
        try:
            data = self._bucket.get(key, start, end)
        except ObjectMissing as exc:
            raise CorruptionError(
                f"s3://{self._bucket.name}/{key}: data object is missing, but the manifest "
                "names records in it; restore the prefix from a backup"
            ) from exc
        except ShortObject as exc:
            raise CorruptionError(f"{exc}; restore the prefix from a backup") from exc
        fetched = {}
        for record in records:
            try:
                parsed = wal.parse_record(data, record.offset - start, number)
            except wal.TornRecord as exc:
                raise CorruptionError(
                    f"s3://{self._bucket.name}/{key}: offset {record.offset}: record of "
                    f"transaction {record.transaction_id.hex()} is damaged ({exc}); restore "
                    "the prefix from a backup"
                ) from exc
            if parsed.transaction_id != record.transaction_id or parsed.size != record.size:
                raise CorruptionError(
                    f"s3://{self._bucket.name}/{key}: offset {record.offset}: holds a record "
                    f"other than the one the index names ({record.transaction_id.hex()})"
                )
            at = record.offset - start
            fetched[(number, record.offset)] = data[at : at + record.size]
            self._cache.add(number, record.offset, fetched[(number, record.offset)], [record])
        return fetched

    # -- group commit ----------------------------------------------------------------

    def _flush_loop(self) -> None:
        """Name what was appended in the next manifest, then acknowledge it; repeat.

        Usually that is one PUT: the manifest, carrying the open object's
        bytes inline. When the open object passes `SEAL_BYTES`, or its
        records would fill the tail, it is sealed first: written as a data
        object, which the manifest then names instead.
        """
        while True:
            with self._mutex:
                while self._failed is None and self._durable >= self._appended:
                    if self._closing:
                        return
                    self._work.wait()
                if self._failed is not None:
                    return
                group = self._open_group
                assert group is not None  # something was appended since the last manifest
                seal = (
                    len(group.buffer) >= SEAL_BYTES
                    or len(self._tail) + len(group.records) - group.named >= self._tail_limit
                )
                if seal:
                    self._open_group = None  # what comes next goes to a new object
            try:
                with self._pack_lock:
                    if seal:
                        self._seal(group)
                    else:
                        self._name_open()
            except BaseException as exc:
                with self._mutex:
                    self._failed = self._failed or exc
                    self._work.notify_all()
                return

    def _take_open(self) -> int:
        """Move the open object's new records into the tail, its bytes into the next
        manifest; returns the ticket that manifest makes durable (`_pack_lock` held)."""
        with self._mutex:
            group = self._open_group
            if group is None:
                self._inline = None
                return self._durable
            self._tail.extend(group.records[group.named :])
            group.named = len(group.records)
            self._inline = (group.number, bytes(group.buffer))
            return group.ticket

    def _name_open(self) -> None:
        deadline = time.monotonic() + self._commit_timeout
        ticket = self._take_open()
        self._replace_manifest(deadline)
        self._acknowledge(ticket)

    def _seal(self, group: _Group) -> None:
        """Write the sealed `group` as a data object, then a manifest naming it."""
        deadline = time.monotonic() + self._commit_timeout
        key = self._bucket.key(_object_name("data", group.number, self._epochs))
        data = bytes(group.buffer)
        self._retrying(deadline, lambda: self._put_once(key, data))
        self._tail.extend(group.records[group.named :])
        if len(self._tail) >= self._tail_limit:
            self._retrying(deadline, self._seal_tail)
        ticket = max(group.ticket, self._take_open())
        self._replace_manifest(deadline)
        self._acknowledge(ticket, sealed=group)
        self._cache.add(group.number, 0, data, group.records)

    def _acknowledge(self, ticket: int, sealed: _Group | None = None) -> None:
        with self._mutex:
            self._durable = max(self._durable, ticket)
            if sealed is not None:
                del self._unflushed[sealed.number]
            self._work.notify_all()

    def _retrying(self, deadline: float, action: Callable[[], Any]) -> Any:
        """Run `action`, retrying while S3 is unavailable, until `deadline`."""
        pause = 0.05
        while True:
            try:
                return action()
            except S3Unavailable as exc:
                if time.monotonic() + pause > deadline:
                    raise StorageError(
                        f"{self.location}: S3 did not take a commit group within "
                        f"{self._commit_timeout:g} s ({exc}); the outcome of the commits "
                        "waiting for it is unknown until the storage is reopened"
                    ) from exc
                time.sleep(pause)
                pause = min(pause * 2, 1.0)

    def _put_once(self, key: str, body: bytes) -> None:
        """Write an object this writer alone names (its epoch is in the key)."""
        self.requests["PUT"] += 1
        try:
            self._bucket.put(key, body, if_none_match=True)
        except PreconditionFailed:
            # An earlier attempt of ours landed and its answer was lost.
            if self._bucket.size(key) != len(body):
                raise StorageError(
                    f"s3://{self._bucket.name}/{key} exists with other contents; "
                    "something other than this writer wrote under its epoch"
                ) from None

    def _seal_tail(self) -> None:
        """Turn the tail into an index run, merging runs to keep their count logarithmic."""
        runs = list(self._runs)
        tail = list(self._tail)
        number = self._take_number()
        self._put_run(number, tail)
        runs.append(_Run(number, len(tail)))
        while len(runs) >= 2 and runs[-1].count * RUN_RATIO >= runs[-2].count:
            older, newer = runs[-2], runs[-1]
            merged = self._read_run(older, self._epochs) + self._read_run(newer, self._epochs)
            number = self._take_number()
            self._put_run(number, merged)
            runs[-2:] = [_Run(number, len(merged))]
        self._runs = runs
        self._tail = []

    def _take_number(self) -> int:
        with self._mutex:
            number = self._next_object
            self._next_object += 1
            return number

    def _put_run(self, number: int, records: list[wal.RecordInfo]) -> None:
        key = self._bucket.key(_object_name("index", number, self._epochs))
        self._put_once(key, encode_framed(pack_records(records), RUN_MAGIC))

    def _manifest_body(self) -> bytes:
        return encode_framed(
            {
                "format": FORMAT,
                "epoch": self._epoch,
                "writer": self._writer,
                "sequence": self._sequence,
                "epochs": [list(pair) for pair in self._epochs],
                "next_object": self._next_object,
                "runs": [[run.number, run.count] for run in self._runs],
                "tail": pack_records(self._tail),
                "inline": None if self._inline is None else list(self._inline),
            },
            MANIFEST_MAGIC,
        )

    def _put_manifest_bytes(self, etag: str | None) -> str:
        key = self._bucket.key(MANIFEST_NAME)
        self.requests["PUT"] += 1
        if etag is None:
            return self._bucket.put(key, self._manifest_body(), if_none_match=True)
        return self._bucket.put(key, self._manifest_body(), if_match=etag)

    def _replace_manifest(self, deadline: float) -> None:
        """Replace the manifest with this writer's next one; fenced when another owns it.

        The new manifest is encoded once: a retry after a lost answer sends
        the same bytes, and a failed condition is recognised as our own
        earlier attempt by the writer id and sequence number it carries.
        """
        self._sequence += 1
        body = self._manifest_body()
        key = self._bucket.key(MANIFEST_NAME)

        def attempt() -> None:
            self.requests["PUT"] += 1
            try:
                self._etag = self._bucket.put(key, body, if_match=self._etag)
            except PreconditionFailed as exc:
                fields, etag = self._get_manifest()
                mine = fields.get("writer") == self._writer
                if mine and fields.get("sequence") == self._sequence:
                    self._etag = etag  # our write landed; its answer was lost
                    return
                raise self._fenced(fields) from exc

        self._retrying(deadline, attempt)

    def _fenced(self, fields: dict[str, Any]) -> StorageError:
        return StorageError(
            f"{self.location}: fenced: another CloudFileStorage (writer epoch "
            f"{fields.get('epoch')}) opened this database after this one (epoch "
            f"{self._epoch}); this one can no longer commit, and nothing of it was "
            "overwritten"
        )

    # -- closing ------------------------------------------------------------------

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            while self._failed is None and self._durable < self._appended:
                self._work.wait()
            self._closing = True
            self._work.notify_all()
        self._flusher.join()
        with self._packing, self._mutex:
            self._closed = True
            self._work.notify_all()
            while self._readers:
                self._work.wait()
        self._fetcher.shutdown(wait=True)
        self._cache.close()

    def __enter__(self) -> CloudFileStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- pack ---------------------------------------------------------------------

    def pack(
        self,
        reachable: set[AtomPointer],
        keep_from_version: int,
        progress: Progress | None = None,
    ) -> None:
        """Rewrite what is kept into new objects (see `PackableStorage.pack`).

        Commits go on while the rewrite runs; the switch (one index run for
        everything and a new manifest) holds the flusher for its two PUTs.
        """
        with self._packing:
            self._pack(reachable, keep_from_version, progress)

    def _pack(
        self, reachable: set[AtomPointer], keep_from_version: int, progress: Progress | None
    ) -> None:
        with self._mutex:
            self._check_usable()
            while self._durable < self._appended:
                self._check_usable()
                self._work.wait()
            # The open object (its bytes are in the manifest) and everything after it stay.
            group = self._open_group
            cut = group.number if group is not None else self._next_object
            records = sorted(
                (r for r in self._records.values() if r.segment < cut),
                key=lambda r: (r.segment, r.offset),
            )
        total = sum(r.size for r in records)
        done = 0
        rewritten: list[wal.RecordInfo] = []
        writer = _ObjectWriter(self)
        by_object: dict[int, list[wal.RecordInfo]] = {}
        for record in records:
            by_object.setdefault(record.segment, []).append(record)
        for chosen in by_object.values():
            fetched = self._fetch([r for r in chosen if not self._cache.has(r)])
            with self._mutex:
                repacked = [
                    self._repacked(r, reachable, keep_from_version, fetched) for r in chosen
                ]
            rewritten.extend(writer.append(data) for data in repacked if data is not None)
            done += sum(r.size for r in chosen)
            if progress is not None:
                progress(done, total)
        writer.finish()
        with self._pack_lock:
            # The flusher is held between groups: every group is either named by the
            # manifest and marked durable, or neither (still in _unflushed).
            with self._mutex:
                self._check_usable()
                durable = [
                    r
                    for r in self._records.values()
                    if r.segment >= cut and r.segment not in self._unflushed
                ]
            everything = rewritten + durable
            number = self._take_number()
            deadline = time.monotonic() + self._commit_timeout
            self._retrying(deadline, lambda: self._put_run(number, everything))
            old_runs, old_tail = self._runs, self._tail
            with self._mutex:  # the open object's named records stay in the tail
                inline = [r for r in self._tail if r.segment in self._unflushed]
            self._runs, self._tail = [_Run(number, len(everything))], inline
            try:
                self._replace_manifest(deadline)
            except BaseException:
                self._runs, self._tail = old_runs, old_tail
                raise
            with self._mutex:
                # Records appended since `durable` was taken are kept too.
                self._reset_index(
                    rewritten + [r for r in self._records.values() if r.segment >= cut]
                )
                keep = {r.segment for r in self._records.values()} | {number}
                self._read_generation += 1
                switched = self._read_generation
        with self._mutex:
            # Reads that resolved pointers in the old index may still read old objects.
            while any(generation < switched for generation in self._readers):
                self._work.wait()
        self._delete_unreferenced(keep, cut)

    def _delete_unreferenced(self, keep: set[int], below: int) -> None:
        """Delete data objects and runs numbered below `below` that `keep` does not name.

        Everything numbered from `below` on was written after pack started
        and is left alone; below it, what the new manifest does not name is
        the old contents, superseded index runs, and orphans of fenced writers.
        """
        doomed = [
            key
            for prefix in ("data/", "index/")
            for key, _ in self._bucket.list_objects(self._bucket.key(prefix))
            if (number := _parse_object_name(key.rsplit("/", 1)[-1])) is not None
            and number < below
            and number not in keep
        ]
        self._bucket.delete(doomed)

    # -- introspection ------------------------------------------------------------

    def object_keys(self) -> list[str]:
        """Keys of every object under the prefix (for tests and `protobase inspect`)."""
        return [key for key, _ in self._bucket.list_objects(self._bucket.key(""))]


class _ObjectWriter:
    """Writes pack's records into new data objects of about 8 MiB each."""

    TARGET = 8 * 1024 * 1024

    def __init__(self, storage: CloudFileStorage) -> None:
        self.storage = storage
        self.buffer = bytearray()
        self.number = storage._take_number()

    def append(self, record_bytes: bytes) -> wal.RecordInfo:
        if self.buffer and len(self.buffer) + len(record_bytes) > self.TARGET:
            self._put()
            self.number = self.storage._take_number()
        record = placed(record_bytes, self.number, len(self.buffer))
        self.buffer += record_bytes
        return record

    def finish(self) -> None:
        if self.buffer:
            self._put()

    def _put(self) -> None:
        storage = self.storage
        key = storage._bucket.key(_object_name("data", self.number, storage._epochs))
        deadline = time.monotonic() + storage._commit_timeout
        storage._retrying(deadline, lambda: storage._put_once(key, bytes(self.buffer)))
        self.buffer = bytearray()


class RecordCache:
    """A bounded local disk cache of records, keyed by (object number, offset).

    Two files, *current* and *previous*: records are appended to current;
    when it passes half the budget, previous is deleted and current becomes
    previous. A record read from previous is copied to current, so what is
    read often stays. Records are immutable, so nothing is ever invalidated.
    The cache is emptied on open (its contents are not trusted across
    processes).
    """

    def __init__(self, directory: str | os.PathLike[str] | None, budget: int) -> None:
        if budget < 1024 * 1024:
            raise StorageError(f"cache_bytes must be at least 1 MiB, not {budget}")
        self.budget = budget
        self._owned = directory is None
        self.directory = Path(
            tempfile.mkdtemp(prefix="protobase-cache-") if directory is None else directory
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl

            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise StorageError(
                f"cache directory {self.directory} is in use by another storage; give each "
                "CloudFileStorage a cache_dir of its own"
            ) from exc
        self._lock = threading.Lock()
        self._files: list[tuple[int, int]] = []  # (generation, fd), previous first
        self._sizes: dict[int, int] = {}
        self._where: dict[tuple[int, int], tuple[int, int, int]] = {}
        self._generation = 0
        for name in os.listdir(self.directory):
            if name.startswith("cache-"):
                os.unlink(self.directory / name)
        self._start_file()

    def _start_file(self) -> None:
        self._generation += 1
        path = self.directory / f"cache-{self._generation}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._files.append((self._generation, fd))
        self._sizes[self._generation] = 0
        if len(self._files) > 2:
            generation, old = self._files.pop(0)
            os.close(old)
            os.unlink(self.directory / f"cache-{generation}")
            del self._sizes[generation]
            self._where = {k: v for k, v in self._where.items() if v[0] != generation}

    def _fd(self, generation: int) -> int:
        for number, fd in self._files:
            if number == generation:
                return fd
        raise KeyError(generation)

    def has(self, record: wal.RecordInfo) -> bool:
        with self._lock:
            return (record.segment, record.offset) in self._where

    def add(self, number: int, start: int, data: bytes, records: Iterable[wal.RecordInfo]) -> None:
        """Cache `records`, which `data` (bytes from `start` of object `number`) holds.

        Data over half the budget is not kept (the budget is a bound).
        """
        if len(data) > self.budget // 2:
            return
        with self._lock:
            generation, fd = self._files[-1]
            if self._sizes[generation] + len(data) > self.budget // 2 and self._sizes[generation]:
                self._start_file()
                generation, fd = self._files[-1]
            position = self._sizes[generation]
            _pwrite_all(fd, data, position)
            self._sizes[generation] += len(data)
            for record in records:
                self._where[(number, record.offset)] = (
                    generation,
                    position + record.offset - start,
                    record.size,
                )

    def read_record(self, record: wal.RecordInfo) -> bytes | None:
        with self._lock:
            place = self._place(record)
            if place is None:
                return None
            fd, position = place
            return os.pread(fd, record.size, position)

    def read_slots(self, record: wal.RecordInfo, slots: Sequence[int]) -> list[bytes] | None:
        with self._lock:
            place = self._place(record)
            if place is None:
                return None
            fd, position = place
            return _slots_from(lambda at, n: os.pread(fd, n, at), record, position, slots)

    def _place(self, record: wal.RecordInfo) -> tuple[int, int] | None:
        """(fd, position of the record), promoting it from the previous file (lock held)."""
        found = self._where.get((record.segment, record.offset))
        if found is None:
            return None
        generation, position, size = found
        current, fd = self._files[-1]
        if generation != current:
            data = os.pread(self._fd(generation), size, position)
            if self._sizes[current] + size > self.budget // 2:
                self._start_file()
                current, fd = self._files[-1]
            new_position = self._sizes[current]
            _pwrite_all(fd, data, new_position)
            self._sizes[current] += size
            self._where[(record.segment, record.offset)] = (current, new_position, size)
            return fd, new_position
        return fd, position

    def close(self) -> None:
        with self._lock:
            for _, fd in self._files:
                os.close(fd)
            self._files = []
            self._where = {}
            os.close(self._lock_fd)
            if self._owned:
                shutil.rmtree(self.directory, ignore_errors=True)
            else:
                for name in os.listdir(self.directory):
                    if name.startswith("cache-"):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self.directory / name)


def _slots_from(
    read: Callable[[int, int], bytes], record: wal.RecordInfo, base: int, slots: Sequence[int]
) -> list[bytes]:
    """Atoms in `slots` of `record`, whose first byte is at `base` of what `read` reads."""
    table_at = base + record.table_offset - record.offset
    data_at = base + record.data_offset - record.offset
    ends = wal.read_atom_spans(read(table_at, 4 * (record.atom_count + 1)), record.atom_count)
    return [read(data_at + ends[slot], ends[slot + 1] - ends[slot]) for slot in slots]


def _slots_in_memory(
    buffer: bytearray, record: wal.RecordInfo, slots: Sequence[int]
) -> list[bytes]:
    """Atoms of a record in a group not yet written (`buffer` is its data object)."""
    return _slots_from(lambda at, n: bytes(buffer[at : at + n]), record, record.offset, slots)


def _slots_in_bytes(data: bytes, record: wal.RecordInfo, slots: Sequence[int]) -> list[bytes]:
    """Atoms of a record whose bytes (from its header on) are `data`."""
    return _slots_from(lambda at, n: data[at : at + n], record, 0, slots)


def _pwrite_all(fd: int, data: bytes, position: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        view = view[written:]
        position += written


def _object_name(kind: str, number: int, epochs: list[tuple[int, int]]) -> str:
    """``kind/EEEEEE-NNNNNNNNNN``: the epoch is the one whose first number precedes `number`."""
    at = bisect.bisect_right(epochs, (number, 2**63)) - 1
    if at < 0:
        raise CorruptionError(f"object number {number} precedes every writer epoch")
    return f"{kind}/{epochs[at][1]:06d}-{number:010d}"


def _parse_object_name(name: str) -> int | None:
    epoch, _, number = name.partition("-")
    if len(epoch) == 6 and len(number) == 10 and epoch.isdigit() and number.isdigit():
        return int(number)
    return None


def encode_framed(value: Any, magic: bytes) -> bytes:
    """An object of ours: 8 bytes of magic, the xxh3-64 of the body, a msgpack body."""
    body: bytes = msgpack.packb(value, use_bin_type=True)
    return _HEADER.pack(magic, xxhash.xxh3_64_intdigest(body)) + body


def decode_framed(
    data: bytes, magic: bytes, where: str, error: type[Exception] = CorruptionError
) -> Any:
    """The value `encode_framed` wrote; `error` (naming `where`) when a check fails."""
    if len(data) < _HEADER.size:
        raise error(f"{where}: cut short ({len(data)} bytes)")
    found, expected = _HEADER.unpack_from(data)
    body = data[_HEADER.size :]
    if found != magic:
        raise error(f"{where}: not a ProtoBase object of this kind (magic {found!r})")
    if xxhash.xxh3_64_intdigest(body) != expected:
        raise error(f"{where}: fails its checksum; the object is damaged")
    try:
        return msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise error(f"{where}: body is not msgpack: {exc}") from exc


def _decode_framed(data: bytes, magic: bytes, where: str) -> dict[str, Any]:
    fields = decode_framed(data, magic, where)
    if not isinstance(fields, dict):
        raise CorruptionError(f"{where}: body is not a map")
    return fields
