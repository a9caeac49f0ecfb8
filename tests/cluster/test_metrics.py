"""`GET /metrics` over HTTP: Prometheus text that a parser accepts, with live figures."""

from __future__ import annotations

import urllib.request
import uuid
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


def family_total(samples: list[Any], name: str, **labels: str) -> float:
    """The sum of `name` samples matching `labels` (0 when there are none)."""
    return float(
        sum(s.value for s in samples if s.name == name and s.labels.items() >= labels.items())
    )


def test_metrics_show_commit_phases_merges_transport_partitions_and_caches(
    local_cluster: Any, new_cluster_storage: Callable[[], ClusterFileStorage]
) -> None:
    leader = local_cluster.leader_of(0)
    urls = [local_cluster.url(n) for n in range(1, local_cluster.nodes + 1)]
    before = scrape(local_cluster.url(leader))
    puts_before = sum(
        family_total(
            scrape(url)["protobase_commit_phase_seconds"],
            "protobase_commit_phase_seconds_count",
            phase="put_batch",
        )
        for url in urls
    )
    name = f"phases-{uuid.uuid4().hex}"
    with ObjectSpace(local_cluster.storage(space=name, urls=local_cluster.urls)) as first:
        db = first.new_database("phases")
        db.run(lambda tr: tr.set_root_object("a", 0))
        with ObjectSpace(local_cluster.storage(space=name, urls=local_cluster.urls)) as second:
            # Two clients on the same base, writing different roots: the second
            # commit's base is stale, so the meta leader rebases and merges it.
            stale = second.open_database("phases").new_transaction()
            stale.set_root_object("b", 1)
            db.run(lambda tr: tr.set_root_object("a", 1))
            stale.commit()
        tr = first.open_database("phases").new_read_only_transaction()
        assert (tr.get_root_object("a"), tr.get_root_object("b")) == (1, 1)
        tr.abort()
    after = scrape(local_cluster.url(leader))

    def grew(family: str, sample: str, **labels: str) -> float:
        return family_total(after[family], sample, **labels) - family_total(
            before[family], sample, **labels
        )

    phase = "protobase_commit_phase_seconds"
    assert grew(phase, phase + "_count", phase="cas") >= 4
    assert grew(phase, phase + "_count", phase="fsync") >= 1
    puts_after = sum(
        family_total(scrape(url)[phase], phase + "_count", phase="put_batch") for url in urls
    )
    assert puts_after >= puts_before + 4  # every commit puts its batch on a partition leader
    assert grew("protobase_rebases", "protobase_rebases_total") >= 1
    assert grew("protobase_merges", "protobase_merges_total") >= 1
    assert (
        grew(
            "protobase_http_request_seconds",
            "protobase_http_request_seconds_count",
            route="/v1/commit",
        )
        >= 4
    )
    assert grew("protobase_transport_sent_bytes", "protobase_transport_sent_bytes_total") > 0
    assert family_total(after["protobase_partition_atoms"], "protobase_partition_atoms") > 0
    sizes = {s.labels["group"]: s.value for s in after["protobase_partition_bytes"]}
    assert set(sizes) == {f"partition-{p}" for p in range(4)} and min(sizes.values()) > 0
    caches = {s.labels["cache"] for s in after["protobase_atom_cache_hits"]}
    assert caches == {"objects", "entries"}
    # The rebase read the stale commit's base through the node's object space.
    lookups = sum(
        family_total(after[f"protobase_atom_cache_{kind}"], f"protobase_atom_cache_{kind}_total")
        for kind in ("hits", "misses")
    )
    assert lookups > 0
    for family in ("protobase_raft_proposals_dropped", "protobase_raft_snapshot_sends"):
        assert {s.labels["group"] for s in after[family]} >= {"meta", "partition-0"}
    for family in ("protobase_transport_reconnects", "protobase_transport_auth_failures"):
        assert family in after
    assert family_total(after["process_resident_memory_bytes"], "process_resident_memory_bytes") > 0
