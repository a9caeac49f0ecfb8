"""The in-memory group log: the reference implementation of `GroupLog`.

Writes go to a pending area and become durable on `sync()`; `crash()` throws
away whatever was not synced, which is what the deterministic simulation uses
to model a power loss.

The snapshot image is the state machine's data itself (the file log adds a
header and a checksum around it); snapshots and `compact` are durable at
once, as in the file log.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from .errors import LogError, LogUnavailableError
from .types import ConfState, Entry, HardState, SnapshotChunk, SnapshotMeta, SnapshotWriter

EMPTY_SNAPSHOT_META = SnapshotMeta(0, 0, ConfState(frozenset()))


@dataclass
class _State:
    snapshot: SnapshotMeta = EMPTY_SNAPSHOT_META
    image: bytes = b""
    entries: list[Entry] = field(default_factory=list)
    """Contiguous; entries[0].index <= snapshot index + 1 (a snapshot keeps
    the entries it covers until `compact`)."""
    hard_state: HardState = field(default_factory=HardState)

    def copy(self) -> _State:
        return _State(self.snapshot, self.image, list(self.entries), self.hard_state)


class MemoryGroupLog:
    """Invariant: the durable state is always a state that some sequence of
    synced writes produced; `crash()` returns to it."""

    def __init__(self) -> None:
        self._durable = _State()
        self._live = _State()
        self._incoming: tuple[SnapshotMeta, bytearray, bool] | None = None
        """The image being received: its metadata, bytes, and whether the last chunk came."""
        self.sync_count = 0

    # -- LogReader ---------------------------------------------------------
    def first_index(self) -> int:
        live = self._live
        return live.entries[0].index if live.entries else live.snapshot.index + 1

    def last_index(self) -> int:
        live = self._live
        return live.entries[-1].index if live.entries else live.snapshot.index

    def term(self, index: int) -> int:
        live = self._live
        offset = index - self.first_index()
        if 0 <= offset < len(live.entries):
            return live.entries[offset].term
        if index == live.snapshot.index:
            return live.snapshot.term
        raise LogUnavailableError(f"index {index} is not in the log")

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        live = self._live
        base = self.first_index()
        if lo < base or hi > self.last_index() + 1:
            raise LogUnavailableError(f"entries [{lo}, {hi}) are not all in the log")
        selected = live.entries[lo - base : hi - base]
        if max_bytes is None:
            return selected
        size = 0
        for count, entry in enumerate(selected):
            size += len(entry.data)
            if size > max_bytes and count > 0:
                return selected[:count]
        return selected

    def entry(self, index: int) -> Entry:
        return self.entries(index, index + 1)[0]

    def hard_state(self) -> HardState:
        return self._live.hard_state

    def snapshot_meta(self) -> SnapshotMeta:
        return self._live.snapshot

    def snapshot_size(self) -> int:
        return len(self._live.image)

    def read_snapshot(self, offset: int, max_bytes: int) -> bytes:
        return self._live.image[offset : offset + max_bytes]

    def open_snapshot(self) -> BinaryIO:
        return io.BytesIO(self._live.image)

    # -- GroupLog ----------------------------------------------------------
    def append(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        live = self._live
        first = entries[0].index
        if first > self.last_index() + 1:
            raise LogError(f"append at {first} leaves a gap after {self.last_index()}")
        if first <= live.snapshot.index:
            raise LogError(f"append at {first} is behind the snapshot at {live.snapshot.index}")
        if first <= self.last_index() and first <= live.hard_state.commit:
            raise LogError(
                f"append at {first} would remove committed entries "
                f"(commit {live.hard_state.commit})"
            )
        del live.entries[first - self.first_index() :]
        live.entries.extend(entries)

    def set_hard_state(self, hard_state: HardState) -> None:
        self._live.hard_state = hard_state

    def save_snapshot(self, meta: SnapshotMeta, write: SnapshotWriter) -> None:
        if meta.index <= self._live.snapshot.index:
            return
        sink = io.BytesIO()
        write(sink)
        self._adopt(meta, sink.getvalue())

    def receive_snapshot(self, chunk: SnapshotChunk) -> None:
        if chunk.offset == 0:
            self._incoming = (chunk.meta, bytearray(), False)
        incoming = self._incoming
        if incoming is None or incoming[0] != chunk.meta or len(incoming[1]) != chunk.offset:
            raise LogError(f"snapshot chunk at {chunk.offset} does not continue the image")
        incoming[1].extend(chunk.data)
        self._incoming = (chunk.meta, incoming[1], chunk.done)

    def install_snapshot(self, meta: SnapshotMeta) -> None:
        incoming = self._incoming
        if incoming is None or incoming[0] != meta or not incoming[2]:
            raise LogError(f"no whole snapshot image was received for index {meta.index}")
        self._incoming = None
        if meta.index > self._live.snapshot.index:
            self._adopt(meta, bytes(incoming[1]))

    def _adopt(self, meta: SnapshotMeta, image: bytes) -> None:
        live = self._live
        keeps = meta.index <= self.last_index() and self.term(meta.index) == meta.term
        if not keeps and min(self.last_index(), live.hard_state.commit) > meta.index:
            raise LogError(
                f"snapshot at {meta.index} (term {meta.term}) disagrees with committed "
                f"entries up to {live.hard_state.commit}"
            )
        if not keeps:
            live.entries = []
        live.snapshot, live.image = meta, image
        # Snapshots are durable at once (the file storage renames a synced file).
        durable = self._durable
        last = (meta.index, meta.term)
        if not (keeps and any((e.index, e.term) == last for e in durable.entries)):
            # The log restarts after the snapshot at once (the file log's
            # LOG_RESET record is synced), and a durable log behind the
            # snapshot or on another branch has nothing to keep.
            durable.entries = []
        durable.snapshot, durable.image = meta, image
        if durable.hard_state.commit < meta.index:
            durable.hard_state = HardState(
                durable.hard_state.term, durable.hard_state.vote, meta.index
            )
        if live.hard_state.commit < meta.index:
            live.hard_state = HardState(live.hard_state.term, live.hard_state.vote, meta.index)

    def compact(self, index: int) -> None:
        """Entries up to `index` become unavailable, here and on disk."""
        if index > self._live.snapshot.index:
            raise LogError(f"compact to {index} is past the snapshot")
        for state in (self._live, self._durable):
            state.entries = [e for e in state.entries if e.index > index]

    # -- durability ----------------------------------------------------------
    def sync(self) -> None:
        self._durable = self._live.copy()
        self.sync_count += 1

    def crash(self) -> None:
        """Forget everything written since the last `sync()`, and a snapshot
        image being received; like a reopened `FileGroupLog`, the log keeps
        the durable entries behind its snapshot that were not compacted."""
        self._incoming = None
        self._live = self._durable.copy()
