"""An Elle-style checker for list-append histories under snapshot isolation.

The workload (``f == "txn"``, see `chaos.history`) appends unique elements to
lists and reads whole lists. Because a list only grows and every element is
unique per key, each read names a *version* of its key (its length and last
element), and the reads together reveal the order of those versions.

Invariants the checker relies on (the workload guarantees them; a history
that breaks one is reported, not trusted):

1. Every element is appended once per key; a list only grows by appends.
2. A read returns the whole list, so every committed read of a key is a
   prefix of the key's final list. The longest read is the key's *version
   order*; a read that is not a prefix of it is an ``incompatible-order``.
3. A transaction that completed ``ok`` committed; ``fail`` did not; ``info``
   (or never completed) did if and only if some ok read observes one of its
   appends (its other effects stay unknown: its reads are not used).

The dependency graph has one node per committed transaction (named by the
history index of its invocation) and three kinds of edge, none a self-loop:

- ``ww``: T1 appended x_i, T2 appended the element right after x_i;
- ``wr``: T2 read a list whose last element T1 appended;
- ``rw``: T1 read a list ending at x_i (or empty), T2 appended the next one.

Edges come from each transaction's *external* read of a key: its first read,
less its own earlier appends (what its snapshot showed).

Anomalies (``kind``), all forbidden under snapshot isolation except G2:

- ``G0``: a cycle of ww edges; ``G1c``: a cycle of ww and wr edges with at
  least one wr; ``G-single``: a cycle with exactly one rw edge;
- ``G2``: a cycle with two or more rw edges (write skew), *allowed* under
  snapshot isolation and reported for information only;
- ``G1a``: a read observes an append of a transaction that failed;
- ``G1b``: a read ends at an element its writer followed with another
  append to the same key (a state from the middle of a transaction);
- ``lost-update``: two committed transactions read a key at the same
  version and both appended to it (first-committer-wins forbids it);
- ``incompatible-order``, ``duplicate-elements`` (an element twice in one
  read), ``garbage-read`` (an element nobody appended),
  ``duplicate-append`` (an element appended twice), ``internal`` (a read
  that disagrees with the transaction's own earlier read and appends).

Cycles: Tarjan's algorithm (iterative) finds the strongly connected
components of the ww, ww+wr and full graphs; a breadth-first search inside a
component reports one short cycle per component and anomaly kind. Cost:
O(total read length + V + E) to build and to find components; the G-single
search is one bounded BFS per rw edge inside a component, pruned by the
topological order of the ww+wr components and stopped at the first hit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from chaos.history import FAIL, OK, Op, pair

WW, WR, RW = "ww", "wr", "rw"
ALLOWED_UNDER_SI = frozenset({"G2"})
"""Kinds reported for information: they do not make a history invalid."""


@dataclass(frozen=True)
class Anomaly:
    kind: str
    explanation: str
    transactions: tuple[int, ...]
    """History indices of the invocations of the transactions involved."""


@dataclass(frozen=True)
class ElleResult:
    valid: bool
    """True when every anomaly found is of a kind in `ALLOWED_UNDER_SI`."""
    transactions: int
    """How many txn operations the history holds (ok, fail and info)."""
    anomalies: list[Anomaly]


@dataclass(frozen=True)
class _Txn:
    id: int
    status: str
    micro_ops: tuple[tuple[str, Hashable, Any], ...]


@dataclass(frozen=True)
class _Write:
    txn: int
    nth: int
    """Position among the transaction's appends to this key, from 0."""
    of: int
    """How many times the transaction appended to this key."""


@dataclass(frozen=True)
class _Read:
    txn: int
    key: Hashable
    value: tuple[Any, ...]
    external: tuple[Any, ...] | None
    """The snapshot part (the first read of the key, less own appends), else None."""


Edges = dict[int, dict[int, dict[str, str]]]
"""from -> to -> edge kind -> why (the first witness found)."""


def check_list_append(history: Sequence[Op]) -> ElleResult:
    """Check a list-append history for the anomalies snapshot isolation forbids.

    Args:
        history: the ops of a run, in order; only ``f == "txn"`` ops are read.

    Returns:
        An `ElleResult`; ``valid`` is False if any anomaly outside
        `ALLOWED_UNDER_SI` was found.

    Raises:
        chaos.history.HistoryError: the history is not well formed.
    """
    txns = _transactions(history)
    writes, anomalies = _index_appends(txns)
    reads, internal = _reads(txns, writes)
    anomalies += internal
    anomalies += _read_content_anomalies(reads, writes, {t.id: t for t in txns})
    orders, incompatible = _version_orders(reads)
    anomalies += incompatible
    anomalies += _lost_updates(reads, writes)
    committed = _committed(txns, reads, writes)
    edges = _dependency_edges(reads, writes, orders, committed)
    anomalies += _cycle_anomalies(edges, sorted(committed))
    return ElleResult(
        valid=all(a.kind in ALLOWED_UNDER_SI for a in anomalies),
        transactions=len(txns),
        anomalies=anomalies,
    )


