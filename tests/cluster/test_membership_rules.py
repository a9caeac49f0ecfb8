"""The map changes behind join, leave and declare-dead, without processes."""

from __future__ import annotations

import pytest

from cluster.membership import MembershipError, _without, joined, with_state
from cluster.meta import ClusterMap


def three() -> ClusterMap:
    members = tuple((k, f"127.0.0.1:{7200 + k}", f"http://127.0.0.1:{7100 + k}") for k in (1, 2, 3))
    return ClusterMap(1, members, 2, 3).changed(
        groups=((0, (1, 2, 3)), (1, (1, 2, 3)), (2, (1, 2, 3)))
    )


def test_a_join_gets_the_next_id_and_a_repeated_join_changes_nothing() -> None:
    current = three()
    after, member = joined(current, None, "127.0.0.1:7204", "http://127.0.0.1:7104", "b")
    assert member == 4 and after.epoch == current.epoch + 1
    assert after.member(4) == (4, "127.0.0.1:7204", "http://127.0.0.1:7104")
    assert after.zone_of(4) == "b" and after.placement() == current.placement()
    again, same = joined(after, 4, "127.0.0.1:7204", "http://127.0.0.1:7104", "b")
    assert (again, same) == (after, 4)  # a join repeated after a lost answer


@pytest.mark.parametrize(
    ("member", "peer", "client", "message"),
    [
        (2, "127.0.0.1:9", "http://127.0.0.1:9", "already in the cluster"),
        (None, "127.0.0.1:7201", "http://127.0.0.1:9", "already uses"),
        (9, "127.0.0.1:9", "http://127.0.0.1:7103", "already uses"),
    ],
)
def test_a_join_that_takes_an_id_or_an_address_is_refused(
    member: int | None, peer: str, client: str, message: str
) -> None:
    with pytest.raises(MembershipError, match=message):
        joined(three(), member, peer, client, None)


def test_leaving_may_not_lower_the_number_of_copies_but_dying_may() -> None:
    current = three()
    with pytest.raises(MembershipError, match="add a member first"):
        with_state(current, 1, "leaving")
    dead = with_state(current, 1, "dead")
    assert dead.state_of(1) == "dead" and dead.epoch == current.epoch + 1
    four, _ = joined(current, 4, "127.0.0.1:7204", "http://127.0.0.1:7104", None)
    assert with_state(four, 1, "leaving").state_of(1) == "leaving"
    assert with_state(with_state(four, 1, "leaving"), 1, "active").state_of(1) == "active"


def test_the_last_active_member_and_strangers_are_refused() -> None:
    members = ((1, "127.0.0.1:7201", "http://127.0.0.1:7101"),)
    alone = ClusterMap(1, members, 1, 3)
    with pytest.raises(MembershipError, match="last active member"):
        with_state(alone, 1, "dead")
    with pytest.raises(MembershipError, match="not in the cluster"):
        with_state(three(), 7, "dead")


def test_a_forgotten_member_s_id_is_retired_and_never_given_again() -> None:
    four, _ = joined(three(), None, "127.0.0.1:7204", "http://127.0.0.1:7104", None)
    forgotten = _without(with_state(four, 4, "dead"), 4)
    assert forgotten.member_ids() == [1, 2, 3] and forgotten.retired == (4,)
    assert ClusterMap.from_wire(forgotten.to_wire()) == forgotten
    assert len(three().to_wire()[4]) == 3  # a map that never forgot anyone keeps its form
    with pytest.raises(MembershipError, match="never used twice"):
        joined(forgotten, 4, "127.0.0.1:7204", "http://127.0.0.1:7104", None)
    _, new_id = joined(forgotten, None, "127.0.0.1:7205", "http://127.0.0.1:7105", None)
    assert new_id == 5
