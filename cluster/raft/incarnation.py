"""Incarnations: which life of a data directory a node id is speaking for.

Raft assumes stable storage: a voter never forgets its vote or its log. A
member restarted under the same node id on an empty (wiped or replaced) data
directory has forgotten both, and could vote twice in one term. So every data
directory gets a random 128-bit incarnation id when it is first opened; the
transport handshake carries it (inside the part the cluster secret
authenticates), and every node remembers, in its own data directory, the
incarnation it has seen for each peer. A peer that comes back with another
incarnation is refused and told why; it stops with `IncarnationRefused`.

Files (in the node's data directory, next to the log's)::

    INCARNATION        one line: "protobase-raft-incarnation 1 <32 hex digits>\\n"
    PEER_INCARNATIONS  JSON: {"format": 1, "peers": {"<node id>": "<32 hex digits>", ...}}

Both are only ever replaced whole by `replace_durably` (write ``<name>.tmp``,
fsync it, rename it over ``<name>``, fsync the directory), so a reader sees
the old content or the new, never a mix. A ``.tmp`` file is a crash
leftover: it is ignored, and removed when next written.

INCARNATION is created once, when the directory has none: on a new
directory, and on a directory written by a version without incarnations
(it still has its log, so a fresh incarnation is right for it). It never
changes afterwards. A file that exists but does not parse raises
`IncarnationFileError`: making a new incarnation would lock the node out of
its own cluster, so an operator has to look.

First contact (trust on first use): a peer id with no remembered incarnation
is learned, durably, before the handshake completes. Hence:

- a new cluster, where every node is new, forms without any setup;
- a node wiped *before* any peer ever saw it is indistinguishable from a
  new node, and is accepted. That is safe: both ends learn each other's
  incarnation before a connection carries its first Raft message, so a node
  no peer remembers has never cast a vote or acknowledged an entry that
  another node counted;
- a member that is removed and later added back *under the same id* is
  refused by every node that remembers its old incarnation; add it under a
  new id, or have every node `forget` the old one first.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from .errors import AuthenticationError, RaftError

__all__ = [
    "INCARNATION_BYTES",
    "INCARNATION_FILE",
    "PEER_INCARNATIONS_FILE",
    "IncarnationFileError",
    "IncarnationRefused",
    "PeerIncarnationMismatch",
    "PeerIncarnations",
    "load_incarnation",
    "replace_durably",
]

log = logging.getLogger("protobase.raft.incarnation")

INCARNATION_BYTES = 16
INCARNATION_FILE = "INCARNATION"
PEER_INCARNATIONS_FILE = "PEER_INCARNATIONS"
_INCARNATION_LINE = re.compile(r"protobase-raft-incarnation 1 ([0-9a-f]{32})\n")
_FORMAT = 1


class IncarnationRefused(RaftError):
    """A peer refused this node: it knows another incarnation of this node's
    id, so this data directory is not the one the cluster knows. The node
    must not take part under this id; the message says what to do.

    Attributes: `node_id` (this node), `incarnation` (this directory's),
    `known` (the one the peer remembers), `refused_by` (the peer's id).
    """

    def __init__(self, node_id: int, incarnation: bytes, known: bytes, refused_by: int) -> None:
        self.node_id = node_id
        self.incarnation = incarnation
        self.known = known
        self.refused_by = refused_by
        super().__init__(
            f"node {node_id}'s data directory was wiped or replaced (incarnation "
            f"{incarnation.hex()}, the cluster knows {known.hex()}); it cannot rejoin as the "
            f"same member: start this machine as a new member (a new id, an empty "
            f"directory, joining the cluster) and declare member {node_id} dead "
            f"(`protobase cluster replace-node URL {node_id}`), or restore its data directory "
            f"(refused by node {refused_by})"
        )


class PeerIncarnationMismatch(AuthenticationError):
    """This node refused a peer that presented another incarnation than the
    one remembered for its id (the peer is told, and stops)."""


class IncarnationFileError(RaftError):
    """An incarnation file exists but cannot be read as one."""


def replace_durably(directory: Path, name: str, data: bytes) -> None:
    """Replace `directory/name` by `data`, durably and atomically: write a
    ``.tmp`` file, fsync it, rename it over `name`, fsync the directory. When
    this returns, a crash leaves exactly `data` there; before, the old file
    (or none)."""
    final = directory / name
    temporary = directory / f"{name}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, final)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_incarnation(directory: str | os.PathLike[str]) -> bytes:
    """This data directory's incarnation, created (durably) if it has none.

    Call it with the directory locked (`RaftNode` opens its `LogStore`, which
    holds the lock, first), so that two processes cannot create two.

    Raises:
        IncarnationFileError: INCARNATION exists but is damaged.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    try:
        text = (path / INCARNATION_FILE).read_bytes()
    except FileNotFoundError:
        pass
    else:
        match = _INCARNATION_LINE.fullmatch(text.decode("ascii", "replace"))
        if match is None:
            raise IncarnationFileError(
                f"{path / INCARNATION_FILE} is damaged ({text[:80]!r}); it says which life of "
                "this data directory the cluster knows, so it is not replaced automatically: "
                "restore it from a backup of this directory, or start this machine as a new "
                "member (a new id, an empty directory) and declare this one dead "
                "(`protobase cluster replace-node`)"
            )
        return bytes.fromhex(match.group(1))
    incarnation = os.urandom(INCARNATION_BYTES)
    older = any(entry.name.startswith("group-") for entry in path.iterdir())
    line = f"protobase-raft-incarnation 1 {incarnation.hex()}\n"
    replace_durably(path, INCARNATION_FILE, line.encode("ascii"))
    if older:
        log.info(
            "%s: data from a version without incarnations; incarnation %s assigned",
            path,
            incarnation.hex(),
        )
    return incarnation


class PeerIncarnations:
    """The incarnation remembered for each peer id, kept in
    ``PEER_INCARNATIONS`` of a data directory. Every change is durable when
    the call returns. Use from one thread (the event loop's).

    Raises (on opening):
        IncarnationFileError: the file exists but is damaged.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._known: dict[int, bytes] = {}
        path = self.directory / PEER_INCARNATIONS_FILE
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return
        try:
            document = json.loads(text)
            if document["format"] != _FORMAT:
                raise ValueError(f"format {document['format']!r}")
            for node_id, incarnation in document["peers"].items():
                value = bytes.fromhex(incarnation)
                if len(value) != INCARNATION_BYTES:
                    raise ValueError(f"incarnation {incarnation!r}")
                self._known[int(node_id)] = value
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IncarnationFileError(
                f"{path} is damaged ({exc}); it holds the incarnation this node has seen for "
                "each peer; restore it from a backup of this directory, or remove it to trust "
                "every peer again on first contact"
            ) from exc

    def get(self, node_id: int) -> bytes | None:
        """The incarnation remembered for `node_id`, or None if none is."""
        return self._known.get(node_id)

    def learn(self, node_id: int, incarnation: bytes) -> None:
        """Remember `incarnation` for `node_id` (durably, before returning).

        Raises:
            ValueError: `node_id` already has another incarnation, or
                `incarnation` is not 16 bytes.
        """
        if len(incarnation) != INCARNATION_BYTES:
            raise ValueError(f"an incarnation is {INCARNATION_BYTES} bytes, not {len(incarnation)}")
        known = self._known.get(node_id)
        if known == incarnation:
            return
        if known is not None:
            raise ValueError(f"node {node_id} already has incarnation {known.hex()}")
        self._write({**self._known, node_id: bytes(incarnation)})

    def forget(self, node_id: int) -> None:
        """Forget `node_id`'s incarnation (durably): the next node to present
        that id is trusted on first contact. For a member that was removed
        and is added back under the same id with a new data directory."""
        if node_id in self._known:
            self._write({k: v for k, v in self._known.items() if k != node_id})

    def known(self) -> dict[int, bytes]:
        """A copy of every remembered incarnation, by node id."""
        return dict(self._known)

    def _write(self, known: dict[int, bytes]) -> None:
        document = {"format": _FORMAT, "peers": {str(k): v.hex() for k, v in sorted(known.items())}}
        data = json.dumps(document, indent=1).encode("ascii") + b"\n"
        replace_durably(self.directory, PEER_INCARNATIONS_FILE, data)
        self._known = known
