"""Authenticated TCP between the nodes of a cluster, carrying msgpack frames.

The transport moves msgpack-able values (the driver passes `Message.to_wire()`
lists, or lists of them) from one node to another. It knows nothing about
Raft. Delivery is best effort: a value may be lost when a connection drops or
a queue is full, and may arrive after a delay; Raft tolerates all of that.

Connections
    One TCP connection per pair of nodes carries every group, both ways. The
    node with the smaller id dials; the larger only accepts. An acceptor that
    authenticates a new connection from a peer closes the old one: the peer
    restarted, or the old connection is half dead.

Frames (the whole wire format, handshake included)
    length  uint32, big-endian: byte length of body
    body    one msgpack value (bytes as bin, text as str; never pickle)

    A peer that announces a body longer than the limit (`max_frame_bytes`
    once authenticated, `HANDSHAKE_FRAME_LIMIT` before) or sends a body that
    is not exactly one msgpack value is disconnected.

Handshake (acceptor A, dialer D; both hold `secret` and `cluster_id`)
    1. A -> D  ["protobase-raft", 2, nonce_a]
    2. D -> A  [id_d, id_a, cluster_id, nonce_d, inc_d, mac_d]
    3. A -> D  [inc_a, verdict_a, mac_a]
    4. D -> A  [verdict_d, mac_v]

    nonce_a and nonce_d are 32 fresh random bytes per connection, inc_d and
    inc_a the 16-byte incarnations of the two nodes' data directories (see
    `incarnation.py`), and

        said  = [cluster_id, nonce_a, nonce_d, id_d, id_a, inc_d]
        mac_d = HMAC-SHA256(secret, msgpack([b"client", *said]))
        mac_a = HMAC-SHA256(secret, msgpack([b"server", *said, inc_a, verdict_a]))
        mac_v = HMAC-SHA256(secret, msgpack([b"verdict", *said, inc_a, verdict_d]))

    Each proof covers everything said before it, so nobody without the
    secret can forge or alter an incarnation or a verdict.

    A checks, in order, that cluster_id is its own, that mac_d verifies,
    that id_a is its own id and that id_d is a known peer smaller than
    itself; on any failure it closes the connection without an answer. D
    then verifies mac_a (on failure it hangs up), and A verifies mac_v.

    A verdict is nil when the sender accepts the other's incarnation, or the
    incarnation the sender remembers for the other's id when it refuses (a
    different one: the other's data directory was wiped or replaced). A
    peer id with no remembered incarnation is learned, durably, first (trust
    on first use; `incarnation.py` has the corner cases). The refusing side
    logs the refusal and closes the connection after its verdict; the
    refused side raises `IncarnationRefused` to `on_refused` (it must stop).
    After a refusal in step 3, step 4 is not sent. A transport given no
    `peer_incarnations` accepts every incarnation.

    Each side gives up after `handshake_timeout`. Data frames flow only
    after step 4 carried an acceptance, so no frame from a refused peer is
    ever delivered.

    The secret never crosses the wire; fresh nonces on both sides stop the
    replay of a recorded handshake, and the labels stop a proof from being
    reflected back. The handshake authenticates the start of a connection
    only: frames after it are neither encrypted nor MACed, so peers must talk
    over a network where nobody can inject into a TCP stream (or under a VPN).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import random
import socket
import struct
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import msgpack

from .errors import AuthenticationError, ProtocolError
from .incarnation import (
    INCARNATION_BYTES,
    IncarnationRefused,
    PeerIncarnationMismatch,
    PeerIncarnations,
)

__all__ = [
    "HANDSHAKE_FRAME_LIMIT",
    "HANDSHAKE_MAGIC",
    "HANDSHAKE_VERSION",
    "Transport",
    "TransportStats",
]

log = logging.getLogger("protobase.raft.transport")

HANDSHAKE_MAGIC = "protobase-raft"
HANDSHAKE_VERSION = 2
HANDSHAKE_FRAME_LIMIT = 1024
"""Largest body accepted before the peer is authenticated."""
NONCE_BYTES = 32
MAX_PENDING_HANDSHAKES = 64
"""Connections still in the handshake beyond this many are closed at once."""

_HEADER = struct.Struct(">I")
_WRITE_BATCH_BYTES = 1 << 20
"""The writer joins queued frames into one write until the batch reaches this."""
_STREAM_BUFFER_BYTES = 1 << 18

OnMessage = Callable[[int, Any], None]
OnRefused = Callable[[IncarnationRefused], None]
Address = tuple[str, int]


@dataclass(slots=True)
class TransportStats:
    """Counters since the transport was built; they only grow."""

    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    """Frame bytes written, length prefixes included (handshake excluded)."""
    bytes_received: int = 0
    dropped: int = 0
    """`send()` refused a value because the peer's queue was full."""
    unknown_peer: int = 0
    """`send()` refused a value for a node that is not a peer (or after `stop()`)."""
    handshake_failures: int = 0
    protocol_errors: int = 0
    """An authenticated peer sent an oversized or undecodable frame."""
    callback_errors: int = 0
    """`on_message` raised (the error is logged; the connection stays up)."""
    dial_failures: int = 0
    """A dial did not reach a listening socket (refused, unreachable, timed out)."""
    connections_dialed: int = 0
    connections_accepted: int = 0
    connections_replaced: int = 0
    """An accepted connection closed an older one from the same peer."""
    reconnects: int = 0
    """A connection authenticated with a peer that had been connected before."""
    peers_refused: int = 0
    """A peer presented another incarnation than the one remembered for its id."""
    refused_by_peers: int = 0
    """A peer refused this node's incarnation (`on_refused` was called)."""


