"""Faults, scheduled from a seed and written to the history.

A `Schedule` is a pure function of a seed, the members and the fault kinds
asked for: a list of `Fault` (what, on whom, when it starts, how long it
lasts). `Nemesis` plays it against a `ChaosCluster`: each fault is an
``info`` op of process `NEMESIS` when it starts (``f`` its kind, `value`
its target) and another when it ends, so a checker or a report can put
every anomaly next to the faults around it. Faults never overlap: each
ends (processes restarted and resumed, links healed) before the next one.

Kinds:

- ``kill``: SIGKILL one member (random, the meta leader, or a partition
  leader), restarted when the fault ends; ``kill-all``: every member;
- ``pause``: SIGSTOP one member, SIGCONT at the end;
- ``partition``: a random majority/minority split; ``isolate-leader``: the
  meta leader alone; ``bridge``: two halves that both reach one member;
  ``one-way``: one member stops hearing another;
- ``slow``: every peer link delayed (with jitter) and throttled;
- ``disk``: one member's disk fails (its syncs raise EIO or ENOSPC; the
  cluster must run with the ``disk-faults`` failpoint): the member must
  stop without acknowledging; it is restarted on a healthy disk at the end.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .cluster import ChaosCluster
from .history import INFO, NEMESIS

KINDS = (
    "kill",
    "kill-all",
    "pause",
    "partition",
    "isolate-leader",
    "bridge",
    "one-way",
    "slow",
    "disk",
)


@dataclass(frozen=True)
class Fault:
    kind: str
    target: Any
    """A member, a (source, target) pair, "meta-leader", "partition-leader", ... or None."""
    start: float
    """Seconds after the run starts."""
    duration: float


def schedule(
    seed: int,
    members: Sequence[int],
    kinds: Sequence[str],
    seconds: float,
    quiet: float = 1.0,
    length: tuple[float, float] = (1.0, 3.0),
) -> list[Fault]:
    """Faults for a run of `seconds`, separated by `quiet` seconds (pure: same
    seed, same faults)."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {list(KINDS)}")
    rng = random.Random(seed)
    faults: list[Fault] = []
    at = quiet
    while kinds and at < seconds - quiet:
        kind = rng.choice(list(kinds))
        duration = min(rng.uniform(*length), seconds - quiet - at)
        target: Any = None
        if kind == "disk":
            target = (rng.choice(list(members)), rng.choice(["EIO", "ENOSPC"]))
        elif kind in ("kill", "pause"):
            target = rng.choice([*members, "meta-leader", "partition-leader"])
        elif kind == "one-way":
            target = tuple(rng.sample(list(members), 2))
        elif kind in ("partition", "bridge"):
            target = rng.randrange(1 << 30)
        faults.append(Fault(kind, target, round(at, 3), round(duration, 3)))
        at += duration + quiet
    return faults


class Nemesis:
    """Plays a schedule against a cluster, recording each fault (see the module docstring).

    Args:
        cluster: the cluster under test.
        faults: the schedule.
        record: called as ``record(process, type, f, value)`` for each event.
    """

    def __init__(
        self,
        cluster: ChaosCluster,
        faults: list[Fault],
        record: Callable[[int, str, str, Any], None],
    ) -> None:
        self.cluster = cluster
        self.faults = faults
        self.record = record
        self.stopping = threading.Event()
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)
        self._started = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self._thread.join(60)

    def _run(self) -> None:
        for fault in self.faults:
            if self._sleep_until(fault.start):
                return
            try:
                undo = self._begin(fault)
            except Exception as exc:  # recorded, never swallowed silently
                self.errors.append(f"{fault}: {type(exc).__name__}: {exc}")
                continue
            self._sleep_until(fault.start + fault.duration)
            try:
                undo()
            except Exception as exc:
                self.errors.append(f"ending {fault}: {type(exc).__name__}: {exc}")
            self.record(NEMESIS, INFO, f"end-{fault.kind}", None)
            if self.stopping.is_set():
                return

    def _sleep_until(self, at: float) -> bool:
        """True when asked to stop first."""
        return self.stopping.wait(max(0.0, self._started + at - time.monotonic()))

    def _member(self, target: Any) -> int:
        """The member `target` names now. A member the schedule named that is no
        longer one (the membership nemesis retired it) stands for another,
        chosen by its number, so the schedule stays a function of the seed."""
        cluster = self.cluster
        members = cluster.members()
        if target == "meta-leader":
            found = cluster.leader_of(0)
        elif target == "partition-leader":
            found = cluster.leader_of(1)
        else:
            found = target
        if found is None:
            found = members[0]
        if found not in members:
            found = members[int(found) % len(members)]
        return int(found)

    def _begin(self, fault: Fault) -> Callable[[], None]:
        cluster, net = self.cluster, self.cluster.net
        kind = fault.kind
        rng = random.Random(fault.target if isinstance(fault.target, int) else 0)
        if kind == "kill":
            node = self._member(fault.target)
            self.record(NEMESIS, INFO, kind, node)
            cluster.kill(node)
            return lambda: cluster.start(node)
        if kind == "kill-all":
            members = cluster.members()
            self.record(NEMESIS, INFO, kind, members)
            for node in members:
                cluster.kill(node)
            return lambda: cluster.start()
        if kind == "pause":
            node = self._member(fault.target)
            self.record(NEMESIS, INFO, kind, node)
            cluster.pause(node)
            return lambda: cluster.resume(node)
        if kind == "partition":
            members = cluster.members()
            rng.shuffle(members)
            minority = set(members[: (len(members) - 1) // 2 or 1])
            groups = [minority, set(members) - minority]
            self.record(NEMESIS, INFO, kind, [sorted(g) for g in groups])
            net.partition(groups)
            return net.heal
        if kind == "isolate-leader":
            node = self._member("meta-leader")
            self.record(NEMESIS, INFO, kind, node)
            net.isolate(node)
            return net.heal
        if kind == "bridge":
            members = cluster.members()
            node = rng.choice(members)
            self.record(NEMESIS, INFO, kind, node)
            net.bridge(node, members)
            return net.heal
        if kind == "one-way":
            source = self._member(fault.target[0])
            others = [m for m in cluster.members() if m != source]
            target = fault.target[1] if fault.target[1] in others else others[0]
            self.record(NEMESIS, INFO, kind, [source, target])
            net.one_way(source, target)
            return net.heal
        if kind == "disk":
            node, error = self._member(fault.target[0]), fault.target[1]
            self.record(NEMESIS, INFO, kind, [node, error])
            cluster.fail_disk(node, error)

            def undo() -> None:
                cluster.heal_disk(node)
                cluster.kill(node)  # it stopped itself, or will never sync again
                cluster.start(node)

            return undo
        if kind == "slow":
            self.record(NEMESIS, INFO, kind, {"delay": 0.02, "jitter": 0.03})
            net.slow(0.02, 0.03, rate=2_000_000)
            return net.heal
        raise ValueError(f"unknown fault kind {kind!r}")