def _committed(
    txns: list[_Txn], reads: list[_Read], writes: dict[tuple[Hashable, Any], _Write]
) -> set[int]:
    """The ok transactions, and the info ones an ok read shows an append of."""
    status = {t.id: t.status for t in txns}
    observed = {(read.key, element) for read in reads for element in read.value}
    unknown = {
        writes[seen].txn
        for seen in observed
        if seen in writes and status[writes[seen].txn] not in (OK, FAIL)
    }
    return {t for t, s in status.items() if s == OK} | unknown


def _transactions(history: Sequence[Op]) -> list[_Txn]:
    found = []
    for operation in pair(history):
        if operation.f != "txn":
            continue
        micro_ops = tuple((m[0], _hashable(m[1]), m[2]) for m in operation.value)
        found.append(_Txn(operation.invoke.index, operation.type, micro_ops))
    return found


def _hashable(value: Any) -> Hashable:
    # JSON turns tuples into lists; keys and elements must be usable in dicts.
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def _index_appends(txns: list[_Txn]) -> tuple[dict[tuple[Hashable, Any], _Write], list[Anomaly]]:
    """Who appended each (key, element), and which elements were appended twice."""
    writes: dict[tuple[Hashable, Any], _Write] = {}
    anomalies = []
    for txn in txns:
        appended: dict[Hashable, list[Any]] = {}
        for kind, key, element in txn.micro_ops:
            if kind == "append":
                appended.setdefault(key, []).append(_hashable(element))
        for key, elements in appended.items():
            for nth, element in enumerate(elements):
                first = writes.get((key, element))
                if first is not None:
                    anomalies.append(
                        Anomaly(
                            "duplicate-append",
                            f"T{first.txn} and T{txn.id} both appended {element!r} to key {key!r}",
                            (first.txn, txn.id),
                        )
                    )
                    continue
                writes[(key, element)] = _Write(txn.id, nth, len(elements))
    return writes, anomalies


def _reads(
    txns: list[_Txn], writes: dict[tuple[Hashable, Any], _Write]
) -> tuple[list[_Read], list[Anomaly]]:
    """Every read of the ok transactions, with the snapshot part of each first read.

    A later read of a key in the same transaction must equal the earlier read
    plus the appends made since; a first read after own appends must end with
    them. Either mismatch is an ``internal`` anomaly.
    """
    reads: list[_Read] = []
    anomalies: list[Anomaly] = []
    for txn in txns:
        if txn.status != OK:
            continue
        known: dict[Hashable, tuple[Any, ...]] = {}
        own: dict[Hashable, tuple[Any, ...]] = {}
        for kind, key, element in txn.micro_ops:
            if kind == "append":
                element = _hashable(element)
                own[key] = (*own.get(key, ()), element)
                if key in known:
                    known[key] = (*known[key], element)
                continue
            value = tuple(_hashable(e) for e in (element or ()))
            external = None
            if key in known:
                if value != known[key]:
                    anomalies.append(
                        _internal(
                            txn.id,
                            key,
                            value,
                            f"its earlier reads and appends gave {list(known[key])!r}",
                        )
                    )
            else:
                mine = own.get(key, ())
                if mine and value[len(value) - len(mine) :] != mine:
                    anomalies.append(
                        _internal(
                            txn.id,
                            key,
                            value,
                            f"it does not end with its own appends {list(mine)!r}",
                        )
                    )
                external = value[: max(0, len(value) - len(mine))]
            known[key] = value
            reads.append(_Read(txn.id, key, value, external))
    return reads, anomalies


def _internal(txn: int, key: Hashable, value: tuple[Any, ...], why: str) -> Anomaly:
    return Anomaly("internal", f"T{txn} read key {key!r} as {list(value)!r}, but {why}", (txn,))