class _Connection:
    """One TCP connection: in its handshake, or authenticated to `peer_id`."""

    __slots__ = ("address", "closed", "peer_id", "reader", "writer", "writer_task")

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.address = address
        self.peer_id = 0
        self.closed = False
        self.writer_task: asyncio.Task[None] | None = None


class _Peer:
    """What the transport keeps about one peer, across its connections.

    Invariants: `queued_bytes` is the sum of the lengths of `queue`;
    `len(queue) <= queue_limit`; `connection`, when set, is authenticated and
    is the only connection whose writer task drains `queue`.
    """

    __slots__ = (
        "address",
        "connection",
        "dial_task",
        "ever_connected",
        "node_id",
        "queue",
        "queued_bytes",
        "wakeup",
    )

    def __init__(self, node_id: int, address: Address) -> None:
        self.node_id = node_id
        self.address = address
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.wakeup = asyncio.Event()
        self.connection: _Connection | None = None
        self.dial_task: asyncio.Task[None] | None = None
        self.ever_connected = False


class Transport:
    """Moves msgpack-able values between this node and its peers.

    All methods must be called from the thread running the event loop.
    `on_message(peer_id, payload)` is called synchronously by the reader of
    each connection, once per frame, in the order the peer sent them; inbound
    traffic is therefore bounded by the socket buffers, never by a queue.
    Outbound values wait in a per-peer queue bounded by `queue_limit` frames
    and `queue_max_bytes` bytes (an empty queue always admits one frame), and
    survive reconnects.

    Args:
        node_id: this node's id (positive).
        listen: the address to bind (only there); port 0 picks a free port,
            readable from `port` after `start()`.
        peers: id -> address of the other nodes (this node's own id, if
            present, is ignored).
        secret: the cluster secret; must not be empty.
        on_message: called with (peer id, payload) for every frame received.
        cluster_id: must match on both ends of a connection.
        max_frame_bytes: largest msgpack body sent or accepted.
        queue_limit: frames queued per peer before `send()` drops.
        on_peer_lost: called with the peer id when an authenticated
            connection ends without a newer one replacing it.
        queue_max_bytes: bytes queued per peer before `send()` drops.
        connect_timeout: seconds a dial may take to reach a socket.
        handshake_timeout: seconds either side gives the other to finish
            the handshake.
        backoff_initial, backoff_max: delays between dials to a peer double
            from the first to the second (with jitter) while dials fail.
        incarnation: this node's data directory's incarnation (16 bytes);
            None: a random one, new with every `Transport`.
        peer_incarnations: the incarnations remembered for the peers,
            checked and learned in the handshake; None: not checked.
        on_refused: called with `IncarnationRefused` when a peer refuses
            this node's incarnation; the owner must stop taking part (the
            transport itself keeps redialing, and keeps being refused).

    Raises:
        ValueError: empty secret, non-positive ids, non-positive limits, or
            an incarnation that is not 16 bytes.
    """

    def __init__(
        self,
        node_id: int,
        listen: Address,
        peers: dict[int, Address],
        secret: bytes,
        on_message: OnMessage,
        *,
        cluster_id: bytes = b"protobase",
        max_frame_bytes: int = 64 << 20,
        queue_limit: int = 4096,
        queue_max_bytes: int = 64 << 20,
        connect_timeout: float = 1.0,
        handshake_timeout: float = 2.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        on_peer_lost: Callable[[int], None] | None = None,
        incarnation: bytes | None = None,
        peer_incarnations: PeerIncarnations | None = None,
        on_refused: OnRefused | None = None,
    ) -> None:
        if not secret:
            raise ValueError("the cluster secret is empty; a node refuses to start without one")
        if type(node_id) is not int or node_id <= 0:
            raise ValueError(f"node id must be a positive integer, not {node_id!r}")
        if min(max_frame_bytes, queue_limit, queue_max_bytes) <= 0:
            raise ValueError("max_frame_bytes, queue_limit and queue_max_bytes must be positive")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("backoff delays must satisfy 0 < backoff_initial <= backoff_max")
        if incarnation is None:
            incarnation = os.urandom(INCARNATION_BYTES)
        if not _is_incarnation(incarnation):
            raise ValueError(f"an incarnation is {INCARNATION_BYTES} bytes, not {incarnation!r}")
        self.node_id = node_id
        self.host, self.port = listen
        self.secret = bytes(secret)
        self.cluster_id = bytes(cluster_id)
        self.max_frame_bytes = max_frame_bytes
        self.queue_limit = queue_limit
        self.queue_max_bytes = queue_max_bytes
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.incarnation = bytes(incarnation)
        self.peer_incarnations = peer_incarnations
        self.stats = TransportStats()
        self._on_message = on_message
        self._on_refused = on_refused
        self._on_peer_lost = on_peer_lost
        self._peers: dict[int, _Peer] = {}
        self._listener: socket.socket | None = None
        self._started = False
        self._stopped = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: set[_Connection] = set()
        self._handshaking = 0
        self.set_peers(peers)

    # -- public API ---------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the listener and start dialing the peers with larger ids.

        A stopped transport may be started again: it binds the port it had
        (the one chosen for port 0, too), so its peers find it there.

        Raises:
            RuntimeError: the transport is running.
            OSError: the address cannot be bound.
        """
        if self._started and not self._stopped:
            raise RuntimeError("the transport is already running")
        self._started = True
        self._stopped = False
        for peer in self._peers.values():
            peer.wakeup = asyncio.Event()  # bound to the loop it is first awaited on
        loop = asyncio.get_running_loop()
        family, _, _, _, sockaddr = (
            await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        )[0]
        self._listener = socket.create_server(sockaddr, family=family)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._spawn(self._accept_loop(self._listener), f"raft-listen-{self.node_id}")
        for peer in self._peers.values():
            self._ensure_dialer(peer)

    async def stop(self) -> None:
        """Close the listener and every connection; return once every task the
        transport started has finished. Queued values are discarded.
        Idempotent."""
        self._stopped = True
        connections = list(self._connections)
        for connection in connections:
            self._close(connection)
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for connection in connections:
            with contextlib.suppress(Exception):
                await connection.writer.wait_closed()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for peer in self._peers.values():
            peer.queue.clear()
            peer.queued_bytes = 0

    def send(self, peer: int, payload: Any) -> bool:
        """Queue `payload` for `peer`; never blocks.

        Returns:
            True if queued; False if `peer` is unknown, the transport is
            stopped, or the peer's queue is full (the value is dropped and
            counted in `stats`).

        Raises:
            ValueError: the payload encodes to more than `max_frame_bytes`.
            TypeError: the payload is not msgpack-able.
        """
        body = msgpack.packb(payload, use_bin_type=True)
        if len(body) > self.max_frame_bytes:
            raise ValueError(
                f"payload encodes to {len(body)} bytes, over the {self.max_frame_bytes}-byte "
                "frame limit; split it"
            )
        target = self._peers.get(peer)
        if target is None or self._stopped:
            self.stats.unknown_peer += 1
            return False
        if len(target.queue) >= self.queue_limit or (
            target.queue and target.queued_bytes + len(body) > self.queue_max_bytes
        ):
            self.stats.dropped += 1
            return False
        target.queue.append(body)
        target.queued_bytes += len(body)
        target.wakeup.set()
        return True

    def set_peers(self, peers: dict[int, Address]) -> None:
        """Replace the peer set. A removed peer's connection is closed and its
        queue discarded; a peer whose address changed is redialed (if this
        node dials it); queues of the other peers are kept.

        Raises:
            ValueError: a peer id is not a positive integer.
        """
        wanted = {node_id: address for node_id, address in peers.items() if node_id != self.node_id}
        for node_id in wanted:
            if type(node_id) is not int or node_id <= 0:
                raise ValueError(f"peer id must be a positive integer, not {node_id!r}")
        for node_id in list(self._peers):
            if node_id not in wanted:
                self._forget(self._peers.pop(node_id))
        for node_id, (host, port) in wanted.items():
            address = (str(host), int(port))
            peer = self._peers.get(node_id)
            if peer is None:
                peer = self._peers[node_id] = _Peer(node_id, address)
            elif peer.address != address:
                peer.address = address
                if peer.dial_task is not None:
                    peer.dial_task.cancel()
                    peer.dial_task = None
            self._ensure_dialer(peer)

    def connected(self, peer: int) -> bool:
        """True while an authenticated connection to `peer` is open."""
        target = self._peers.get(peer)
        return target is not None and target.connection is not None

    def queued(self, peer: int) -> int:
        """Frames waiting to be written to `peer` (0 for an unknown peer)."""
        target = self._peers.get(peer)
        return len(target.queue) if target is not None else 0

    # -- tasks and connections ------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error(
                "node %d: transport task %s crashed", self.node_id, task.get_name(), exc_info=exc
            )

    def _close(self, connection: _Connection) -> None:
        """Close `connection` now (unsent bytes are discarded); idempotent."""
        connection.closed = True
        self._connections.discard(connection)
        task = connection.writer_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        connection.writer.transport.abort()

    def _forget(self, peer: _Peer) -> None:
        if peer.dial_task is not None:
            peer.dial_task.cancel()
            peer.dial_task = None
        if peer.connection is not None:
            self._close(peer.connection)
            peer.connection = None
        peer.queue.clear()
        peer.queued_bytes = 0

    def _ensure_dialer(self, peer: _Peer) -> None:
        dials = self._started and not self._stopped and peer.node_id > self.node_id
        if dials and (peer.dial_task is None or peer.dial_task.done()):
            peer.dial_task = self._spawn(
                self._dial_loop(peer), f"raft-dial-{self.node_id}->{peer.node_id}"
            )

    def _handshake_failed(self, address: str, reason: str, level: int = logging.WARNING) -> None:
        self.stats.handshake_failures += 1
        log.log(
            level,
            "node %d: handshake with %s failed, connection closed: %s",
            self.node_id,
            address,
            reason,
        )

    def _refused(self, address: str, refusal: IncarnationRefused) -> None:
        """A peer refused this node's incarnation: report it to the owner."""
        self.stats.refused_by_peers += 1
        self._handshake_failed(address, str(refusal), logging.ERROR)
        if self._on_refused is not None:
            self._on_refused(refusal)

    def _verdict(self, peer_id: int, presented: bytes) -> bytes | None:
        """None if `presented` is the incarnation of `peer_id` to accept
        (learned durably on first contact); else the one remembered."""
        book = self.peer_incarnations
        if book is None:
            return None
        known = book.get(peer_id)
        if known is None:
            try:
                # A blocking fsync on the loop, once per peer id ever seen.
                book.learn(peer_id, presented)
            except OSError as exc:
                raise AuthenticationError(
                    f"node {peer_id} is not let in: its incarnation cannot be recorded: {exc}"
                ) from exc
            log.info(
                "node %d: first contact with node %d: incarnation %s learned",
                self.node_id,
                peer_id,
                presented.hex(),
            )
            return None
        if known == presented:
            return None
        self.stats.peers_refused += 1
        return known

    def _mismatch(self, peer_id: int, presented: bytes, known: bytes) -> PeerIncarnationMismatch:
        return PeerIncarnationMismatch(
            f"refused node {peer_id}: it presents incarnation {presented.hex()}, but node "
            f"{self.node_id} knows {known.hex()}: node {peer_id}'s data directory was wiped or "
            f"replaced: add a new member (a new id, an empty directory) and declare member "
            f"{peer_id} dead (`protobase cluster replace-node URL {peer_id}`), or restore its "
            "data directory"
        )

    # -- dialing ------------------------------------------------------------------------

    async def _dial_loop(self, peer: _Peer) -> None:
        """Keep one connection to `peer` open, redialing with capped,
        jittered exponential back-off. Runs until cancelled."""
        delay = self.backoff_initial
        while True:
            connection = await self._dial(peer)
            if connection is not None:
                delay = self.backoff_initial
                await self._serve(peer, connection)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.backoff_max)

    async def _dial(self, peer: _Peer) -> _Connection | None:
        host, port = peer.address
        address = f"{host}:{port}"
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, limit=_STREAM_BUFFER_BYTES
                )
        except OSError as exc:  # TimeoutError included
            self.stats.dial_failures += 1
            log.debug(
                "node %d: dial to node %d at %s failed: %r",
                self.node_id,
                peer.node_id,
                address,
                exc,
            )
            return None
        connection = _Connection(reader, writer, address)
        self._connections.add(connection)
        authenticated = False
        try:
            async with asyncio.timeout(self.handshake_timeout):
                await self._handshake_as_dialer(peer, connection)
            authenticated = True
        except TimeoutError:
            reason = f"node {peer.node_id} did not finish the handshake within "
            self._handshake_failed(address, reason + f"{self.handshake_timeout:g}s")
        except IncarnationRefused as exc:
            self._refused(address, exc)
        except PeerIncarnationMismatch as exc:
            self._handshake_failed(address, str(exc), logging.ERROR)
        except (AuthenticationError, ProtocolError) as exc:
            self._handshake_failed(address, str(exc))
        except (asyncio.IncompleteReadError, OSError) as exc:
            self._handshake_failed(address, f"connection lost during the handshake: {exc!r}")
        finally:
            if not authenticated:
                self._close(connection)
        if not authenticated:
            return None
        self.stats.connections_dialed += 1
        return connection

    async def _handshake_as_dialer(self, peer: _Peer, connection: _Connection) -> None:
        hello, _ = await _read_frame(connection.reader, HANDSHAKE_FRAME_LIMIT)
        if not (isinstance(hello, list) and len(hello) == 3 and hello[0] == HANDSHAKE_MAGIC):
            raise ProtocolError("the listener there is not a ProtoBase Raft node")
        if hello[1] != HANDSHAKE_VERSION:
            raise ProtocolError(
                f"the peer speaks handshake version {hello[1]!r}; this node speaks "
                f"{HANDSHAKE_VERSION}"
            )
        nonce_a = hello[2]
        if not (isinstance(nonce_a, bytes) and len(nonce_a) == NONCE_BYTES):
            raise ProtocolError("malformed handshake greeting")
        nonce_d = os.urandom(NONCE_BYTES)
        ids = (self.node_id, peer.node_id)
        said = (nonce_a, nonce_d, *ids, self.incarnation)
        mac_d = self._mac(b"client", *said)
        await _write_frame(
            connection.writer, [*ids, self.cluster_id, nonce_d, self.incarnation, mac_d]
        )
        try:
            answer, _ = await _read_frame(connection.reader, HANDSHAKE_FRAME_LIMIT)
        except asyncio.IncompleteReadError:
            raise AuthenticationError(
                f"node {peer.node_id} closed the connection: it refused this node (check that "
                "both use the same cluster secret and cluster id, and that it knows "
                f"node {self.node_id})"
            ) from None
        if not (
            isinstance(answer, list)
            and len(answer) == 3
            and _is_incarnation(answer[0])
            and _is_verdict(answer[1])
            and isinstance(answer[2], bytes)
        ):
            raise ProtocolError("malformed handshake answer")
        inc_a, verdict_a, mac_a = answer
        if not hmac.compare_digest(mac_a, self._mac(b"server", *said, inc_a, verdict_a)):
            raise AuthenticationError(
                f"the listener does not prove it is node {peer.node_id} of this cluster "
                "(its proof does not verify: wrong cluster secret?)"
            )
        if verdict_a is not None:
            raise IncarnationRefused(self.node_id, self.incarnation, verdict_a, peer.node_id)
        verdict_d = self._verdict(peer.node_id, inc_a)
        mac_v = self._mac(b"verdict", *said, inc_a, verdict_d)
        await _write_frame(connection.writer, [verdict_d, mac_v])
        if verdict_d is not None:
            await _close_after_sending(connection)
            raise self._mismatch(peer.node_id, inc_a, verdict_d)
        connection.peer_id = peer.node_id

    # -- accepting ------------------------------------------------------------------------

    async def _accept_loop(self, listener: socket.socket) -> None:
        """Accept connections until cancelled. (Not `asyncio.start_server`:
        its accept tasks cannot be awaited, so `stop()` could not promise that
        no task is left.)"""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:  # out of file descriptors, aborted handshake
                log.warning("node %d: accept failed: %r", self.node_id, exc)
                await asyncio.sleep(0.1)
                continue
            try:
                reader, writer = await asyncio.open_connection(
                    sock=sock, limit=_STREAM_BUFFER_BYTES
                )
            except BaseException:
                sock.close()
                raise
            self._on_accept(reader, writer)

    def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        address = f"{peername[0]}:{peername[1]}" if peername else "?"
        if self._stopped:
            writer.transport.abort()
            return
        if self._handshaking >= MAX_PENDING_HANDSHAKES:
            writer.transport.abort()
            self._handshake_failed(address, f"over {MAX_PENDING_HANDSHAKES} pending handshakes")
            return
        connection = _Connection(reader, writer, address)
        self._connections.add(connection)
        self._spawn(self._accept(connection), f"raft-accept-{self.node_id}<-{address}")

    async def _accept(self, connection: _Connection) -> None:
        self._handshaking += 1
        authenticated = False
        try:
            async with asyncio.timeout(self.handshake_timeout):
                peer = await self._handshake_as_acceptor(connection)
            authenticated = True
        except TimeoutError:
            reason = f"the handshake was not finished within {self.handshake_timeout:g}s"
            self._handshake_failed(connection.address, reason)
        except IncarnationRefused as exc:
            self._refused(connection.address, exc)
        except PeerIncarnationMismatch as exc:
            self._handshake_failed(connection.address, str(exc), logging.ERROR)
        except (AuthenticationError, ProtocolError) as exc:
            self._handshake_failed(connection.address, str(exc))
        except (asyncio.IncompleteReadError, OSError) as exc:
            reason = f"connection lost during the handshake: {exc!r}"
            self._handshake_failed(connection.address, reason)
        finally:
            self._handshaking -= 1
            if not authenticated:
                self._close(connection)
        if authenticated:
            self.stats.connections_accepted += 1
            await self._serve(peer, connection)

    async def _handshake_as_acceptor(self, connection: _Connection) -> _Peer:
        nonce_a = os.urandom(NONCE_BYTES)
        await _write_frame(connection.writer, [HANDSHAKE_MAGIC, HANDSHAKE_VERSION, nonce_a])
        auth, _ = await _read_frame(connection.reader, HANDSHAKE_FRAME_LIMIT)
        if not (isinstance(auth, list) and len(auth) == 6):
            raise ProtocolError("malformed handshake: not a ProtoBase Raft node")
        id_d, id_a, cluster_id, nonce_d, inc_d, mac_d = auth
        if not (
            type(id_d) is int
            and type(id_a) is int
            and isinstance(cluster_id, bytes)
            and isinstance(nonce_d, bytes)
            and len(nonce_d) == NONCE_BYTES
            and _is_incarnation(inc_d)
            and isinstance(mac_d, bytes)
        ):
            raise ProtocolError("malformed handshake: not a ProtoBase Raft node")
        if cluster_id != self.cluster_id:
            raise AuthenticationError(
                f"the dialer belongs to cluster {cluster_id!r:.80}, "
                f"this node to {self.cluster_id!r}"
            )
        said = (nonce_a, nonce_d, id_d, id_a, inc_d)
        if not hmac.compare_digest(mac_d, self._mac(b"client", *said)):
            raise AuthenticationError("the dialer does not know the cluster secret")
        if id_a != self.node_id:
            raise AuthenticationError(f"the dialer wanted node {id_a}; this is node {self.node_id}")
        peer = self._peers.get(id_d)
        if peer is None:
            raise AuthenticationError(f"node {id_d} is not a peer of node {self.node_id}")
        if id_d > self.node_id:
            raise AuthenticationError(
                f"node {id_d} dialed node {self.node_id}, but the smaller id dials the larger"
            )
        verdict_a = self._verdict(id_d, inc_d)
        mac_a = self._mac(b"server", *said, self.incarnation, verdict_a)
        await _write_frame(connection.writer, [self.incarnation, verdict_a, mac_a])
        if verdict_a is not None:
            await _close_after_sending(connection)
            raise self._mismatch(id_d, inc_d, verdict_a)
        try:
            answer, _ = await _read_frame(connection.reader, HANDSHAKE_FRAME_LIMIT)
        except asyncio.IncompleteReadError:
            raise AuthenticationError(
                f"node {id_d} hung up instead of answering this node's proof (a different "
                "cluster secret?)"
            ) from None
        if not (
            isinstance(answer, list)
            and len(answer) == 2
            and _is_verdict(answer[0])
            and isinstance(answer[1], bytes)
        ):
            raise ProtocolError("malformed handshake verdict")
        verdict_d, mac_v = answer
        if not hmac.compare_digest(
            mac_v, self._mac(b"verdict", *said, self.incarnation, verdict_d)
        ):
            raise AuthenticationError(f"the verdict of node {id_d} does not verify")
        if verdict_d is not None:
            raise IncarnationRefused(self.node_id, self.incarnation, verdict_d, id_d)
        connection.peer_id = id_d
        return peer

    def _mac(
        self, label: bytes, nonce_a: bytes, nonce_d: bytes, id_d: int, id_a: int, *said: Any
    ) -> bytes:
        """The proof of `label` over the handshake so far (see the module docstring)."""
        message = msgpack.packb(
            [label, self.cluster_id, nonce_a, nonce_d, id_d, id_a, *said], use_bin_type=True
        )
        return hmac.new(self.secret, message, hashlib.sha256).digest()

    # -- authenticated connections ------------------------------------------------------

    async def _serve(self, peer: _Peer, connection: _Connection) -> None:
        """Make `connection` the peer's connection and pump it both ways until
        it drops (or is replaced, or the task is cancelled)."""
        if self._peers.get(peer.node_id) is not peer or self._stopped:
            self._close(connection)  # the peer was removed during the handshake
            return
        old = peer.connection
        if old is not None:
            self.stats.connections_replaced += 1
            log.info(
                "node %d: new connection from node %d replaces the old one",
                self.node_id,
                peer.node_id,
            )
            self._close(old)
        if peer.ever_connected:
            self.stats.reconnects += 1
        peer.ever_connected = True
        peer.connection = connection
        connection.writer_task = self._spawn(
            self._write_loop(peer, connection), f"raft-write-{self.node_id}->{peer.node_id}"
        )
        try:
            await self._read_loop(peer, connection)
        finally:
            self._close(connection)
            if peer.connection is connection:
                peer.connection = None
                if self._on_peer_lost is not None and not self._stopped:
                    # Not replaced by a newer connection: the peer is gone
                    # (or the path to it broke).
                    self._on_peer_lost(peer.node_id)

    async def _read_loop(self, peer: _Peer, connection: _Connection) -> None:
        reader = connection.reader
        try:
            while not connection.closed:
                payload, size = await _read_frame(reader, self.max_frame_bytes)
                if connection.closed:
                    return
                self.stats.frames_received += 1
                self.stats.bytes_received += size
                try:
                    self._on_message(peer.node_id, payload)
                except Exception:
                    self.stats.callback_errors += 1
                    log.exception(
                        "node %d: on_message failed for a frame from node %d",
                        self.node_id,
                        peer.node_id,
                    )
        except ProtocolError as exc:
            self.stats.protocol_errors += 1
            log.warning(
                "node %d: closing the connection to node %d at %s: %s",
                self.node_id,
                peer.node_id,
                connection.address,
                exc,
            )
        except (asyncio.IncompleteReadError, OSError) as exc:
            if not connection.closed:
                log.info("node %d: connection to node %d lost: %r", self.node_id, peer.node_id, exc)

    async def _write_loop(self, peer: _Peer, connection: _Connection) -> None:
        """Drain the peer's queue into the socket, several frames per write;
        `drain()` holds the loop back while the socket buffer is full."""
        writer = connection.writer
        try:
            while not connection.closed:
                if not peer.queue:
                    peer.wakeup.clear()
                    await peer.wakeup.wait()
                    continue
                chunks: list[bytes] = []
                batch_bytes = 0
                while peer.queue and batch_bytes < _WRITE_BATCH_BYTES:
                    body = peer.queue.popleft()
                    peer.queued_bytes -= len(body)
                    chunks.append(_HEADER.pack(len(body)))
                    chunks.append(body)
                    batch_bytes += _HEADER.size + len(body)
                writer.write(b"".join(chunks))
                await writer.drain()
                self.stats.frames_sent += len(chunks) // 2
                self.stats.bytes_sent += batch_bytes
        except OSError as exc:
            if not connection.closed:
                log.info("node %d: write to node %d failed: %r", self.node_id, peer.node_id, exc)
        finally:
            self._close(connection)  # so that the reader stops too


