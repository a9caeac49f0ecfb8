"""The register linearizability checker: hand-made histories, simulated runs
(always valid, and invalid once a read is corrupted), a brute-force oracle,
the state budget and the cost on a run of chaos size."""

from __future__ import annotations

import dataclasses
import itertools
import random
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from chaos.checkers.linearizable import check_register
from chaos.history import FAIL, INFO, INVOKE, OK, HistoryError, Op, Recorder, pair


def history(*events: tuple[int, str, str, Any]) -> list[Op]:
    """Ops from (process, type, f, value) tuples, indexed in order."""
    return [Op(i, p, t, f, v, float(i)) for i, (p, t, f, v) in enumerate(events)]


def w(p: int, t: str, v: Any, key: Any = "x") -> tuple[int, str, str, Any]:
    return (p, t, "write", [key, v])


def r(p: int, t: str, v: Any = None, key: Any = "x") -> tuple[int, str, str, Any]:
    return (p, t, "read", [key, v])


def cas(p: int, t: str, expected: Any, new: Any, key: Any = "x") -> tuple[int, str, str, Any]:
    return (p, t, "cas", [key, [expected, new]])


# --- valid ---------------------------------------------------------------


def test_sequential_history_is_valid() -> None:
    result = check_register(
        history(
            r(0, INVOKE),
            r(0, OK, None),
            w(0, INVOKE, 1),
            w(0, OK, 1),
            cas(1, INVOKE, 1, 2),
            cas(1, OK, 1, 2),
            r(0, INVOKE),
            r(0, OK, 2),
        )
    )
    assert result.valid is True
    assert (result.keys_checked, result.operations) == (1, 4)
    assert result.witness is None


@pytest.mark.parametrize("seen", [1, 2])
def test_overlapping_writes_let_a_read_see_either(seen: int) -> None:
    result = check_register(
        history(
            w(0, INVOKE, 1),
            w(1, INVOKE, 2),
            r(2, INVOKE),
            w(0, OK, 1),
            w(1, OK, 2),
            r(2, OK, seen),
        )
    )
    assert result.valid is True


def test_read_concurrent_with_a_write_may_see_the_old_value() -> None:
    result = check_register(
        history(
            w(0, INVOKE, 1), w(0, OK, 1), w(0, INVOKE, 2), r(1, INVOKE), r(1, OK, 1), w(0, OK, 2)
        )
    )
    assert result.valid is True


# --- invalid -------------------------------------------------------------


def test_read_of_a_value_never_written_is_invalid() -> None:
    result = check_register(history(w(0, INVOKE, 1), w(0, OK, 1), r(1, INVOKE), r(1, OK, 7)))
    assert result.valid is False
    assert result.invalid_keys == ("x",)
    assert result.witness is not None
    assert result.witness.blocked == 2
    assert "read -> 7" in result.witness.text


def test_stale_read_after_a_completed_write_is_invalid() -> None:
    ops = history(
        w(0, INVOKE, 1),  # 0
        w(0, OK, 1),  # 1
        w(0, INVOKE, 2),  # 2
        w(0, OK, 2),  # 3
        r(1, INVOKE),  # 4: starts after write 2 is acknowledged
        r(1, OK, 1),  # 5
        w(0, INVOKE, 3),  # 6: after the violation, not part of the witness
        w(0, OK, 3),
    )
    result = check_register(ops)
    assert result.valid is False
    witness = result.witness
    assert witness is not None
    assert witness.key == "x"
    assert witness.blocked == 4
    assert witness.prefix == (0, 2, 4)
    assert witness.linearized == (0, 2)
    assert witness.state == 2
    assert "op 4 (process 1 read -> 1, ok at 5)" in witness.text


def test_two_reads_in_an_order_no_linearization_allows() -> None:
    # Write 2 spans both reads; the first read already sees 2, so a later
    # read cannot see 1 again.
    result = check_register(
        history(
            w(0, INVOKE, 1),
            w(0, OK, 1),
            w(0, INVOKE, 2),
            r(1, INVOKE),
            r(1, OK, 2),
            r(2, INVOKE),
            r(2, OK, 1),
            w(0, OK, 2),
        )
    )
    assert result.valid is False
    assert result.witness is not None and result.witness.blocked == 5


def test_the_same_reads_overlapping_are_valid() -> None:
    # Control for the test above: overlapping reads may be ordered either way.
    result = check_register(
        history(
            w(0, INVOKE, 1),
            w(0, OK, 1),
            w(0, INVOKE, 2),
            r(1, INVOKE),
            r(2, INVOKE),
            r(1, OK, 2),
            r(2, OK, 1),
            w(0, OK, 2),
        )
    )
    assert result.valid is True


