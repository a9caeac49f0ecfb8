"""Workloads: clients that drive the cluster through the public API and record it.

Each client is a thread with its own `ClusterFileStorage` and `ObjectSpace`,
given the nodes in its own order (spread over the members). Every
operation is one transaction attempt, recorded as an invocation and a
completion (`chaos.history`):

- committed, or a read that returned: ``ok``;
- ``ConflictError`` (nothing was written), or a `ClusterUnavailableError`
  that says the commit certainly did not take effect: ``fail``;
- anything else (a timeout, an unknown outcome): ``info``, and the client
  goes on as a new process.

The data, in database ``chaos``:

- register: one root object per key, ``reg-K``; read, write, and
  compare-and-set (read, compare, write, with ``read_current`` on the key);
- bank: root ``accounts``, a Dictionary of balances; transfers (refused,
  as a fail, when the source holds less than the amount) and reads of
  every balance in one snapshot;
- set: root ``set``, a Dictionary whose keys are the elements added;
- list-append: one root object per key, ``list-K``, a List; a transaction
  of 1-4 micro-operations (read a list, append a unique element).
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protobase import (
    ClusterUnavailableError,
    ConflictError,
    Database,
    Dictionary,
    List,
    ObjectSpace,
    ProtoBaseException,
    Transaction,
)
from protobase.storage.cluster import ClusterFileStorage

from .history import FAIL, INFO, INVOKE, OK, Recorder

DATABASE = "chaos"
ACCOUNTS = 5
START_BALANCE = 100
REGISTER_KEYS = 4
LIST_KEYS = 6


@dataclass
class Run:
    """What every client of one run shares."""

    urls: list[str]
    token: str
    seed: int
    recorder: Recorder = field(default_factory=Recorder)
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = field(default_factory=time.monotonic)
    stopping: threading.Event = field(default_factory=threading.Event)
    processes: itertools.count = field(default_factory=itertools.count)
    unique: itertools.count = field(default_factory=lambda: itertools.count(1))
    errors: list[str] = field(default_factory=list)
    timeout: float = 10.0

    def record(
        self, process: int, type_: str, f: str, value: Any, error: str | None = None
    ) -> None:
        with self.lock:
            self.recorder.add(process, type_, f, value, time.monotonic() - self.started, error)

    def storage(self, first: int) -> ClusterFileStorage:
        urls = self.urls[first:] + self.urls[:first]
        return ClusterFileStorage(urls, token=self.token, timeout=self.timeout)


class Workload:
    """One kind of workload; see the module docstring."""

    name = ""
    readers = 0
    """Clients that only read (they reach whichever member they are given)."""

    def setup(self, db: Database) -> None:
        """Create the data the clients work on (before any fault)."""

    def operation(self, rng: random.Random, run: Run) -> tuple[str, Any]:
        """The next operation: ``(f, invocation value)``."""
        raise NotImplementedError

    def perform(self, db: Database, f: str, value: Any) -> Any:
        """Do it in one transaction attempt; the ok value (raises on failure)."""
        tr = db.new_transaction()
        try:
            return self.apply(tr, f, value)
        finally:
            if not tr.closed:
                tr.abort()

    def apply(self, tr: Transaction, f: str, value: Any) -> Any:
        """The operation in `tr`, committing it when it writes; the ok value."""
        raise NotImplementedError

    def final(self) -> tuple[str, Any] | None:
        """An operation to run once after the faults (a final read), if any."""
        return None

    def read_operation(self, rng: random.Random, run: Run) -> tuple[str, Any]:
        """The next operation of a client that only reads."""
        raise NotImplementedError


class RegisterWorkload(Workload):
    name = "register"
    readers = 2

    def read_operation(self, rng: random.Random, run: Run) -> tuple[str, Any]:
        return "read", [rng.randrange(REGISTER_KEYS), None]

    def setup(self, db: Database) -> None:
        """Registers start unset (None)."""

    def operation(self, rng: random.Random, run: Run) -> tuple[str, Any]:
        key = rng.randrange(REGISTER_KEYS)
        kind = rng.choice(["read", "write", "cas"])
        if kind == "read":
            return "read", [key, None]
        if kind == "write":
            return "write", [key, rng.randrange(5)]
        return "cas", [key, [rng.randrange(5), rng.randrange(5)]]

    def apply(self, tr: Transaction, f: str, value: Any) -> Any:
        key = value[0]
        name = f"reg-{key}"
        if f == "read":
            return [key, tr.get_root_object(name)]
        if f == "write":
            tr.set_root_object(name, value[1])
        else:
            expected, new = value[1]
            tr.read_current(name)
            if tr.get_root_object(name) != expected:
                raise _NotApplied(f"register {key} does not hold {expected}")
            tr.set_root_object(name, new)
        tr.commit()
        return value


class BankWorkload(Workload):
    name = "bank"
    accounts = [f"acct{k}" for k in range(ACCOUNTS)]

    def setup(self, db: Database) -> None:
        with db.transaction() as tr:
            tr.set_root_object("accounts", Dictionary({a: START_BALANCE for a in self.accounts}))

    def operation(self, rng: random.Random, run: Run) -> tuple[str, Any]:
        if rng.random() < 0.4:
            return "read", None
        source, target = rng.sample(self.accounts, 2)
        return "transfer", {"from": source, "to": target, "amount": rng.randint(1, 5)}

    def apply(self, tr: Transaction, f: str, value: Any) -> Any:
        balances = tr.get_root_object("accounts")
        if f in ("read", "final-read"):
            return dict(balances.as_iterable())
        source, target, amount = value["from"], value["to"], value["amount"]
        if balances.get_at(source) < amount:
            raise _NotApplied(f"{source} holds less than {amount}")
        balances = balances.set_at(source, balances.get_at(source) - amount)
        balances = balances.set_at(target, balances.get_at(target) + amount)
        tr.set_root_object("accounts", balances)
        tr.commit()
        return value

    def final(self) -> tuple[str, Any] | None:
        return "final-read", None


class SetWorkload(Workload):
    name = "set"

    def setup(self, db: Database) -> None:
        with db.transaction() as tr:
            tr.set_root_object("set", Dictionary())

    def operation(self, rng: random.Random, run: Run) -> tuple[str, Any]:
        if rng.random() < 0.2:
            return "read", None
        return "add", next(run.unique)

    def apply(self, tr: Transaction, f: str, value: Any) -> Any:
        elements = tr.get_root_object("set")
        if f == "read":
            return sorted(elements.keys())
        tr.set_root_object("set", elements.set_at(value, True))
        tr.commit()
        return value

    def final(self) -> tuple[str, Any] | None:
        return "read", None


class ListAppendWorkload(Workload):
    name = "list-append"

    def operation(self, rng: random.Random, run: Run) -> tuple[str, Any]:
        micro = []
        for _ in range(rng.randint(1, 4)):
            key = rng.randrange(LIST_KEYS)
            if rng.random() < 0.5:
                micro.append(["r", key, None])
            else:
                micro.append(["append", key, next(run.unique)])
        return "txn", micro

    def apply(self, tr: Transaction, f: str, value: Any) -> Any:
        done = []
        wrote = False
        for kind, key, element in value:
            name = f"list-{key}"
            current = tr.get_root_object(name)
            if kind == "r":
                done.append(["r", key, [] if current is None else list(current.as_iterable())])
            else:
                base = current if current is not None else List()
                tr.set_root_object(name, base.append_last(element))
                done.append(["append", key, element])
                wrote = True
        if wrote:
            tr.commit()
        return done


WORKLOADS: dict[str, Callable[[], Workload]] = {
    "register": RegisterWorkload,
    "bank": BankWorkload,
    "set": SetWorkload,
    "list-append": ListAppendWorkload,
}


class _NotApplied(ProtoBaseException):
    """The operation did not apply (a compare-and-set whose comparison failed)."""


def classify(exc: BaseException) -> str:
    """fail when the operation certainly did not happen, else info."""
    if isinstance(exc, ConflictError | _NotApplied):
        return FAIL
    if isinstance(exc, ClusterUnavailableError) and "certainly did not" in str(exc):
        return FAIL
    if isinstance(exc, ClusterUnavailableError) and "nothing changed" in str(exc):
        return FAIL  # a read, or a put whose root never moved
    return INFO


class Client(threading.Thread):
    """One client: operations until the run stops, as process after process."""

    def __init__(self, number: int, run: Run, workload: Workload, reader: bool = False) -> None:
        super().__init__(name=f"chaos-client-{number}", daemon=True)
        self.number = number
        self.reader = reader
        self.run_ = run
        self.workload = workload
        self.rng = random.Random(run.seed * 1000 + number)

    def run(self) -> None:
        run = self.run_
        process = next(run.processes)
        space = None
        try:
            while not run.stopping.is_set():
                if space is None:
                    space = self._connect()
                    if space is None:
                        continue
                if self.reader:
                    f, value = self.workload.read_operation(self.rng, run)
                else:
                    f, value = self.workload.operation(self.rng, run)
                if perform(run, space, self.workload, process, f, value) == INFO:
                    process = next(run.processes)
                    space.close()
                    space = None
        except Exception as exc:  # recorded for the report; the run fails on it
            run.errors.append(f"client {self.number}: {type(exc).__name__}: {exc}")
        finally:
            if space is not None:
                space.close()

    def _connect(self) -> ObjectSpace | None:
        try:
            return ObjectSpace(self.run_.storage(self.number % len(self.run_.urls)))
        except ProtoBaseException:
            self.run_.stopping.wait(0.2)
            return None


def perform(
    run: Run, space: ObjectSpace, workload: Workload, process: int, f: str, value: Any
) -> str:
    """One recorded operation; its completion type."""
    run.record(process, INVOKE, f, value)
    try:
        result = workload.perform(space.open_database(DATABASE), f, value)
    except ProtoBaseException as exc:
        kind = classify(exc)
        run.record(process, kind, f, value, f"{type(exc).__name__}: {exc}"[:300])
        return kind
    run.record(process, OK, f, result)
    return OK
