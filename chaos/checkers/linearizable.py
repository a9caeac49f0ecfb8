"""Linearizability of the register workload: per-key read, write and cas.

The model
    Each key is an independent register that starts at None. ``write v``
    sets v; ``cas [expected, new]`` sets new if the register holds expected
    and is refused otherwise; ``read`` returns what it holds. Keys are
    checked separately (a history is linearizable iff each key's
    sub-history is: linearizability is compositional).

What each outcome means (chaos/history.py)
    - ``ok``: the operation took effect once, at some point between its
      invocation and its completion; a read returned `value`, a cas found
      `expected`.
    - ``fail``: it never took effect; the checker drops it.
    - ``info`` (or no completion): it took effect at some point after its
      invocation, or never. Its completion is at +infinity and it is
      *optional*: the checker may linearize it or leave it out. A read of
      unknown outcome constrains nothing and is dropped.

Real time
    Positions in the history, never wall-clock floats: A precedes B iff A's
    completion index < B's invocation index. Any order of concurrent
    operations is allowed.

The search (Wing & Gong, with Lowe's memoization as in Porcupine)
    The key's invocations and completions form a doubly linked list in
    history order. Walking it from the head, an invocation whose operation
    the model accepts in the current state is *lifted* (its two entries
    unlinked, the operation pushed on a stack) and the walk restarts at the
    head; reaching a completion whose operation is still unlinearized means
    the current partial linearization cannot be extended, so the last lift
    is undone and the walk goes on after it. The history is linearizable
    iff every required (ok) operation gets lifted.

    Memoization: a configuration is (set of lifted operations as a bitmask,
    register value). Lifting into a configuration already in the cache is
    skipped: a cached configuration off the current path was searched
    without success, and one on it cannot recur (bitmasks only grow along
    a path).

Invariants and bounds
    1. The verdict is exact when the search finishes: valid=True comes
       with a linearization, valid=False means none exists.
    2. Cost: at most `max_states` configurations are cached per key, each
       expanded by one walk of the list, so a key costs
       O(max_states * n) steps for n operations; past the bound the key
       is *unknown* and the result is valid=None, never a hang. Valid
       runs of chaos size (2,000 operations, 10 keys, 5 processes, some
       info) cache a few thousand configurations; the costly case is an
       invalid key with many info operations (they stay concurrent with
       everything after them), which can reach the bound (about a second
       at the default).
    3. Unknown outcomes are what makes the search grow (each may or may
       not be in a configuration), so two sound reductions limit them:
       - an info write or cas whose new value no ok read returned and no
         cas expected is dropped before the search: in a linearization
         that includes it, nothing before the next state change observes
         its value, so removing it leaves a linearization;
       - info operations with the same effect (f and argument) are
         linearized in invocation order: once both are invoked they are
         interchangeable, since neither has a completion to respect.

The witness of an invalid key
    Among all dead ends of the search, take the completion at the latest
    history position R; its operation is the one that *could not be
    placed*. The key's operations invoked at or before R form the smallest
    prefix of the history that cannot be linearized (some partial
    linearization reaches every earlier completion, none passes R). The
    witness also holds one deepest partial linearization and the register
    value after it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from chaos.history import FAIL, INFO, HistoryError, Op, Operation, pair

READ, WRITE, CAS = "read", "write", "cas"
DEFAULT_MAX_STATES = 100_000
"""Configurations cached per key before the key is declared unknown."""


@dataclass(frozen=True)
class Witness:
    """Why one key's history is not linearizable (see the module docstring)."""

    key: Any
    prefix: tuple[int, ...]
    """Invocation indices of the smallest prefix that cannot be linearized."""
    blocked: int
    """Invocation index of the operation that could not be placed."""
    linearized: tuple[int, ...]
    """Invocation indices of one deepest partial linearization, in order."""
    state: Any
    """The register value after `linearized`."""
    text: str