def test_cas_that_succeeded_from_a_value_the_register_could_not_hold() -> None:
    result = check_register(
        history(w(0, INVOKE, 1), w(0, OK, 1), cas(1, INVOKE, 3, 4), cas(1, OK, 3, 4))
    )
    assert result.valid is False
    assert result.witness is not None and "cas 3 -> 4" in result.witness.text


def test_acknowledged_write_lost() -> None:
    result = check_register(history(w(0, INVOKE, 1), w(0, OK, 1), r(1, INVOKE), r(1, OK, None)))
    assert result.valid is False


def test_two_cas_from_the_same_value_cannot_both_succeed() -> None:
    result = check_register(
        history(
            w(0, INVOKE, 0),
            w(0, OK, 0),
            cas(1, INVOKE, 0, 1),
            cas(2, INVOKE, 0, 2),
            cas(1, OK, 0, 1),
            cas(2, OK, 0, 2),
        )
    )
    assert result.valid is False


def test_a_refused_cas_did_not_happen() -> None:
    result = check_register(
        history(
            w(0, INVOKE, 0),
            w(0, OK, 0),
            cas(1, INVOKE, 0, 1),
            cas(1, FAIL, 0, 1),
            r(2, INVOKE),
            r(2, OK, 0),
        )
    )
    assert result.valid is True
    assert (
        check_register(
            history(
                w(0, INVOKE, 0),
                w(0, OK, 0),
                cas(1, INVOKE, 0, 1),
                cas(1, FAIL, 0, 1),
                r(2, INVOKE),
                r(2, OK, 1),
            )
        ).valid
        is False
    )


# --- unknown outcomes ----------------------------------------------------


def test_info_write_whose_value_is_read_later_happened() -> None:
    result = check_register(
        history(
            w(0, INVOKE, 5), w(0, INFO, 5), r(1, INVOKE), r(1, OK, 5), r(1, INVOKE), r(1, OK, 5)
        )
    )
    assert result.valid is True


def test_info_write_may_take_effect_long_after_its_invocation() -> None:
    # Unknown outcome: its completion is at +infinity, so it can land after
    # the later write 2.
    result = check_register(
        history(
            w(0, INVOKE, 5),
            w(0, INFO, 5),
            w(1, INVOKE, 2),
            w(1, OK, 2),
            r(1, INVOKE),
            r(1, OK, 2),
            r(1, INVOKE),
            r(1, OK, 5),
        )
    )
    assert result.valid is True


def test_info_write_never_read_is_valid() -> None:
    result = check_register(history(w(0, INVOKE, 5), w(0, INFO, 5), r(1, INVOKE), r(1, OK, None)))
    assert result.valid is True


def test_write_that_never_completed_is_like_info() -> None:
    result = check_register(history(w(0, INVOKE, 5), r(1, INVOKE), r(1, OK, 5)))
    assert result.valid is True


def test_info_write_read_before_its_invocation_is_invalid() -> None:
    result = check_register(history(r(1, INVOKE), r(1, OK, 5), w(0, INVOKE, 5), w(0, INFO, 5)))
    assert result.valid is False
    assert result.witness is not None and result.witness.blocked == 0


def test_info_write_cannot_be_undone() -> None:
    # Once its value is seen it happened; a later read of the old value is stale.
    result = check_register(
        history(
            w(1, INVOKE, 1),
            w(1, OK, 1),
            w(0, INVOKE, 5),
            w(0, INFO, 5),
            r(2, INVOKE),
            r(2, OK, 5),
            r(2, INVOKE),
            r(2, OK, 1),
        )
    )
    assert result.valid is False


def test_failed_write_whose_value_is_read_is_invalid() -> None:
    result = check_register(history(w(0, INVOKE, 5), w(0, FAIL, 5), r(1, INVOKE), r(1, OK, 5)))
    assert result.valid is False


def test_failed_cas_whose_value_is_read_is_invalid() -> None:
    result = check_register(
        history(
            w(0, INVOKE, 0),
            w(0, OK, 0),
            cas(0, INVOKE, 0, 5),
            cas(0, FAIL, 0, 5),
            r(1, INVOKE),
            r(1, OK, 5),
        )
    )
    assert result.valid is False


def test_info_cas_happens_only_if_its_expected_value_was_there() -> None:
    base = [w(0, INVOKE, 0), w(0, OK, 0), cas(1, INVOKE, 0, 5), cas(1, INFO, 0, 5)]
    assert check_register(history(*base, r(2, INVOKE), r(2, OK, 5))).valid is True
    wrong = [w(0, INVOKE, 3), w(0, OK, 3), cas(1, INVOKE, 0, 5), cas(1, INFO, 0, 5)]
    assert check_register(history(*wrong, r(2, INVOKE), r(2, OK, 5))).valid is False