def _read_content_anomalies(
    reads: list[_Read], writes: dict[tuple[Hashable, Any], _Write], txns: dict[int, _Txn]
) -> list[Anomaly]:
    """Duplicates, garbage, aborted reads (G1a) and intermediate reads (G1b)."""
    anomalies = []
    for read in reads:
        who = f"T{read.txn} read key {read.key!r} as {list(read.value)!r}"
        if len(set(read.value)) != len(read.value):
            seen: set[Any] = set()
            twice = []
            for element in read.value:
                if element in seen:
                    twice.append(element)
                seen.add(element)
            anomalies.append(
                Anomaly("duplicate-elements", f"{who}: {twice!r} appear twice", (read.txn,))
            )
        garbage = [e for e in read.value if (read.key, e) not in writes]
        if garbage:
            anomalies.append(
                Anomaly("garbage-read", f"{who}: nobody appended {garbage!r}", (read.txn,))
            )
        aborted: dict[int, list[Any]] = {}
        for element in read.value:
            write = writes.get((read.key, element))
            if write is not None and txns[write.txn].status == FAIL:
                aborted.setdefault(write.txn, []).append(element)
        for writer, elements in aborted.items():
            anomalies.append(
                Anomaly(
                    "G1a",
                    f"{who}: {elements!r} were appended by T{writer}, which failed",
                    (writer, read.txn),
                )
            )
        if read.external:
            last = read.external[-1]
            write = writes.get((read.key, last))
            if (
                write is not None
                and write.txn != read.txn
                and write.nth + 1 < write.of
                and txns[write.txn].status != FAIL
            ):
                anomalies.append(
                    Anomaly(
                        "G1b",
                        f"{who}: it ends at {last!r}, append {write.nth + 1} of {write.of} "
                        f"T{write.txn} made to key {read.key!r} (an intermediate state)",
                        (write.txn, read.txn),
                    )
                )
    return anomalies


def _version_orders(
    reads: list[_Read],
) -> tuple[dict[Hashable, tuple[Any, ...]], list[Anomaly]]:
    """Each key's longest read, and the reads that are not a prefix of it."""
    longest: dict[Hashable, _Read] = {}
    for read in reads:
        best = longest.get(read.key)
        if best is None or len(read.value) > len(best.value):
            longest[read.key] = read
    incompatible: dict[tuple[Hashable, tuple[Any, ...]], list[int]] = {}
    for read in reads:
        order = longest[read.key].value
        if order[: len(read.value)] != read.value:
            incompatible.setdefault((read.key, read.value), []).append(read.txn)
    anomalies = []
    for (key, value), readers in incompatible.items():
        best = longest[key]
        names = ", ".join(f"T{t}" for t in readers)
        anomalies.append(
            Anomaly(
                "incompatible-order",
                f"{names} read key {key!r} as {list(value)!r}, not a prefix of "
                f"{list(best.value)!r} read by T{best.txn}",
                (*readers, best.txn),
            )
        )
    return {key: read.value for key, read in longest.items()}, anomalies


def _lost_updates(reads: list[_Read], writes: dict[tuple[Hashable, Any], _Write]) -> list[Anomaly]:
    """Committed transactions that read the same version of a key and both appended to it."""
    appenders: dict[Hashable, set[int]] = {}
    for (key, _), write in writes.items():
        appenders.setdefault(key, set()).add(write.txn)
    same_version: dict[tuple[Hashable, int, Any], list[int]] = {}
    for read in reads:
        if read.external is None or read.txn not in appenders.get(read.key, ()):
            continue
        last = read.external[-1] if read.external else None
        same_version.setdefault((read.key, len(read.external), last), []).append(read.txn)
    anomalies = []
    for (key, length, last), txns in same_version.items():
        if len(txns) > 1:
            version = f"ending at {last!r}" if length else "empty"
            names = " and ".join(f"T{t}" for t in txns)
            anomalies.append(
                Anomaly(
                    "lost-update",
                    f"{names} all read key {key!r} {version} (length {length}) and appended to "
                    f"it: all committed, so one update overwrote another unseen",
                    tuple(txns),
                )
            )
    return anomalies


def _dependency_edges(
    reads: list[_Read],
    writes: dict[tuple[Hashable, Any], _Write],
    orders: dict[Hashable, tuple[Any, ...]],
    committed: set[int],
) -> Edges:
    edges: Edges = {t: {} for t in committed}

    def add(source: int, target: int, kind: str, why: str) -> None:
        if source != target and source in committed and target in committed:
            edges[source].setdefault(target, {}).setdefault(kind, why)

    def writer(key: Hashable, element: Any) -> int | None:
        write = writes.get((key, element))
        return None if write is None else write.txn

    for key, order in orders.items():
        for before, after in pairwise(order):
            first, second = writer(key, before), writer(key, after)
            if first is not None and second is not None:
                add(
                    first,
                    second,
                    WW,
                    f"T{first} appended {before!r} to key {key!r}, "
                    f"T{second} appended {after!r} right after it",
                )
    for read in reads:
        if read.external is None:
            continue
        seen = read.external
        if seen:
            source = writer(read.key, seen[-1])
            if source is not None:
                add(
                    source,
                    read.txn,
                    WR,
                    f"T{read.txn} read key {read.key!r} ending at {seen[-1]!r}, "
                    f"appended by T{source}",
                )
        order = orders[read.key]
        if len(seen) < len(order) and order[: len(seen)] == seen:
            target = writer(read.key, order[len(seen)])
            if target is not None:
                version = f"ending at {seen[-1]!r}" if seen else "empty"
                add(
                    read.txn,
                    target,
                    RW,
                    f"T{read.txn} read key {read.key!r} {version}, "
                    f"T{target} appended the next element {order[len(seen)]!r}",
                )
    return edges


