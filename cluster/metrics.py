"""A node's Prometheus metrics (`GET /metrics`), in Prometheus's conventions.

Counters end in ``_total``, durations are histograms in seconds, sizes are
bytes, and every name starts with ``protobase_`` (plus the standard
``process_*`` figures of the node's process). Each node has its own
registry. Figures kept elsewhere (Raft, the transport, the partitions, the
cold tier) are read when Prometheus scrapes, so they are never stale.

Commits (`protobase.metrics` exports the same commit and cache names from an
embedded process):

- ``protobase_commits_total{outcome}``: commit requests this node answered
  as meta leader (``committed``, ``conflict``, ``failed``);
- ``protobase_commit_seconds``: their latency, as the node saw it;
- ``protobase_commit_phase_seconds{phase}``: ``put_batch`` (a batch's
  entries proposed and applied in its partition group, on the partition
  leader), ``cas`` (the root change proposed and applied in the meta group),
  ``fsync`` (each sync of the Raft log, which makes a group of appends
  durable);
- ``protobase_rebases_total``: commits whose base was stale and which were
  rebased here; ``protobase_merges_total``: those whose changes were merged
  onto the newer root (the rest failed with a conflict);
- ``protobase_atom_cache_hits_total{cache}``, ``..._misses_total{cache}``:
  ``objects`` (the atoms of the object spaces that rebase here) and
  ``entries`` (decoded partition log entries that atom reads are served from).

Raft, per ``group`` (``meta``, ``partition-N``):

- ``protobase_raft_term``, ``protobase_raft_commit_index``,
  ``protobase_raft_applied_index``, ``protobase_raft_is_leader``,
  ``protobase_raft_has_leader`` (0 while the group has no leader this node
  knows of), ``protobase_raft_follower_lag_entries`` (on the leader: the
  entries its furthest-behind voter lacks), ``protobase_raft_leader_changes_total``,
  ``protobase_raft_proposals_dropped_total`` (refused, or overwritten by a new
  leader), ``protobase_raft_snapshot_sends_total`` (snapshot transfers started
  as leader);
- ``protobase_fsync_seconds``: the Raft log's syncs (the same observations
  as the ``fsync`` phase);
- ``protobase_transport_sent_bytes_total``, ``..._received_bytes_total``,
  ``..._reconnects_total``, ``..._auth_failures_total`` (handshakes refused:
  a wrong secret, or a wiped member's new incarnation),
  ``..._dropped_messages_total`` (a peer's send queue was full).

Storage and service:

- ``protobase_partition_atoms{group}``: atoms stored in the partition;
  ``protobase_partition_bytes{group}``: its Raft log and snapshot on this
  node's disk;
- ``protobase_http_requests_total{route,status}`` and
  ``protobase_http_request_seconds{route}``;
- ``protobase_disk_free_bytes``, ``protobase_disk_size_bytes``: the file
  system of the data directory;
- with an ``[s3]`` cold tier: ``protobase_s3_uploads_total{kind}``
  (``entries``, ``meta``), ``protobase_s3_uploaded_bytes_total``,
  ``protobase_s3_upload_failures_total``, ``protobase_s3_fetches_total``
  (entry objects read back), ``protobase_s3_backlog_entries`` and
  ``protobase_s3_backlog_bytes`` (applied here, not yet uploaded),
  ``protobase_s3_evicted_entries_total`` (uploaded entries released to
  compaction under the disk budget), ``protobase_s3_uploaded_through{group}``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)
"""Seconds: from a fast fsync to a commit that waited out an election."""


class _RaftCollector(Collector):
    """Reads every group's status when scraped."""

    def __init__(self, statuses: Callable[[], list[dict[str, Any]]]) -> None:
        self._statuses = statuses

    def collect(self) -> Iterator[Any]:
        term = GaugeMetricFamily("protobase_raft_term", "Current Raft term", labels=["group"])
        commit = GaugeMetricFamily(
            "protobase_raft_commit_index", "Highest log index known committed", labels=["group"]
        )
        applied = GaugeMetricFamily(
            "protobase_raft_applied_index", "Highest log index applied here", labels=["group"]
        )
        leader = GaugeMetricFamily(
            "protobase_raft_is_leader", "1 when this node leads the group", labels=["group"]
        )
        changes = CounterMetricFamily(
            "protobase_raft_leader_changes",
            "Leader changes this node has seen",
            labels=["group"],
        )
        has_leader = GaugeMetricFamily(
            "protobase_raft_has_leader",
            "1 when this node knows a leader of the group",
            labels=["group"],
        )
        lag = GaugeMetricFamily(
            "protobase_raft_follower_lag_entries",
            "On the leader: entries its furthest-behind voter lacks",
            labels=["group"],
        )
        dropped = CounterMetricFamily(
            "protobase_raft_proposals_dropped",
            "Proposals made here that were refused or overwritten by a new leader",
            labels=["group"],
        )
        snapshot_sends = CounterMetricFamily(
            "protobase_raft_snapshot_sends",
            "Snapshot transfers this node started as leader",
            labels=["group"],
        )
        for status in self._statuses():
            group = [status["name"]]
            term.add_metric(group, status["term"])
            commit.add_metric(group, status["commit"])
            applied.add_metric(group, status["applied"])
            leader.add_metric(group, 1 if status["role"] == "leader" else 0)
            changes.add_metric(group, status.get("leader_changes", 0))
            has_leader.add_metric(group, 1 if status.get("leader") else 0)
            if status.get("follower_lag") is not None:
                lag.add_metric(group, status["follower_lag"])
            dropped.add_metric(group, status["proposals_dropped"])
            snapshot_sends.add_metric(group, status["snapshot_sends"])
        yield from (
            term, commit, applied, leader, changes, has_leader, lag, dropped, snapshot_sends
        )  # fmt: skip