def test_info_read_constrains_nothing() -> None:
    result = check_register(history(w(0, INVOKE, 1), w(0, OK, 1), r(1, INVOKE), r(1, INFO, 99)))
    assert result.valid is True
    assert result.operations == 2


# --- keys ----------------------------------------------------------------


def test_keys_are_independent_registers() -> None:
    # As one register this would be a lost write; per key it is fine.
    ops = history(w(0, INVOKE, 1, key="a"), w(0, OK, 1, key="a"), r(1, INVOKE, key="b"))
    ops += history(r(1, OK, None, key="b"))
    ops = [dataclasses.replace(op, index=i) for i, op in enumerate(ops)]
    result = check_register(ops)
    assert result.valid is True
    assert result.keys_checked == 2


def test_only_the_broken_key_is_reported() -> None:
    ops = history(
        w(0, INVOKE, 1, key="a"),
        w(0, OK, 1, key="a"),
        w(0, INVOKE, 1, key="b"),
        w(0, OK, 1, key="b"),
        r(1, INVOKE, key="a"),
        r(1, OK, 1, key="a"),
        r(1, INVOKE, key="b"),
        r(1, OK, 2, key="b"),
    )
    result = check_register(ops)
    assert result.valid is False
    assert result.invalid_keys == ("b",)
    assert result.witness is not None and result.witness.key == "b"
    assert result.witness.prefix == (2, 6)


def test_nemesis_ops_are_ignored_and_bad_shapes_refused() -> None:
    ops = history((-1, INFO, "partition", None), w(0, INVOKE, 1), w(0, OK, 1))
    assert check_register(ops).valid is True
    with pytest.raises(HistoryError, match="not a register operation"):
        check_register(history((0, INVOKE, "transfer", {}), (0, OK, "transfer", {})))
    with pytest.raises(HistoryError, match=r"\[key, \[expected, new\]\]"):
        check_register(history((0, INVOKE, "cas", ["x", 1]), (0, OK, "cas", ["x", 1])))


# --- budget --------------------------------------------------------------


def test_budget_exceeded_gives_unknown() -> None:
    ops = history(w(0, INVOKE, 1), w(0, OK, 1), w(0, INVOKE, 2), w(0, OK, 2))
    assert check_register(ops).valid is True
    result = check_register(ops, max_states=1)
    assert result.valid is None
    assert result.unknown_keys == ("x",)
    assert "max_states=1" in result.explanation


def test_an_invalid_key_wins_over_an_unknown_one() -> None:
    ops = history(
        w(0, INVOKE, 1, key="a"),
        w(0, OK, 1, key="a"),
        w(0, INVOKE, 2, key="a"),
        w(0, OK, 2, key="a"),
        r(1, INVOKE, key="b"),
        r(1, OK, 3, key="b"),
    )
    result = check_register(ops, max_states=1)
    assert result.valid is False
    assert (result.invalid_keys, result.unknown_keys) == (("b",), ("a",))


# --- simulated runs ------------------------------------------------------


@dataclasses.dataclass
class _Pending:
    f: str
    key: Any
    value: Any
    applied: bool = False
    result: Any = None


def simulate(
    rng: random.Random, steps: int, processes: int, keys: int, info_rate: float
) -> list[Op]:
    """A history of a real (atomic) register driven by concurrent processes.

    Each operation takes effect at one moment between its invoke and its
    completion; some completions are recorded as info (whether or not the
    operation took effect), some pending operations never complete.
    """
    recorder = Recorder()
    registers: dict[Any, Any] = {}
    pids = list(range(processes))
    next_pid = processes
    pending: dict[int, _Pending] = {}
    for _ in range(steps):
        slot = rng.randrange(processes)
        pid = pids[slot]
        op = pending.get(slot)
        if op is None:
            key = f"k{rng.randrange(keys)}"
            f = rng.choice(["read", "write", "cas"])
            if f == "read":
                value: Any = [key, None]
            elif f == "write":
                value = [key, rng.randrange(5)]
            else:
                value = [key, [rng.choice([None, 0, 1, 2, 3, 4]), rng.randrange(5)]]
            pending[slot] = _Pending(f, key, value)
            recorder.add(pid, INVOKE, f, value, 0.0)
            continue
        if not op.applied and rng.random() < 0.5:
            _apply(op, registers)
            continue
        if rng.random() < info_rate:
            # Unknown outcome, whether it took effect or not.
            recorder.add(pid, INFO, op.f, op.value, 0.0, "timeout")
            pids[slot], next_pid = next_pid, next_pid + 1
        else:
            if not op.applied:
                if op.f != "read" and rng.random() < 0.3:
                    recorder.add(pid, FAIL, op.f, op.value, 0.0, "conflict")
                    del pending[slot]
                    continue
                _apply(op, registers)
            if op.f == "read":
                recorder.add(pid, OK, "read", [op.key, op.result], 0.0)
            elif op.result:
                recorder.add(pid, OK, op.f, op.value, 0.0)
            else:
                recorder.add(pid, FAIL, op.f, op.value, 0.0, "cas refused")
        del pending[slot]
    return recorder.ops


