"""Three-way merge of persistent trees: how a transaction rebases.

When the root moved since a transaction's snapshot, its changes are merged
with the concurrent ones: *base* is the snapshot, *mine* the transaction's
version, *theirs* the current one. Pure functions over collection values;
no storage and no clocks.

Rules (docs/architecture.md, "A commit, step by step"):

- A key (root name, dictionary key, set element, object id) changed on one
  side only takes that side's value.
- A key changed on both sides merges recursively when the three values are
  keyed collections of one kind (a Dictionary inside a Dictionary, ...);
  otherwise it is a write-write conflict: `ConflictError`, nothing written.
  Adding the same key on both sides, or deleting it on both, is a conflict.
- A List is never merged by position: a List changed on both sides conflicts.
- Nothing is merged by guessing: equal-looking values written by both sides
  still conflict (two increments of a counter must not become one).

The diff of mine skips the subtrees both versions share, and each key mine
changed is looked up in theirs, so a merge costs
O(my changes x (node width + log n)), whatever theirs changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from .collections.btree import MISSING, NodeLoader, keyed_diff, keyed_get
from .collections.indexes import IndexSpec
from .collections.keyed import KeyedCollection
from .errors import ConflictError, UniqueConstraintError
from .storage.interfaces import DatabaseReads
from .values import same_value

K = TypeVar("K", bound=KeyedCollection)


def changes(
    base: KeyedCollection, other: KeyedCollection, loader: NodeLoader
) -> dict[Any, tuple[Any, Any, Any]]:
    """``{sort key: (key, base value, other value)}`` for every differing key."""
    keyfn = type(base)._keyfn
    return {
        skey: (key, base_value, other_value)
        for skey, key, base_value, other_value in keyed_diff(
            base._node(), other._node(), loader, keyfn, same_value
        )
    }


def merge_keyed(base: K, mine: K, theirs: K, loader: NodeLoader, path: str) -> K:
    """Apply mine's changes since base onto theirs, or raise `ConflictError`.

    Only mine is diffed against base; each key mine changed is looked up in
    theirs, so the cost does not grow with the number of concurrent changes.
    Secondary indexes are derived data: the rows merge, the result keeps
    its indexes exact, and index definitions added or removed on one side
    carry over (see `_merge_index_specs`).
    """
    specs = _merge_index_specs(base, mine, theirs, path)
    my_changes = changes(base, mine, loader)
    try:
        if not my_changes:
            result = theirs
        elif theirs._pb_same_value(base):
            result = mine
        else:
            result = theirs._pb_apply_changes(_changes_onto(my_changes, theirs, loader, path))
        if result._pb_index_specs() != specs:
            result = result._pb_with_index_specs(specs)
    except UniqueConstraintError as exc:
        raise ConflictError(
            f"{path}: merging with a concurrent transaction that committed first breaks a "
            f"unique index ({exc}); nothing was written. Run the transaction again "
            "(Database.run retries) to see the other value."
        ) from exc
    return result


def _changes_onto(
    my_changes: dict[Any, tuple[Any, Any, Any]],
    theirs: KeyedCollection,
    loader: NodeLoader,
    path: str,
) -> list[tuple[Any, Any]]:
    keyfn = type(theirs)._keyfn
    their_root = theirs._node()
    to_apply = []
    for skey, (key, base_value, my_value) in my_changes.items():
        their_value = keyed_get(their_root, loader, skey, keyfn)
        if same_value(base_value, their_value):
            to_apply.append((key, my_value))
            continue
        where = f"{path}[{key!r}]"
        if base_value is MISSING or my_value is MISSING or their_value is MISSING:
            raise ConflictError(
                f"{where} was added or removed by a concurrent transaction that committed "
                "first; nothing was written. Run the transaction again (Database.run retries)."
            )
        to_apply.append((key, merge_values(base_value, my_value, their_value, loader, where)))
    return to_apply


def _merge_index_specs(
    base: KeyedCollection, mine: KeyedCollection, theirs: KeyedCollection, path: str
) -> tuple[IndexSpec, ...]:
    """The index definitions of the merge: theirs, plus mine's additions and removals."""
    base_specs, my_specs, their_specs = (c._pb_index_specs() for c in (base, mine, theirs))
    if my_specs == base_specs:
        return their_specs
    if their_specs in (base_specs, my_specs):
        return my_specs
    raise ConflictError(
        f"the indexes of {path} were changed by a concurrent transaction that committed "
        "first; nothing was written. Run the transaction again (Database.run retries)."
    )


