"""The history of a chaos run: what every client asked, and what came back.

A history is a list of `Op`, in the order they happened. Each client
operation appears twice: an ``invoke`` when the client starts it, then its
completion by the same process:

- ``ok``: it happened, and `value` holds its result;
- ``fail``: it certainly did not happen (for example a ConflictError:
  nothing was written);
- ``info``: its outcome is unknown (a timeout, a ClusterUnavailableError
  whose message says the outcome is unknown). It may have happened, at any
  time after its invocation, or never. The process that saw it never
  issues another operation: a new process id takes its place, as in
  Jepsen, so an unknown operation stays concurrent with everything after it.

Faults injected by the nemesis are ops of process `NEMESIS` with
``f`` naming the fault, an ``info`` when it starts and another when it ends.

Values by workload (the checkers rely on these shapes):

- register: ``f`` is ``read``, ``write`` or ``cas``; `value` is
  ``[key, v]`` for read (v is None at invoke, the value read at ok) and
  write, and ``[key, [expected, new]]`` for cas;
- bank: ``f`` is ``transfer`` (``{"from", "to", "amount"}``) or ``read``
  (``{account: balance}`` at ok);
- set: ``f`` is ``add`` (the element) or ``read`` (the sorted elements at ok);
- list-append: ``f`` is ``txn``; `value` is a list of micro-operations
  ``["append", key, element]`` and ``["r", key, None]`` (at ok the read's
  list replaces None).

Stored as JSON lines (``history.jsonl``): one op per line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

INVOKE, OK, FAIL, INFO = "invoke", "ok", "fail", "info"
TYPES = frozenset({INVOKE, OK, FAIL, INFO})
NEMESIS = -1
"""The process id of fault events."""


class HistoryError(ValueError):
    """A history that is not well formed (a completion without its invocation, ...)."""


@dataclass(frozen=True)
class Op:
    index: int
    """Position in the history, from 0."""
    process: int
    type: str
    f: str
    value: Any
    time: float
    """Seconds since the run started (monotonic clock of the harness)."""
    error: str | None = None
    """For fail and info: what the client saw."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(line: str) -> Op:
        raw = json.loads(line)
        return Op(
            raw["index"],
            raw["process"],
            raw["type"],
            raw["f"],
            raw["value"],
            raw["time"],
            raw.get("error"),
        )


@dataclass(frozen=True)
class Operation:
    """A client operation: its invocation and its completion (None while pending)."""

    invoke: Op
    complete: Op | None

    @property
    def process(self) -> int:
        return self.invoke.process

    @property
    def f(self) -> str:
        return self.invoke.f

    @property
    def type(self) -> str:
        """ok, fail, or info (unknown, also when it never completed)."""
        return INFO if self.complete is None else self.complete.type

    @property
    def value(self) -> Any:
        """The completion's value for ok, else the invocation's."""
        if self.complete is not None and self.complete.type == OK:
            return self.complete.value
        return self.invoke.value


def pair(history: Iterable[Op]) -> list[Operation]:
    """The client operations of a history, in invocation order.

    Raises:
        HistoryError: a completion without a pending invocation of its
            process, a second invocation while one is pending, or a process
            that invokes again after an info.
    """
    pending: dict[int, Op] = {}
    crashed: set[int] = set()
    found: list[Operation] = []
    slot: dict[int, int] = {}
    for op in history:
        if op.type not in TYPES:
            raise HistoryError(f"op {op.index}: unknown type {op.type!r}")
        if op.process == NEMESIS:
            continue
        if op.type == INVOKE:
            if op.process in pending:
                raise HistoryError(f"op {op.index}: process {op.process} invokes twice")
            if op.process in crashed:
                raise HistoryError(
                    f"op {op.index}: process {op.process} invokes after an unknown outcome"
                )
            pending[op.process] = op
            slot[op.process] = len(found)
            found.append(Operation(op, None))
            continue
        invoke = pending.pop(op.process, None)
        if invoke is None:
            raise HistoryError(f"op {op.index}: {op.type} of process {op.process} invoked nothing")
        if op.f != invoke.f:
            raise HistoryError(f"op {op.index}: completes {op.f!r}, invoked {invoke.f!r}")
        found[slot.pop(op.process)] = Operation(invoke, op)
        if op.type == INFO:
            crashed.add(op.process)
    return found


def write_history(path: Path, history: Iterable[Op]) -> None:
    with open(path, "w") as out:
        for op in history:
            out.write(op.to_json() + "\n")


def read_history(path: Path) -> Iterator[Op]:
    with open(path) as source:
        for line in source:
            if line.strip():
                yield Op.from_json(line)


class Recorder:
    """Builds a history in order; thread-safe use is the caller's (one lock)."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def add(
        self,
        process: int,
        type_: str,
        f: str,
        value: Any,
        time: float,
        error: str | None = None,
    ) -> Op:
        op = Op(len(self.ops), process, type_, f, value, time, error)
        self.ops.append(op)
        return op
