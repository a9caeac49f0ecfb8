"""The Raft transport over real sockets on 127.0.0.1.

Raw clients and fake listeners here speak the handshake with this file's own
code (`frame`, `proof`, `impersonate`), so the wire protocol documented in
`cluster/raft/transport.py` is checked independently of its implementation.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import msgpack
import pytest
from loopback import HOST, eventually, free_ports

from cluster.raft.incarnation import IncarnationRefused, PeerIncarnations
from cluster.raft.transport import MAX_PENDING_HANDSHAKES, Transport
from cluster.raft.types import Entry, Message, MessageType

SECRET = b"correct horse battery staple"
FAST: dict[str, Any] = {
    "connect_timeout": 0.5,
    "handshake_timeout": 0.5,
    "backoff_initial": 0.01,
    "backoff_max": 0.05,
}
LOGGER = "protobase.raft.transport"


# -- harness ------------------------------------------------------------------------------


class Inbox:
    """An `on_message` callback that keeps what it is given."""

    def __init__(self) -> None:
        self.received: list[tuple[int, Any]] = []

    def __call__(self, sender: int, payload: Any) -> None:
        self.received.append((sender, payload))

    def payloads(self, sender: int) -> list[Any]:
        return [payload for frm, payload in self.received if frm == sender]


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run `scenario` on a fresh loop; fail if it leaves a task behind."""

    async def main() -> None:
        async with asyncio.timeout(10):
            await scenario()
        leftover = asyncio.all_tasks() - {asyncio.current_task()}
        assert not leftover, leftover

    asyncio.run(main())


def make(
    node_id: int, peers: dict[int, tuple[str, int]], inbox: Inbox, **options: Any
) -> Transport:
    return Transport(
        node_id, (HOST, options.pop("port", 0)), peers, SECRET, inbox, **{**FAST, **options}
    )


@asynccontextmanager
async def running(
    count: int, per_node: dict[int, dict[str, Any]] | None = None, **options: Any
) -> AsyncIterator[tuple[list[Transport], list[Inbox]]]:
    """`count` started transports (ids 1..count) that know each other."""
    inboxes = [Inbox() for _ in range(count)]
    nodes = [
        make(i + 1, {}, inboxes[i], **{**options, **(per_node or {}).get(i + 1, {})})
        for i in range(count)
    ]
    try:
        for node in nodes:
            await node.start()
        addresses = {node.node_id: (HOST, node.port) for node in nodes}
        for node in nodes:
            node.set_peers(addresses)  # includes the node itself: ignored
        yield nodes, inboxes
    finally:
        for node in nodes:
            await node.stop()


async def all_connected(nodes: list[Transport]) -> None:
    await eventually(
        lambda: all(a.connected(b.node_id) for a in nodes for b in nodes if a is not b),
        "every pair to connect",
    )


