"""The embedded demo run by `protobase demo` (and `make demo`).

It keeps a small shop in a StandaloneFileStorage directory: typed objects,
the persistent collections, a mutable account, and two transactions that
race on the same data so that one of them conflicts and `Database.run`
retries it. A second run finds the first run's data on disk.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from . import (
    HOT_PATH,
    CountedSet,
    DBObject,
    Dictionary,
    List,
    MutableObject,
    ObjectSpace,
    Set,
    StandaloneFileStorage,
    __version__,
)
from .errors import ConflictError
from .storage.interfaces import Storage
from .transaction import Transaction


class Product(DBObject):
    """An immutable catalogue entry."""


class Account(MutableObject):
    """A customer account, changed in place."""


def _create_shop(tr: Transaction) -> None:
    tr.set_root_object(
        "catalogue",
        Dictionary(
            (sku, Product(sku=sku, name=name, price=Decimal(price)))
            for sku, name, price in [
                ("A-100", "teapot", "24.50"),
                ("B-200", "kettle", "39.00"),
                ("C-300", "mug", "7.25"),
            ]
        ),
    )
    tr.set_root_object("orders", List())
    tr.set_root_object("tags", Set(["kitchen", "tea"]))
    tr.set_root_object("sold", CountedSet())
    tr.set_root_object("alice", Account(name="Alice", balance=Decimal("0.00")))
    tr.set_root_object("runs", List())


def _buy(sku: str) -> Callable[[Transaction], str]:
    def order(tr: Transaction) -> str:
        product = tr.get_root_object("catalogue").get_at(sku)
        alice = tr.get_root_object("alice")
        alice.balance = alice.balance - product.price
        tr.set_root_object("orders", tr.get_root_object("orders").append_last(sku))
        tr.set_root_object("sold", tr.get_root_object("sold").add(sku))
        return f"bought {product.name} for {product.price}"

    return order


def run_demo(
    path: str | Path = "demo-data",
    say: Callable[[str], None] = print,
    storage: Storage | None = None,
) -> None:
    """Run the demo on the database in directory `path` (or on `storage`, such as
    a `ClusterFileStorage`), reporting through `say`."""
    where = str(path) if storage is None else type(storage).__name__
    say(f"ProtoBase {__version__}, hot path: {HOT_PATH} (docs/native.md)")
    with ObjectSpace(storage or StandaloneFileStorage(path)) as space:
        if "shop" in space.list_databases():
            db = space.open_database("shop")
            with db.transaction() as tr:
                runs = list(tr.get_root_object("runs"))
                orders = tr.get_root_object("orders")
                say(
                    f"{where}: found the data of {len(runs)} earlier run(s), the last at "
                    f"{runs[-1].isoformat(timespec='seconds')}; {len(orders)} orders so far"
                )
        else:
            db = space.new_database("shop")
            with db.transaction() as tr:
                _create_shop(tr)
            say(f"{where}: created database 'shop' ({type(space.storage).__name__})")
            say("stored 3 products (Dictionary), orders (List), tags (Set), sold (CountedSet)")
            say("and Alice's account (MutableObject)")

        with db.transaction() as tr:
            tr.set_root_object(
                "runs", tr.get_root_object("runs").append_last(dt.datetime.now(dt.UTC))
            )
            alice = tr.get_root_object("alice")
            alice.balance = alice.balance + Decimal("100.00")
            for sku, product in tr.get_root_object("catalogue").as_iterable():
                say(
                    f"  {sku}: {type(product).__name__}(name={product.name!r}, "
                    f"price={product.price})"
                )
            say(f"Alice deposits 100.00; her balance is {alice.balance}")

        say("a clerk sells a mug with db.run; while it runs, another clerk sells a teapot")
        say("and commits first, so both change Alice's balance and the orders List:")
        attempts: list[str] = []

        def sell_mug(tr: Transaction) -> str:
            result = _buy("C-300")(tr)
            if not attempts:
                with db.transaction() as other:
                    say(f"  meanwhile: {_buy('A-100')(other)} (committed)")
            attempts.append(result)
            return result

        say(
            f"  db.run: {db.run(sell_mug, retries=5)} after {len(attempts)} attempts "
            "(the first raised ConflictError, wrote nothing, and was run again)"
        )
        first, second = db.new_transaction(), db.new_transaction()
        _buy("B-200")(first)
        _buy("B-200")(second)
        first.commit()
        try:
            second.commit()
        except ConflictError as exc:
            say(f"without db.run the loser sees the error itself: {exc}")
        else:
            raise AssertionError("two writers of one account must conflict")

        with db.transaction() as tr:
            alice = tr.get_root_object("alice")
            sold = tr.get_root_object("sold")
            say(f"Alice's balance: {alice.balance} (this run: +100.00 - 24.50 - 7.25 - 39.00)")
            say(
                f"orders: {len(tr.get_root_object('orders'))}; mugs sold in all runs: "
                f"{sold.get_count('C-300')}"
            )
        if storage is None:
            say(
                f"storage root version {space.storage.read_root().version}; "
                f"{len(space.history())} versions kept (see `protobase inspect {path}`)"
            )
        else:
            say(f"cluster root version {space.storage.read_root().version}")
    say("done")
