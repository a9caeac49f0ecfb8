"""Which partition of a cluster holds a batch: one rule, for the client and the nodes.

An atom with pointer ``(transaction_id, i)`` lives in partition
``partition_for(transaction_id, P)``, so every atom of one batch lands in
one partition, as one Raft entry. The hash is xxh3-64 of the id, not
Python's salted ``hash``: every process must agree.
"""

from __future__ import annotations

import xxhash


def partition_for(transaction_id: bytes, partitions: int) -> int:
    """The partition (0-based) of every atom of the batch `transaction_id`."""
    return int(xxhash.xxh3_64_intdigest(transaction_id)) % partitions