@dataclass(frozen=True)
class RegisterResult:
    """The verdict on a register history.

    valid is True (every key linearizable), False (some key is not; the
    first such key has a `witness`) or None (no key is invalid, but the
    search of `unknown_keys` exceeded `max_states`).
    """

    valid: bool | None
    keys_checked: int
    operations: int
    """Client operations of the register workload in the history."""
    invalid_keys: tuple[Any, ...] = ()
    unknown_keys: tuple[Any, ...] = ()
    witness: Witness | None = None
    states_explored: int = 0
    explanation: str = ""


@dataclass(frozen=True)
class _Candidate:
    """One operation as the search sees it."""

    operation: Operation
    f: str
    argument: Any
    """read: the value returned; write: the value; cas: (expected, new)."""
    completed_at: int | None
    """The ok completion's index: it must be linearized before then. None
    (+infinity) for an unknown outcome, which may be linearized or not."""

    @property
    def invoked_at(self) -> int:
        return self.operation.invoke.index

    @property
    def required(self) -> bool:
        return self.completed_at is not None


def frozen(value: Any) -> Hashable:
    """A hashable value equal to the JSON value `value` (lists become tuples)."""
    if isinstance(value, list | tuple):
        return tuple(frozen(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), frozen(v)) for k, v in value.items()))
    return value


def step(state: Hashable, f: str, argument: Any) -> tuple[bool, Hashable]:
    """The register model: whether `f` can take effect in `state`, and the next state."""
    if f == READ:
        return state == argument, state
    if f == WRITE:
        return True, argument
    expected, new = argument
    return state == expected, new


def check_register(history: Sequence[Op], max_states: int = DEFAULT_MAX_STATES) -> RegisterResult:
    """Whether the register operations of `history` are linearizable.

    Args:
        history: the ops of a run, in order (nemesis ops are ignored).
        max_states: configurations each key may cache before the checker
            gives up on that key (valid=None for the whole result unless
            another key is invalid).

    Returns:
        A RegisterResult; for an invalid key, a Witness.

    Raises:
        HistoryError: the history is not well formed, or a register op has
            an unknown f or a value of the wrong shape.
    """
    operations = pair(history)
    by_key: dict[Hashable, list[Operation]] = {}
    originals: dict[Hashable, Any] = {}
    for operation in operations:
        if operation.f not in (READ, WRITE, CAS):
            raise HistoryError(
                f"op {operation.invoke.index}: {operation.f!r} is not a register operation "
                "(read, write or cas)"
            )
        key = frozen(_key_of(operation))
        originals.setdefault(key, operation.invoke.value[0])
        by_key.setdefault(key, []).append(operation)

    invalid: list[Any] = []
    unknown: list[Any] = []
    witness: Witness | None = None
    explored = 0
    for key, key_operations in by_key.items():
        verdict, states, found = _check_key(originals[key], key_operations, max_states)
        explored += states
        if verdict is None:
            unknown.append(originals[key])
        elif not verdict:
            invalid.append(originals[key])
            if witness is None:
                witness = found

    valid: bool | None
    if invalid:
        valid = False
        assert witness is not None
        explanation = witness.text
        if len(invalid) > 1:
            explanation += f" ({len(invalid)} keys are not linearizable: {invalid!r})"
    elif unknown:
        valid = None
        explanation = (
            f"unknown: the search of key(s) {unknown!r} exceeded max_states={max_states} "
            "configurations; raise max_states or shorten the run"
        )
    else:
        valid = True
        explanation = f"all {len(by_key)} keys linearizable ({len(operations)} operations)"
    return RegisterResult(
        valid=valid,
        keys_checked=len(by_key),
        operations=len(operations),
        invalid_keys=tuple(invalid),
        unknown_keys=tuple(unknown),
        witness=witness,
        states_explored=explored,
        explanation=explanation,
    )