def _is_incarnation(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == INCARNATION_BYTES


def _is_verdict(value: Any) -> bool:
    return value is None or _is_incarnation(value)


async def _close_after_sending(connection: _Connection) -> None:
    """Close `connection` once what was written has left (an abort would
    drop a refusal the peer must read)."""
    connection.writer.close()
    with contextlib.suppress(OSError):
        await connection.writer.wait_closed()


async def _write_frame(writer: asyncio.StreamWriter, payload: Any) -> None:
    body = msgpack.packb(payload, use_bin_type=True)
    writer.write(_HEADER.pack(len(body)) + body)
    await writer.drain()


async def _read_frame(reader: asyncio.StreamReader, limit: int) -> tuple[Any, int]:
    """Read one frame; return its value and its size on the wire.

    Raises:
        ProtocolError: the announced length is over `limit`, or the body is
            not exactly one msgpack value.
        asyncio.IncompleteReadError: the stream ended (mid-frame or not).
    """
    (length,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if length > limit:
        raise ProtocolError(f"the peer announced a {length}-byte frame; the limit is {limit}")
    body = await reader.readexactly(length)
    try:
        value = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_bin_len=limit,
            max_str_len=limit,
            max_array_len=limit,
            max_map_len=limit,
            max_ext_len=limit,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"the peer sent a frame that is not msgpack: {exc}") from exc
    return value, _HEADER.size + length
