"""What the Raft tests that open sockets share: the loopback address, free
ports, and waiting for a condition with a limit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from chaos.cluster import free_ports

__all__ = ["HOST", "eventually", "free_ports"]

HOST = "127.0.0.1"


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `predicate` until it holds; AssertionError naming `what` after `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)