def _key_of(operation: Operation) -> Any:
    value = operation.invoke.value
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise HistoryError(
            f"op {operation.invoke.index}: a register value is [key, v], got {value!r}"
        )
    return value[0]


def _candidate(operation: Operation) -> _Candidate | None:
    """The operation as the search sees it, or None when it constrains nothing."""
    complete = operation.complete
    completed_at: int | None = None
    if complete is not None and complete.type == FAIL:
        return None
    if complete is not None and complete.type != INFO:
        completed_at = complete.index
        if operation.f == READ:
            if not isinstance(complete.value, list | tuple) or len(complete.value) != 2:
                raise HistoryError(
                    f"op {complete.index}: an ok read's value is [key, v], got {complete.value!r}"
                )
            return _Candidate(operation, READ, frozen(complete.value[1]), completed_at)
    if operation.f == READ:
        return None
    argument = operation.invoke.value[1]
    if operation.f == CAS:
        if not isinstance(argument, list | tuple) or len(argument) != 2:
            raise HistoryError(
                f"op {operation.invoke.index}: a cas value is [key, [expected, new]], "
                f"got {operation.invoke.value!r}"
            )
        argument = (frozen(argument[0]), frozen(argument[1]))
    else:
        argument = frozen(argument)
    return _Candidate(operation, operation.f, argument, completed_at)


def _observed(candidates: list[_Candidate]) -> set[Hashable]:
    """Values some operation depends on: read results and cas expectations."""
    seen: set[Hashable] = set()
    for candidate in candidates:
        if candidate.f == READ:
            seen.add(candidate.argument)
        elif candidate.f == CAS:
            seen.add(candidate.argument[0])
    return seen


def _check_key(
    key: Any, operations: list[Operation], max_states: int
) -> tuple[bool | None, int, Witness | None]:
    """(verdict, configurations cached, witness if invalid) for one key."""
    candidates = [c for c in map(_candidate, operations) if c is not None]
    observed = _observed(candidates)
    candidates = [
        c
        for c in candidates
        if c.required or (c.argument if c.f == WRITE else c.argument[1]) in observed
    ]
    return _Search(key, candidates).run(max_states)


