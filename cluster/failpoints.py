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
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ENVIRONMENT = "PROTOBASE_FAILPOINTS"
KNOWN = ("overwrite-on-rebase", "stale-follower-reads")


@dataclass(frozen=True)
class Failpoints:
    overwrite_on_rebase: bool = False
    stale_follower_reads: bool = False

    @property
    def any(self) -> bool:
        return self.overwrite_on_rebase or self.stale_follower_reads

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
        )
