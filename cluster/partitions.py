"""Partitioning and placement: which group holds an atom, which nodes hold a group.

Pure functions of the member list, so every node computes the same answer.

- Group 0 is the **meta group**: the members, the partition map and its
  epoch, and each object space's root and version.
- Groups 1..P are the **partition groups**. An atom with pointer
  ``(transaction_id, i)`` lives in partition ``partition_for(transaction_id,
  P)``: every atom of one batch lands in one partition, as one Raft entry.
- A group is replicated on ``min(replication, N)`` members, chosen by
  rotating the sorted member ids by the group number, so replicas and
  leaders spread evenly.
"""

from __future__ import annotations

from protobase.storage.partitioning import partition_for

__all__ = ["META_GROUP", "group_of_partition", "partition_for", "placement", "replicas"]

META_GROUP = 0


def group_of_partition(partition: int) -> int:
    return partition + 1


def replicas(group: int, members: list[int] | tuple[int, ...], replication: int) -> tuple[int, ...]:
    """The members that replicate `group`, in a fixed order."""
    ordered = sorted(members)
    count = min(replication, len(ordered))
    start = group % len(ordered)
    return tuple(sorted(ordered[(start + k) % len(ordered)] for k in range(count)))


def placement(
    members: list[int] | tuple[int, ...], partitions: int, replication: int
) -> dict[int, tuple[int, ...]]:
    """Group id -> its replicas, for the meta group and every partition group."""
    groups = [META_GROUP] + [group_of_partition(p) for p in range(partitions)]
    return {group: replicas(group, members, replication) for group in groups}
