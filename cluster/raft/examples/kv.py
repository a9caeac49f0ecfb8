"""An example replicated key-value service on the Raft library.

One process per node; they replicate one group whose state machine is a
dict of bytes. It is what the multi-process tests and `bench/raft.py` run:

    PROTOBASE_RAFT_SECRET=... PROTOBASE_KV_TOKEN=... \\
    python -m cluster.raft.examples.kv --id 1 \\
        --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \\
        --http 127.0.0.1:8001 \\
        --http-peers 1=127.0.0.1:8001,2=127.0.0.1:8002,3=127.0.0.1:8003 \\
        --data /var/lib/kv1

HTTP API (every request needs `Authorization: Bearer <token>`, except /health):

- `PUT /kv/<key>` (body: the value) → 200 `{"index": n}` once the write is
  applied on this node, which leads (so it is durable on a majority);
- `GET /kv/<key>` → 200 with the value (a linearizable read: ReadIndex) or 404;
- on a follower both answer 421 `{"leader": id, "leader_http": url}`;
  503 when no leader is known or the request timed out (outcome unknown);
- `GET /status` → JSON: id, role, leader, term, commit, applied;
- `GET /health` → 200 while the process serves HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
from aiohttp import web

from ..errors import NotLeader, ProposalDropped, ProtocolError
from ..node import NodeConfig, NodeStopped, OutcomeUnknown, RaftNode, parse_peers

GROUP = 1
MAX_VALUE_BYTES = 1 << 20


class KVStore:
    """The state machine: key -> value, both bytes; entries are
    msgpack `[key, value]` pairs."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def apply(self, index: int, data: bytes) -> int:
        try:
            key, value = msgpack.unpackb(data)
        except (ValueError, msgpack.UnpackException) as exc:
            # Entries are validated before they are proposed: a bad one here
            # means the log is not what this program wrote.
            raise ProtocolError(f"entry {index} is not a key-value pair: {exc}") from exc
        self.data[key] = value
        return index

    def snapshot(self, sink: BinaryIO) -> None:
        # One [key, value] pair after another: written and read as a stream.
        for key, value in self.data.items():
            sink.write(msgpack.packb([key, value]))

    def restore(self, source: BinaryIO) -> None:
        self.data = {key: value for key, value in msgpack.Unpacker(source)}


class KVService:
    def __init__(self, node: RaftNode, token: str, http_peers: dict[int, str]) -> None:
        self.node = node
        machine = node.groups[GROUP].machine
        assert isinstance(machine, KVStore)
        self.store: KVStore = machine
        self.token = token.encode()
        self.http_peers = http_peers

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_VALUE_BYTES + 4096, middlewares=[self._auth])
        app.router.add_put("/kv/{key}", self.put)
        app.router.add_get("/kv/{key}", self.get)
        app.router.add_get("/status", self.status)
        app.router.add_get("/health", self.health)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/health":
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme != "Bearer" or not hmac.compare_digest(given.encode(), self.token):
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        return await handler(request)

    def _not_leader(self, exc: NotLeader) -> web.Response:
        hint = exc.leader_hint
        if hint is None:
            return web.json_response({"error": "no leader known; retry"}, status=503)
        return web.json_response(
            {"error": str(exc), "leader": hint, "leader_http": self.http_peers.get(hint)},
            status=421,
        )

    async def put(self, request: web.Request) -> web.Response:
        key = request.match_info["key"].encode()
        value = await request.read()
        entry = msgpack.packb([key, value])
        try:
            index = await self.node.propose(GROUP, entry)
        except NotLeader as exc:
            return self._not_leader(exc)
        except (ProposalDropped, OutcomeUnknown, NodeStopped) as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response({"index": index})

    async def get(self, request: web.Request) -> web.Response:
        key = request.match_info["key"].encode()
        try:
            await self.node.read_barrier(GROUP)
        except NotLeader as exc:
            return self._not_leader(exc)
        except (OutcomeUnknown, NodeStopped) as exc:
            return web.json_response({"error": str(exc)}, status=503)
        # The barrier holds until this node has applied the read index, so
        # a follower serves the read itself.
        value = self.store.data.get(key)
        if value is None:
            return web.json_response({"error": "no such key"}, status=404)
        return web.Response(body=value, content_type="application/octet-stream")

    async def status(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(self.node.status(GROUP))
        except NodeStopped as exc:
            return web.json_response({"error": str(exc)}, status=503)

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _http_peers(text: str) -> dict[int, str]:
    return {n: f"http://{h}:{p}" for n, (h, p) in parse_peers(text).items()}


async def serve(args: argparse.Namespace, secret: bytes, token: str) -> None:
    peers = parse_peers(args.peers)
    if args.id not in peers:
        raise SystemExit(f"--id {args.id} is not in --peers")
    config = NodeConfig(
        node_id=args.id,
        listen=peers[args.id],
        peers=peers,
        data_dir=Path(args.data),
        secret=secret,
        tick_interval=args.tick_interval,
        election_tick=args.election_ticks,
        snapshot_every=args.snapshot_every,
    )
    voters = tuple(sorted(peers)) if not args.join else ()
    node = RaftNode(config, {GROUP: (KVStore(), voters)})
    await node.start()
    service = KVService(node, token, _http_peers(args.http_peers) if args.http_peers else {})
    runner = web.AppRunner(service.app(), access_log=None)
    await runner.setup()
    host, port = args.http
    site = web.TCPSite(runner, host, port)
    await site.start()
    logging.getLogger("protobase.kv").info("node %d serves http://%s:%d", args.id, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waits = {asyncio.create_task(stop.wait()), asyncio.create_task(node.wait_failed())}
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    await asyncio.gather(*waits, return_exceptions=True)
    await runner.cleanup()
    await node.stop()
    if node.failure is not None:
        # Its log could not be made durable: exit, and let a supervisor
        # restart it on what is on disk.
        raise SystemExit(f"node {args.id} stopped: {node.failure!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ProtoBase's example replicated key-value service")
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--peers", required=True, help="ID=HOST:PORT,... Raft addresses")
    parser.add_argument("--http", type=_address, required=True, help="HOST:PORT to serve HTTP")
    parser.add_argument("--http-peers", help="ID=HOST:PORT,... every node's HTTP address")
    parser.add_argument("--data", required=True, help="directory of this node's log")
    parser.add_argument("--tick-interval", type=float, default=0.1)
    parser.add_argument("--election-ticks", type=int, default=10)
    parser.add_argument("--snapshot-every", type=int, default=10_000)
    parser.add_argument("--join", action="store_true", help="join an existing group (no bootstrap)")
    args = parser.parse_args(argv)
    secret = os.environ.get("PROTOBASE_RAFT_SECRET", "")
    token = os.environ.get("PROTOBASE_KV_TOKEN", "")
    if not secret or not token:
        print(
            "error: set PROTOBASE_RAFT_SECRET (the cluster secret) and PROTOBASE_KV_TOKEN "
            "(the clients' bearer token)",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(args, secret.encode(), token))
    return 0


if __name__ == "__main__":
    sys.exit(main())