def _apply(op: _Pending, registers: dict[Any, Any]) -> None:
    current = registers.get(op.key)
    if op.f == "read":
        op.result = current
    elif op.f == "write":
        registers[op.key] = op.value[1]
        op.result = True
    else:
        expected, new = op.value[1]
        op.result = current == expected
        if op.result:
            registers[op.key] = new
    op.applied = True


simulations = st.builds(
    simulate,
    st.randoms(use_true_random=False),
    st.integers(1, 60),
    st.integers(1, 5),
    st.integers(1, 3),
    st.sampled_from([0.0, 0.1, 0.3]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(simulations, st.randoms(use_true_random=False))
def test_simulated_register_is_linearizable_until_a_read_is_corrupted(
    ops: list[Op], rng: random.Random
) -> None:
    assert check_register(ops).valid is True
    reads = [op for op in ops if op.type == OK and op.f == "read"]
    assume(reads)
    victim = rng.choice(reads)
    corrupted = [
        dataclasses.replace(op, value=[op.value[0], "never written"]) if op is victim else op
        for op in ops
    ]
    result = check_register(corrupted)
    assert result.valid is False
    invoked = next(o.invoke.index for o in pair(corrupted) if o.complete is corrupted[victim.index])
    assert result.witness is not None and result.witness.blocked == invoked


# --- a brute-force oracle ------------------------------------------------


def brute_force(ops: list[Op]) -> bool:
    """Every ordering of every subset of optional ops, checked one by one."""
    for key in {op.value[0] for op in ops}:
        entries = []
        for o in pair(ops):
            if o.invoke.value[0] != key or o.type == FAIL or (o.type == INFO and o.f == "read"):
                continue
            end = o.complete.index if o.complete is not None and o.type == OK else float("inf")
            entries.append((o, o.invoke.index, end))
        required = [e for e in entries if e[2] != float("inf")]
        optional = [e for e in entries if e[2] == float("inf")]
        if not any(
            _sequence_ok(order)
            for size in range(len(optional) + 1)
            for chosen in itertools.combinations(optional, size)
            for order in itertools.permutations(required + list(chosen))
        ):
            return False
    return True


def _sequence_ok(order: tuple[tuple[Any, int, float], ...]) -> bool:
    for i, (_, start, _) in enumerate(order):
        if any(end < start for _, _, end in order[i + 1 :]):
            return False  # a later op completed before this one began
    state: Any = None
    for operation, _, _ in order:
        if operation.f == "read":
            if operation.value[1] != state:
                return False
        elif operation.f == "write":
            state = operation.value[1]
        else:
            expected, new = operation.value[1]
            if state != expected:
                return False
            state = new
    return True


@settings(max_examples=300, deadline=None)
@given(
    st.builds(
        simulate,
        st.randoms(use_true_random=False),
        st.integers(1, 14),
        st.integers(1, 3),
        st.just(1),
        st.sampled_from([0.0, 0.3]),
    ),
    st.randoms(use_true_random=False),
)
def test_agrees_with_brute_force_on_small_mutated_histories(
    ops: list[Op], rng: random.Random
) -> None:
    # Mutations that may or may not break linearizability: a read's value,
    # or an outcome flipped between ok, fail and info.
    completions = [op for op in ops if op.type != INVOKE]
    assume(len(pair(ops)) <= 7)
    if completions:
        victim = rng.choice(completions)
        if victim.f == "read" and victim.type == OK:
            changed = dataclasses.replace(victim, value=[victim.value[0], rng.randrange(5)])
        elif victim.type != INFO:
            changed = dataclasses.replace(victim, type=rng.choice([OK, FAIL]))
        else:
            changed = victim
        ops = [changed if op is victim else op for op in ops]
    assert check_register(ops).valid is brute_force(ops)


# --- cost ----------------------------------------------------------------


def test_a_chaos_sized_run_checks_quickly() -> None:
    ops = simulate(random.Random(7), 6_000, processes=5, keys=10, info_rate=0.02)
    operations = len(pair(ops))
    assert operations >= 1_900
    started = time.perf_counter()
    result = check_register(ops)
    elapsed = time.perf_counter() - started
    assert result.valid is True
    assert result.keys_checked == 10
    assert elapsed < 2.0, f"{operations} operations took {elapsed:.2f} s"
