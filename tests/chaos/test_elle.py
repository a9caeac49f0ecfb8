"""The list-append checker: one hand-made history per anomaly, valid histories,
and a simulated snapshot-isolation store that must always pass until an
anomaly is injected."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chaos.checkers.elle import ElleResult, check_list_append
from chaos.history import FAIL, INFO, INVOKE, OK, Op, Recorder

MicroOp = tuple[str, Any, Any]


class Builder:
    """Writes list-append ops; micro-ops are ("append", key, element) or ("r", key, list)."""

    def __init__(self) -> None:
        self.recorder = Recorder()

    def invoke(self, process: int, micro_ops: list[MicroOp]) -> int:
        value = [[f, k, None if f == "r" else v] for f, k, v in micro_ops]
        return self.recorder.add(process, INVOKE, "txn", value, 0.0).index

    def complete(self, process: int, type_: str, micro_ops: list[MicroOp]) -> None:
        value = [[f, k, None if f == "r" and type_ != OK else v] for f, k, v in micro_ops]
        self.recorder.add(process, type_, "txn", value, 0.0)

    def txn(self, process: int, micro_ops: list[MicroOp], type_: str = OK) -> int:
        index = self.invoke(process, micro_ops)
        self.complete(process, type_, micro_ops)
        return index

    @property
    def ops(self) -> list[Op]:
        return self.recorder.ops


def kinds(result: ElleResult) -> set[str]:
    return {a.kind for a in result.anomalies}


def only(result: ElleResult, kind: str) -> Any:
    found = [a for a in result.anomalies if a.kind == kind]
    assert len(found) == 1, result.anomalies
    return found[0]


# -- valid histories ---------------------------------------------------------


def test_serial_history_is_valid() -> None:
    h = Builder()
    h.txn(0, [("append", "x", 1), ("r", "y", [])])
    h.txn(0, [("r", "x", [1]), ("append", "x", 2), ("r", "x", [1, 2])])
    h.txn(0, [("r", "x", [1, 2]), ("append", "y", 3)])
    h.txn(0, [("r", "x", [1, 2]), ("r", "y", [3])])
    result = check_list_append(h.ops)
    assert result.valid and result.anomalies == []
    assert result.transactions == 4


def test_concurrent_snapshot_isolation_history_is_valid() -> None:
    h = Builder()
    h.invoke(1, [("r", "x", []), ("append", "x", 1)])
    h.invoke(2, [("r", "y", []), ("append", "y", 2)])
    h.complete(2, OK, [("r", "y", []), ("append", "y", 2)])
    h.invoke(3, [("r", "y", [2]), ("r", "x", [])])
    h.complete(1, OK, [("r", "x", []), ("append", "x", 1)])
    h.complete(3, OK, [("r", "y", [2]), ("r", "x", [])])
    h.txn(4, [("r", "x", [1]), ("r", "y", [2])])
    h.txn(5, [("append", "x", 3)], FAIL)
    assert check_list_append(h.ops) == ElleResult(True, 5, [])


def test_write_skew_is_reported_as_allowed_g2() -> None:
    h = Builder()
    t1 = h.invoke(1, [("r", "x", []), ("r", "y", []), ("append", "x", 1)])
    t2 = h.invoke(2, [("r", "x", []), ("r", "y", []), ("append", "y", 2)])
    h.complete(1, OK, [("r", "x", []), ("r", "y", []), ("append", "x", 1)])
    h.complete(2, OK, [("r", "x", []), ("r", "y", []), ("append", "y", 2)])
    h.txn(3, [("r", "x", [1]), ("r", "y", [2])])
    result = check_list_append(h.ops)
    assert result.valid
    g2 = only(result, "G2")
    assert kinds(result) == {"G2"}
    assert set(g2.transactions) == {t1, t2}
    assert f"T{t1} -rw-> T{t2}" in g2.explanation or f"T{t2} -rw-> T{t1}" in g2.explanation


def test_info_transaction_that_committed_or_not() -> None:
    h = Builder()
    h.txn(1, [("append", "x", 1)], INFO)  # committed: a later read shows it
    h.txn(2, [("append", "x", 2)], INFO)  # did not commit
    h.invoke(3, [("append", "y", 3)])  # never completed, never seen
    h.txn(4, [("r", "x", [1]), ("r", "y", [])])
    result = check_list_append(h.ops)
    assert result.valid and result.anomalies == []
    assert result.transactions == 4


def test_info_transaction_that_committed_joins_the_graph() -> None:
    h = Builder()
    t1 = h.txn(1, [("append", "x", 1), ("append", "y", 4)], INFO)
    t2 = h.txn(2, [("append", "x", 2), ("append", "y", 3)])
    h.txn(3, [("r", "x", [1, 2]), ("r", "y", [3, 4])])
    g0 = only(check_list_append(h.ops), "G0")
    assert set(g0.transactions) == {t1, t2}


# -- one history per anomaly ---------------------------------------------------


def test_g0_write_cycle() -> None:
    h = Builder()
    t1 = h.txn(1, [("append", "x", 1), ("append", "y", 4)])
    t2 = h.txn(2, [("append", "x", 2), ("append", "y", 3)])
    h.txn(3, [("r", "x", [1, 2]), ("r", "y", [3, 4])])
    result = check_list_append(h.ops)
    assert not result.valid
    g0 = only(result, "G0")
    assert set(g0.transactions) == {t1, t2}
    assert f"T{t1} -ww-> T{t2}" in g0.explanation and f"T{t2} -ww-> T{t1}" in g0.explanation
    assert "G1c" not in kinds(result)


def test_g1a_aborted_read() -> None:
    h = Builder()
    t1 = h.txn(1, [("append", "x", 1)], FAIL)
    t2 = h.txn(2, [("r", "x", [1])])
    result = check_list_append(h.ops)
    assert not result.valid
    g1a = only(result, "G1a")
    assert set(g1a.transactions) == {t1, t2}
    assert f"T{t1}, which failed" in g1a.explanation


def test_g1b_intermediate_read() -> None:
    h = Builder()
    t1 = h.txn(1, [("append", "x", 1), ("append", "x", 2)])
    t2 = h.txn(2, [("r", "x", [1])])
    result = check_list_append(h.ops)
    assert not result.valid
    g1b = only(result, "G1b")
    assert set(g1b.transactions) == {t1, t2}
    assert "append 1 of 2" in g1b.explanation


def test_g1c_circular_information_flow() -> None:
    h = Builder()
    t1 = h.invoke(1, [("append", "x", 1), ("r", "y", [2])])
    t2 = h.invoke(2, [("append", "y", 2), ("r", "x", [1])])
    h.complete(1, OK, [("append", "x", 1), ("r", "y", [2])])
    h.complete(2, OK, [("append", "y", 2), ("r", "x", [1])])
    result = check_list_append(h.ops)
    assert not result.valid
    g1c = only(result, "G1c")
    assert set(g1c.transactions) == {t1, t2}
    assert f"T{t1} -wr-> T{t2}" in g1c.explanation and f"T{t2} -wr-> T{t1}" in g1c.explanation
    assert "G0" not in kinds(result)


def test_lost_update() -> None:
    h = Builder()
    h.txn(0, [("append", "x", 1)])
    t1 = h.invoke(1, [("r", "x", [1]), ("append", "x", 2)])
    t2 = h.invoke(2, [("r", "x", [1]), ("append", "x", 3)])
    h.complete(1, OK, [("r", "x", [1]), ("append", "x", 2)])
    h.complete(2, OK, [("r", "x", [1]), ("append", "x", 3)])
    h.txn(3, [("r", "x", [1, 2, 3])])
    result = check_list_append(h.ops)
    assert not result.valid
    lost = only(result, "lost-update")
    assert set(lost.transactions) == {t1, t2}
    assert "ending at 1" in lost.explanation
    # The same pair also closes a cycle with a single anti-dependency.
    assert set(only(result, "G-single").transactions) == {t1, t2}


def test_g_single_read_skew() -> None:
    h = Builder()
    t1 = h.invoke(1, [("r", "x", []), ("r", "y", [2])])
    t2 = h.txn(2, [("append", "x", 1), ("append", "y", 2)])
    h.complete(1, OK, [("r", "x", []), ("r", "y", [2])])
    h.txn(3, [("r", "x", [1])])
    result = check_list_append(h.ops)
    assert not result.valid
    assert kinds(result) == {"G-single"}
    single = only(result, "G-single")
    assert set(single.transactions) == {t1, t2}
    assert f"T{t1} -rw-> T{t2}" in single.explanation
    assert f"T{t2} -wr-> T{t1}" in single.explanation


def test_incompatible_order() -> None:
    h = Builder()
    h.txn(1, [("append", "x", 1)])
    h.txn(2, [("append", "x", 2)])
    t3 = h.txn(3, [("r", "x", [1, 2])])
    t4 = h.txn(4, [("r", "x", [2])])
    result = check_list_append(h.ops)
    assert not result.valid
    bad = only(result, "incompatible-order")
    assert set(bad.transactions) == {t3, t4}
    assert "[2]" in bad.explanation and "[1, 2]" in bad.explanation


def test_duplicate_elements() -> None:
    h = Builder()
    h.txn(1, [("append", "x", 1)])
    t2 = h.txn(2, [("r", "x", [1, 1])])
    result = check_list_append(h.ops)
    assert not result.valid
    assert only(result, "duplicate-elements").transactions == (t2,)


def test_garbage_read() -> None:
    h = Builder()
    h.txn(1, [("append", "x", 1)])
    t2 = h.txn(2, [("r", "x", [1, 99])])
    result = check_list_append(h.ops)
    assert not result.valid
    garbage = only(result, "garbage-read")
    assert garbage.transactions == (t2,) and "[99]" in garbage.explanation


def test_internal_read_that_misses_own_append() -> None:
    h = Builder()
    t1 = h.txn(1, [("append", "x", 1), ("r", "x", [])])
    result = check_list_append(h.ops)
    assert only(result, "internal").transactions == (t1,)


def test_long_cycle_is_found_without_recursion() -> None:
    # A G0 cycle of 3,000 transactions: T_i appends to key i then key i+1.
    h = Builder()
    n = 3000
    for i in range(n):
        h.txn(i, [("append", i, f"b{i}"), ("append", (i + 1) % n, f"a{(i + 1) % n}")])
    # Key i reads a_i (from T_{i-1}) then b_i (from T_i): T_{i-1} -ww-> T_i, around a ring.
    h.txn(n, [("r", i, [f"a{i}", f"b{i}"]) for i in range(n)])
    result = check_list_append(h.ops)
    assert len(only(result, "G0").transactions) == n


# -- a simulated snapshot-isolation store --------------------------------------


@dataclass
class _Open:
    process: int
    micro_ops: list[MicroOp]
    started: int
    appended: dict[Any, list[int]] = field(default_factory=dict)


def simulate_snapshot_isolation(
    rng: random.Random,
    keys: int,
    processes: int,
    transactions: int,
    first_committer_wins: bool = True,
) -> tuple[Builder, dict[Any, list[int]]]:
    """Random interleavings against an SI store (snapshot at start, first committer wins).

    Without `first_committer_wins` every transaction commits: a broken store.
    Returns the history and the committed lists.
    """
    h = Builder()
    store: dict[Any, list[int]] = {k: [] for k in range(keys)}
    last_commit = dict.fromkeys(range(keys), -1)
    clock = 0
    next_element = 0
    next_process = processes
    slots: list[int] = list(range(processes))
    open_txns: dict[int, _Open] = {}
    started = 0
    while started < transactions or open_txns:
        slot = rng.randrange(processes)
        if slot not in open_txns:
            if started == transactions:
                continue
            started += 1
            snapshot = {k: list(v) for k, v in store.items()}
            txn = _Open(slots[slot], [], clock)
            for _ in range(rng.randint(1, 4)):
                key = rng.randrange(keys)
                if rng.random() < 0.5:
                    txn.micro_ops.append(("r", key, list(snapshot[key])))
                else:
                    snapshot[key].append(next_element)
                    txn.appended.setdefault(key, []).append(next_element)
                    txn.micro_ops.append(("append", key, next_element))
                    next_element += 1
            h.invoke(txn.process, txn.micro_ops)
            open_txns[slot] = txn
            continue
        txn = open_txns.pop(slot)
        conflict = first_committer_wins and any(last_commit[k] > txn.started for k in txn.appended)
        crash = rng.random() < 0.1
        if not conflict and (not crash or rng.random() < 0.5):
            clock += 1
            for key, elements in txn.appended.items():
                store[key].extend(elements)
                last_commit[key] = clock
        if crash:
            h.complete(txn.process, INFO, txn.micro_ops)
            slots[slot] = next_process
            next_process += 1
        else:
            h.complete(txn.process, FAIL if conflict else OK, txn.micro_ops)
    h.txn(next_process, [("r", k, list(v)) for k, v in store.items()])
    return h, store


histories = st.builds(
    simulate_snapshot_isolation,
    st.randoms(use_true_random=False),
    st.integers(1, 4),
    st.integers(1, 5),
    st.integers(1, 40),
)


@settings(max_examples=200, deadline=None)
@given(histories)
def test_snapshot_isolation_store_is_always_valid(
    simulated: tuple[Builder, dict[Any, list[int]]],
) -> None:
    h, _ = simulated
    result = check_list_append(h.ops)
    assert result.valid, result.anomalies
    assert kinds(result) <= {"G2"}


def inject(h: Builder, store: dict[Any, list[int]], anomaly: str) -> None:
    """Add transactions at the end that commit `anomaly` on key 0."""
    p = 10_000
    final = store[0]
    if anomaly == "G1a":
        h.txn(p, [("append", 0, -1)], FAIL)
        h.txn(p + 1, [("r", 0, [*final, -1])])
    elif anomaly == "G1b":
        h.txn(p, [("append", 0, -1), ("append", 0, -2)])
        h.txn(p + 1, [("r", 0, [*final, -1])])
        h.txn(p + 2, [("r", 0, [*final, -1, -2])])
    elif anomaly == "lost-update":
        h.invoke(p, [("r", 0, final), ("append", 0, -1)])
        h.invoke(p + 1, [("r", 0, final), ("append", 0, -2)])
        h.complete(p, OK, [("r", 0, final), ("append", 0, -1)])
        h.complete(p + 1, OK, [("r", 0, final), ("append", 0, -2)])
        h.txn(p + 2, [("r", 0, [*final, -1, -2])])
    elif anomaly == "garbage-read":
        h.txn(p, [("r", 0, [*final, -1])])
    elif anomaly == "G-single":
        # Reads key 0 before the writer, the writer's other key after it.
        h.invoke(p, [("r", 0, final), ("r", "z", [-2])])
        h.txn(p + 1, [("append", 0, -1), ("append", "z", -2)])
        h.complete(p, OK, [("r", 0, final), ("r", "z", [-2])])
        h.txn(p + 2, [("r", 0, [*final, -1])])


@settings(max_examples=100, deadline=None)
@given(histories, st.sampled_from(["G1a", "G1b", "lost-update", "garbage-read", "G-single"]))
def test_an_injected_anomaly_is_caught(
    simulated: tuple[Builder, dict[Any, list[int]]], anomaly: str
) -> None:
    h, store = simulated
    inject(h, store, anomaly)
    result = check_list_append(h.ops)
    assert not result.valid
    assert anomaly in kinds(result), result.anomalies


def test_a_store_without_first_committer_wins_is_caught() -> None:
    h, _ = simulate_snapshot_isolation(random.Random(1), 3, 4, 200, first_committer_wins=False)
    result = check_list_append(h.ops)
    assert not result.valid
    assert {"lost-update", "G-single", "incompatible-order"} <= kinds(result)


def test_two_thousand_transactions_check_in_about_a_second() -> None:
    h, _ = simulate_snapshot_isolation(random.Random(7), 20, 10, 2000)
    began = time.perf_counter()
    result = check_list_append(h.ops)
    elapsed = time.perf_counter() - began
    assert result.valid and result.transactions == 2001
    assert elapsed < 3.0, f"{elapsed:.2f} s"
