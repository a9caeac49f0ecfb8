"""The cluster map lives in the meta group; an older epoch is answered with the current map."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import msgpack

from protobase import ClusterFileStorage, ObjectSpace


def post(local_cluster: Any, node: int, route: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        local_cluster.url(node) + route, data=msgpack.packb(body), method="POST"
    )
    request.add_header("Authorization", f"Bearer {local_cluster.token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, msgpack.unpackb(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_every_member_serves_the_map_the_meta_group_holds(local_cluster: Any) -> None:
    for node in range(1, local_cluster.nodes + 1):
        status, answer = post(local_cluster, node, "/v1/cluster", {})
        assert status == 200
        assert answer["epoch"] == 1
        assert [m["client"] for m in answer["members"]] == local_cluster.urls
        assert local_cluster.status(node)["epoch"] == 1


def test_a_request_with_an_older_epoch_gets_the_current_map(local_cluster: Any) -> None:
    status, answer = post(local_cluster, 1, "/v1/root/read", {"space": "any", "epoch": 0})
    assert status == 421
    assert answer["kind"] == "stale_map"
    assert answer["map"]["epoch"] == 1
    assert len(answer["map"]["members"]) == local_cluster.nodes
    status, _ = post(local_cluster, local_cluster.leader_of(0), "/v1/root/read", {"space": "any"})
    assert status == 200


def test_a_client_with_an_old_map_learns_the_new_one_and_commits(
    new_cluster_storage: Callable[[], ClusterFileStorage],
) -> None:
    storage = new_cluster_storage()
    storage._epoch = 0  # as if it had learned the members before the map was written
    with ObjectSpace(storage) as space:
        db = space.new_database("m")
        db.run(lambda tr: tr.set_root_object("x", 1))
        assert storage._epoch == 1
