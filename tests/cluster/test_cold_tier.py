"""The cluster's S3 cold tier, on 3 real nodes and a real S3 server (moto_server).

S3 is reached through a TCP proxy, so that an outage can be made (and
ended) without losing moto's in-memory objects. The nodes seal small log
segments, snapshot often and have a tiny disk budget, so that eviction and
bootstrap from S3 happen within seconds.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import LocalCluster

from cluster.cold_tier import (
    ENTRIES_MAGIC,
    META_MAGIC,
    coverage,
    decode_entries,
    parse_entries_key,
    unframe,
)
from cluster.meta import MetaMachine
from protobase import ClusterFileStorage, DBObject, ObjectSpace
from protobase.s3 import Bucket, S3Location

PARTITION_GROUPS = (1, 2)


class PinnedStorage(ClusterFileStorage):
    """Sends every request but the meta leader's to the first URL it was given:
    reads of the groups that node holds are served from its own replica."""

    def _pick(self, meta: bool) -> str:
        if meta and self._meta_url is not None:
            return self._meta_url
        return self._urls[0]


class Blob(DBObject):
    """One atom of its own, in the batch of the commit that made it."""


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def s3_proxy(s3_server: Any) -> Iterator[Any]:
    """A TCP proxy in front of moto_server that can cut S3 off (an outage) and heal."""
    from s3server import fault_proxy

    with fault_proxy(s3_server) as net:
        yield net


@pytest.fixture(scope="module")
def tiered(
    tmp_path_factory: pytest.TempPathFactory, s3_server: Any, s3_proxy: Any
) -> Iterator[tuple[LocalCluster, Bucket]]:
    bucket_name = s3_server.new_bucket()
    host, port = s3_proxy.address(1, 0)
    cluster = LocalCluster(
        tmp_path_factory.mktemp("tiered"),
        nodes=3,
        partitions=2,
        spare=1,
        extra_config="snapshot_every = 20\nkeep_entries = 5\nlog_segment_bytes = 16384\n",
        tables=(
            "[s3]\n"
            f'bucket = "{bucket_name}"\n'
            'prefix = "tier"\n'
            f'endpoint = "http://{host}:{port}"\n'
            "upload_interval = 0.3\n"
            "object_bytes = 65536\n"
            "disk_budget_bytes = 40000\n"
            "meta_snapshot_interval = 0.5\n"
        ),
    )
    try:
        cluster.start()
        cluster.wait_ready()
        yield cluster, Bucket.open(S3Location(bucket_name, "tier"), s3_server.endpoint)
    finally:
        cluster.stop()


def write_objects(
    cluster: LocalCluster, space: str, count: int, size: int, urls: Any = None
) -> None:
    storage = cluster.storage(space=space, urls=urls)
    with ObjectSpace(storage) as opened:
        db = (
            opened.open_database("db")
            if "db" in opened.list_databases()
            else opened.new_database("db")
        )
        for i in range(count):
            with db.transaction() as tr:
                tr.set_root_object(f"k{i}", Blob(payload=f"{i}:" + "x" * size))


def read_objects(cluster: LocalCluster, space: str, count: int, size: int, urls: Any) -> None:
    storage = cluster.storage(space=space, urls=urls)
    with ObjectSpace(storage) as opened, opened.open_database("db").transaction() as tr:
        for i in range(count):
            assert tr.get_root_object(f"k{i}").payload == f"{i}:" + "x" * size


def uploaded_ranges(bucket: Bucket, group: int) -> list[tuple[int, int]]:
    found = []
    for key, _ in bucket.list_objects(bucket.key(f"partitions/group-{group:04d}/")):
        parsed = parse_entries_key(key.rsplit("/", 1)[-1])
        assert parsed is not None, f"an object that is not ours: {key}"
        found.append(parsed)
    return found


def caught_up(cluster: LocalCluster, nodes: Any = (1, 2, 3)) -> bool:
    for node in nodes:
        state = cluster.status(node)["s3"]
        if state["backlog_entries"] != 0:
            return False
    return True


def test_committed_entries_and_meta_state_reach_s3(tiered: tuple[LocalCluster, Bucket]) -> None:
    cluster, bucket = tiered
    write_objects(cluster, "uploads", 30, 100)
    wait_for(lambda: caught_up(cluster), 30, "every node's backlog to reach 0")
    for group in PARTITION_GROUPS:
        ranges = uploaded_ranges(bucket, group)
        applied = cluster.status(1)["s3"]["groups"][str(group)]["applied"]
        assert coverage(ranges) >= applied
        first, last = ranges[0]
        key = bucket.key(f"partitions/group-{group:04d}/{first:020d}-{last:020d}.pbe")
        entries = decode_entries(bucket.get(key), key, first, last)
        assert sorted(entries) == list(range(first, last + 1))

    def newest_meta_state() -> Any:
        metas = [key for key, _ in bucket.list_objects(bucket.key("meta/"))]
        if not metas:
            return None
        snapshot = unframe(bucket.get(metas[-1]), META_MAGIC, metas[-1])
        machine = MetaMachine()
        machine.restore_bytes(snapshot["state"])
        uploads = machine.state.spaces.get("uploads")
        # The state is uploaded now and then: one may hold the first commits only.
        return machine.state if uploads is not None and uploads.version >= 30 else None

    state = wait_for(newest_meta_state, 30, "a meta snapshot holding all 30 commits")
    assert state.spaces["uploads"].version >= 30
    with urllib.request.urlopen(cluster.url(1) + "/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'protobase_s3_uploads_total{kind="entries"}' in text
    assert "protobase_s3_backlog_entries 0.0" in text


def test_a_damaged_entries_object_fails_its_checksum(tiered: tuple[LocalCluster, Bucket]) -> None:
    cluster, bucket = tiered
    write_objects(cluster, "damaged", 3, 10)
    wait_for(lambda: caught_up(cluster), 30, "the backlog to reach 0")
    first, last = uploaded_ranges(bucket, 1)[0]
    key = bucket.key(f"partitions/group-0001/{first:020d}-{last:020d}.pbe")
    data = bytearray(bucket.get(key))
    data[-1] ^= 1
    from cluster.cold_tier import ColdTierError

    with pytest.raises(ColdTierError, match="checksum"):
        unframe(bytes(data), ENTRIES_MAGIC, key)


def test_an_s3_outage_never_blocks_commits_and_the_backlog_catches_up(
    tiered: tuple[LocalCluster, Bucket], s3_proxy: Any
) -> None:
    cluster, _ = tiered
    wait_for(lambda: caught_up(cluster), 30, "the backlog to reach 0")
    s3_proxy.isolate(0)
    try:
        write_objects(cluster, "outage", 40, 200)  # commits go on while S3 is away
        states = [cluster.status(node)["s3"] for node in (1, 2, 3)]
        assert sum(state["backlog_entries"] for state in states) > 0
        # Each write is a batch of 200 bytes or more, none uploaded: their bytes show.
        assert sum(state["backlog_bytes"] for state in states) >= 40 * 200, states
        wait_for(
            lambda: any(cluster.status(n)["s3"]["failures"] > 0 for n in (1, 2, 3)),
            30,
            "the failed uploads to show in /status.json",
        )
    finally:
        s3_proxy.heal()
    wait_for(lambda: caught_up(cluster), 60, "the backlog to catch up after S3 came back")
    read_objects(cluster, "outage", 40, 200, cluster.urls)


# The backup tests come before the tests that write hundreds of 2 kB commits
# (eviction, far behind, new member): a backup copies, verifies and restores
# the whole tier, so there it costs seconds per test instead of tens. A backup
# reads the tier only (never a node's log), so what the nodes evicted later
# would not change what these tests exercise.


def test_a_cluster_backup_restores_into_new_data_directories(
    tiered: tuple[LocalCluster, Bucket], s3_server: Any, tmp_path: Path
) -> None:
    from harness import free_port_base

    from cluster.backup import backup_cluster, restore_cluster, verify_cluster
    from protobase.cluster_cli import start_node, stop_processes, wait_ready

    cluster, _ = tiered
    endpoint = s3_server.endpoint
    destination = S3Location(s3_server.new_bucket(), "backups")
    write_objects(cluster, "saved", 20, 300)
    first = backup_cluster(cluster.url(2), cluster.token, destination, endpoint)
    assert first.copied == first.objects > 0
    assert first.spaces["saved"] >= 20
    write_objects(cluster, "saved-later", 10, 300)
    second = backup_cluster(cluster.url(1), cluster.token, destination, endpoint)
    assert second.meta_index > first.meta_index
    assert 0 < second.copied < second.objects  # incremental: what the first copied stays
    verified = verify_cluster(destination, endpoint)
    assert verified.clean, verified.problems
    assert verified.atoms_checked > 0

    def restored_cluster(directory: Path, at: int | None) -> list[str]:
        base = free_port_base(3)
        report = restore_cluster(
            destination, directory, at_index=at, base_port=base, endpoint_url=endpoint
        )
        assert report.spaces["saved"] == first.spaces["saved"]
        return [f"http://127.0.0.1:{base + k}" for k in (1, 2, 3)]

    urls = restored_cluster(tmp_path / "latest", None)
    processes = [
        start_node(tmp_path / "latest" / f"node{k}.toml", tmp_path / f"again{k}.log")
        for k in (1, 2, 3)
    ]
    try:
        wait_ready(urls)
        again = LocalCluster.__new__(LocalCluster)
        again.token = (tmp_path / "latest" / "client.token").read_text().strip()
        again.base = int(urls[0].rsplit(":", 1)[1]) - 1
        again.nodes = 3
        read_objects(again, "saved", 20, 300, urls)
        read_objects(again, "saved-later", 10, 300, urls[2:])
    finally:
        stop_processes(processes)
    # --at is tested through the command line (the test after the next): each
    # restore starts a cluster, and the suite has a time budget.


def test_verify_finds_a_damaged_cluster_backup(
    tiered: tuple[LocalCluster, Bucket], s3_server: Any
) -> None:
    from cluster.backup import backup_cluster, verify_cluster

    cluster, _ = tiered
    destination = S3Location(s3_server.new_bucket(), "backups")
    write_objects(cluster, "to-damage", 5, 300)
    backup_cluster(cluster.url(1), cluster.token, destination, s3_server.endpoint)
    target = Bucket.open(destination, s3_server.endpoint)
    key = next(k for k, _ in target.list_objects(target.key("partitions/")))
    data = bytearray(target.get(key))
    data[len(data) // 2] ^= 0x10
    target.put(key, bytes(data))
    verified = verify_cluster(destination, s3_server.endpoint)
    assert not verified.clean
    assert any("checksum" in problem for problem in verified.problems)


def test_cluster_backup_verify_and_restore_from_the_command_line(
    tiered: tuple[LocalCluster, Bucket], s3_server: Any, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from harness import free_port_base

    cluster, _ = tiered
    write_objects(cluster, "by-cli", 3, 100)
    location = f"s3://{s3_server.new_bucket()}/cli"
    token_file = cluster.directory / "client.token"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "protobase.cli", *args],
            capture_output=True,
            text=True,
            timeout=300,
        )

    result = run("backup", cluster.url(3), location, "--token-file", str(token_file))
    assert result.returncode == 0, result.stderr
    assert "as of meta index" in result.stdout and "by-cli v4" in result.stdout
    earlier = int(result.stdout.split("as of meta index ")[1].split()[0])
    write_objects(cluster, "by-cli-later", 2, 100)
    result = run("backup", cluster.url(1), location, "--token-file", str(token_file))
    assert result.returncode == 0 and "by-cli-later v3" in result.stdout, result.stderr
    result = run("backup", cluster.url(3), location)  # no token: told how to give one
    assert result.returncode != 0 and "--token-file" in result.stderr
    result = run("backup", "verify", location)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("clean")
    # --at the first backup's meta index: the later space did not exist yet.
    base = free_port_base(3)
    result = run(
        "restore",
        location,
        str(tmp_path / "restored"),
        "--base-port",
        str(base),
        "--at",
        str(earlier),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"as of meta index {earlier} " in result.stdout
    assert "by-cli (was v4)" in result.stdout and "by-cli-later" not in result.stdout
    assert f"protobase cluster up {tmp_path / 'restored'}" in result.stdout
    assert sorted(p.name for p in (tmp_path / "restored").glob("node*.toml")) == [
        "node1.toml",
        "node2.toml",
        "node3.toml",
    ]


def test_evicted_entries_are_read_back_from_s3(tiered: tuple[LocalCluster, Bucket]) -> None:
    cluster, bucket = tiered
    before = cluster.status(1)["s3"]["groups"]
    write_objects(cluster, "evicted", 150, 2000)

    def evicted() -> list[str]:
        # Commits land in the partitions the meta leader leads (ClusterFileStorage
        # picks such transaction ids), so one group may hold all of them.
        groups = cluster.status(1)["s3"]["groups"]
        return [g for g in groups if groups[g]["keep_from"] > before[g]["keep_from"]]

    evicting = wait_for(evicted, 60, "node 1 to evict uploaded entries")
    assert cluster.status(1)["s3"]["evicted_entries"] > 0
    # New snapshots compact the log up to keep_from; a few more commits bring them.
    write_objects(cluster, "evicted-more", 60, 2000)

    def uploaded_bytes(group: int) -> int:
        prefix = bucket.key(f"partitions/group-{group:04d}/")
        return sum(size for _, size in bucket.list_objects(prefix))

    def small_logs() -> bool:
        groups = cluster.status(1)["s3"]["groups"]
        # A log over its budget keeps about one snapshot interval of entries.
        small = all(
            groups[g]["log_bytes"] < max(100_000, uploaded_bytes(int(g)) / 2) for g in evicting
        )
        if not small:
            # Compaction happens at snapshots, which only new entries bring: under
            # load the uploads (and so keep_from) can lag behind the writes above.
            write_objects(cluster, "evicted-more", 10, 2000)
        return small

    wait_for(small_logs, 60, "node 1's partition logs to shrink")
    read_objects(cluster, "evicted", 150, 2000, [cluster.url(1)])
    # Node 1 reads an evicted entry back itself, or (when its listing of the
    # tier is not fresh) asks the partition's leader, which reads it back.
    assert sum(cluster.status(n)["s3"]["fetches"] for n in (1, 2, 3)) > 0


def test_a_node_far_behind_starts_from_s3(tiered: tuple[LocalCluster, Bucket]) -> None:
    cluster, _ = tiered
    before = cluster.status(3)["s3"]["groups"]
    cluster.kill(3)
    cluster.wait_exit(3, 10)
    write_objects(cluster, "behind", 200, 2000, cluster.urls[:2])
    wait_for(lambda: caught_up(cluster, (1, 2)), 60, "the backlog to reach 0")
    write_objects(cluster, "behind-more", 40, 2000, cluster.urls[:2])
    wait_for(lambda: caught_up(cluster, (1, 2)), 60, "the backlog to reach 0")
    cluster.start(3)
    cluster.wait_ready([3])
    cluster.wait_converged(60)
    # 240 commits went by while node 3 was down, and the leaders evicted them:
    # node 3 took a snapshot, and its log starts after what it had applied.
    after = cluster.status(3)["s3"]["groups"]
    assert any(
        after[g]["log_first_index"] > before[g]["applied"] + 1
        for g in after
        if after[g]["applied"] > before[g]["applied"] + 100
    ), (before, after)
    read_objects(cluster, "behind", 200, 2000, [cluster.url(3)])
    assert cluster.status(3)["s3"]["fetches"] > 0


def test_sigkill_during_uploads_loses_nothing(
    tiered: tuple[LocalCluster, Bucket], s3_proxy: Any
) -> None:
    cluster, bucket = tiered
    wait_for(lambda: caught_up(cluster), 60, "the backlog to reach 0")
    s3_proxy.slow(0.3)  # uploads take a while: the kill lands while some are in flight
    try:
        write_objects(cluster, "killed", 60, 500)
        leaders = {cluster.leader_of(group) for group in PARTITION_GROUPS}
        for node in leaders:
            cluster.kill(node)
            cluster.wait_exit(node, 10)
    finally:
        s3_proxy.heal()
    for node in leaders:
        cluster.start(node)
    cluster.wait_ready()
    cluster.wait_converged(60)
    wait_for(lambda: caught_up(cluster), 60, "the uploads to resume and catch up")
    for group in PARTITION_GROUPS:
        applied = max(cluster.status(n)["s3"]["groups"][str(group)]["applied"] for n in (1, 2, 3))
        assert coverage(uploaded_ranges(bucket, group)) >= applied
    read_objects(cluster, "killed", 60, 500, cluster.urls)


def test_a_prefix_of_another_cluster_is_left_alone(
    tiered: tuple[LocalCluster, Bucket], s3_server: Any, tmp_path: Path
) -> None:
    import asyncio

    from cluster.cold_tier import ColdTier
    from cluster.config import S3Settings

    cluster, bucket = tiered
    owner = cluster.directory.name  # `cluster up` names a cluster after its directory
    settings = S3Settings(bucket.name, "tier", s3_server.endpoint)
    stranger = ColdTier(settings, None, {}, lambda: None, tmp_path, lambda g: False, "stranger")
    asyncio.run(stranger.round())
    assert stranger.refused is not None
    assert f"belongs to cluster {owner!r}, not 'stranger'" in stranger.refused
    assert stranger.status()["refused"] == stranger.refused
    assert all(cluster.status(n)["s3"]["refused"] is None for n in (1, 2, 3))


def test_a_new_member_catches_up_from_a_snapshot_and_s3(
    tiered: tuple[LocalCluster, Bucket],
) -> None:
    """A member added to groups whose replicas all evicted some entries gets a
    snapshot (its log starts after them); once it leads, reads through it get
    those atoms, read back from the tier. (Last in the module: the
    cluster has 4 members afterwards.)"""
    from protobase.membership_cli import admin_post, current_map, wait_added

    cluster, _ = tiered
    # Commits land in the partitions the meta leader leads: have it lead both,
    # so that both hold data (the new member gets one or both of them).
    meta_leader = cluster.leader_of(0)
    for group in PARTITION_GROUPS:
        body = {"group": group, "member": meta_leader, "timeout": 10.0}
        admin_post(cluster.url(1), "/v1/admin/groups/transfer", body, cluster.token)
        wait_for(lambda g=group: cluster.leader_of(g) == meta_leader, 30, f"a leader of {group}")
    write_objects(cluster, "joining", 100, 2000)
    written = {g: cluster.status(1)["s3"]["groups"][str(g)]["applied"] for g in PARTITION_GROUPS}

    def compacted() -> bool:
        # No replica's log holds the entries written above any more: a new
        # replica can only get them from S3. Compaction comes with snapshots,
        # which new entries bring.
        done = all(
            cluster.status(n)["s3"]["groups"][str(g)]["log_first_index"] > written[g]
            for n in (1, 2, 3)
            for g in PARTITION_GROUPS
        )
        if not done:
            write_objects(cluster, "joining-more", 10, 2000)
        return done

    wait_for(compacted, 90, "the replicas to compact the entries away")
    member = cluster.add_member(join=1)
    wait_added(cluster.url(1), cluster.token, member, 120, lambda line: None)
    placement = current_map(cluster.url(1), cluster.token)["placement"]
    mine = [g for g in PARTITION_GROUPS if member in placement[g]]
    assert mine, placement  # 3 groups x 3 replicas over 4 members: it holds 2
    for group in mine:
        state = cluster.status(member)["s3"]["groups"][str(group)]
        assert state["log_first_index"] > written[group], state  # a snapshot, then S3
        body = {"group": group, "member": member, "timeout": 10.0}
        admin_post(cluster.url(1), "/v1/admin/groups/transfer", body, cluster.token)
        wait_for(lambda g=group: cluster.leader_of(g) == member, 30, f"{member} to lead {group}")
    # Every request to the new member (which forwards what it does not hold).
    nodes = (1, 2, 3, member)
    fetched = sum(cluster.status(n)["s3"]["fetches"] for n in nodes)
    pinned = PinnedStorage([cluster.url(member)], token=cluster.token, space="joining")
    with ObjectSpace(pinned) as opened, opened.open_database("db").transaction() as tr:
        for i in range(100):
            assert tr.get_root_object(f"k{i}").payload == f"{i}:" + "x" * 2000
    # No replica's log holds those entries: they were read back from S3, by the
    # new member or by a replica it asked (which one is left to the cluster).

    assert sum(cluster.status(n)["s3"]["fetches"] for n in nodes) > fetched
