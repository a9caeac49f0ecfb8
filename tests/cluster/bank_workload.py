"""A bank whose total never changes, run by concurrent clients of a LocalCluster.

`Bank` keeps ``ACCOUNTS`` balances in one Dictionary root and, per writer
client, a List root of the transfers that client committed: each transfer
moves an amount between two accounts and appends its record
``"client:seq:from:to:amount"`` to its client's List in the same
transaction. So every snapshot can be checked on its own:

- the balances sum to ``ACCOUNTS * START`` (the bank invariant);
- the balances are exactly START plus the transfers recorded in that
  snapshot (a transfer is all there or not at all).

Writers (each with its own ClusterFileStorage and ObjectSpace) note every
transfer `Database.run` acknowledged, and the ones whose outcome the client
reported as unknown (`ClusterUnavailableError`). Readers, one per node URL,
check every snapshot they read. `check_final` then reads the data through
each node's own replica (`ReplicaStorage`) and requires every acknowledged
transfer there, nothing never attempted, and the same data on every node.
"""

from __future__ import annotations

import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
from harness import LocalCluster

from cluster.node import FORWARDED
from protobase import (
    AtomPointer,
    ClusterFileStorage,
    ClusterUnavailableError,
    ConflictError,
    Dictionary,
    List,
    ObjectSpace,
    StorageError,
)

ACCOUNTS = 8
START = 1000
TOTAL = ACCOUNTS * START


def account(k: int) -> str:
    return f"acct{k}"


def acks_root(client: int) -> str:
    return f"acks-{client}"


class ReplicaStorage(ClusterFileStorage):
    """Reads atoms from one node's own replica only (no forwarding to a leader).

    The forwarded-request marker makes a node answer from what it has
    applied, or refuse; so data read through this storage is that node's.
    """

    def __init__(self, replica_url: str, urls: Sequence[str], token: str) -> None:
        super().__init__(urls, token=token, timeout=20)
        self.replica_url = replica_url
        self.replica_token = token

    def get_atoms(self, pointers: Sequence[AtomPointer]) -> list[bytes]:
        body = msgpack.packb({"pointers": [[p.transaction_id, p.index] for p in pointers]})
        request = urllib.request.Request(
            self.replica_url + "/v1/atoms/get", data=body, method="POST"
        )
        request.add_header("Authorization", f"Bearer {self.replica_token}")
        request.add_header("Content-Type", "application/msgpack")
        request.add_header(FORWARDED, "0")
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return msgpack.unpackb(response.read())["atoms"]  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            raise StorageError(
                f"{self.replica_url} does not serve {len(pointers)} atoms from its replica: "
                f"{exc.code} {exc.read()[:300]!r}"
            ) from exc


@dataclass
class View:
    """What one snapshot of the bank holds."""

    version: int
    balances: dict[str, int]
    acks: dict[int, list[str]]

    def problems(self) -> list[str]:
        found = []
        if sum(self.balances.values()) != TOTAL:
            found.append(f"v{self.version}: balances sum to {sum(self.balances.values())}")
        expected = {account(k): START for k in range(ACCOUNTS)}
        for records in self.acks.values():
            for record in records:
                _, _, source, target, amount = record.split(":")
                expected[source] -= int(amount)
                expected[target] += int(amount)
        if expected != self.balances:
            found.append(f"v{self.version}: balances {self.balances} != transfers {expected}")
        for client, records in self.acks.items():
            if len(set(records)) != len(records):
                found.append(f"v{self.version}: client {client} has a transfer twice")
        return found


def read_view(space: ObjectSpace, db_name: str, clients: int) -> View:
    tr = space.open_database(db_name).new_read_only_transaction()
    try:
        balances = dict(tr.get_root_object("balances").as_iterable())
        acks = {c: list(tr.get_root_object(acks_root(c)).as_iterable()) for c in range(clients)}
        return View(tr.root_version, balances, acks)
    finally:
        tr.abort()


