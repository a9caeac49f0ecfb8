"""The bank checker: transfers between accounts never create or destroy money.

Workload (see `chaos.history`): ``transfer`` moves ``{"from", "to", "amount"}``;
``read`` returns ``{account: balance}``; a ``final-read`` is a read the
harness makes once every client has stopped.

Rules, for a history of a run that started from balances `initial`:

1. Every ok read names only the known accounts, all of them, its balances sum
   to `total` ("wrong total"), and none is negative unless allowed.
2. The final read (the last ok ``final-read``, else the last ok ``read``
   invoked after every transfer completed) equals `initial`, plus every ok
   transfer, plus *some subset* of the info transfers (their outcome is
   unknown, so each may or may not have happened), and no fail transfer.
   When no subset explains it, the checker names what does: ok transfers
   that did not happen ("lost transfer"), or a change no ok or info
   transfer made ("phantom transfer"; the fail transfers that would explain
   it are named when there are some).

Cost: rule 2 is a subset-sum over balance vectors. The search keeps the set
of distinct reachable vectors (transfers between the same accounts collapse),
so it is at most ``max_states`` vectors times the info transfers; past that
bound the verdict is None ("unknown") with the reason, never a guess.

Operations are named by the history index of their invocation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chaos.history import FAIL, INFO, OK, Op, Operation, pair

TRANSFER, READ, FINAL_READ = "transfer", "read", "final-read"
MAX_STATES = 100_000
"""Default bound on the distinct balance vectors the subset search keeps."""

Vector = tuple[int, ...]


@dataclass(frozen=True)
class Anomaly:
    kind: str
    """wrong total, negative balance, unknown account, missing account,
    lost transfer or phantom transfer."""
    explanation: str
    ops: tuple[int, ...]
    """History indices of the invocations involved."""


@dataclass(frozen=True)
class BankResult:
    valid: bool | None
    """True: no anomaly; False: at least one; None: none found, but the
    final balances could not be decided (see `reason`)."""
    reads_checked: int
    transfers_ok: int
    transfers_fail: int
    transfers_info: int
    anomalies: tuple[Anomaly, ...]
    final_read: int | None
    """The invocation index of the final read, None when there is none."""
    applied_info_transfers: tuple[int, ...] | None
    """The info transfers that explain the final balances, None if none do
    (or the search did not finish)."""
    reason: str | None = None
    """Why `valid` is None."""


def check_bank(
    history: Sequence[Op],
    accounts: Sequence[str],
    total: int,
    initial: Mapping[str, int],
    *,
    allow_negative: bool = False,
    max_states: int = MAX_STATES,
) -> BankResult:
    """Check a bank history against the rules of the module docstring.

    Args:
        history: the ops of the run, in order.
        accounts: every account of the bank.
        total: what the balances of every read sum to.
        initial: the balances before the first transfer.
        allow_negative: whether a negative balance is legal.
        max_states: bound of the subset search over info transfers.

    Returns:
        The verdict with its counts and anomalies.

    Raises:
        HistoryError: the history is not well formed.
        ValueError: `initial` names other accounts than `accounts`, or does
            not sum to `total`.
    """
    if set(initial) != set(accounts):
        raise ValueError(f"initial balances name {sorted(initial)}, the bank {sorted(accounts)}")
    if sum(initial.values()) != total:
        raise ValueError(f"initial balances sum to {sum(initial.values())}, not {total}")
    operations = pair(history)
    transfers = [o for o in operations if o.f == TRANSFER]
    reads = [o for o in operations if o.f in (READ, FINAL_READ) and o.type == OK]
    anomalies: list[Anomaly] = []
    for read in reads:
        anomalies.extend(_read_anomalies(read, accounts, total, allow_negative))
    for transfer in transfers:
        named = {transfer.invoke.value["from"], transfer.invoke.value["to"]}
        if not named <= set(accounts):
            anomalies.append(
                Anomaly(
                    "unknown account",
                    f"transfer {transfer.invoke.value} names an account outside the bank",
                    (transfer.invoke.index,),
                )
            )
    final = _final_read(transfers, reads)
    applied: tuple[int, ...] | None = None
    reason: str | None = None
    if final is None:
        reason = "no ok read after every transfer completed: final balances unchecked"
    else:
        applied, final_anomaly, reason = _check_final(
            final, transfers, accounts, initial, max_states
        )
        if final_anomaly is not None:
            anomalies.append(final_anomaly)
    if anomalies:
        valid: bool | None = False
        reason = None
    else:
        valid = True if reason is None else None
    return BankResult(
        valid=valid,
        reads_checked=len(reads),
        transfers_ok=sum(1 for t in transfers if t.type == OK),
        transfers_fail=sum(1 for t in transfers if t.type == FAIL),
        transfers_info=sum(1 for t in transfers if t.type == INFO),
        anomalies=tuple(anomalies),
        final_read=None if final is None else final.invoke.index,
        applied_info_transfers=applied,
        reason=reason,
    )


def _read_anomalies(
    read: Operation, accounts: Sequence[str], total: int, allow_negative: bool
) -> list[Anomaly]:
    balances: Mapping[str, Any] = read.value
    at = (read.invoke.index,)
    found: list[Anomaly] = []
    unknown = sorted(set(balances) - set(accounts))
    if unknown:
        found.append(Anomaly("unknown account", f"read {balances} names {unknown}", at))
    missing = [a for a in accounts if a not in balances]
    if missing:
        found.append(Anomaly("missing account", f"read {balances} lacks {missing}", at))
    read_total = sum(balances.values())
    if read_total != total:
        found.append(
            Anomaly("wrong total", f"read {balances} sums to {read_total}, not {total}", at)
        )
    negative = {a: b for a, b in balances.items() if b < 0}
    if negative and not allow_negative:
        found.append(Anomaly("negative balance", f"read {balances}: {negative} below 0", at))
    return found


def _final_read(transfers: list[Operation], reads: list[Operation]) -> Operation | None:
    marked = [r for r in reads if r.f == FINAL_READ]
    if marked:
        return marked[-1]
    last_completion = max(
        (t.complete.index for t in transfers if t.complete is not None), default=-1
    )
    after = [r for r in reads if r.invoke.index > last_completion]
    return after[-1] if after else None


def _check_final(
    final: Operation,
    transfers: list[Operation],
    accounts: Sequence[str],
    initial: Mapping[str, int],
    max_states: int,
) -> tuple[tuple[int, ...] | None, Anomaly | None, str | None]:
    """(applied info transfers, anomaly, reason for unknown) of the final read."""
    bank = list(accounts)
    for t in transfers:
        bank.extend(a for a in (t.invoke.value["from"], t.invoke.value["to"]) if a not in bank)
    bank.extend(a for a in final.value if a not in bank)
    acknowledged = _vector(bank, initial)
    by_type: dict[str, list[tuple[int, Vector]]] = {OK: [], FAIL: [], INFO: []}
    for t in transfers:
        vector = _transfer_vector(bank, t.invoke.value)
        by_type[t.type].append((t.invoke.index, vector))
        if t.type == OK:
            acknowledged = _add(acknowledged, vector)
    observed = _vector(bank, final.value)
    difference = _add(observed, _negate(acknowledged))
    at = final.invoke.index
    subset = _subset_with_sum(difference, by_type[INFO], max_states)
    if isinstance(subset, tuple):
        return subset, None, None
    if subset is _BOUND_HIT:
        return (
            None,
            None,
            f"the search for info transfers that explain final read {at} passed "
            f"{max_states} balance vectors ({len(by_type[INFO])} info transfers)",
        )
    changed = {a: d for a, d in zip(bank, difference, strict=True) if d}
    # Info transfers go first, so the first answer drops as few ok transfers
    # (or needs as few fail transfers) as the order allows.
    undone = [(i, _negate(v)) for i, v in by_type[OK]]
    lost = _subset_with_sum(difference, by_type[INFO] + undone, max_states)
    if isinstance(lost, tuple):
        ok_indices = {i for i, _ in by_type[OK]}
        named = tuple(i for i in lost if i in ok_indices)
        return (
            None,
            Anomaly(
                "lost transfer",
                f"final read {at} differs from the acknowledged balances by {changed}: "
                f"ok transfers {list(named)} did not take effect",
                (at, *named),
            ),
            None,
        )
    phantom = _subset_with_sum(difference, by_type[INFO] + by_type[FAIL], max_states)
    if isinstance(phantom, tuple):
        fail_indices = {i for i, _ in by_type[FAIL]}
        named = tuple(i for i in phantom if i in fail_indices)
        explanation = f"fail transfers {list(named)} took effect"
    else:
        named = ()
        explanation = "no combination of invoked transfers makes that change"
    return (
        None,
        Anomaly(
            "phantom transfer",
            f"final read {at} differs from the acknowledged balances by {changed}: " + explanation,
            (at, *named),
        ),
        None,
    )


class _Bound:
    pass


_BOUND_HIT = _Bound()


def _subset_with_sum(
    target: Vector, items: list[tuple[int, Vector]], max_states: int
) -> tuple[int, ...] | _Bound | None:
    """The names of some items whose vectors sum to `target`.

    Returns None when no subset does, `_BOUND_HIT` when more than
    `max_states` distinct sums were reached before an answer.
    """
    zero = tuple(0 for _ in target)
    # Each reachable sum remembers the sum it came from and the item added,
    # the first time it was reached; items extend only earlier sums, so a
    # chain never uses an item twice.
    reached: dict[Vector, tuple[Vector, int] | None] = {zero: None}
    for name, vector in items:
        if target in reached:
            break
        for total in list(reached):
            extended = _add(total, vector)
            if extended not in reached:
                reached[extended] = (total, name)
                if len(reached) > max_states and target not in reached:
                    return _BOUND_HIT
    if target not in reached:
        return None
    chosen: list[int] = []
    step = reached[target]
    while step is not None:
        chosen.append(step[1])
        step = reached[step[0]]
    return tuple(sorted(chosen))


def _vector(bank: list[str], balances: Mapping[str, int]) -> Vector:
    return tuple(balances.get(a, 0) for a in bank)


def _transfer_vector(bank: list[str], transfer: Mapping[str, Any]) -> Vector:
    amount = transfer["amount"]
    return tuple(
        (amount if a == transfer["to"] else 0) - (amount if a == transfer["from"] else 0)
        for a in bank
    )


def _add(left: Vector, right: Vector) -> Vector:
    return tuple(x + y for x, y in zip(left, right, strict=True))


def _negate(vector: Vector) -> Vector:
    return tuple(-x for x in vector)