def merge_values(base: Any, mine: Any, theirs: Any, loader: NodeLoader, path: str) -> Any:
    """Merge one value changed on both sides (see the module rules)."""
    kind = type(base)
    if issubclass(kind, KeyedCollection) and type(mine) is kind and type(theirs) is kind:
        return merge_keyed(base, mine, theirs, loader, path)
    raise ConflictError(
        f"{path} was changed by a concurrent transaction that committed first; "
        "nothing was written. Run the transaction again (Database.run retries)."
    )


def merge_databases(
    base: KeyedCollection,
    mine: KeyedCollection,
    theirs: KeyedCollection,
    loader: NodeLoader,
    reads: Mapping[str, DatabaseReads],
) -> Any:
    """Rebase a space's database table: mine's changes since base, onto theirs.

    Each database is ``{"roots": Dictionary, "objects": HashDictionary}``.
    A database only mine changed takes mine's state; one both changed
    merges its roots and its object table with `merge_keyed`; one added or
    removed on a side while the other changed it conflicts. Before
    anything merges, every ``read_current`` read in `reads` must hold the
    same value in theirs as in base (serializable for that read).

    This is the one rebase rule: the embedded committer runs it in the
    application's process, a cluster node runs it on the meta leader.
    """
    for name, read in reads.items():
        _validate_reads(name, read, base, theirs, loader)
    my_changes = changes(base, mine, loader)
    if not my_changes:
        return theirs
    if theirs._pb_same_value(base):
        return mine
    keyfn = type(theirs)._keyfn
    their_root = theirs._node()
    to_apply = []
    for skey, (name, base_state, my_state) in my_changes.items():
        their_state = keyed_get(their_root, loader, skey, keyfn)
        if same_value(base_state, their_state):
            to_apply.append((name, my_state))
            continue
        if base_state is MISSING or my_state is MISSING or their_state is MISSING:
            raise ConflictError(
                f"database {name!r} was created or removed by a concurrent transaction that "
                "committed first; nothing was written. Run the transaction again."
            )
        merged = {
            part: merge_keyed(
                base_state[part], my_state[part], their_state[part], loader, f"{name}.{part}"
            )
            for part in ("roots", "objects")
        }
        to_apply.append((name, merged))
    return theirs._pb_apply_changes(to_apply)


def _validate_reads(
    name: str,
    read: DatabaseReads,
    base: KeyedCollection,
    theirs: KeyedCollection,
    loader: NodeLoader,
) -> None:
    keyfn = type(base)._keyfn
    base_state = keyed_get(base._node(), loader, keyfn(name), keyfn)
    their_state = keyed_get(theirs._node(), loader, keyfn(name), keyfn)
    if same_value(base_state, their_state):
        return
    if base_state is MISSING or their_state is MISSING:
        raise ConflictError(
            f"database {name!r} was created or removed by a concurrent transaction; "
            "nothing was written. Run the transaction again."
        )
    for root_name in read.roots:
        roots_before, roots_after = base_state["roots"], their_state["roots"]
        if not same_value(roots_before.get_at(root_name), roots_after.get_at(root_name)):
            raise ConflictError(
                f"root {root_name!r} (read with read_current) was changed by a concurrent "
                "transaction; nothing was written. Run the transaction again."
            )
    for oid in read.objects:
        objects_before, objects_after = base_state["objects"], their_state["objects"]
        okeyfn = type(objects_before)._keyfn
        before = keyed_get(objects_before._node(), loader, okeyfn(oid), okeyfn)
        after = keyed_get(objects_after._node(), loader, okeyfn(oid), okeyfn)
        if not same_value(before, after):
            raise ConflictError(
                f"object {oid.hex()} (read with read_current) was changed by a concurrent "
                "transaction; nothing was written. Run the transaction again."
            )