@dataclass
class Bank:
    cluster: LocalCluster
    db_name: str = "bank"
    writers: int = 4
    client_timeout: float = 30.0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: list[tuple[float, str]] = field(default_factory=list)
    unknown: set[str] = field(default_factory=set)
    attempted: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    snapshots_read: int = 0
    threads: list[threading.Thread] = field(default_factory=list)

    def create(self) -> None:
        with ObjectSpace(self.cluster.storage(urls=self.cluster.urls)) as space:
            db = space.new_database(self.db_name)

            def fill(tr: Any) -> None:
                tr.set_root_object(
                    "balances", Dictionary({account(k): START for k in range(ACCOUNTS)})
                )
                for client in range(self.writers):
                    tr.set_root_object(acks_root(client), List())

            db.run(fill)

    # -- running -------------------------------------------------------------------

    def start(self) -> None:
        for client in range(self.writers):
            self._spawn(self._write, client)
        for node in range(1, self.cluster.nodes + 1):
            self._spawn(self._read, node)

    def _spawn(self, target: Callable[[int], None], arg: int) -> None:
        thread = threading.Thread(target=self._guarded, args=(target, arg), daemon=True)
        self.threads.append(thread)
        thread.start()

    def _guarded(self, target: Callable[[int], None], arg: int) -> None:
        try:
            target(arg)
        except BaseException as exc:
            with self.lock:
                self.errors.append(f"{target.__name__}({arg}) died: {type(exc).__name__}: {exc}")

    def _write(self, client: int) -> None:
        rng = random.Random(client)
        storage = ClusterFileStorage(
            self.cluster.urls, token=self.cluster.token, timeout=self.client_timeout
        )
        with ObjectSpace(storage) as space:
            db = space.open_database(self.db_name)
            for seq in range(1_000_000):
                if self.stop.is_set():
                    return
                source, target = rng.sample(range(ACCOUNTS), 2)
                record = f"{client}:{seq}:{account(source)}:{account(target)}:{rng.randint(1, 50)}"
                with self.lock:
                    self.attempted.add(record)
                try:
                    db.run(self._transfer(client, record), retries=200)
                except ClusterUnavailableError:
                    with self.lock:
                        self.unknown.add(record)
                except ConflictError:
                    pass  # nothing was written
                else:
                    with self.lock:
                        self.acked.append((time.monotonic(), record))

    def _transfer(self, client: int, record: str) -> Callable[[Any], None]:
        _, _, source, target, amount = record.split(":")

        def transfer(tr: Any) -> None:
            balances = tr.get_root_object("balances")
            values = dict(balances.as_iterable())
            if sum(values.values()) != TOTAL:
                with self.lock:
                    self.violations.append(f"writer snapshot v{tr.root_version}: {values}")
            balances = balances.set_at(source, values[source] - int(amount))
            balances = balances.set_at(target, values[target] + int(amount))
            tr.set_root_object("balances", balances)
            name = acks_root(client)
            tr.set_root_object(name, tr.get_root_object(name).append_last(record))

        return transfer

    def _read(self, node: int) -> None:
        storage = ClusterFileStorage(
            [self.cluster.url(node)], token=self.cluster.token, timeout=self.client_timeout
        )
        with ObjectSpace(storage) as space:
            while not self.stop.is_set():
                try:
                    view = read_view(space, self.db_name, self.writers)
                except ClusterUnavailableError:
                    continue
                problems = view.problems()
                with self.lock:
                    self.snapshots_read += 1
                    self.violations.extend(f"reader via node {node}: {p}" for p in problems)
                time.sleep(0.02)

    def finish(self, timeout: float = 60.0) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "a bank client hangs"

    def close(self) -> None:
        """Stop the clients, waiting a little for them (for teardown, whatever happened)."""
        self.stop.set()
        deadline = time.monotonic() + 15
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- progress and checks -------------------------------------------------------

    def acked_since(self, moment: float) -> int:
        with self.lock:
            return sum(1 for when, _ in self.acked if when > moment)

    def wait_acked_since(self, moment: float, count: int, timeout: float) -> float:
        """Seconds until `count` transfers were acknowledged after `moment`."""
        deadline = moment + timeout
        while self.acked_since(moment) < count:
            assert not self.errors, self.errors
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"only {self.acked_since(moment)} of {count} transfers were acknowledged "
                    f"in {timeout} s; unknown: {len(self.unknown)}"
                )
            time.sleep(0.05)
        with self.lock:
            return sorted(when for when, _ in self.acked if when > moment)[count - 1] - moment

    def check_final(self, nodes: Sequence[int] | None = None) -> View:
        """Every node's replica (of `nodes`, default all) holds the same bank, with
        every acknowledged transfer."""
        assert not self.errors, self.errors
        assert not self.violations, self.violations[:5]
        self.cluster.wait_converged()
        views = []
        for node in nodes or range(1, self.cluster.nodes + 1):
            storage = ReplicaStorage(self.cluster.url(node), self.cluster.urls, self.cluster.token)
            with ObjectSpace(storage) as space:
                views.append(read_view(space, self.db_name, self.writers))
        first = views[0]
        for node, view in enumerate(views, 1):
            assert view == first, f"node {node} differs from node 1"
        assert not first.problems(), first.problems()
        recorded = [record for records in first.acks.values() for record in records]
        acked = {record for _, record in self.acked}
        missing = acked - set(recorded)
        assert not missing, f"acknowledged transfers lost: {sorted(missing)[:10]}"
        assert set(recorded) <= acked | self.unknown, (
            f"transfers committed that were never acknowledged nor unknown: "
            f"{sorted(set(recorded) - acked - self.unknown)[:10]}"
        )
        assert set(recorded) <= self.attempted
        return first
