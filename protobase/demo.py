"""The embedded demo run by `protobase demo` (and `make demo`).

It builds a small shop: typed objects, the persistent collections, a mutable
account, and two transactions that race on the same data so that one of
them conflicts and `Database.run` retries it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal

from . import CountedSet, DBObject, Dictionary, List, MemoryStorage, MutableObject, ObjectSpace, Set
from .errors import ConflictError
from .transaction import Transaction


class Product(DBObject):
    """An immutable catalogue entry."""


class Account(MutableObject):
    """A customer account, changed in place."""


def run_demo(say: Callable[[str], None] = print) -> None:
    """Run the demo, reporting each step through `say`."""
    storage = MemoryStorage()
    say("ProtoBase demo (MemoryStorage: StandaloneFileStorage arrives with the file backend)")
    with ObjectSpace(storage) as space:
        db = space.new_database("shop")
        say(f"created database {db.name!r}; databases: {space.list_databases()}")

        with db.transaction() as tr:
            catalogue = Dictionary(
                (sku, Product(sku=sku, name=name, price=Decimal(price)))
                for sku, name, price in [
                    ("A-100", "teapot", "24.50"),
                    ("B-200", "kettle", "39.00"),
                    ("C-300", "mug", "7.25"),
                ]
            )
            tr.set_root_object("catalogue", catalogue)
            tr.set_root_object("orders", List())
            tr.set_root_object("tags", Set(["kitchen", "tea"]))
            tr.set_root_object("sold", CountedSet())
            tr.set_root_object("alice", Account(name="Alice", balance=Decimal("100.00")))
            tr.set_root_object("opened", dt.datetime(2026, 11, 29, 9, 0, tzinfo=dt.UTC))
        say("stored 3 products (Dictionary), orders (List), tags (Set), sold (CountedSet)")
        say("and Alice's account (MutableObject)")

        with db.transaction() as tr:
            for sku, product in tr.get_root_object("catalogue").as_iterable():
                say(
                    f"  {sku}: {type(product).__name__}(name={product.name!r}, "
                    f"price={product.price})"
                )

        def buy(sku: str) -> Callable[[Transaction], str]:
            def order(tr: Transaction) -> str:
                product = tr.get_root_object("catalogue").get_at(sku)
                alice = tr.get_root_object("alice")
                alice.balance = alice.balance - product.price
                tr.set_root_object("orders", tr.get_root_object("orders").append_last(sku))
                tr.set_root_object("sold", tr.get_root_object("sold").add(sku))
                return f"bought {product.name} for {product.price}"

            return order

        say("a clerk sells a mug with db.run; while it runs, another clerk sells a teapot")
        say("and commits first, so both change Alice's balance and the orders List:")
        attempts: list[str] = []

        def sell_mug(tr: Transaction) -> str:
            result = buy("C-300")(tr)
            if not attempts:
                with db.transaction() as other:
                    say(f"  meanwhile: {buy('A-100')(other)} (committed)")
            attempts.append(result)
            return result

        say(
            f"  db.run: {db.run(sell_mug, retries=5)} after {len(attempts)} attempts "
            "(the first raised ConflictError, wrote nothing, and was run again)"
        )
        try:
            first, second = db.new_transaction(), db.new_transaction()
            buy("B-200")(first)
            buy("B-200")(second)
            first.commit()
            second.commit()
        except ConflictError as exc:
            say(f"without db.run the loser sees the error itself: {exc}")
        else:
            raise AssertionError("two writers of one account must conflict")

        with db.transaction() as tr:
            alice = tr.get_root_object("alice")
            orders = list(tr.get_root_object("orders"))
            sold = tr.get_root_object("sold")
            say(f"Alice's balance: {alice.balance} (100.00 - 24.50 - 7.25 - 39.00)")
            say(f"orders: {orders}; units sold of C-300: {sold.get_count('C-300')}")
            catalogue = tr.get_root_object("catalogue")
            cheaper = catalogue.get_at("B-200")._setattr("price", Decimal("35.00"))
            tr.set_root_object("catalogue", catalogue.set_at("B-200", cheaper))
            say("repriced the kettle with _setattr (a new Product; the old value is unchanged)")
        with db.transaction() as tr:
            kettle = tr.get_root_object("catalogue").get_at("B-200")
            say(
                f"kettle now costs {kettle.price}; storage root version "
                f"{storage.read_root().version}"
            )
    say("done")
