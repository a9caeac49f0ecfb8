"""The cold tier: a cluster's committed log entries and meta state, kept in S3.

Configured by the ``[s3]`` table of ``node.toml`` (`config.S3Settings`).
Under ``s3://bucket/prefix/``::

    partitions/group-GGGG/FFFFFFFFFFFFFFFFFFFF-LLLLLLLLLLLLLLLLLLLL.pbe
        committed entries F..L of partition group G
    meta/IIIIIIIIIIIIIIIIIIII.pbs
        the meta group's state as of its log index I

Both are framed (magic, xxh3-64 of the body, msgpack body) and checked
against their checksum whenever they are read.

Invariants:

- **Only committed entries go up, and they are the same everywhere.** Raft
  commits one entry per index in every replica, so an object for the range
  F..L has the same contents whoever writes it: uploads are idempotent
  (written with ``IfNoneMatch``; "already there" is success), and two
  objects whose ranges overlap agree where they overlap. The tier's
  progress for a group is the highest L such that every index up to L is
  in some object (`uploaded_through`), learned by listing the prefix.
- **Asynchronous.** Commits never wait for S3. The leader of a group
  uploads its committed entries once `object_bytes` of them wait, or the
  oldest has waited `upload_interval`. A replica that is not the leader
  uploads too when the group's progress has not moved for five intervals
  while it holds the entries (its leader may have died with them not yet
  uploaded). An S3 error is counted and retried on the next round; the
  backlog (entries applied here and not yet uploaded) is in ``/status.json``
  and in ``protobase_s3_backlog_entries``.
- **Nothing is evicted before it is uploaded.** With ``disk_budget_bytes``
  set, a partition whose local log passes the budget lets the Raft log
  compact entries up to `uploaded_through` (`PartitionMachine.keep_from`);
  the log deletes whole sealed segments at its next snapshot. An atom in
  an evicted entry is read back from its object (`fetch_entry`, run off the
  event loop) and kept in a small cache.
- **Bootstrap from S3.** A replica far behind receives the group's snapshot
  (the batch index only, no atoms) instead of the entries the leader
  evicted, and reads those entries from S3 the same way. Entries newer
  than `uploaded_through` that it lacks are read from the leader until
  they are uploaded.
- **Meta state.** The meta leader uploads the meta machine's snapshot every
  `meta_snapshot_interval` seconds when it has changed.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protobase.errors import CorruptionError
from protobase.s3 import Bucket, ObjectMissing, PreconditionFailed, S3Location
from protobase.storage.cloud import decode_framed, encode_framed

from .config import S3Settings
from .raft.errors import LogUnavailableError

log = logging.getLogger("protobase.cluster.cold_tier")

ENTRIES_MAGIC = b"PBENT\x00\x01\x00"
META_MAGIC = b"PBMSN\x00\x01\x00"
FETCHED_OBJECTS = 16
"""Decoded entry objects a node keeps in memory for reads of evicted entries."""
LIST_EVERY = 4
RELIST_SECONDS = 2.0
"""At most one listing of a group's whole prefix this often, for reads of entries not found."""
FULL_ENTRIES = 256
"""Entries waiting that make an upload due before `upload_interval` has passed."""
OWNER_NAME = "cluster.json"
"""Rounds between listings of the prefix (a leader tracks its own uploads)."""
STALLED_INTERVALS = 5
"""Upload intervals without progress after which a replica that is not the
leader uploads too (two rounds pass between listings: 4 rounds of half an interval)."""


class ColdTierError(CorruptionError):
    """An object of the cold tier is missing, damaged, or not this cluster's."""


def entries_key(group: int, first: int, last: int) -> str:
    return f"partitions/group-{group:04d}/{first:020d}-{last:020d}.pbe"


