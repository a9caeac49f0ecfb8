"""The bank and set checkers: valid histories pass, each anomaly is named."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chaos.checkers.bank import check_bank
from chaos.checkers.sets import check_set
from chaos.history import FAIL, INFO, INVOKE, OK, HistoryError, Op, Recorder

ACCOUNTS = ["a", "b", "c"]
INITIAL = {"a": 10, "b": 10, "c": 10}
TOTAL = 30


class Run:
    """Writes a history one client operation at a time; returns invocation indices."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.next_process = 0

    def op(self, f: str, value: Any, outcome: str, result: Any = None) -> int:
        process = self.next_process
        self.next_process += 1  # one process per operation keeps histories simple
        invoked = self.recorder.add(process, INVOKE, f, value, 0.0)
        if outcome == "pending":
            return invoked.index
        done = result if outcome == OK else value
        self.recorder.add(process, outcome, f, done, 0.0)
        return invoked.index

    def transfer(self, source: str, to: str, amount: int, outcome: str = OK) -> int:
        return self.op("transfer", {"from": source, "to": to, "amount": amount}, outcome)

    def read(self, balances: dict[str, int], f: str = "read") -> int:
        return self.op(f, None, OK, balances)

    @property
    def history(self) -> list[Op]:
        return self.recorder.ops


def bank(run: Run, **options: Any) -> Any:
    return check_bank(run.history, ACCOUNTS, TOTAL, INITIAL, **options)


# --- bank ---------------------------------------------------------------------------


def test_bank_valid_with_info_transfers_that_happened_and_did_not() -> None:
    run = Run()
    run.transfer("a", "b", 3)
    run.read({"a": 7, "b": 13, "c": 10})
    happened = run.transfer("b", "c", 5, INFO)
    run.transfer("c", "a", 4, INFO)  # did not happen
    run.transfer("a", "c", 100, FAIL)
    final = run.read({"a": 7, "b": 8, "c": 15})
    result = bank(run)
    assert result.valid is True, result.anomalies
    assert result.anomalies == ()
    assert result.final_read == final
    assert result.applied_info_transfers == (happened,)
    assert (result.transfers_ok, result.transfers_fail, result.transfers_info) == (1, 1, 2)
    assert result.reads_checked == 2


def test_bank_subset_search_finds_the_explaining_subset_among_many() -> None:
    run = Run()
    amounts = [1, 2, 4, 8, 16, 32]
    named = [run.transfer("a", "b", n, INFO) for n in amounts]
    for n in amounts:
        run.transfer("b", "c", n * 64, INFO)  # too large to be part of the answer
    # 1 + 4 + 32 = 37 moved from a to b: only {1, 4, 32} of the first six explain it.
    balances = {"a": 10 - 37, "b": 10 + 37, "c": 10}
    run.read(balances, f="final-read")
    result = bank(run, allow_negative=True)
    assert result.valid is True, result.anomalies
    assert result.applied_info_transfers == (named[0], named[2], named[5])


def test_bank_final_read_marked_final_read_wins() -> None:
    run = Run()
    run.transfer("a", "b", 1)
    marked = run.read({"a": 10, "b": 10, "c": 10}, f="final-read")
    run.read({"a": 9, "b": 11, "c": 10})  # later and right, but not the final read
    result = bank(run)
    assert result.final_read == marked
    assert result.valid is False
    assert [a.kind for a in result.anomalies] == ["lost transfer"]


def test_bank_wrong_total() -> None:
    run = Run()
    bad = run.read({"a": 10, "b": 10, "c": 11})
    result = bank(run)
    assert result.valid is False
    kinds = {a.kind: a for a in result.anomalies}
    assert "wrong total" in kinds
    assert kinds["wrong total"].ops == (bad,)


def test_bank_negative_balance_unless_allowed() -> None:
    run = Run()
    run.transfer("a", "b", 15)
    run.read({"a": -5, "b": 25, "c": 10})
    assert [a.kind for a in bank(run).anomalies] == ["negative balance"]
    assert bank(run, allow_negative=True).valid is True


def test_bank_unknown_and_missing_accounts() -> None:
    run = Run()
    run.read({"a": 10, "b": 10, "z": 10})
    kinds = {a.kind for a in bank(run).anomalies}
    assert {"unknown account", "missing account"} <= kinds


def test_bank_lost_transfer_names_it() -> None:
    run = Run()
    kept = run.transfer("a", "b", 2)
    lost = run.transfer("b", "c", 7)
    run.transfer("c", "a", 1, INFO)
    final = run.read({"a": 8, "b": 12, "c": 10})
    result = bank(run)
    assert result.valid is False
    [anomaly] = result.anomalies
    assert anomaly.kind == "lost transfer"
    assert anomaly.ops == (final, lost)
    assert kept not in anomaly.ops


def test_bank_phantom_transfer_from_a_failed_transfer() -> None:
    run = Run()
    failed = run.transfer("a", "c", 6, FAIL)
    final = run.read({"a": 4, "b": 10, "c": 16})
    [anomaly] = bank(run).anomalies
    assert anomaly.kind == "phantom transfer"
    assert anomaly.ops == (final, failed)


def test_bank_phantom_transfer_nobody_invoked() -> None:
    run = Run()
    run.transfer("a", "b", 1)
    final = run.read({"a": 6, "b": 11, "c": 13})
    [anomaly] = bank(run).anomalies
    assert anomaly.kind == "phantom transfer"
    assert anomaly.ops == (final,)
    assert "no combination" in anomaly.explanation