class _Search:
    """Wing & Gong's search over one key's operations (module docstring).

    Entries 1..n are the invocations and completions in history order,
    linked through `next_entry`/`previous_entry`; entry 0 is the head and
    n + 1 the tail, both never unlinked.
    """

    def __init__(self, key: Any, candidates: list[_Candidate]) -> None:
        self.key = key
        self.candidates = candidates
        events: list[tuple[int, int, bool]] = []  # (history index, candidate, is invocation)
        for number, candidate in enumerate(candidates):
            events.append((candidate.invoked_at, number, True))
            if candidate.completed_at is not None:
                events.append((candidate.completed_at, number, False))
        events.sort()
        size = len(events)
        self.tail = size + 1
        self.next_entry = [*range(1, size + 2), self.tail]
        self.previous_entry = [0, *range(0, size + 1)]
        self.candidate_of = [-1] + [number for _, number, _ in events] + [-1]
        self.is_invocation = [False] + [invoked for _, _, invoked in events] + [False]
        self.position = [-1] + [index for index, _, _ in events] + [-1]
        self.completion_entry = [0] * len(candidates)
        # Optional operations with the same effect are interchangeable once
        # both are invoked (neither ever has to be placed), so they are
        # linearized in invocation order: each waits for its earlier twin.
        self.earlier_twin = [-1] * len(candidates)
        latest: dict[tuple[str, Hashable], int] = {}
        for number, candidate in enumerate(candidates):
            if not candidate.required:
                effect = (candidate.f, candidate.argument)
                self.earlier_twin[number] = latest.get(effect, -1)
                latest[effect] = number
        for entry, (_, number, invoked) in enumerate(events, start=1):
            if not invoked:
                self.completion_entry[number] = entry

    def _unlink(self, entry: int) -> None:
        before, after = self.previous_entry[entry], self.next_entry[entry]
        self.next_entry[before] = after
        self.previous_entry[after] = before

    def _relink(self, entry: int) -> None:
        self.next_entry[self.previous_entry[entry]] = entry
        self.previous_entry[self.next_entry[entry]] = entry

    def run(self, max_states: int) -> tuple[bool | None, int, Witness | None]:
        candidates = self.candidates
        required_left = sum(1 for c in candidates if c.required)
        if required_left == 0:
            return True, 0, None
        cache: set[tuple[int, Hashable]] = set()
        stack: list[tuple[int, Hashable]] = []  # (lifted invocation entry, state before it)
        lifted = 0
        state: Hashable = None
        deepest = -1
        deepest_entry = 0
        deepest_path: tuple[int, ...] = ()
        deepest_state: Hashable = None
        entry = self.next_entry[0]
        while True:
            if self.is_invocation[entry]:
                number = self.candidate_of[entry]
                candidate = candidates[number]
                twin = self.earlier_twin[number]
                accepted, next_state = step(state, candidate.f, candidate.argument)
                if accepted and (twin < 0 or lifted >> twin & 1):
                    configuration = (lifted | (1 << number), next_state)
                    if configuration not in cache:
                        if len(cache) >= max_states:
                            return None, len(cache), None
                        cache.add(configuration)
                        stack.append((entry, state))
                        self._unlink(entry)
                        if candidate.required:
                            self._unlink(self.completion_entry[number])
                            required_left -= 1
                            if required_left == 0:
                                return True, len(cache), None
                        lifted, state = configuration
                        entry = self.next_entry[0]
                        continue
                entry = self.next_entry[entry]
                continue
            # A completion whose operation is not linearized (or the tail,
            # which a search with required operations left never reaches).
            if self.position[entry] > deepest:
                deepest, deepest_entry = self.position[entry], entry
                deepest_path = tuple(self.candidate_of[e] for e, _ in stack)
                deepest_state = state
            if not stack:
                witness = self._witness(deepest, deepest_entry, deepest_path, deepest_state)
                return False, len(cache), witness
            entry, state = stack.pop()
            number = self.candidate_of[entry]
            if candidates[number].required:
                self._relink(self.completion_entry[number])
                required_left += 1
            self._relink(entry)
            lifted &= ~(1 << number)
            entry = self.next_entry[entry]

    def _witness(self, deepest: int, entry: int, path: tuple[int, ...], state: Hashable) -> Witness:
        blocked = self.candidates[self.candidate_of[entry]]
        prefix = tuple(c.invoked_at for c in self.candidates if c.invoked_at <= deepest)
        placed = ", ".join(describe(self.candidates[n]) for n in path) or "nothing"
        text = (
            f"key {self.key!r} is not linearizable: its first {len(prefix)} operations "
            f"(history ops up to {deepest}) have no linearization; "
            f"{describe(blocked)} cannot be placed. One deepest partial linearization: "
            f"[{placed}], after which the register holds {state!r}"
        )
        return Witness(
            key=self.key,
            prefix=prefix,
            blocked=blocked.invoked_at,
            linearized=tuple(self.candidates[n].invoked_at for n in path),
            state=state,
            text=text,
        )


def describe(candidate: _Candidate) -> str:
    """A readable operation: ``op 17 (process 3 read -> 5, ok at 23)``."""
    operation = candidate.operation
    if candidate.f == READ:
        what = f"read -> {candidate.argument!r}"
    elif candidate.f == WRITE:
        what = f"write {candidate.argument!r}"
    else:
        expected, new = candidate.argument
        what = f"cas {expected!r} -> {new!r}"
    ending = f"ok at {candidate.completed_at}" if candidate.required else "unknown outcome"
    return f"op {candidate.invoked_at} (process {operation.process} {what}, {ending})"