def frame(value: Any) -> bytes:
    body = msgpack.packb(value, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> Any:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    return msgpack.unpackb(await reader.readexactly(length), raw=False)


INCARNATION = b"impostor's life."
"""What `impersonate` presents unless told otherwise (16 bytes)."""


def proof(
    label: bytes,
    nonce_a: bytes,
    nonce_d: bytes,
    id_d: int,
    id_a: int,
    *said: Any,
    secret: bytes = SECRET,
    cluster_id: bytes = b"protobase",
) -> bytes:
    message = msgpack.packb(
        [label, cluster_id, nonce_a, nonce_d, id_d, id_a, *said], use_bin_type=True
    )
    return hmac.new(secret, message, hashlib.sha256).digest()


class Refused(Exception):
    """The listener answered `impersonate` with a refusal of its incarnation."""

    def __init__(self, known: bytes) -> None:
        super().__init__(known)
        self.known = known


async def impersonate(
    port: int,
    id_d: int,
    id_a: int,
    secret: bytes = SECRET,
    cluster_id: bytes = b"protobase",
    incarnation: bytes = INCARNATION,
    sent_incarnation: bytes | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Dial the transport at `port` as node `id_d` of `incarnation`, with
    this file's own handshake code; `sent_incarnation` puts another one in
    the frame than the proof covers. Returns the streams once both sides
    accepted each other; raises IncompleteReadError when the listener hangs
    up instead, `Refused` when it refuses the incarnation."""
    reader, writer = await asyncio.open_connection(HOST, port)
    magic, version, nonce_a = await read_frame(reader)
    assert (magic, version, len(nonce_a)) == ("protobase-raft", 2, 32)
    nonce_d = os.urandom(32)
    said = (nonce_a, nonce_d, id_d, id_a, incarnation)
    mac = proof(b"client", *said, secret=secret, cluster_id=cluster_id)
    sent = incarnation if sent_incarnation is None else sent_incarnation
    writer.write(frame([id_d, id_a, cluster_id, nonce_d, sent, mac]))
    try:
        inc_a, verdict_a, mac_a = await read_frame(reader)
    except asyncio.IncompleteReadError:
        writer.close()
        raise
    assert mac_a == proof(b"server", *said, inc_a, verdict_a, secret=secret, cluster_id=cluster_id)
    assert isinstance(inc_a, bytes) and len(inc_a) == 16
    if verdict_a is not None:
        assert await hung_up(reader)
        writer.close()
        raise Refused(verdict_a)
    mac_v = proof(b"verdict", *said, inc_a, None, secret=secret, cluster_id=cluster_id)
    writer.write(frame([None, mac_v]))
    return reader, writer


async def hung_up(reader: asyncio.StreamReader, timeout: float = 2.0) -> bool:
    """True once the other end closes (whatever it sent before is discarded)."""
    with suppress(ConnectionResetError):
        await asyncio.wait_for(reader.read(), timeout)
    return reader.at_eof()


def warnings(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == LOGGER)


# -- delivery and connections ----------------------------------------------------------------


def test_three_nodes_exchange_in_all_directions() -> None:
    async def scenario() -> None:
        async with running(3) as (nodes, inboxes):
            for a in nodes:
                for b in nodes:
                    if a is b:
                        continue
                    for k in range(5):
                        message = Message(
                            MessageType.APPEND,
                            k,
                            a.node_id,
                            b.node_id,
                            3,
                            entries=[Entry(k + 1, 3, data=b"\x00\xff" * k)],
                        )
                        assert a.send(b.node_id, [message.to_wire(), ["text", k]])
            await eventually(lambda: all(len(i.received) == 10 for i in inboxes), "10 each")
            for b, inbox in zip(nodes, inboxes, strict=True):
                for a in nodes:
                    if a is b:
                        continue
                    got = inbox.payloads(a.node_id)
                    assert [p[1] for p in got] == [["text", k] for k in range(5)]  # in order
                    messages = [Message.from_wire(p[0]) for p in got]
                    assert [(m.frm, m.to, m.group) for m in messages] == [
                        (a.node_id, b.node_id, k) for k in range(5)
                    ]
                    assert messages[4].entries[0].data == b"\x00\xff" * 4
            assert nodes[0].stats.frames_sent == 10
            assert nodes[0].stats.frames_received == 10

    run(scenario)


def test_exactly_one_tcp_connection_per_pair() -> None:
    async def scenario() -> None:
        async with running(3) as (nodes, _):
            await all_connected(nodes)
            await asyncio.sleep(0.2)  # room for any duplicate dial to show up
            for a in nodes:
                for b in nodes:
                    if a.node_id < b.node_id:
                        mine = a._peers[b.node_id].connection
                        theirs = b._peers[a.node_id].connection
                        assert mine is not None and theirs is not None
                        # Both ends of the same socket:
                        assert mine.writer.get_extra_info(
                            "sockname"
                        ) == theirs.writer.get_extra_info("peername")
                        assert mine.writer.get_extra_info(
                            "peername"
                        ) == theirs.writer.get_extra_info("sockname")
                assert len(a._connections) == 2
            # The smaller id dials, the larger accepts; nothing else.
            assert [n.stats.connections_dialed for n in nodes] == [2, 1, 0]
            assert [n.stats.connections_accepted for n in nodes] == [0, 1, 2]
            assert all(n.stats.connections_replaced == 0 for n in nodes)

    run(scenario)


def test_writer_batches_queued_frames_into_one_write() -> None:
    async def scenario() -> None:
        async with running(2) as (nodes, inboxes):
            await all_connected(nodes)
            connection = nodes[0]._peers[2].connection
            assert connection is not None
            writes: list[int] = []
            real_write = connection.writer.write

            def counting_write(data: Any) -> None:
                writes.append(len(data))
                real_write(data)

            connection.writer.write = counting_write  # type: ignore[method-assign]
            for k in range(200):
                assert nodes[0].send(2, k)
            await eventually(lambda: len(inboxes[1].received) == 200, "200 frames")
            assert inboxes[1].payloads(1) == list(range(200))
            assert len(writes) == 1

    run(scenario)


def test_new_connection_from_the_same_peer_replaces_the_old_one() -> None:
    async def scenario() -> None:
        # A slow redial keeps node 1 away long enough to talk to the impostor.
        async with running(2, backoff_initial=0.3, backoff_max=0.3) as (nodes, inboxes):
            await all_connected(nodes)
            old = nodes[1]._peers[1].connection
            reader, writer = await impersonate(nodes[1].port, 1, 2)
            assert old is not None
            await eventually(lambda: old.closed, "the old connection to close")
            assert nodes[1].stats.connections_replaced == 1
            assert nodes[1].send(1, "to the newest connection")
            assert await read_frame(reader) == "to the newest connection"
            writer.write(frame(["from the newest connection"]))
            await eventually(
                lambda: inboxes[1].received == [(1, ["from the newest connection"])],
                "the impostor's frame",
            )
            # The real node 1 lost its connection, redials, and replaces the impostor.
            assert await hung_up(reader)
            writer.close()
            await eventually(lambda: nodes[0].connected(2), "node 1 to reconnect")
            assert nodes[1].stats.connections_replaced == 2
            assert nodes[0].stats.reconnects == 1
            assert nodes[0].send(2, "again") and nodes[1].send(1, "again")
            await eventually(lambda: inboxes[0].payloads(2) == ["again"], "node 2 -> 1")
            await eventually(lambda: inboxes[1].payloads(1)[-1:] == ["again"], "node 1 -> 2")

    run(scenario)


def test_send_before_the_peer_is_up_is_delivered_after_it_starts() -> None:
    async def scenario() -> None:
        port_2 = free_ports(1)[0]
        inbox_1, inbox_2 = Inbox(), Inbox()
        node_1 = make(1, {2: (HOST, port_2)}, inbox_1)
        node_2 = make(2, {}, inbox_2, port=port_2)
        try:
            await node_1.start()
            assert node_1.send(2, "sent while node 2 was down")
            await eventually(lambda: node_1.stats.dial_failures >= 3, "failed dials")
            assert not node_1.connected(2)
            assert node_2.send(1, "queued before start") is False  # not a peer yet
            node_2.set_peers({1: (HOST, node_1.port)})
            assert node_2.send(1, "queued before start")  # the acceptor waits to be dialed
            await node_2.start()
            await eventually(lambda: bool(inbox_2.received and inbox_1.received), "delivery")
            assert inbox_2.received == [(1, "sent while node 2 was down")]
            assert inbox_1.received == [(2, "queued before start")]
        finally:
            await node_1.stop()
            await node_2.stop()

    run(scenario)


def test_dial_back_off_grows_and_is_capped() -> None:
    async def scenario() -> None:
        node = make(
            1, {2: (HOST, free_ports(1)[0])}, Inbox(), backoff_initial=0.01, backoff_max=0.02
        )
        await node.start()
        await asyncio.sleep(0.5)
        await node.stop()
        # Delays 0.005-0.01, then 0.01-0.02 each (jitter): 25 to 50 dials in 0.5 s.
        # Without back-off there would be thousands; without the cap, about 8.
        assert 15 <= node.stats.dial_failures <= 60, node.stats.dial_failures

    run(scenario)


@pytest.mark.parametrize("victim", [1, 2], ids=["dialer-restarts", "acceptor-restarts"])
def test_peer_restart_reconnects_and_delivery_resumes(victim: int) -> None:
    async def scenario() -> None:
        async with running(2) as (nodes, inboxes):
            survivor = 3 - victim
            await all_connected(nodes)
            old = nodes[victim - 1]
            await old.stop()
            await eventually(lambda: not nodes[survivor - 1].connected(victim), "disconnect")
            assert nodes[survivor - 1].send(victim, "sent while down")
            inbox = Inbox()
            new = make(victim, {survivor: (HOST, nodes[survivor - 1].port)}, inbox, port=old.port)
            nodes[victim - 1] = new  # running() stops it
            await new.start()
            await eventually(lambda: inbox.received == [(survivor, "sent while down")], "resume")
            assert new.send(survivor, "back")
            await eventually(lambda: inboxes[survivor - 1].payloads(victim) == ["back"], "back")
            assert nodes[survivor - 1].stats.reconnects == 1

    run(scenario)


def test_a_stopped_transport_starts_again_on_its_port() -> None:
    inboxes = [Inbox(), Inbox()]
    nodes = [make(1, {}, inboxes[0]), make(2, {}, inboxes[1])]

    async def first_run() -> None:
        for node in nodes:
            await node.start()
        addresses = {node.node_id: (HOST, node.port) for node in nodes}
        for node in nodes:
            node.set_peers(addresses)
        assert nodes[0].send(2, "first")
        await eventually(lambda: inboxes[1].received == [(1, "first")], "the first run")
        with pytest.raises(RuntimeError, match="already running"):
            await nodes[0].start()
        await nodes[0].stop()
        await nodes[0].stop()  # idempotent
        await nodes[0].start()  # same port: node 2 needs no new address
        assert nodes[0].send(2, "second")
        await eventually(lambda: inboxes[1].payloads(1) == ["first", "second"], "restart")
        for node in nodes:
            await node.stop()

    async def second_loop() -> None:  # a new event loop, as after a process-level restart
        for node in nodes:
            await node.start()
        assert nodes[1].send(1, "third")
        await eventually(lambda: inboxes[0].received == [(2, "third")], "a new loop")
        for node in nodes:
            await node.stop()

    run(first_run)
    run(second_loop)
    assert nodes[0].stats.reconnects == 2


def test_set_peers_adds_and_removes_members() -> None:
    async def scenario() -> None:
        async with running(2) as (nodes, inboxes):
            inbox_3 = Inbox()
            addresses = {n.node_id: (HOST, n.port) for n in nodes}
            node_3 = make(3, addresses, inbox_3)
            try:
                await node_3.start()
                assert not nodes[0].send(3, "not a member yet")
                assert nodes[0].stats.unknown_peer == 1
                addresses[3] = (HOST, node_3.port)
                for node in nodes:
                    node.set_peers(addresses)
                assert nodes[0].send(3, "welcome") and nodes[1].send(3, "welcome")
                await eventually(lambda: len(inbox_3.received) == 2, "node 3 to hear both")
                assert node_3.send(1, "hi") and node_3.send(2, "hi")
                await eventually(lambda: all(i.payloads(3) == ["hi"] for i in inboxes), "hi")

                del addresses[3]
                nodes[0].set_peers(addresses)  # node 1 drops node 3: closes the connection
                assert not nodes[0].send(3, "gone")
                await eventually(lambda: not node_3.connected(1), "node 3 to see it closed")
                assert nodes[1].connected(3)
            finally:
                await node_3.stop()

    run(scenario)


def test_set_peers_with_a_new_address_redials_there() -> None:
    async def scenario() -> None:
        inbox_2 = Inbox()
        node_2 = make(2, {}, inbox_2)
        node_1 = make(
            1, {2: (HOST, free_ports(1)[0])}, Inbox(), backoff_initial=5.0, backoff_max=5.0
        )
        try:
            await node_2.start()
            node_2.set_peers({1: (HOST, 1)})  # the acceptor does not use the address
            await node_1.start()
            assert node_1.send(2, "moved")
            await eventually(lambda: node_1.stats.dial_failures == 1, "the first dial")
            node_1.set_peers({2: (HOST, node_2.port)})  # redials now, not in 5 s
            await eventually(lambda: inbox_2.received == [(1, "moved")], "delivery", timeout=2)
        finally:
            await node_1.stop()
            await node_2.stop()

    run(scenario)


def test_on_message_errors_are_counted_and_the_connection_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    received: list[Any] = []

    def picky(sender: int, payload: Any) -> None:
        if payload == "boom":
            raise RuntimeError("driver bug")
        received.append(payload)

    async def scenario() -> None:
        async with running(2) as (nodes, _):
            nodes[1]._on_message = picky
            assert nodes[0].send(2, "boom") and nodes[0].send(2, "fine")
            await eventually(lambda: received == ["fine"], "the second frame")
            assert nodes[1].stats.callback_errors == 1
            assert nodes[0].stats.connections_dialed == 1

    run(scenario)
    assert "driver bug" in caplog.text


# -- queues and frame sizes -----------------------------------------------------------------


def test_full_queue_drops_and_memory_stays_bounded() -> None:
    async def scenario() -> None:
        port_2 = free_ports(1)[0]
        inbox_2 = Inbox()
        node_1 = make(1, {2: (HOST, port_2)}, Inbox(), queue_limit=8, queue_max_bytes=4000)
        node_2 = make(2, {}, inbox_2, port=port_2)
        try:
            await node_1.start()
            for k in range(8):
                assert node_1.send(2, k)
            assert node_1.send(2, 8) is False
            for _ in range(1000):
                assert node_1.send(2, b"x" * 100) is False
            assert node_1.stats.dropped == 1001
            assert node_1.queued(2) == 8
            assert node_1._peers[2].queued_bytes == 8  # one byte per small int
            await node_2.start()
            node_2.set_peers({1: (HOST, node_1.port)})
            await eventually(lambda: len(inbox_2.received) == 8, "the queued frames")
            assert inbox_2.payloads(1) == list(range(8))
            await eventually(lambda: node_1.queued(2) == 0, "the queue to drain")
            assert node_1._peers[2].queued_bytes == 0
        finally:
            await node_1.stop()
            await node_2.stop()

    run(scenario)


def test_queue_byte_limit() -> None:
    async def scenario() -> None:
        node = make(1, {2: (HOST, free_ports(1)[0])}, Inbox(), queue_max_bytes=1000)
        await node.start()
        big = b"y" * 5000  # an empty queue admits one frame of any allowed size
        assert node.send(2, big)
        assert node.send(2, b"") is False
        node._peers[2].queue.clear()  # as if it had been written
        node._peers[2].queued_bytes = 0
        assert node.send(2, b"z" * 400) and node.send(2, b"z" * 400)
        assert node.send(2, b"z" * 400) is False
        assert node._peers[2].queued_bytes <= 1000
        assert node.stats.dropped == 2
        await node.stop()

    run(scenario)


def test_payload_at_the_frame_limit_is_delivered_and_one_byte_more_raises() -> None:
    limit = 1 << 20

    async def scenario() -> None:
        async with running(2, max_frame_bytes=limit) as (nodes, inboxes):
            largest = os.urandom(limit - 5)  # bin 32: 5 bytes of header
            assert len(msgpack.packb(largest)) == limit
            assert nodes[0].send(2, largest)
            assert nodes[1].send(1, largest)
            with pytest.raises(ValueError, match="frame limit"):
                nodes[0].send(2, os.urandom(limit - 4))
            with pytest.raises(TypeError):
                nodes[0].send(2, object())
            await eventually(lambda: inboxes[1].received == [(1, largest)], "the large frame")
            await eventually(lambda: inboxes[0].received == [(2, largest)], "the large frame")
            assert nodes[1].stats.bytes_received == limit + 4

    run(scenario)


def test_frame_over_the_receivers_limit_closes_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        per_node = {1: {"max_frame_bytes": 4 << 20}, 2: {"max_frame_bytes": 1 << 20}}
        async with running(2, per_node) as (nodes, inboxes):
            await all_connected(nodes)
            assert nodes[0].send(2, b"x" * (2 << 20))
            await eventually(lambda: nodes[1].stats.protocol_errors == 1, "the rejection")
            await eventually(lambda: nodes[0].stats.reconnects == 1, "node 1 to redial")
            assert nodes[0].send(2, "small")
            await eventually(lambda: inboxes[1].received == [(1, "small")], "later frames")

    caplog.set_level(logging.WARNING, logger=LOGGER)
    run(scenario)
    assert "limit is 1048576" in warnings(caplog)


# -- authentication -------------------------------------------------------------------------


def test_construction_refuses_an_empty_secret_and_bad_ids() -> None:
    with pytest.raises(ValueError, match="secret"):
        Transport(1, (HOST, 0), {}, b"", Inbox())
    with pytest.raises(ValueError, match="positive"):
        Transport(0, (HOST, 0), {}, SECRET, Inbox())
    with pytest.raises(ValueError, match="positive"):
        Transport(1, (HOST, 0), {-2: (HOST, 1)}, SECRET, Inbox())
    with pytest.raises(ValueError, match="16 bytes"):
        Transport(1, (HOST, 0), {}, SECRET, Inbox(), incarnation=b"too short")


@pytest.mark.parametrize(
    ("option", "reason_1", "reason_2"),
    [
        ("secret", "refused this node", "does not know the cluster secret"),
        ("cluster_id", "refused this node", "belongs to cluster b'other'"),
    ],
)
def test_mismatched_secret_or_cluster_id_is_refused_on_both_sides(
    option: str, reason_1: str, reason_2: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        inbox_1, inbox_2 = Inbox(), Inbox()
        node_2 = make(2, {}, inbox_2)
        if option == "secret":
            node_1 = Transport(1, (HOST, 0), {}, b"another secret", inbox_1, **FAST)
        else:
            node_1 = make(1, {}, inbox_1, cluster_id=b"other")
        try:
            await node_2.start()
            await node_1.start()
            node_1.set_peers({2: (HOST, node_2.port)})
            node_2.set_peers({1: (HOST, node_1.port)})
            assert node_1.send(2, "let me in") and node_2.send(1, "let me in")
            await eventually(
                lambda: min(node_1.stats.handshake_failures, node_2.stats.handshake_failures) >= 2,
                "both sides to refuse (twice: the dialer retries)",
            )
            await asyncio.sleep(0.1)
            assert not node_1.connected(2) and not node_2.connected(1)
            assert inbox_1.received == [] and inbox_2.received == []
            assert node_1.queued(2) == 1 and node_2.queued(1) == 1
        finally:
            await node_1.stop()
            await node_2.stop()
        log = warnings(caplog)
        assert f"handshake with 127.0.0.1:{node_2.port} failed" in log and reason_1 in log
        assert "handshake with 127.0.0.1:" in log and reason_2 in log

    caplog.set_level(logging.WARNING, logger=LOGGER)
    run(scenario)


@pytest.mark.parametrize(
    ("id_d", "id_a", "secret", "reason"),
    [
        (1, 2, b"guess", "does not know the cluster secret"),
        (9, 2, SECRET, "node 9 is not a peer of node 2"),
        (1, 5, SECRET, "the dialer wanted node 5; this is node 2"),
        (3, 2, SECRET, "node 3 dialed node 2, but the smaller id dials the larger"),
    ],
)
def test_acceptor_refuses_a_dialer_it_cannot_trust(
    id_d: int, id_a: int, secret: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        inbox = Inbox()
        node = make(2, {1: (HOST, free_ports(1)[0]), 3: (HOST, free_ports(1)[0])}, inbox)
        await node.start()
        try:
            with pytest.raises(asyncio.IncompleteReadError):
                await impersonate(node.port, id_d, id_a, secret)
            assert node.stats.handshake_failures == 1
            assert node.stats.connections_accepted == 0 and inbox.received == []
            _, writer = await impersonate(node.port, 1, 2)  # still serves the good ones
            writer.close()
            await eventually(lambda: node.stats.connections_accepted == 1, "the good one")
        finally:
            await node.stop()

    caplog.set_level(logging.WARNING, logger=LOGGER)
    run(scenario)
    assert reason in warnings(caplog)


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: raft\r\n\r\n", "limit is 1024"),
        (b"\xff\xff\xff\xff", "limit is 1024"),
        (b"\x00\x00\x00\x02\xc1\xc1", "not msgpack"),
        (b"\x00\x00\x00\x02\x01\x02", "not msgpack"),  # two values where one belongs
        (frame([1, 2, 3]), "malformed handshake"),
        (frame([1, 2, b"protobase", b"short nonce", INCARNATION, b"mac"]), "malformed handshake"),
        (frame([1, 2, b"protobase", os.urandom(32), b"short", b"mac"]), "malformed handshake"),
        (b"\x00\x00\x00", "connection lost during the handshake"),  # then EOF
    ],
)
def test_unauthenticated_garbage_is_refused_and_others_still_served(
    garbage: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with running(2) as (nodes, inboxes):
            reader, writer = await asyncio.open_connection(HOST, nodes[1].port)
            writer.write(garbage)
            if reason.startswith("connection lost"):
                writer.write_eof()
            assert await hung_up(reader)
            writer.close()
            assert nodes[1].stats.handshake_failures == 1
            assert nodes[0].send(2, "still here")
            await eventually(lambda: inboxes[1].received == [(1, "still here")], "delivery")

    caplog.set_level(logging.WARNING, logger=LOGGER)
    run(scenario)
    assert reason in warnings(caplog) and "handshake with 127.0.0.1:" in warnings(caplog)


@pytest.mark.parametrize(
    ("bad_bytes", "reason"),
    [
        (struct.pack(">I", (64 << 20) + 1), "limit is 67108864"),
        (b"\x00\x00\x00\x01\xc1", "not msgpack"),
        (b"\x00\x00\x00\x03\x01\x02\x03", "not msgpack"),
        (b"\x00\x00\x00\x03\xa2\xff\xfe", "not msgpack"),  # str that is not UTF-8
    ],
)
def test_authenticated_peer_sending_a_bad_frame_is_disconnected(
    bad_bytes: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        inbox = Inbox()
        node = make(2, {1: (HOST, free_ports(1)[0])}, inbox, max_frame_bytes=64 << 20)
        await node.start()
        try:
            reader, writer = await impersonate(node.port, 1, 2)
            writer.write(frame({"ok": [b"\x00", 1]}))
            await eventually(lambda: inbox.received == [(1, {"ok": [b"\x00", 1]})], "a frame")
            assert node.connected(1) and node.send(1, "ack")
            assert await read_frame(reader) == "ack"
            writer.write(bad_bytes)
            assert await hung_up(reader)
            writer.close()
            assert node.stats.protocol_errors == 1 and not node.connected(1)
            assert len(inbox.received) == 1
            reader, writer = await impersonate(node.port, 1, 2)  # a fresh start is fine
            writer.close()
        finally:
            await node.stop()

    caplog.set_level(logging.WARNING, logger=LOGGER)
    run(scenario)
    assert reason in warnings(caplog)


def test_acceptor_drops_a_dialer_that_stalls_the_handshake(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        node = make(2, {1: (HOST, free_ports(1)[0])}, Inbox(), handshake_timeout=0.2)
        await node.start()
        try:
            loop = asyncio.get_running_loop()
            began = loop.time()
            reader, writer = await asyncio.open_connection(HOST, node.port)
            await read_frame(reader)  # the greeting; then say nothing
            assert await hung_up(reader)
            writer.close()
            assert 0.15 <= loop.time() - began < 1.5
            assert node.stats.handshake_failures == 1
        finally:
            await node.stop()

    caplog.set_level(logging.WARNING, logger=LOGGER)
    run(scenario)
    assert "not finished within 0.2s" in warnings(caplog)


async def _fake_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    pass


async def _fake_bad_proof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(frame(["protobase-raft", 2, os.urandom(32)]))
    await read_frame(reader)
    writer.write(frame([INCARNATION, None, os.urandom(32)]))


async def _fake_refusal(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A refusal of the dialer's incarnation, from a listener without the secret."""
    writer.write(frame(["protobase-raft", 2, os.urandom(32)]))
    await read_frame(reader)
    writer.write(frame([INCARNATION, os.urandom(16), os.urandom(32)]))


async def _fake_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"\x00\x00\x00\x0bHTTP/1.1 400")


async def _fake_future_version(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(frame(["protobase-raft", 3, os.urandom(32)]))


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (_fake_silent, "did not finish the handshake within 0.2s"),
        (_fake_bad_proof, "does not prove it is node 2"),
        (_fake_refusal, "does not prove it is node 2"),
        (_fake_http, "not msgpack"),
        (_fake_future_version, "handshake version 3"),
    ],
)
def test_dialer_refuses_a_listener_that_cannot_prove_itself(
    behaviour: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        sessions: list[asyncio.Task[Any]] = []
        after_handshake: list[bytes] = []

        async def fake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            sessions.append(task)
            await behaviour(reader, writer)
            after_handshake.append(await reader.read())  # until the dialer hangs up
            writer.close()

        server = await asyncio.start_server(fake, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        node = make(1, {2: (HOST, port)}, Inbox(), handshake_timeout=0.2)
        try:
            await node.start()
            assert node.send(2, "secret stuff")
            await eventually(lambda: node.stats.handshake_failures >= 1, "the refusal")
            assert not node.connected(2) and node.queued(2) == 1
            assert node.stats.refused_by_peers == 0  # an unproven refusal counts for nothing
        finally:
            await node.stop()
            server.close()
            await server.wait_closed()
            await asyncio.gather(*sessions, return_exceptions=True)
        assert b"secret stuff" not in b"".join(after_handshake)

    caplog.set_level(logging.WARNING, logger=LOGGER)
    run(scenario)
    assert f"{reason}" in warnings(caplog)


def test_pending_handshakes_are_bounded() -> None:
    async def scenario() -> None:
        node = make(2, {1: (HOST, free_ports(1)[0])}, Inbox(), handshake_timeout=5.0)
        await node.start()
        streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            for _ in range(MAX_PENDING_HANDSHAKES):
                reader, writer = await asyncio.open_connection(HOST, node.port)
                streams.append((reader, writer))
                await read_frame(reader)  # the greeting: the handshake is pending
            reader, writer = await asyncio.open_connection(HOST, node.port)
            streams.append((reader, writer))
            assert await hung_up(reader, timeout=1.0)  # one too many: closed at once
            assert node.stats.handshake_failures == 1
            streams[0][1].close()  # frees a slot
            await eventually(lambda: node.stats.handshake_failures == 2, "the slot to free")
            streams.append(await impersonate(node.port, 1, 2))
            await eventually(lambda: node.stats.connections_accepted == 1, "the handshake")
        finally:
            for _, writer in streams:
                writer.close()
            await node.stop()

    run(scenario)


# -- incarnations ---------------------------------------------------------------------------


LIVES = {1: b"node 1, 1st life", 2: b"node 2, 1st life"}
"""The incarnations `with_books` gives nodes 1 and 2 (16 bytes each)."""


def with_books(tmp_path: Path) -> dict[int, dict[str, Any]]:
    """`running()` options: nodes 1 and 2 with `LIVES` and a `PeerIncarnations` each."""
    return {
        n: {"incarnation": LIVES[n], "peer_incarnations": PeerIncarnations(tmp_path / f"{n}")}
        for n in (1, 2)
    }


def test_first_contact_is_learned_durably_on_both_sides(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(2, with_books(tmp_path)) as (nodes, _):
            await all_connected(nodes)
        assert PeerIncarnations(tmp_path / "1").known() == {2: LIVES[2]}  # reread from disk
        assert PeerIncarnations(tmp_path / "2").known() == {1: LIVES[1]}

    run(scenario)


@pytest.mark.parametrize("victim", [1, 2], ids=["dialer-wiped", "acceptor-wiped"])
def test_a_peer_back_with_another_incarnation_is_refused_and_told_why(
    victim: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        survivor = 3 - victim
        async with running(2, with_books(tmp_path)) as (nodes, inboxes):
            await all_connected(nodes)
            old = nodes[victim - 1]
            await old.stop()
            await eventually(lambda: not nodes[survivor - 1].connected(victim), "disconnect")
            assert nodes[survivor - 1].send(victim, "for the first life only")
            # Back on an empty data directory: a new incarnation, nobody known.
            refusals: list[IncarnationRefused] = []
            inbox = Inbox()
            peers = {survivor: (HOST, nodes[survivor - 1].port)}
            wiped = PeerIncarnations(tmp_path / "wiped")
            new_life = b"a wiped node 123"
            new = make(
                victim,
                peers,
                inbox,
                port=old.port,
                incarnation=new_life,
                peer_incarnations=wiped,
                on_refused=refusals.append,
            )
            nodes[victim - 1] = new  # running() stops it
            await new.start()
            assert new.send(survivor, "from the second life")
            await eventually(lambda: len(refusals) >= 2, "two refusals (it keeps redialing)")
            refusal = refusals[0]
            assert (refusal.node_id, refusal.refused_by) == (victim, survivor)
            assert (refusal.incarnation, refusal.known) == (new_life, LIVES[victim])
            assert str(refusal).startswith(
                f"node {victim}'s data directory was wiped or replaced (incarnation "
                f"{new_life.hex()}, the cluster knows {LIVES[victim].hex()}); it cannot rejoin "
                "as the same member: start this machine as a new member (a new id, an empty "
                f"directory, joining the cluster) and declare member {victim} dead "
                f"(`protobase cluster replace-node URL {victim}`), or restore its data directory"
            )
            assert new.stats.refused_by_peers == len(refusals)
            assert nodes[survivor - 1].stats.peers_refused >= 2
            # Not a frame either way; the survivor still remembers the first life.
            assert not new.connected(survivor) and not nodes[survivor - 1].connected(victim)
            assert inbox.received == [] and inboxes[survivor - 1].payloads(victim) == []
            assert nodes[survivor - 1].peer_incarnations is not None
            assert nodes[survivor - 1].peer_incarnations.get(victim) == LIVES[victim]
            # Its data directory restored, the first life is let in again.
            await new.stop()
            restored = make(
                victim,
                peers,
                inboxes[victim - 1],
                port=old.port,
                incarnation=LIVES[victim],
                peer_incarnations=PeerIncarnations(tmp_path / f"{victim}"),
            )
            nodes[victim - 1] = restored
            await restored.start()
            await eventually(
                lambda: inboxes[victim - 1].payloads(survivor) == ["for the first life only"],
                "delivery to the restored node",
            )

    caplog.set_level(logging.WARNING, logger=LOGGER)
    run(scenario)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(
        f"refused node {victim}: it presents incarnation 6120776970656420" in e for e in errors
    ), errors
    assert any(f"node {victim}'s data directory was wiped" in e for e in errors), errors


def test_a_forged_or_altered_incarnation_does_not_pass_without_the_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        book = PeerIncarnations(tmp_path)
        book.learn(1, LIVES[1])
        inbox = Inbox()
        peers = {1: (HOST, free_ports(1)[0]), 3: (HOST, 1)}
        node = make(4, peers, inbox, peer_incarnations=book)
        await node.start()
        try:
            # Without the secret, no incarnation is learned, none is refused.
            with pytest.raises(asyncio.IncompleteReadError):
                await impersonate(node.port, 1, 4, b"guess", incarnation=LIVES[1])
            with pytest.raises(asyncio.IncompleteReadError):
                await impersonate(node.port, 3, 4, b"guess")
            # A recorded proof does not cover another incarnation put in its frame.
            with pytest.raises(asyncio.IncompleteReadError):
                await impersonate(node.port, 3, 4, incarnation=LIVES[1], sent_incarnation=b"x" * 16)
            assert book.known() == {1: LIVES[1]} and node.stats.peers_refused == 0
            # With the secret: another life of node 1 is refused, in words it can verify.
            with pytest.raises(Refused) as refused:
                await impersonate(node.port, 1, 4, incarnation=b"y" * 16)
            assert refused.value.known == LIVES[1] and node.stats.peers_refused == 1
            _, writer = await impersonate(node.port, 1, 4, incarnation=LIVES[1])
            writer.close()
            await eventually(lambda: node.stats.connections_accepted == 1, "node 1's own life")
            assert inbox.received == [] and book.known() == {1: LIVES[1]}
        finally:
            await node.stop()

    caplog.set_level(logging.WARNING, logger=LOGGER)
    run(scenario)
    assert warnings(caplog).count("does not know the cluster secret") == 3


# -- shutdown -------------------------------------------------------------------------------


def test_stop_leaves_no_task_and_closes_every_socket() -> None:
    async def scenario() -> None:
        async with running(3) as (nodes, _):
            await all_connected(nodes)
            nodes[0].set_peers({**{n.node_id: (HOST, n.port) for n in nodes}, 4: (HOST, 1)})
            stalled_reader, stalled_writer = await asyncio.open_connection(HOST, nodes[2].port)
            for k in range(100):
                nodes[0].send(2, b"z" * 10_000)
                nodes[2].send(1, k)
            for node in nodes:
                await node.stop()
            assert asyncio.all_tasks() == {asyncio.current_task()}
            assert await hung_up(stalled_reader, timeout=0.5)
            stalled_writer.close()
            assert not nodes[0].send(2, "after stop")
            assert not any(n.connected(p) for n in nodes for p in (1, 2, 3, 4))

    run(scenario)
