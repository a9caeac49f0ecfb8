"""A real S3-compatible server for the tests: moto's ``moto_server`` on 127.0.0.1.

moto enforces S3's conditional writes (``IfNoneMatch="*"``, ``IfMatch``)
and byte ranges, which is what ProtoBase's S3 code relies on. It keeps its
objects in memory: stopping it loses them, so an S3 outage is simulated
with a fault proxy in front of it (`chaos.proxy`), not by stopping it.

`credentials_env()` is what a client (or a node process) needs in its
environment: dummy keys, a region, and the endpoint. The session fixture
`s3_server` (tests/conftest.py) puts it into this process's environment.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tools import require

from chaos.cluster import free_ports
from protobase.cluster_cli import start_moto

HOST = "127.0.0.1"


def credentials_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "protobase-test",
        "AWS_SECRET_ACCESS_KEY": "protobase-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }


def moto_server_command() -> list[str]:
    """The command that runs moto_server (fails under CI, skips elsewhere, when missing)."""
    return [require("moto_server")]


class S3Server:
    """One moto_server process on a free port of 127.0.0.1; `stop` ends it by PID."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_ports(1)[0]
        self.endpoint = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        moto_server_command()  # a missing moto_server fails under CI, skips elsewhere
        self.process = start_moto(self.port, self.log_path)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def new_bucket(self) -> str:
        """Create a bucket with a fresh name and return the name."""
        from protobase.s3 import Bucket, S3Location

        name = f"test-{uuid.uuid4().hex[:20]}"
        Bucket.open(S3Location(name), self.endpoint).ensure_bucket()
        return name


@contextmanager
def fault_proxy(server: S3Server) -> Iterator[Any]:
    """A TCP proxy in front of `server` that can cut S3 off and heal (`chaos.proxy`).

    Yields the ProxyNet: its endpoint is ``"http://%s:%d" % net.address(1, 0)``;
    ``net.isolate(0)`` makes an outage, ``net.slow(seconds)`` a slow S3,
    ``net.heal()`` ends either.
    """
    from chaos.proxy import ProxyNet

    net = ProxyNet({0: (HOST, server.port), 1: (HOST, 1)}, {(1, 0): free_ports(1)[0]})
    try:
        yield net
    finally:
        net.stop()
