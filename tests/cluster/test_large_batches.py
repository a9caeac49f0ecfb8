"""A commit larger than a Raft entry and a request: stored in parts, read back whole."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from protobase import ClusterFileStorage, ObjectSpace
from protobase.storage import cluster as cluster_client


def test_a_commit_of_many_megabytes_is_stored_in_parts_and_reads_back(
    local_cluster: Any,
    new_cluster_storage: Callable[[], ClusterFileStorage],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Parts of 1 MiB keep the test small while the batch still needs several.
    monkeypatch.setattr(cluster_client, "PART_BYTES", 1 << 20)
    sent: list[int] = []
    real = ClusterFileStorage._request

    def counting(self: ClusterFileStorage, route: str, body: dict, meta: bool = False) -> object:
        if route == "/v1/batch/put":
            sent.append(len(body["atoms"]))
        return real(self, route, body, meta=meta)

    monkeypatch.setattr(ClusterFileStorage, "_request", counting)
    values = {f"k{n:05d}": f"{n:05d}" * 800 for n in range(1200)}  # about 4.8 MB
    with ObjectSpace(new_cluster_storage()) as space:
        db = space.new_database("large")
        with db.transaction() as tr:
            tr.set_root_object("big", tr.new_dictionary().update(values))
        name = space.storage.space  # type: ignore[attr-defined]
    assert len(sent) >= 4, sent
    with ObjectSpace(local_cluster.storage(space=name, urls=local_cluster.urls)) as space:
        tr = space.open_database("large").new_transaction()
        assert dict(tr.get_root_object("big").as_iterable()) == values
        tr.abort()