def test_bank_search_bound_hit_is_unknown_with_a_reason() -> None:
    run = Run()
    for n in range(12):
        run.transfer("a", "b", 2**n, INFO)
    run.read({"a": 10 - 4095, "b": 10 + 4095, "c": 10}, f="final-read")
    bounded = bank(run, allow_negative=True, max_states=100)
    assert bounded.valid is None
    assert bounded.reason is not None and "100" in bounded.reason
    assert bounded.applied_info_transfers is None
    assert bank(run, allow_negative=True).valid is True


def test_bank_without_final_read_is_unknown() -> None:
    run = Run()
    run.read({"a": 10, "b": 10, "c": 10})
    run.transfer("a", "b", 1)
    result = bank(run)
    assert result.valid is None
    assert result.final_read is None
    assert result.reason is not None


def test_bank_rejects_inconsistent_initial_balances() -> None:
    with pytest.raises(ValueError, match="sum"):
        check_bank([], ACCOUNTS, 31, INITIAL)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(ACCOUNTS),
            st.sampled_from(ACCOUNTS),
            st.integers(1, 5),
            st.sampled_from([OK, FAIL, INFO, "pending"]),
            st.booleans(),
        ),
        max_size=12,
    )
)
def test_bank_a_faithful_bank_always_passes(transfers: list[Any]) -> None:
    # The model applies ok transfers, and info ones when the coin says so.
    run = Run()
    balances = dict(INITIAL)
    for source, to, amount, outcome, happened in transfers:
        run.transfer(source, to, amount, outcome)
        if outcome == OK or (outcome in (INFO, "pending") and happened):
            balances[source] -= amount
            balances[to] += amount
        run.read(dict(balances))
    run.read(dict(balances), f="final-read")
    result = bank(run, allow_negative=True)
    assert result.valid is True, result.anomalies


# --- set ----------------------------------------------------------------------------


def test_set_valid_with_info_adds_present_and_absent() -> None:
    run = Run()
    run.op("add", 1, OK)
    run.op("read", None, OK, [1])
    run.op("add", 2, INFO)  # happened
    run.op("add", 3, INFO)  # did not
    run.op("add", 4, "pending")
    run.op("add", 5, FAIL)
    final = run.op("read", None, OK, [1, 2])
    result = check_set(run.history)
    assert result.valid is True, result.anomalies
    assert result.final_read == final
    assert result.recovered == (2,)
    assert (result.adds_ok, result.adds_fail, result.adds_info) == (1, 1, 3)
    assert result.reads_checked == 2


def test_set_lost_add() -> None:
    run = Run()
    run.op("add", 1, OK)
    lost = run.op("add", 2, OK)
    final = run.op("read", None, OK, [1])
    result = check_set(run.history)
    assert result.valid is False
    assert result.lost == (2,)
    [anomaly] = result.anomalies
    assert (anomaly.kind, anomaly.ops) == ("lost", (final, lost))


def test_set_unexpected_element() -> None:
    run = Run()
    run.op("add", 1, OK)
    run.op("read", None, OK, [1, 99])
    result = check_set(run.history)
    assert result.valid is False
    assert result.unexpected == (99,)
    assert [a.kind for a in result.anomalies] == ["unexpected"]


def test_set_failed_add_visible() -> None:
    run = Run()
    failed = run.op("add", 7, FAIL)
    read = run.op("read", None, OK, [7])
    [anomaly] = check_set(run.history).anomalies
    assert (anomaly.kind, anomaly.ops) == ("failed add visible", (read, failed))


def test_set_stale_intermediate_read() -> None:
    run = Run()
    acknowledged = run.op("add", 1, OK)
    stale = run.op("read", None, OK, [])
    run.op("read", None, OK, [1])
    result = check_set(run.history)
    assert result.valid is False
    [anomaly] = result.anomalies
    assert (anomaly.kind, anomaly.ops) == ("stale read", (stale, acknowledged))


def test_set_read_concurrent_with_an_add_may_miss_it() -> None:
    # The read is invoked before the add is acknowledged: missing it is legal.
    run = Run()
    run.recorder.add(0, INVOKE, "add", 1, 0.0)
    run.recorder.add(1, INVOKE, "read", None, 0.0)
    run.recorder.add(0, OK, "add", 1, 0.0)
    run.recorder.add(1, OK, "read", [], 0.0)
    run.next_process = 2
    run.op("read", None, OK, [1])
    assert check_set(run.history).valid is True


def test_set_read_concurrent_with_the_last_add_is_not_final() -> None:
    run = Run()
    run.recorder.add(0, INVOKE, "add", 1, 0.0)
    run.recorder.add(1, INVOKE, "read", None, 0.0)
    run.recorder.add(0, OK, "add", 1, 0.0)
    run.recorder.add(1, OK, "read", [], 0.0)
    result = check_set(run.history)
    assert result.final_read is None
    assert result.valid is None


def test_set_without_final_read_is_unknown() -> None:
    run = Run()
    run.op("read", None, OK, [])
    run.op("add", 1, OK)
    result = check_set(run.history)
    assert result.valid is None
    assert result.reason is not None


def test_set_rejects_an_element_added_twice() -> None:
    run = Run()
    run.op("add", 1, OK)
    run.op("add", 1, OK)
    with pytest.raises(HistoryError, match="again"):
        check_set(run.history)
