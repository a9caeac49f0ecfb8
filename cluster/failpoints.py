"""Deliberate bugs a node can be started with, for the chaos harness's mutation check.

A harness that never fails proves nothing: `chaos` starts a cluster with
one of these switched on and requires its checkers to find the damage.
They are off unless the environment variable ``PROTOBASE_FAILPOINTS``
names them (comma-separated), which only the harness sets; the node logs
loudly when any is on.

- ``overwrite-on-rebase``: a stale commit is not merged; its root replaces
  the current one, dropping every concurrent change (lost updates).
- ``stale-follower-reads``: any member answers a root read from what it
  has applied, without a ReadIndex barrier and without sending the client
  to the meta leader (stale reads).

One switch injects faults rather than bugs:

- ``disk-faults``: while the data directory holds a file ``FAIL-DISK``
  (written by the harness), every sync of the Raft log fails with the
  errno named in it (``EIO`` or ``ENOSPC``), as a failing disk would. The
  node must then stop and acknowledge nothing it did not make durable.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ENVIRONMENT = "PROTOBASE_FAILPOINTS"
KNOWN = ("overwrite-on-rebase", "stale-follower-reads", "disk-faults")
DISK_FAULT_FILE = "FAIL-DISK"


@dataclass(frozen=True)
class Failpoints:
    overwrite_on_rebase: bool = False
    stale_follower_reads: bool = False
    disk_faults: bool = False

    @property
    def any(self) -> bool:
        return self.overwrite_on_rebase or self.stale_follower_reads or self.disk_faults

    @staticmethod
    def from_environment() -> Failpoints:
        """The switches named in ``PROTOBASE_FAILPOINTS``; ValueError for unknown names."""
        names = {n.strip() for n in os.environ.get(ENVIRONMENT, "").split(",") if n.strip()}
        unknown = names - set(KNOWN)
        if unknown:
            raise ValueError(f"{ENVIRONMENT}: unknown failpoints {sorted(unknown)}; known: {KNOWN}")
        return Failpoints(
            overwrite_on_rebase="overwrite-on-rebase" in names,
            stale_follower_reads="stale-follower-reads" in names,
            disk_faults="disk-faults" in names,
        )


def failing_sync(sync: Callable[[], None], directory: Path) -> Callable[[], None]:
    """`sync`, failing while ``directory/FAIL-DISK`` exists (see ``disk-faults``)."""
    flag = directory / DISK_FAULT_FILE

    def sync_or_fail() -> None:
        try:
            name = flag.read_text().strip() or "EIO"
        except FileNotFoundError:
            sync()
            return
        code = getattr(errno, name, errno.EIO)
        raise OSError(code, f"injected disk fault ({name}) from {flag}")

    return sync_or_fail
