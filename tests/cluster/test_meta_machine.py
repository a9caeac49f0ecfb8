"""The meta group's state machine, without processes: compare-and-set, repeats, pruning."""

from __future__ import annotations

import io
import os

import pytest

from cluster import meta
from cluster.meta import MetaMachine, cas_entry


def pointer() -> tuple[bytes, int]:
    return os.urandom(16), 0


def test_cas_moves_the_root_once_per_change_id_and_checks_the_expected_pointer() -> None:
    machine = MetaMachine()
    first, second = pointer(), pointer()
    change = os.urandom(16)
    assert machine.apply(1, cas_entry("s", 0, None, first, change, None, 0.0)) == ["ok", 1]
    again = machine.apply(2, cas_entry("s", 0, None, first, change, None, 0.0))
    assert again == ["dup", 1, list(first)]
    # Built on the right version but another root: refused.
    assert machine.apply(3, cas_entry("s", 1, second, second, os.urandom(16), None, 0.0)) == [
        "conflict",
        1,
    ]
    alias = os.urandom(16)
    assert machine.apply(4, cas_entry("s", 1, first, second, os.urandom(16), alias, 0.0)) == [
        "ok",
        2,
    ]
    assert machine.outcome(alias) == ("s", 2, second)
    assert machine.root_at("s", 1) == first


def test_snapshot_restores_the_same_state() -> None:
    machine = MetaMachine()
    for version in range(5):
        machine.apply(
            version + 1, cas_entry("s", version, None, pointer(), os.urandom(16), None, 0)
        )
    sink = io.BytesIO()
    machine.snapshot(sink)
    copy = MetaMachine()
    copy.restore(io.BytesIO(sink.getvalue()))
    assert copy.state == machine.state


def test_old_change_ids_are_forgotten_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(meta, "DONE_KEPT", 3)
    machine = MetaMachine()
    ids = [os.urandom(16) for _ in range(5)]
    for version, change in enumerate(ids):
        machine.apply(version + 1, cas_entry("s", version, None, pointer(), change, None, 0))
    assert [machine.outcome(c) is not None for c in ids] == [False, False, True, True, True]


def test_a_malformed_entry_is_refused() -> None:
    with pytest.raises(meta.MetaEntryError):
        MetaMachine().apply(1, b"\xc1")


def test_history_keeps_the_recent_roots_with_their_change_time_and_size() -> None:
    machine = MetaMachine()
    roots = [pointer() for _ in range(3)]
    for version, root in enumerate(roots):
        machine.apply(
            version + 1, cas_entry("s", version, None, root, os.urandom(16), None, 5.0, 7)
        )
    history = machine.history("s")
    assert [version for version, _ in history] == [1, 2, 3]
    assert [r.pointer for _, r in history] == roots
    assert history[0][1].time == 5.0 and history[0][1].size == 7


def test_the_cluster_map_moves_one_epoch_at_a_time() -> None:
    from cluster.meta import ClusterMap, map_entry

    machine = MetaMachine()
    members = ((1, "127.0.0.1:1", "http://127.0.0.1:2"),)
    first = ClusterMap(1, members, 8, 3)
    assert machine.apply(1, map_entry(ClusterMap(2, members, 8, 3))) == ["conflict", 0]
    assert machine.apply(2, map_entry(first)) == ["ok", 1]
    assert machine.apply(3, map_entry(first)) == ["dup", 1]
    assert machine.apply(4, map_entry(ClusterMap(1, members, 4, 3))) == ["conflict", 1]
    second = ClusterMap(2, (*members, (2, "127.0.0.1:3", "http://127.0.0.1:4")), 8, 3)
    assert machine.apply(5, map_entry(second)) == ["ok", 2]
    sink = io.BytesIO()
    machine.snapshot(sink)
    copy = MetaMachine()
    copy.restore(io.BytesIO(sink.getvalue()))
    assert copy.state.cluster_map == second


# -- the cluster map as data --------------------------------------------------------


def three_members() -> meta.ClusterMap:
    members = tuple((k, f"127.0.0.1:{7000 + k}", f"http://127.0.0.1:{7100 + k}") for k in (1, 2, 3))
    return meta.ClusterMap(1, members, 4, 3)


def test_a_map_written_before_placement_was_data_keeps_its_wire_form_and_placement() -> None:
    old = three_members()
    assert len(old.to_wire()) == 4  # what earlier versions wrote and read
    assert meta.ClusterMap.from_wire(old.to_wire()) == old
    assert old.placement() == {g: (1, 2, 3) for g in range(5)}
    assert old.state_of(2) == "active" and old.zone_of(2) is None


def test_a_changed_map_is_the_next_epoch_and_round_trips_with_its_placement() -> None:
    old = three_members()
    joined = old.changed(
        members=(*old.members, (4, "127.0.0.1:7004", "http://127.0.0.1:7104")),
        groups=tuple((g, (1, 2, 4) if g % 2 else (1, 2, 3)) for g in range(5)),
        states=((3, "leaving"),),
        zones=((1, "a"), (4, "b")),
    )
    assert joined.epoch == 2
    assert meta.ClusterMap.from_wire(joined.to_wire()) == joined
    assert joined.placement()[1] == (1, 2, 4) and joined.placement()[0] == (1, 2, 3)
    assert joined.state_of(3) == "leaving" and joined.zone_of(4) == "b"
    machine = MetaMachine()
    assert machine.apply(1, meta.map_entry(old)) == ["ok", 1]
    assert machine.apply(2, meta.map_entry(joined)) == ["ok", 2]
    assert machine.apply(3, meta.map_entry(old.changed())) == ["conflict", 2]  # epoch 2 again
    restored = MetaMachine()
    sink = io.BytesIO()
    machine.snapshot(sink)
    restored.restore(io.BytesIO(sink.getvalue()))
    assert restored.state.cluster_map == joined


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"groups": ((0, (1, 2, 9)),)}, "malformed placement"),
        ({"groups": ((0, (1, 2, 3)),)}, "every group"),
        ({"groups": tuple((g, (1, 1, 2)) for g in range(5))}, "malformed placement"),
        ({"states": ((2, "asleep"),)}, "member state"),
        ({"states": ((9, "dead"),)}, "member state"),
        ({"zones": ((1, ""),)}, "member zone"),
        ({"members": ((1, "a:1", "u"), (1, "b:2", "v"))}, "twice"),
        ({"retired": (2,)}, "retired"),
        ({"retired": (0,)}, "retired"),
    ],
)
def test_a_malformed_map_is_refused_with_a_clear_error(fields: dict, message: str) -> None:
    with pytest.raises(meta.MetaEntryError, match=message):
        three_members().changed(**fields)