class _NodeCollector(Collector):
    """The transport's counters, partition sizes and the atom caches, read when scraped.

    `figures()` returns ``{"transport": {sent_bytes, received_bytes, reconnects,
    auth_failures, dropped_messages}, "partitions": {group: (atoms, bytes)},
    "caches": {cache: (hits, misses)}}``.
    """

    def __init__(self, figures: Callable[[], dict[str, Any]]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Any]:
        figures = self._figures()
        transport = figures["transport"]
        for name, key, text in (
            ("sent_bytes", "sent_bytes", "Bytes sent to peers"),
            ("received_bytes", "received_bytes", "Bytes received from peers"),
            ("reconnects", "reconnects", "Connections made again with a peer"),
            ("auth_failures", "auth_failures", "Peer handshakes that failed"),
            ("dropped_messages", "dropped_messages", "Messages dropped: a peer's queue was full"),
        ):
            yield CounterMetricFamily(f"protobase_transport_{name}", text, value=transport[key])
        atoms = GaugeMetricFamily(
            "protobase_partition_atoms", "Atoms stored in the partition", labels=["group"]
        )
        size = GaugeMetricFamily(
            "protobase_partition_bytes",
            "The partition's Raft log and snapshot on this node's disk",
            labels=["group"],
        )
        for group, (count, disk) in figures["partitions"].items():
            atoms.add_metric([group], count)
            size.add_metric([group], disk)
        yield from (atoms, size)
        hits = CounterMetricFamily(
            "protobase_atom_cache_hits", "Atom reads served from memory", labels=["cache"]
        )
        misses = CounterMetricFamily(
            "protobase_atom_cache_misses", "Atom reads that missed the cache", labels=["cache"]
        )
        for cache, (hit, miss) in figures["caches"].items():
            hits.add_metric([cache], hit)
            misses.add_metric([cache], miss)
        yield from (hits, misses)


class _DiskCollector(Collector):
    """The data directory's file system, read when scraped."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def collect(self) -> Iterator[Any]:
        stats = os.statvfs(self._directory)
        yield GaugeMetricFamily(
            "protobase_disk_free_bytes",
            "Bytes available to this node on its data directory's file system",
            value=stats.f_bavail * stats.f_frsize,
        )
        yield GaugeMetricFamily(
            "protobase_disk_size_bytes",
            "Size of the data directory's file system",
            value=stats.f_blocks * stats.f_frsize,
        )


class _ColdTierCollector(Collector):
    """Reads the cold tier's status when scraped."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Any]:
        status = self._status()
        uploads = CounterMetricFamily(
            "protobase_s3_uploads", "Objects uploaded to the cold tier", labels=["kind"]
        )
        for kind, count in status["uploads"].items():
            uploads.add_metric([kind], count)
        yield uploads
        yield CounterMetricFamily(
            "protobase_s3_uploaded_bytes",
            "Bytes uploaded to the cold tier",
            value=status["uploaded_bytes"],
        )
        yield CounterMetricFamily(
            "protobase_s3_upload_failures",
            "Cold tier rounds that failed",
            value=status["failures"],
        )
        yield CounterMetricFamily(
            "protobase_s3_fetches",
            "Entry objects read back from S3",
            value=status["fetches"],
        )
        yield GaugeMetricFamily(
            "protobase_s3_backlog_entries",
            "Entries applied here and not yet in S3",
            value=status["backlog_entries"],
        )
        yield GaugeMetricFamily(
            "protobase_s3_backlog_bytes",
            "Data bytes of the entries applied here and not yet in S3",
            value=status["backlog_bytes"],
        )
        yield CounterMetricFamily(
            "protobase_s3_evicted_entries",
            "Uploaded entries released to compaction under the disk budget",
            value=status["evicted_entries"],
        )
        through = GaugeMetricFamily(
            "protobase_s3_uploaded_through",
            "Every entry up to this index is in S3",
            labels=["group"],
        )
        for group, state in status["groups"].items():
            through.add_metric([f"partition-{int(group) - 1}"], state["uploaded_through"])
        yield through


class NodeMetrics:
    """The metrics of one node; see the module docstring."""

    def __init__(
        self,
        statuses: Callable[[], list[dict[str, Any]]],
        figures: Callable[[], dict[str, Any]],
        cold_status: Callable[[], dict[str, Any]] | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.commits = Counter(
            "protobase_commits",
            "Commit requests answered as meta leader",
            ["outcome"],
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "protobase_commit_seconds",
            "Commit latency at the meta leader",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.commit_phase_seconds = Histogram(
            "protobase_commit_phase_seconds",
            "Commit phases on this node: put_batch, cas, fsync",
            ["phase"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        for phase in ("put_batch", "cas", "fsync"):
            self.commit_phase_seconds.labels(phase)
        self.rebases = Counter(
            "protobase_rebases", "Commits rebased on this node", registry=self.registry
        )
        self.merges = Counter(
            "protobase_merges",
            "Rebased commits whose changes were merged onto the newer root",
            registry=self.registry,
        )
        self.http = Counter(
            "protobase_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.http_seconds = Histogram(
            "protobase_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.fsync_seconds = Histogram(
            "protobase_fsync_seconds",
            "Syncs of the Raft log (each makes a group of appends durable)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
            registry=self.registry,
        )
        self.registry.register(_RaftCollector(statuses))
        self.registry.register(_NodeCollector(figures))
        if data_dir is not None:
            self.registry.register(_DiskCollector(data_dir))
        if cold_status is not None:
            self.registry.register(_ColdTierCollector(cold_status))

    def render(self) -> bytes:
        return generate_latest(self.registry)
