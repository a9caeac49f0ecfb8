"""`GET /metrics` over HTTP: Prometheus text that a parser accepts, with live figures."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from protobase import ClusterFileStorage, ObjectSpace


def scrape(url: str) -> dict[str, list[Any]]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(samples: list[Any], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels.items() >= labels.items()]
    assert found, f"no sample {name} {labels}"
    return float(sum(found))


def test_metrics_count_commits_and_show_every_raft_group(
    local_cluster: Any, new_cluster_storage: Callable[[], ClusterFileStorage]
) -> None:
    leader = local_cluster.leader_of(0)
    before = scrape(local_cluster.url(leader))
    committed_before = (
        value(before["protobase_commits"], "protobase_commits_total", outcome="committed")
        if any(s.labels.get("outcome") == "committed" for s in before["protobase_commits"])
        else 0.0
    )
    with ObjectSpace(new_cluster_storage()) as space:
        db = space.new_database("metrics")
        for n in range(3):
            db.run(lambda tr, n=n: tr.set_root_object("n", n))
    after = scrape(local_cluster.url(leader))
    committed = value(after["protobase_commits"], "protobase_commits_total", outcome="committed")
    assert committed >= committed_before + 4  # new_database and three commits
    assert value(after["protobase_commit_seconds"], "protobase_commit_seconds_count") >= 4
    groups = {s.labels["group"] for s in after["protobase_raft_term"]}
    assert groups == {"meta"} | {f"partition-{p}" for p in range(4)}
    assert value(after["protobase_raft_is_leader"], "protobase_raft_is_leader", group="meta") == 1
    assert value(after["protobase_raft_term"], "protobase_raft_term", group="meta") >= 1
    requests = value(
        after["protobase_http_requests"],
        "protobase_http_requests_total",
        route="/v1/commit",
        status="200",
    )
    assert requests >= 3
    for node in range(1, local_cluster.nodes + 1):
        samples = scrape(local_cluster.url(node))["protobase_raft_applied_index"]
        assert value(samples, "protobase_raft_applied_index", group="meta") >= 1


def test_metrics_need_no_token_and_show_no_data(local_cluster: Any) -> None:
    with urllib.request.urlopen(local_cluster.url(1) + "/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "protobase_raft_term" in text
    assert local_cluster.token not in text
