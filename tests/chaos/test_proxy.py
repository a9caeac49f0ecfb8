"""The fault-injecting proxy, against echo servers on loopback."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from chaos.proxy import HOST, ProxyNet


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((HOST, 0))
        sockets.append(sock)
    ports = [s.getsockname()[1] for s in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture
def net() -> Iterator[ProxyNet]:
    servers = []
    peers = {}
    for node in (1, 2, 3):
        server = socketserver.ThreadingTCPServer((HOST, 0), Echo)
        server.daemon_threads = True
        # shutdown() waits until serve_forever polls again (by default every 0.5 s).
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        servers.append(server)
        peers[node] = server.server_address
    links = [(a, b) for a in peers for b in peers if a != b]
    proxies = ProxyNet(peers, dict(zip(links, free_ports(len(links)), strict=True)), seed=1)
    try:
        yield proxies
    finally:
        proxies.stop()
        for server in servers:
            server.shutdown()
            server.server_close()


def echo(net: ProxyNet, source: int, target: int, payload: bytes = b"ping") -> bytes:
    """What comes back through the link within a second (b"" when nothing)."""
    with socket.create_connection(net.address(source, target), timeout=1) as sock:
        try:
            sock.sendall(payload)
            return sock.recv(65536)
        except (TimeoutError, ConnectionError):
            return b""


def test_a_healthy_link_forwards_both_ways(net: ProxyNet) -> None:
    assert echo(net, 1, 2) == b"ping"
    assert echo(net, 3, 1, b"x" * 1000) == b"x" * 1000


def test_a_partition_cuts_links_across_it_and_heal_restores_them(net: ProxyNet) -> None:
    net.partition([{1}, {2, 3}])
    assert echo(net, 1, 2) == b""
    assert echo(net, 2, 1) == b""
    assert echo(net, 2, 3) == b"ping"
    net.heal()
    assert echo(net, 1, 2) == b"ping"


def test_cutting_a_link_closes_its_open_connections(net: ProxyNet) -> None:
    with socket.create_connection(net.address(1, 2), timeout=1) as sock:
        sock.sendall(b"a")
        assert sock.recv(10) == b"a"
        net.isolate(1)
        time.sleep(0.1)
        try:
            sock.sendall(b"b")
            assert sock.recv(10) == b""
        except ConnectionError:
            pass


def test_one_way_drops_only_one_direction(net: ProxyNet) -> None:
    net.one_way(1, 2)
    # 1 -> 2 bytes are lost, so the echo never comes back on either link.
    assert echo(net, 1, 2) == b""
    assert echo(net, 2, 1) == b""
    assert net.links[(1, 2)].bytes_dropped > 0
    assert net.links[(2, 1)].bytes_dropped > 0
    assert echo(net, 1, 3) == b"ping"


def test_bridge_keeps_the_bridge_reachable_from_both_halves(net: ProxyNet) -> None:
    net.bridge(2)
    assert echo(net, 1, 2) == b"ping" and echo(net, 3, 2) == b"ping"
    assert echo(net, 1, 3) == b""


def test_slow_links_delay_every_chunk(net: ProxyNet) -> None:
    net.slow(0.15)
    started = time.monotonic()
    assert echo(net, 1, 2) == b"ping"
    assert time.monotonic() - started >= 0.3  # there and back
