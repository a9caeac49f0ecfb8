"""`protobase node --config node.toml`: run one member in the foreground.

Exit status: 0 after SIGTERM/SIGINT, 2 for a configuration problem (the
message says which key and what to do), 3 when the node stopped serving
(a failed disk write, or its data directory was refused by the cluster as
a wiped member: the message says how to replace it).

Logging is the command's: `protobase --log-format json --log-level debug
node ...` (see `protobase.logs`, which `protobase.cli.main` calls first).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
import warnings

from aiohttp import web

from .api import NodeAPI
from .config import ConfigError, NodeSettings, load_config
from .failpoints import Failpoints
from .node import ClusterNode

log = logging.getLogger("protobase.node")


async def serve(settings: NodeSettings, failpoints: Failpoints) -> int:
    if failpoints.any:
        log.warning(
            "node %d runs with deliberate bugs switched on: %s", settings.node_id, failpoints
        )
    node = ClusterNode(settings, failpoints)
    await node.start()
    runner = web.AppRunner(NodeAPI(node).app(), access_log=None)
    await runner.setup()
    host, port = settings.listen
    await web.TCPSite(runner, host, port).start()
    log.info("node %d of cluster %r serves http://%s:%d", node.id, settings.cluster, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waits = {
        asyncio.create_task(stop.wait()),
        asyncio.create_task(node.raft.wait_failed()),
        asyncio.create_task(node.left.wait()),  # removed from the cluster: done
    }
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    await asyncio.gather(*waits, return_exceptions=True)
    await runner.cleanup()
    await node.stop()
    if node.raft.failure is not None:
        print(f"protobase node {node.id} stopped: {node.raft.failure}", file=sys.stderr)
        return 3
    return 0


def run_node(config_path: str, join: str | None = None) -> int:
    """Serve the member `config_path` describes until SIGTERM/SIGINT; the exit status.

    Records go wherever the root logger sends them (`protobase.logs.configure_logging`).
    """
    try:
        settings = load_config(config_path)
        if join is not None:
            if not join.startswith(("http://", "https://")):
                raise ConfigError(f"--join must be the http(s) URL of a member, not {join!r}")
            settings = dataclasses.replace(settings, join=join)
        failpoints = Failpoints.from_environment()
    except (ConfigError, ValueError) as exc:
        print(f"protobase node: {config_path}: {exc}", file=sys.stderr)
        return 2
    # A node merges commits without the application's classes: it compares
    # objects by stored name and attributes, and writes them back unchanged.
    warnings.filterwarnings("ignore", message="stored class .* cannot be imported")
    try:
        return asyncio.run(serve(settings, failpoints))
    except ConfigError as exc:
        print(f"protobase node: {exc}", file=sys.stderr)
        return 2
