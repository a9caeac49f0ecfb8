"""A fault-injecting TCP proxy for every peer link, so partitions need no root.

Each node of a chaos cluster gets its own config, in which every other
member's peer address is a `LinkProxy` for the link ``(this node -> that
member)``. The proxy forwards bytes both ways on each connection it
accepts, and can be told to:

- **cut** the link: open connections are closed, and new ones are closed
  at once (a partition, both directions of that link);
- **drop one direction**: bytes from the dialer (``"forward"``) or to it
  (``"backward"``) are discarded; when the fault ends the connection is
  closed, so that no stream resumes mid-frame (a one-way partition);
- **delay** every chunk by a fixed time plus a random jitter, in order;
- **throttle** to a byte rate.

`ProxyNet` holds the proxies of one cluster and speaks in nodes:
`partition([{1, 2}, {3}])`, `isolate(1)`, `one_way(1, 2)`, `heal()`.

All proxies run on one asyncio loop in a thread of their own; the methods
are called from any thread. The proxy never looks inside the stream
(peer traffic is authenticated end to end by the nodes).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"
CHUNK = 64 * 1024


@dataclass
class LinkFaults:
    """What a link does to its traffic now (all off: a plain proxy)."""

    cut: bool = False
    drop: str | None = None
    """None, "forward" (dialer -> target) or "backward" (target -> dialer)."""
    delay: float = 0.0
    jitter: float = 0.0
    rate: float | None = None
    """Bytes per second, or None for no limit."""


@dataclass
class LinkProxy:
    """One link: listens on `port`, forwards to `target`."""

    name: str
    port: int
    target: tuple[str, int]
    faults: LinkFaults = field(default_factory=LinkFaults)
    rng: random.Random = field(default_factory=random.Random)
    connections: set[asyncio.StreamWriter] = field(default_factory=set)
    server: asyncio.base_events.Server | None = None
    bytes_forwarded: int = 0
    bytes_dropped: int = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, HOST, self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self.close_all()

    def close_all(self) -> None:
        for writer in list(self.connections):
            writer.close()
        self.connections.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.faults.cut:
            writer.close()
            return
        try:
            target_reader, target_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.connections.update((writer, target_writer))
        await asyncio.gather(
            self._pump(reader, target_writer, "forward"),
            self._pump(target_reader, writer, "backward"),
            return_exceptions=True,
        )
        for end in (writer, target_writer):
            self.connections.discard(end)
            end.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                faults = self.faults
                if faults.cut:
                    break
                if faults.drop == direction:
                    self.bytes_dropped += len(data)
                    continue
                wait = faults.delay + (self.rng.random() * faults.jitter if faults.jitter else 0)
                if faults.rate:
                    wait += len(data) / faults.rate
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
                self.bytes_forwarded += len(data)
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


class ProxyNet:
    """The proxies of one cluster's peer links; see the module docstring.

    Args:
        peers: member id -> its real peer address (HOST, port).
        ports: (from, to) -> the port the proxy of that link listens on.
        seed: for delays' jitter.
    """

    def __init__(
        self,
        peers: dict[int, tuple[str, int]],
        ports: dict[tuple[int, int], int],
        seed: int = 0,
    ) -> None:
        self.peers = peers
        rng = random.Random(seed)
        self.links = {
            link: LinkProxy(f"{link[0]}->{link[1]}", port, peers[link[1]], rng=rng)
            for link, port in ports.items()
        }
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._start_all())

    def _call(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(30)

    async def _start_all(self) -> None:
        for link in self.links.values():
            await link.start()

    def address(self, source: int, target: int) -> tuple[str, int]:
        """Where `source` dials `target`."""
        return HOST, self.links[(source, target)].port

    def stop(self) -> None:
        async def stop_all() -> None:
            for link in self.links.values():
                await link.stop()

        self._call(stop_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # -- faults, in nodes ------------------------------------------------------------

    def _apply(self, changes: Iterable[tuple[tuple[int, int], LinkFaults]]) -> None:
        async def apply() -> None:
            for link, faults in changes:
                proxy = self.links[link]
                was = proxy.faults
                proxy.faults = faults
                if (faults.cut and not was.cut) or (was.drop and faults.drop != was.drop):
                    proxy.close_all()

        self._call(apply())

    def heal(self) -> None:
        """Every link back to a plain proxy."""
        self._apply((link, LinkFaults()) for link in self.links)

    def partition(self, groups: list[set[int]]) -> None:
        """Cut every link between members of different groups (both ways)."""
        side = {node: k for k, group in enumerate(groups) for node in group}
        self._apply(
            (link, LinkFaults(cut=side.get(link[0]) != side.get(link[1]))) for link in self.links
        )

    def isolate(self, node: int) -> None:
        others = set(self.peers) - {node}
        self.partition([{node}, others])

    def bridge(self, bridge: int, members: Iterable[int] | None = None) -> None:
        """Two halves of `members` (every peer by default) that both still reach
        `bridge` (Jepsen's bridge partition); links of others are left alone."""
        rest = sorted(set(self.peers if members is None else members) - {bridge})
        half = len(rest) // 2
        side = {node: 0 for node in rest[:half]} | {node: 1 for node in rest[half:]}
        self._apply(
            (
                link,
                LinkFaults(
                    cut=bridge not in link
                    and link[0] in side
                    and link[1] in side
                    and side[link[0]] != side[link[1]]
                ),
            )
            for link in self.links
        )

    def one_way(self, source: int, target: int) -> None:
        """`target` stops hearing `source`: bytes from `source` to `target` are
        dropped on both links between them; the other direction still flows."""
        self._apply(
            [
                ((source, target), LinkFaults(drop="forward")),
                ((target, source), LinkFaults(drop="backward")),
            ]
        )

    def slow(self, delay: float, jitter: float = 0.0, rate: float | None = None) -> None:
        """Every link delayed (and throttled to `rate` bytes/s, when given)."""
        self._apply(
            (link, LinkFaults(delay=delay, jitter=jitter, rate=rate)) for link in self.links
        )
