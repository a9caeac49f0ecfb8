"""The set checker: an acknowledged add is never lost, nothing appears unasked.

Workload (see `chaos.history`): ``add`` adds one element, each element is
added at most once in a run; ``read`` returns the elements.

Rules:

1. Every ok read holds every element whose add completed ok before the read
   was invoked ("stale read"), no element that no add was invoked for
   ("unexpected"), and no element whose add completed fail ("failed add
   visible").
2. The final read (the last ok read invoked after every add completed)
   holds every ok add ("lost"); an info add (outcome unknown) may be there
   or not, and counts as "recovered" when it is.

Without a final read rule 2 cannot be decided, and the verdict is None.
Cost: the history plus, for each read, its elements and the adds
acknowledged before it.

Operations are named by the history index of their invocation.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from chaos.history import FAIL, INFO, OK, HistoryError, Op, Operation, pair

ADD, READ = "add", "read"


@dataclass(frozen=True)
class Anomaly:
    kind: str
    """stale read, unexpected, failed add visible, or lost."""
    explanation: str
    ops: tuple[int, ...]
    """History indices of the invocations involved (the read first)."""


@dataclass(frozen=True)
class SetResult:
    valid: bool | None
    """True: no anomaly; False: at least one; None: none found, but there
    is no final read to decide lost adds (see `reason`)."""
    reads_checked: int
    adds_ok: int
    adds_fail: int
    adds_info: int
    anomalies: tuple[Anomaly, ...]
    final_read: int | None
    """The invocation index of the final read, None when there is none."""
    lost: tuple[Hashable, ...]
    """Ok adds missing from the final read."""
    unexpected: tuple[Hashable, ...]
    """Elements of any read that no add was invoked for."""
    recovered: tuple[Hashable, ...]
    """Info adds present in the final read."""
    reason: str | None = None
    """Why `valid` is None."""


def check_set(history: Sequence[Op]) -> SetResult:
    """Check a set history against the rules of the module docstring.

    Args:
        history: the ops of the run, in order.

    Returns:
        The verdict with its counts, anomalies and the elements involved.

    Raises:
        HistoryError: the history is not well formed, or adds an element twice.
    """
    operations = pair(history)
    adds: dict[Hashable, Operation] = {}
    for operation in operations:
        if operation.f != ADD:
            continue
        element = operation.invoke.value
        if element in adds:
            raise HistoryError(
                f"op {operation.invoke.index}: adds {element!r} again "
                f"(first at op {adds[element].invoke.index}); the set workload adds each once"
            )
        adds[element] = operation
    reads = [o for o in operations if o.f == READ and o.type == OK]
    last_completion = max(
        (a.complete.index for a in adds.values() if a.complete is not None), default=-1
    )
    after = [r for r in reads if r.invoke.index > last_completion]
    final = after[-1] if after else None

    acknowledged = sorted(
        (a for a in adds.values() if a.type == OK and a.complete is not None),
        key=lambda a: a.complete.index if a.complete is not None else -1,
    )
    acknowledged_at = [a.complete.index for a in acknowledged if a.complete is not None]
    anomalies: list[Anomaly] = []
    unexpected: dict[Hashable, None] = {}
    for read in reads:
        before = acknowledged[: bisect_left(acknowledged_at, read.invoke.index)]
        # The final read's missing acknowledged adds are reported once, as lost.
        anomalies.extend(_read_anomalies(read, adds, [] if read is final else before))
        unexpected.update(dict.fromkeys(e for e in read.value if e not in adds))

    lost: list[Operation] = []
    recovered: list[Hashable] = []
    reason: str | None = None
    if final is None:
        reason = "no ok read after every add completed: lost adds unchecked"
    else:
        in_final = set(final.value)
        lost = [a for a in adds.values() if a.type == OK and a.invoke.value not in in_final]
        recovered = [e for e, a in adds.items() if a.type == INFO and e in in_final]
        if lost:
            at = final.invoke.index
            anomalies.append(
                Anomaly(
                    "lost",
                    f"final read {at} lacks {[a.invoke.value for a in lost]}, acknowledged",
                    (at, *(a.invoke.index for a in lost)),
                )
            )
    if anomalies:
        valid: bool | None = False
        reason = None
    else:
        valid = True if reason is None else None
    return SetResult(
        valid=valid,
        reads_checked=len(reads),
        adds_ok=sum(1 for a in adds.values() if a.type == OK),
        adds_fail=sum(1 for a in adds.values() if a.type == FAIL),
        adds_info=sum(1 for a in adds.values() if a.type == INFO),
        anomalies=tuple(anomalies),
        final_read=None if final is None else final.invoke.index,
        lost=tuple(a.invoke.value for a in lost),
        unexpected=tuple(unexpected),
        recovered=tuple(recovered),
        reason=reason,
    )


def _read_anomalies(
    read: Operation, adds: dict[Hashable, Operation], acknowledged: list[Operation]
) -> list[Anomaly]:
    """Rule 1 for one ok read; `acknowledged`: ok adds completed before it."""
    at = read.invoke.index
    found: list[Anomaly] = []
    strangers = [e for e in read.value if e not in adds]
    if strangers:
        found.append(Anomaly("unexpected", f"read {at} holds {strangers}, never added", (at,)))
    failed = [adds[e] for e in read.value if e in adds and adds[e].type == FAIL]
    if failed:
        found.append(
            Anomaly(
                "failed add visible",
                f"read {at} holds {[a.invoke.value for a in failed]}, whose adds failed",
                (at, *(a.invoke.index for a in failed)),
            )
        )
    present = set(read.value)
    stale = [a for a in acknowledged if a.invoke.value not in present]
    if stale:
        found.append(
            Anomaly(
                "stale read",
                f"read {at} lacks {[a.invoke.value for a in stale]}, "
                "acknowledged before it was invoked",
                (at, *(a.invoke.index for a in stale)),
            )
        )
    return found