def parse_entries_key(name: str) -> tuple[int, int] | None:
    """``(first, last)`` of an entries object's file name, or None."""
    stem, dot, extension = name.partition(".")
    first, dash, last = stem.partition("-")
    well_formed = dot and extension == "pbe" and dash and len(first) == len(last) == 20
    if well_formed and first.isdigit() and last.isdigit() and int(first) <= int(last):
        return int(first), int(last)
    return None


def meta_key(index: int) -> str:
    return f"meta/{index:020d}.pbs"


def frame(value: Any, magic: bytes) -> bytes:
    return encode_framed(value, magic)


def unframe(data: bytes, magic: bytes, where: str) -> Any:
    """The msgpack value of a framed object; `ColdTierError` when it fails its checks."""
    return decode_framed(data, magic, where, ColdTierError)


def decode_entries(data: bytes, where: str, first: int, last: int) -> dict[int, tuple[int, bytes]]:
    """Index -> (kind, data) of an entries object, checked against the range its key names.

    The kind is `cluster.raft.types.EntryKind`'s value: only NORMAL entries
    carry a state machine's data.
    """
    raw = unframe(data, ENTRIES_MAGIC, where)
    if type(raw) is not list or len(raw) != last - first + 1:
        raise ColdTierError(f"{where}: does not hold entries {first}..{last}")
    found: dict[int, tuple[int, bytes]] = {}
    for expected, item in enumerate(raw, start=first):
        if type(item) is not list or len(item) != 3 or item[0] != expected:
            raise ColdTierError(f"{where}: entry {expected} is malformed")
        if type(item[1]) is not int or type(item[2]) is not bytes:
            raise ColdTierError(f"{where}: entry {expected} has no kind or no data bytes")
        found[expected] = (item[1], item[2])
    return found


def coverage(ranges: list[tuple[int, int]]) -> int:
    """The highest L such that every index 1..L is in one of `ranges` (0 if none)."""
    through = 0
    for first, last in sorted(ranges):
        if first > through + 1:
            break
        through = max(through, last)
    return through


@dataclass
class GroupTier:
    """What the tier knows of one group here (guarded by `ColdTier._lock`)."""

    objects: list[tuple[int, int]] = field(default_factory=list)
    """(first, last) of every entries object known, sorted."""
    known: set[tuple[int, int]] = field(default_factory=set)
    uploaded_through: int = 0
    progress_at: float = field(default_factory=time.monotonic)
    """When `uploaded_through` last moved (or was first learned)."""
    waiting_since: float | None = None
    """When entries first waited here to be uploaded."""
    listed_at: float = 0.0
    """When the whole prefix was last listed for a read."""

    def add(self, ranges: Iterable[tuple[int, int]]) -> None:
        new = set(ranges) - self.known
        if not new:
            return
        self.known |= new
        self.objects = sorted(self.known)
        through = coverage(self.objects)
        if through != self.uploaded_through:
            self.uploaded_through = through
            self.progress_at = time.monotonic()

    def listing_start(self) -> tuple[int, int] | None:
        """The object whose end is `uploaded_through`: a listing for progress starts after it."""
        ends = [r for r in self.objects if r[1] == self.uploaded_through]
        return max(ends) if ends else None

    def find(self, index: int) -> tuple[int, int] | None:
        at = bisect.bisect_right(self.objects, (index, 2**63)) - 1
        while at >= 0:
            first, last = self.objects[at]
            if first <= index <= last:
                return first, last
            at -= 1
        return None


