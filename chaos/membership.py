"""The membership nemesis: members added, removed and replaced while faults go on.

`MembershipNemesis` runs beside the fault `Nemesis`, in a thread of its
own, so membership changes overlap kills, pauses and partitions. It takes
one change at a time, chosen from a seed among those the cluster allows:

- ``add-member``: a spare (`ChaosCluster.join`) joins and receives its
  share of the replicas;
- ``remove-member``: a member is decommissioned (`remove_node`): its
  replicas move off, the cluster forgets it, and its process stops by
  itself; allowed while more members than the replication factor remain;
- ``replace-member``: a member is SIGKILLed for good, a spare joins, and the
  dead one is declared dead (`replace_node`): its replicas are rebuilt.

Each change goes through the same commands an operator runs
(`protobase.membership_cli`), and is recorded as an ``info`` op of process
`NEMESIS` when it starts and as ``end-<kind>`` when it ends, with how it
ended. A change the faults keep from finishing within `timeout` is left to
the cluster (it goes on by itself); `settle` waits, once the faults are
over, until the map has carried every change out.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

from protobase.membership_cli import (
    ClusterBusy,
    MembershipCommandError,
    admin_post,
    current_map,
    leader_step,
    remove_node,
    replace_node,
    wait_added,
)

from .cluster import ChaosCluster
from .history import INFO, NEMESIS

KINDS = ("add-member", "remove-member", "replace-member")


class MembershipNemesis:
    """Changes the membership of `cluster` (see the module docstring).

    Args:
        cluster: the cluster under test, with spares to add.
        record: called as ``record(process, type, f, value)`` for each event.
        seed: fixes the choices (not the timing).
        replication: the cluster's replication factor (removals keep at least
            this many members).
        quiet: the range of seconds between two changes.
        timeout: seconds one change may take before it is left to the cluster.
    """

    def __init__(
        self,
        cluster: ChaosCluster,
        record: Callable[[int, str, str, Any], None],
        seed: int,
        replication: int = 3,
        quiet: tuple[float, float] = (0.5, 2.0),
        timeout: float = 30.0,
    ) -> None:
        self.cluster = cluster
        self.record = record
        self.rng = random.Random(seed)
        self.replication = replication
        self.quiet = quiet
        self.timeout = timeout
        self.token = cluster.token
        self.stopping = threading.Event()
        self.changes: list[dict[str, Any]] = []
        """Each change: kind, members, outcome, seconds."""
        self.lines: list[str] = []
        """What the membership commands printed."""
        self._thread = threading.Thread(target=self._run, name="membership", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """No new change; wait for the one under way (up to its timeout)."""
        self.stopping.set()
        self._thread.join(self.timeout + 30)

    def _run(self) -> None:
        while not self.stopping.wait(self.rng.uniform(*self.quiet)):
            kinds = self.allowed()
            if not kinds:
                return
            kind = self.rng.choice(kinds)
            started = time.monotonic()
            outcome = self._change(kind)
            self.changes[-1].update(outcome=outcome, seconds=round(time.monotonic() - started, 2))
            self.record(NEMESIS, INFO, f"end-{kind}", outcome)

    def allowed(self) -> list[str]:
        """The changes the cluster allows now."""
        members, spares = self.cluster.members(), self.cluster.spares
        kinds = []
        if spares:
            kinds += ["add-member", "replace-member"]
        if len(members) > self.replication:
            kinds.append("remove-member")
        return kinds

    def _change(self, kind: str) -> str:
        cluster = self.cluster
        members = cluster.members()
        if kind == "add-member":
            node = cluster.join()
            self._begin(kind, [node])
            return self._until_done(lambda: self._added(node))
        victim = self.rng.choice(members)
        if kind == "remove-member":
            self._begin(kind, [victim])
            outcome = self._until_done(
                lambda: remove_node(self._url(victim), victim, self.token, 10.0, self._out)
            )
            if outcome == "done":
                cluster.retire(victim)  # it stopped by itself, or stops now
            return outcome
        cluster.retire(victim)  # SIGKILLed for good
        node = cluster.join()
        self._begin(kind, [victim, node])
        return self._until_done(lambda: self._replaced(victim, node))

    def _begin(self, kind: str, members: list[int]) -> None:
        self.changes.append({"kind": kind, "members": members})
        self.record(NEMESIS, INFO, kind, members)

    def _added(self, node: int) -> None:
        wait_added(self._url(node), self.token, node, 10.0, self._out)

    def _replaced(self, dead: int, new: int) -> None:
        """`new` holds its share, then `dead` is declared dead and forgotten."""
        self._added(new)
        replace_node(self._url(dead), dead, self.token, 10.0, self._out)

    def _until_done(self, step: Callable[[], object]) -> str:
        """Run `step` (a command that watches for 10 s at most) until it
        finishes or `timeout` passes; "done", or why it was left."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                step()
                return "done"
            except MembershipCommandError as exc:  # ClusterBusy included
                if time.monotonic() > deadline:
                    return f"left to the cluster after {self.timeout:g} s: {exc}"
                time.sleep(0.5)

    def _url(self, avoid: int) -> str:
        """A member to ask: a running one other than `avoid`."""
        members = [m for m in self.cluster.members() if m != avoid]
        running = [m for m in members if self.cluster.running(m)]
        return self.cluster.url(self.rng.choice(running or members))

    def _out(self, line: str) -> None:
        self.lines.append(line)

    def settle(self, timeout: float = 120.0) -> None:
        """Wait until the map names exactly the members, all active, and the meta
        leader has nothing left to move (the faults must be over).

        Raises:
            TimeoutError: the cluster did not carry the changes out in time.
        """
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            members = set(self.cluster.members())
            try:
                found = current_map(self._url(0), self.token)
                step = leader_step(found["leader"], found["epoch"])
                named = set(found["members"])
                for gone in members - named:
                    self.cluster.retire(gone)  # a removal that finished after its timeout
                for dead in named - members:
                    if found["states"].get(dead) is None:
                        # Killed for a replacement that timed out before it
                        # declared the member dead: declare it now.
                        state = {"member": dead, "state": "dead"}
                        admin_post(self._url(0), "/v1/admin/members/state", state, self.token)
            except ClusterBusy as exc:
                last = str(exc)
            else:
                if named <= members and not found["states"] and step == "balanced":
                    return
                last = f"map members {sorted(named)}, states {found['states']}, step {step!r}"
            if time.monotonic() > deadline:
                raise TimeoutError(f"the membership did not settle in {timeout:g} s: {last}")
            time.sleep(0.5)
