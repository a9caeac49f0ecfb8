"""ClusterFileStorage against nodes that keep redirecting it: the timeout holds."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from protobase import ClusterFileStorage, ClusterUnavailableError


def _handler(peer: list[str]) -> type[http.server.BaseHTTPRequestHandler]:
    class Redirecting(http.server.BaseHTTPRequestHandler):
        """Answers the cluster map, and names `peer[0]` as the meta leader for
        everything else (421), as a node with a wrong idea of the leader would."""

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/v1/cluster":
                body = msgpack.packb(
                    {"members": [{"client": peer[0]}], "partitions": 2, "epoch": 1}
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/msgpack")
            else:
                answer = {"error": "not the meta leader", "leader_url": peer[0]}
                body = json.dumps(answer).encode()
                self.send_response(421)
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Redirecting


@pytest.fixture
def two_nodes_naming_each_other() -> Iterator[list[str]]:
    names: list[list[str]] = [[], []]
    servers = [
        http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(names[k])) for k in (0, 1)
    ]
    urls = [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    names[0].append(urls[1])
    names[1].append(urls[0])
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        yield urls
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_redirects_between_two_nodes_end_at_the_timeout(
    two_nodes_naming_each_other: list[str],
) -> None:
    storage = ClusterFileStorage(two_nodes_naming_each_other[:1], token="t", timeout=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(ClusterUnavailableError, match="redirected to"):
            storage.read_root()
        assert time.monotonic() - started < 10  # not forever
    finally:
        storage.close()