def _successors(edges: Edges, kinds: frozenset[str]) -> Callable[[int], list[int]]:
    return lambda node: [t for t, found in edges[node].items() if not kinds.isdisjoint(found)]


def strongly_connected_components(
    nodes: Iterable[int], successors: Callable[[int], Iterable[int]]
) -> list[list[int]]:
    """Tarjan's algorithm without recursion.

    Returns:
        Every component (singletons too), in reverse topological order: an
        edge from a node of component i leads into a component j <= i.
    """
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    components: list[list[int]] = []
    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(successors(root)))]
        while work:
            node, pending = work[-1]
            descended = False
            for target in pending:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(successors(target))))
                    descended = True
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            if descended:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    return components


def _path(
    start: int,
    goal: int,
    successors: Callable[[int], Iterable[int]],
    allowed: Callable[[int], bool],
) -> list[int] | None:
    """A shortest path start -> goal through allowed nodes (breadth-first), or None."""
    parent: dict[int, int] = {start: start}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = [node]
            while node != start:
                node = parent[node]
                path.append(node)
            return path[::-1]
        for target in successors(node):
            if target not in parent and allowed(target):
                parent[target] = node
                queue.append(target)
    return None


def _cycle_anomalies(edges: Edges, nodes: list[int]) -> list[Anomaly]:
    anomalies = []
    ww = _successors(edges, frozenset({WW}))
    ww_wr = _successors(edges, frozenset({WW, WR}))
    every = _successors(edges, frozenset({WW, WR, RW}))

    for component in strongly_connected_components(nodes, ww):
        if len(component) > 1:
            members = set(component)
            source = component[0]
            target = next(t for t in ww(source) if t in members)
            path = _path(target, source, ww, members.__contains__)
            assert path is not None  # a component is strongly connected
            anomalies.append(_cycle_anomaly("G0", edges, [source, *path[:-1]], (WW,)))

    dependency_components = strongly_connected_components(nodes, ww_wr)
    position = {n: i for i, component in enumerate(dependency_components) for n in component}
    for component in dependency_components:
        members = set(component)
        read_edge = next(
            (
                (s, t)
                for s in component
                for t, kinds in edges[s].items()
                if t in members and WR in kinds
            ),
            None,
        )
        if read_edge is not None:
            source, target = read_edge
            path = _path(target, source, ww_wr, members.__contains__)
            assert path is not None
            anomalies.append(_cycle_anomaly("G1c", edges, [source, *path[:-1]], (WW, WR), WR))

    for component in strongly_connected_components(nodes, every):
        members = set(component)
        anti = [
            (s, t)
            for s in component
            for t, kinds in edges[s].items()
            if t in members and RW in kinds
        ]
        if not anti:
            continue
        single = None
        for source, target in anti:
            # target reaches source along ww/wr only if its component comes no earlier.
            if position[target] < position[source]:
                continue
            path = _path(target, source, ww_wr, _at_or_after(members, position, source))
            if path is not None:
                single = [source, *path[:-1]]
                break
        if single is not None:
            anomalies.append(_cycle_anomaly("G-single", edges, single, (WW, WR), RW))
            continue
        source, target = anti[0]
        path = _path(target, source, every, members.__contains__)
        assert path is not None
        anomalies.append(_cycle_anomaly("G2", edges, [source, *path[:-1]], (WW, WR, RW), RW))
    return anomalies


def _at_or_after(members: set[int], position: dict[int, int], source: int) -> Callable[[int], bool]:
    """Nodes of `members` whose ww/wr component could still lead back to `source`."""
    floor = position[source]
    return lambda node: node in members and position[node] >= floor


def _cycle_anomaly(
    kind: str,
    edges: Edges,
    cycle: list[int],
    preferred: tuple[str, ...],
    first_edge: str | None = None,
) -> Anomaly:
    """Describe cycle[0] -> cycle[1] -> ... -> cycle[0].

    The first edge is labelled `first_edge` when given (the edge the search
    started from); the others take the first kind of `preferred` they carry.
    """
    steps = []
    names = [f"T{cycle[0]}"]
    for i, source in enumerate(cycle):
        target = cycle[(i + 1) % len(cycle)]
        found = edges[source][target]
        label = first_edge if i == 0 and first_edge else next(k for k in preferred if k in found)
        steps.append(found[label])
        names.append(f"-{label}-> T{target}")
    explanation = f"cycle {' '.join(names)}: " + "; ".join(steps)
    if kind == "G2":
        explanation += " (write skew: allowed under snapshot isolation)"
    return Anomaly(kind, explanation, tuple(cycle))