class ColdTier:
    """One node's part of the cold tier; see the module docstring.

    Args:
        settings: the ``[s3]`` table.
        raft: the node's RaftNode.
        partitions: group id -> PartitionMachine, for the groups held here.
        meta_snapshot: returns the meta machine's state (as its snapshot
            bytes) when this node leads the meta group, else None.
        log_dir: the Raft log's directory (``<data_dir>/raft``).
    """

    def __init__(
        self,
        settings: S3Settings,
        raft: Any,
        partitions: dict[int, Any],
        meta_snapshot: Callable[[], tuple[int, bytes] | None],
        log_dir: Path,
        is_leader: Callable[[int], bool],
        cluster_name: str,
    ) -> None:
        self.settings = settings
        self.cluster_name = cluster_name
        self.refused: str | None = None
        """Why this node leaves the prefix alone (another cluster's), when it does."""
        self._lock = threading.Lock()
        """Guards `groups` and `_fetched`: reads of evicted entries run in threads."""
        self.location = S3Location(settings.bucket, settings.prefix)
        self.bucket = Bucket.open(self.location, settings.endpoint, timeout=5.0, attempts=2)
        self.raft = raft
        self.partitions = partitions
        self.meta_snapshot = meta_snapshot
        self.log_dir = log_dir
        self.is_leader = is_leader
        self.groups = {group: GroupTier() for group in partitions}
        self.failures = 0
        self.last_error: str | None = None
        self.uploads = {"entries": 0, "meta": 0}
        self.uploaded_bytes = 0
        self.fetches = 0
        self.evicted_entries = 0
        """Entries released to compaction (uploaded, over the disk budget)."""
        self.meta_uploaded_index = 0
        self._meta_uploaded_at = 0.0
        self._fetched: OrderedDict[tuple[int, int, int], dict[int, tuple[int, bytes]]] = (
            OrderedDict()
        )
        self._task: asyncio.Task[None] | None = None
        self._rounds = 0

    # -- the loop -------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        pause = max(0.05, min(1.0, self.settings.upload_interval / 2))
        while True:
            await self._guarded(self.round())
            await asyncio.sleep(pause)

    async def round(self) -> None:
        """One pass: learn progress, upload what is due, mark what may be evicted.

        A failure in one group is counted and does not keep the others,
        the meta state or eviction from their turn.
        """
        if self._rounds == 0:
            await self._claim_prefix()
        if self.refused is not None:
            return
        listing = self._rounds % LIST_EVERY == 0
        self._rounds += 1
        for group in list(self.groups):
            if group in self.groups:  # not dropped while an earlier one uploaded
                await self._guarded(self._group_round(group, listing))
        await self._guarded(self._upload_meta_due())
        self._mark_evictable()

    def follow_groups(self) -> None:
        """Track the partition groups this node runs now (replicas move between
        nodes): a new one starts from what S3 holds, a dropped one is forgotten."""
        with self._lock:
            for group in self.partitions:
                self.groups.setdefault(group, GroupTier())
            for group in [g for g in self.groups if g not in self.partitions]:
                del self.groups[group]

    async def _guarded(self, work: Any) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # counted, shown in /status.json, retried next round
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("cold tier: %s (will retry)", self.last_error)

    async def _group_round(self, group: int, listing: bool) -> None:
        if listing:
            await self._list(group)
        await self._upload_due(group)

    async def _claim_prefix(self) -> None:
        """Write (or check) the prefix's owner marker: a prefix belongs to one cluster.

        A restored or new cluster pointed at another cluster's prefix would
        otherwise take that cluster's objects for its own uploads.
        """
        key = self.bucket.key(OWNER_NAME)
        mine = json.dumps({"cluster": self.cluster_name}).encode()

        def claim() -> bytes:
            try:
                self.bucket.put(key, mine, if_none_match=True)
            except PreconditionFailed:
                return self.bucket.get(key)
            return mine

        found = await asyncio.to_thread(claim)
        try:
            owner = json.loads(found).get("cluster")
        except (ValueError, AttributeError):
            owner = None
        if owner != self.cluster_name:
            self.refused = (
                f"{self.location} belongs to cluster {owner!r}, not {self.cluster_name!r}; "
                "give this cluster an [s3] prefix of its own (nothing is uploaded or evicted)"
            )
            self.last_error = self.refused
            log.error("cold tier: %s", self.refused)

    async def _list(self, group: int) -> None:
        """Learn the group's progress from the objects after what is known covered."""
        with self._lock:
            start = self.groups[group].listing_start()
        ranges = await asyncio.to_thread(self._listed_ranges, group, start)
        with self._lock:
            self.groups[group].add(ranges)

    def _listed_ranges(
        self, group: int, after: tuple[int, int] | None = None
    ) -> list[tuple[int, int]]:
        """(first, last) of the group's entries objects (those after `after`), blocking."""
        prefix = self.bucket.key(f"partitions/group-{group:04d}/")
        start = None if after is None else self.bucket.key(entries_key(group, *after))
        return [
            found
            for key, _ in self.bucket.list_objects(prefix, start)
            if (found := parse_entries_key(key.rsplit("/", 1)[-1])) is not None
        ]

    def _applied(self, group: int) -> int:
        return int(self.raft.status(group)["applied"])

    async def _upload_due(self, group: int) -> None:
        tier = self.groups[group]
        applied = self._applied(group)
        if applied <= tier.uploaded_through:
            tier.waiting_since = None
            return
        now = time.monotonic()
        if tier.waiting_since is None:
            tier.waiting_since = now
        waiting_since = tier.waiting_since
        interval = self.settings.upload_interval
        if not self.is_leader(group) and now - tier.progress_at < STALLED_INTERVALS * interval:
            return
        if now - waiting_since < interval and applied - tier.uploaded_through < FULL_ENTRIES:
            return  # not due yet: do not read the log for nothing
        while tier.uploaded_through < applied:
            first = tier.uploaded_through + 1
            try:
                entries = self.raft.read_entries(
                    group, first, applied + 1, self.settings.object_bytes
                )
            except LogUnavailableError:
                return  # not here (installed from a snapshot): another replica uploads
            size = sum(len(e.data) for e in entries)
            full = size >= self.settings.object_bytes or entries[-1].index < applied
            if not full and now - waiting_since < interval:
                return
            last = entries[-1].index
            body = frame([[e.index, int(e.kind), e.data] for e in entries], ENTRIES_MAGIC)
            key = self.bucket.key(entries_key(group, first, last))
            await asyncio.to_thread(self._put_idempotent, key, body)
            self.uploads["entries"] += 1
            self.uploaded_bytes += len(body)
            with self._lock:
                tier.add([(first, last)])
            tier.waiting_since = time.monotonic() if last < applied else None

    def _put_meta(self, key: str, body: bytes, state: bytes) -> None:
        """Write the meta state at an index; one already there must hold the same state
        (its upload time may differ: an earlier upload of the same index)."""
        try:
            self.bucket.put(key, body, if_none_match=True)
        except PreconditionFailed:
            where = f"s3://{self.bucket.name}/{key}"
            existing = unframe(self.bucket.get(key), META_MAGIC, where)
            if type(existing) is not dict or existing.get("state") != state:
                raise ColdTierError(
                    f"{where} holds another meta state at this index; is another cluster "
                    "using this prefix?"
                ) from None

    def _put_idempotent(self, key: str, body: bytes) -> None:
        """Write an object that has the same contents whoever writes it."""
        try:
            self.bucket.put(key, body, if_none_match=True)
        except PreconditionFailed:
            # Another replica, or an earlier try, wrote this range: it must be these bytes.
            if self.bucket.get(key) != body:
                raise ColdTierError(
                    f"s3://{self.bucket.name}/{key} exists with other contents than this "
                    "node's committed entries; is another cluster using this prefix?"
                ) from None

    async def _upload_meta_due(self) -> None:
        if time.monotonic() - self._meta_uploaded_at < self.settings.meta_snapshot_interval:
            return
        taken = self.meta_snapshot()
        if taken is None or taken[0] <= self.meta_uploaded_index:
            return
        await self._upload_meta(*taken)

    async def upload_meta_now(self) -> tuple[int, str]:
        """Upload the meta state as it is now (this node leads the meta group).

        Returns:
            Its log index and its key under the prefix.
        """
        taken = self.meta_snapshot()
        if taken is None:
            raise ColdTierError("this node does not lead the meta group")
        await self._upload_meta(*taken)
        return taken[0], meta_key(taken[0])

    async def _upload_meta(self, index: int, state: bytes) -> None:
        body = frame({"index": index, "time": time.time(), "state": state}, META_MAGIC)
        await asyncio.to_thread(self._put_meta, self.bucket.key(meta_key(index)), body, state)
        self.uploads["meta"] += 1
        self.uploaded_bytes += len(body)
        self.meta_uploaded_index = max(self.meta_uploaded_index, index)
        self._meta_uploaded_at = time.monotonic()

    def _mark_evictable(self) -> None:
        budget = self.settings.disk_budget_bytes
        if budget <= 0:
            return
        for group, machine in self.partitions.items():
            if self.log_bytes(group) > budget:
                keep_from = max(machine.keep_from, self.groups[group].uploaded_through + 1)
                self.evicted_entries += keep_from - machine.keep_from
                machine.keep_from = keep_from

    def log_bytes(self, group: int) -> int:
        """Bytes of the group's Raft log segments on this node's disk."""
        directory = self.log_dir / f"group-{group}"
        try:
            return sum(e.stat().st_size for e in os.scandir(directory) if e.name.endswith(".log"))
        except FileNotFoundError:
            return 0

    # -- reads of evicted entries ----------------------------------------------------

    def fetch_entry(self, group: int, index: int) -> bytes | None:
        """The data of committed entry `index` of `group`, read from S3 (blocking; any thread).

        Returns None when no uploaded object holds it yet.

        Raises:
            ColdTierError: the object holding it is damaged or gone.
            S3Unavailable: S3 did not answer.
        """
        with self._lock:
            tier = self.groups[group]
            found = tier.find(index)
            relist = found is None and time.monotonic() - tier.listed_at > RELIST_SECONDS
            if relist:
                tier.listed_at = time.monotonic()
        if found is None and relist:
            ranges = self._listed_ranges(group)
            with self._lock:
                tier.add(ranges)
                found = tier.find(index)
        if found is None:
            return None
        with self._lock:
            cached = self._fetched.get((group, *found))
            if cached is not None:
                self._fetched.move_to_end((group, *found))
                return cached[index][1]
        key = self.bucket.key(entries_key(group, *found))
        try:
            data = self.bucket.get(key)
        except ObjectMissing as exc:
            raise ColdTierError(f"s3://{self.bucket.name}/{key} is listed but gone") from exc
        decoded = decode_entries(data, f"s3://{self.bucket.name}/{key}", *found)
        with self._lock:
            self.fetches += 1
            self._fetched[(group, *found)] = decoded
            while len(self._fetched) > FETCHED_OBJECTS:
                self._fetched.popitem(last=False)
        return decoded[index][1]

    # -- status ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        groups = {}
        backlog = backlog_bytes = 0
        for group, tier in self.groups.items():
            if group not in self.partitions or group not in self.raft.groups:
                continue  # dropped a moment ago (`follow_groups` comes next)
            applied = self._applied(group)
            waiting = max(0, applied - tier.uploaded_through)
            backlog += waiting
            backlog_bytes += self.raft.group_log(group).data_bytes(
                tier.uploaded_through + 1, applied + 1
            )
            groups[str(group)] = {
                "uploaded_through": tier.uploaded_through,
                "applied": applied,
                "backlog_entries": waiting,
                "keep_from": self.partitions[group].keep_from,
                "log_bytes": self.log_bytes(group),
                "log_first_index": self.raft.group_log(group).first_index(),
            }
        return {
            "location": str(self.location),
            "backlog_entries": backlog,
            "backlog_bytes": backlog_bytes,
            "evicted_entries": self.evicted_entries,
            "groups": groups,
            "uploads": dict(self.uploads),
            "uploaded_bytes": self.uploaded_bytes,
            "fetches": self.fetches,
            "failures": self.failures,
            "last_error": self.last_error,
            "meta_uploaded_index": self.meta_uploaded_index,
            "refused": self.refused,
        }
