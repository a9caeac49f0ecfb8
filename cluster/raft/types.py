"""The vocabulary of the Raft library: entries, messages, hard state,
configurations, and the `Ready` batch the core hands to its driver.

Every record here is plain data that crosses the wire or the disk as msgpack
(`to_wire` / `from_wire`); nothing is pickled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, BinaryIO, Protocol

import msgpack

from .errors import ProtocolError

NO_NODE = 0
"""Node ids are positive; 0 means "nobody" (no vote, no known leader)."""


class EntryKind(IntEnum):
    NORMAL = 0
    """Application data (an empty one is the leader's no-op of its term)."""
    CONF_CHANGE = 1
    """A `ConfChange`, msgpack-encoded in `data`."""


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    def to_wire(self) -> list[Any]:
        return [self.index, self.term, int(self.kind), self.data]

    @staticmethod
    def from_wire(raw: Any) -> Entry:
        if not (isinstance(raw, list) and len(raw) == 4):
            raise ProtocolError(f"malformed entry: {raw!r:.80}")
        index, term, kind, data = raw
        if not (_is_uint(index) and _is_uint(term) and _is_uint(kind) and isinstance(data, bytes)):
            raise ProtocolError(f"malformed entry: {raw!r:.80}")
        try:
            return Entry(index, term, EntryKind(kind), data)
        except ValueError:
            raise ProtocolError(f"unknown entry kind {kind!r}") from None


class ConfChangeKind(IntEnum):
    ADD_VOTER = 0
    """Add a voter, or promote a learner to voter."""
    ADD_LEARNER = 1
    """Add a non-voting member (or demote a voter to learner)."""
    REMOVE_NODE = 2


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One server at a time: every change moves one node, so any majority of
    the old voters overlaps any majority of the new ones."""

    kind: ConfChangeKind
    node_id: int

    def encode(self) -> bytes:
        return msgpack.packb([int(self.kind), self.node_id])

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        try:
            kind, node_id = msgpack.unpackb(data)
            return ConfChange(ConfChangeKind(kind), int(node_id))
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise ProtocolError(f"malformed configuration change: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ConfState:
    """A group's membership: voters decide; learners only receive the log."""

    voters: frozenset[int]
    learners: frozenset[int] = frozenset()

    def apply(self, change: ConfChange) -> ConfState:
        node = change.node_id
        voters = set(self.voters)
        learners = set(self.learners)
        voters.discard(node)
        learners.discard(node)
        if change.kind is ConfChangeKind.ADD_VOTER:
            voters.add(node)
        elif change.kind is ConfChangeKind.ADD_LEARNER:
            learners.add(node)
        return ConfState(frozenset(voters), frozenset(learners))

    @property
    def members(self) -> frozenset[int]:
        return self.voters | self.learners

    def to_wire(self) -> list[Any]:
        return [sorted(self.voters), sorted(self.learners)]

    @staticmethod
    def from_wire(raw: Any) -> ConfState:
        if not (isinstance(raw, list) and len(raw) == 2):
            raise ProtocolError(f"malformed configuration: {raw!r:.80}")
        voters, learners = raw
        if not all(isinstance(x, list) and all(_is_uint(n) for n in x) for x in raw):
            raise ProtocolError(f"malformed configuration: {raw!r:.80}")
        return ConfState(frozenset(voters), frozenset(learners))


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before any message that depends on it is sent."""

    term: int = 0
    vote: int = NO_NODE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """The log up to `index` (whose term is `term`) is summarized by a snapshot
    taken with membership `conf`."""

    index: int
    term: int
    conf: ConfState

    def to_wire(self) -> list[Any]:
        return [self.index, self.term, self.conf.to_wire()]

    @staticmethod
    def from_wire(raw: Any) -> SnapshotMeta:
        if not (isinstance(raw, list) and len(raw) == 3 and _is_uint(raw[0]) and _is_uint(raw[1])):
            raise ProtocolError(f"malformed snapshot metadata: {raw!r:.80}")
        return SnapshotMeta(raw[0], raw[1], ConfState.from_wire(raw[2]))


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """Bytes [offset, offset + len(data)) of a leader's snapshot image, as
    received by a follower; `done` on the last one. The image is whatever the
    leader's log serves (`LogReader.read_snapshot`): a log of the same kind
    assembles it (`GroupLog.receive_snapshot`) and checks it."""

    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


class MessageType(IntEnum):
    PRE_VOTE = 1
    PRE_VOTE_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    APPEND = 5
    APPEND_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAPSHOT = 9
    """One chunk of a snapshot image: `snapshot` is its metadata, `offset` the
    byte offset of `data` in the image, `done` marks the last chunk."""
    SNAPSHOT_RESP = 10
    TIMEOUT_NOW = 11
    READ_INDEX = 12
    READ_INDEX_RESP = 13


@dataclass(slots=True)
class Message:
    """One Raft message. Which fields matter depends on `type`:

    - APPEND: `index`/`log_term` locate the entry before `entries`; `commit`.
    - APPEND_RESP: `index` is the last index matched (or, rejected, the index
      probed); `hint_index`/`hint_term` let the leader skip a whole term.
    - (PRE_)VOTE: `index`/`log_term` describe the candidate's last entry;
      `context` is b"transfer" when a leadership transfer asked for it.
    - HEARTBEAT(_RESP), READ_INDEX(_RESP): `context` carries a read request id.
    - SNAPSHOT: `snapshot` metadata, `offset` of `data` in it, `done` on the last chunk.
    """

    type: MessageType
    group: int
    frm: int
    to: int
    term: int
    index: int = 0
    log_term: int = 0
    commit: int = 0
    entries: Sequence[Entry] = ()
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0
    context: bytes = b""
    snapshot: SnapshotMeta | None = None
    offset: int = 0
    data: bytes = b""
    done: bool = False

    def approximate_bytes(self) -> int:
        """An upper bound of the size of `to_wire()` encoded with msgpack,
        without encoding it (the driver splits frames by it)."""
        size = 200 + len(self.context) + len(self.data)
        if self.snapshot is not None:
            size += 10 * (len(self.snapshot.conf.voters) + len(self.snapshot.conf.learners))
        return size + sum(40 + len(entry.data) for entry in self.entries)

    def to_wire(self) -> list[Any]:
        return [
            int(self.type),
            self.group,
            self.frm,
            self.to,
            self.term,
            self.index,
            self.log_term,
            self.commit,
            [entry.to_wire() for entry in self.entries],
            self.reject,
            self.hint_index,
            self.hint_term,
            self.context,
            self.snapshot.to_wire() if self.snapshot is not None else None,
            self.offset,
            self.data,
            self.done,
        ]

    @staticmethod
    def from_wire(raw: Any) -> Message:
        """Validate and build a message from its wire form.

        Raises:
            ProtocolError: the value is not a well-formed message.
        """
        if not (isinstance(raw, list) and len(raw) == 17):
            raise ProtocolError(f"malformed message: {raw!r:.80}")
        (kind, group, frm, to, term, index, log_term, commit, entries, reject,
         hint_index, hint_term, context, snapshot, offset, data, done) = raw  # fmt: skip
        if not all(
            _is_uint(x) for x in (kind, group, frm, to, term, index, log_term, commit,
                                  hint_index, hint_term, offset)
        ):  # fmt: skip
            raise ProtocolError(f"malformed message header: {raw[:8]!r:.120}")
        if not (
            isinstance(entries, list)
            and isinstance(reject, bool)
            and isinstance(done, bool)
            and isinstance(context, bytes)
            and isinstance(data, bytes)
        ):
            raise ProtocolError(f"malformed message body: {raw[:8]!r:.120}")
        try:
            message_type = MessageType(kind)
        except ValueError:
            raise ProtocolError(f"unknown message type {kind!r}") from None
        return Message(
            message_type,
            group,
            frm,
            to,
            term,
            index,
            log_term,
            commit,
            [Entry.from_wire(e) for e in entries],
            reject,
            hint_index,
            hint_term,
            context,
            SnapshotMeta.from_wire(snapshot) if snapshot is not None else None,
            offset,
            data,
            done,
        )


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied
    `index`; `context` is the id the reader passed to `read_index`."""

    index: int
    context: bytes


@dataclass(slots=True)
class Ready:
    """What the driver must do, in this order, before calling `advance()`:

    1. persist `snapshot_chunks` (a leader's snapshot image arriving), then
       install `snapshot` (if any: the image received for it), then
       `entries` (an entry whose index is already in the log replaces that
       entry and everything after it), then `hard_state` (if not None) —
       and make them durable;
    2. send `messages` (only after step 1 is durable: votes and append
       acknowledgements promise what is on disk). The leader's own messages
       (`sent_before_persist`) may go out before step 1, so the leader's
       write overlaps its followers': the leader counts itself toward a
       commit only for entries `advance` has reported durable;
    3. restore the state machine from the log's snapshot (`open_snapshot`)
       if `snapshot` is set, then apply
       `committed` in order; hand `read_states` to waiting readers once their
       index is applied.
    """

    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: SnapshotMeta | None = None
    """A snapshot from the leader, received whole: install it."""
    snapshot_chunks: list[SnapshotChunk] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    must_sync: bool = False
    """True when entries, a snapshot, or a new term or vote must be durable
    before the messages go out. A change of the commit index alone is
    written but needs no sync: a lost commit index is learned again from
    the leader, so waiting for it would only add a disk flush to every
    commit. Snapshot chunks need none either: a follower that loses them
    in a crash answers the next chunk with the offset it has (0), and the
    leader starts over."""

    def __bool__(self) -> bool:
        return bool(
            self.hard_state is not None
            or self.entries
            or self.snapshot is not None
            or self.snapshot_chunks
            or self.messages
            or self.committed
            or self.read_states
        )

    def write_to(self, log: GroupLog) -> None:
        """Step 1 without the sync: write `snapshot_chunks`, install
        `snapshot`, write `entries` and `hard_state` to `log`, in that order.
        The caller makes them durable (`must_sync`) before it sends the
        messages that depend on them."""
        for chunk in self.snapshot_chunks:
            log.receive_snapshot(chunk)
        if self.snapshot is not None:
            log.install_snapshot(self.snapshot)
        if self.entries:
            log.append(self.entries)
        if self.hard_state is not None:
            log.set_hard_state(self.hard_state)


class LogReader(Protocol):
    """The stable (durable) part of a group's log, as the core reads it.

    Invariants: `first_index() <= snapshot_meta().index + 1` (entries a
    snapshot covers stay readable until `compact`); every index in
    [first_index, last_index] has an entry; `term(snapshot_meta().index)` is
    the snapshot's term.
    """

    def first_index(self) -> int: ...
    def last_index(self) -> int: ...
    def term(self, index: int) -> int:
        """The term of an entry, or of the snapshot's last one. Raises
        LogUnavailableError for a compacted index or one after the end."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi); at least one when lo < hi, then up to max_bytes of data."""
        ...

    def entry(self, index: int) -> Entry:
        """One entry, read on its own (no neighbours are read). Raises
        LogUnavailableError outside [first_index, last_index]."""
        ...

    def hard_state(self) -> HardState: ...
    def snapshot_meta(self) -> SnapshotMeta:
        """The latest snapshot's metadata (index 0 and no members at first)."""
        ...

    def snapshot_size(self) -> int:
        """The length of the latest snapshot's image: what a leader sends."""
        ...

    def read_snapshot(self, offset: int, max_bytes: int) -> bytes:
        """Up to `max_bytes` of the snapshot image from `offset` (b"" at its
        end), read at that offset: sending an image is linear in its size."""
        ...


SnapshotWriter = Callable[[BinaryIO], object]
"""What `GroupLog.save_snapshot` calls to have the state machine write its
snapshot data to a sink (the state machine's `snapshot` method)."""


class GroupLog(LogReader, Protocol):
    """A group's log as the driver writes it. Writes are buffered until the
    owning store's `sync()`; a crash loses whatever was not synced.

    The snapshot rule, the same for every implementation: the state machine
    streams its data into the log (`save_snapshot`), and reads it back as a
    stream (`open_snapshot`); the log keeps one image of the latest snapshot
    and serves it by (offset, length) to the leader's core; a follower's log
    assembles the chunks it receives (`receive_snapshot`) and, once the core
    has the last one, checks the image and makes it its snapshot
    (`install_snapshot`). No snapshot is ever held whole in memory by the
    core or the driver.
    """

    def append(self, entries: Sequence[Entry]) -> None:
        """Append; an entry whose index is already present replaces it and
        everything after it. Raises LogError for a gap or for removing an
        entry at or below the persisted commit index."""
        ...

    def set_hard_state(self, hard_state: HardState) -> None: ...
    def save_snapshot(self, meta: SnapshotMeta, write: SnapshotWriter) -> None:
        """Take a snapshot at `meta`: `write(sink)` writes the state
        machine's data; durable on return. When the log holds meta's index
        with its term, the entries stay readable until `compact`; otherwise
        the whole log is discarded and continues after the snapshot. One
        that is not newer than the current snapshot is ignored (`write` is
        not called)."""
        ...

    def receive_snapshot(self, chunk: SnapshotChunk) -> None:
        """Add a chunk of a leader's snapshot image; offset 0 starts a new
        image (dropping one in progress). Not durable; raises LogError for a
        chunk that does not continue the image in progress."""
        ...

    def install_snapshot(self, meta: SnapshotMeta) -> None:
        """Check the image received for `meta` and make it the snapshot, as
        `save_snapshot` would; durable on return. Raises LogError when no
        whole image for `meta` was received, LogCorruptionError when it fails
        its check."""
        ...

    def open_snapshot(self) -> BinaryIO:
        """The latest snapshot's data (empty at first), as the state machine
        wrote it, for its `restore`; the caller closes it."""
        ...

    def compact(self, index: int) -> None:
        """Make entries up to `index` (<= the snapshot index) unavailable and
        free their storage."""
        ...


LEADER_MESSAGES = frozenset(
    {MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT, MessageType.TIMEOUT_NOW}
)


def sent_before_persist(message: Message) -> bool:
    """True for a message that promises nothing about this node's disk (the
    leader's appends, heartbeats, snapshot chunks, TIMEOUT_NOW): the driver
    may send it before the Ready's writes are durable."""
    return message.type in LEADER_MESSAGES


def entries_size(entries: Sequence[Entry]) -> int:
    return sum(len(e.data) for e in entries)


def _is_uint(value: Any) -> bool:
    return type(value) is int and value >= 0
