"""A node's Prometheus metrics (`GET /metrics`), in Prometheus's conventions.

Counters end in ``_total``, durations are histograms in seconds, and every
name starts with ``protobase_``. Each node has its own registry. The Raft
figures are read when Prometheus scrapes, so they are never stale:

- ``protobase_commits_total{outcome}``: commit requests this node answered
  as meta leader (``committed``, ``conflict``, ``failed``);
- ``protobase_commit_seconds``: their latency, as the node saw it;
- ``protobase_rebases_total``: commits that were rebased here;
- ``protobase_http_requests_total{route,status}``;
- ``protobase_raft_term``, ``protobase_raft_commit_index``,
  ``protobase_raft_applied_index``, ``protobase_raft_is_leader``,
  ``protobase_raft_has_leader`` (0 while the group has no leader this node
  knows of), ``protobase_raft_follower_lag_entries`` (on the leader: the
  entries its furthest-behind voter lacks), ``protobase_raft_leader_changes_total``,
  per ``group``;
- ``protobase_fsync_seconds``: the Raft log's syncs (one per group commit);
- ``protobase_disk_free_bytes``, ``protobase_disk_size_bytes``: the file
  system of the data directory;
- with an ``[s3]`` cold tier: ``protobase_s3_uploads_total{kind}``
  (``entries``, ``meta``), ``protobase_s3_uploaded_bytes_total``,
  ``protobase_s3_upload_failures_total``, ``protobase_s3_fetches_total``
  (entry objects read back), ``protobase_s3_backlog_entries`` (applied
  here, not yet uploaded), ``protobase_s3_uploaded_through{group}``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
        yield from (term, commit, applied, leader, changes, has_leader, lag)


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
        cold_status: Callable[[], dict[str, Any]] | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.commits = Counter(
            "protobase_commits",
            "Commit requests answered as meta leader",
            ["outcome"],
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "protobase_commit_seconds",
            "Commit latency at the meta leader",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        self.rebases = Counter(
            "protobase_rebases", "Commits rebased on this node", registry=self.registry
        )
        self.http = Counter(
            "protobase_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.fsync_seconds = Histogram(
            "protobase_fsync_seconds",
            "Syncs of the Raft log (each makes a group of appends durable)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
            registry=self.registry,
        )
        self.registry.register(_RaftCollector(statuses))
        if data_dir is not None:
            self.registry.register(_DiskCollector(data_dir))
        if cold_status is not None:
            self.registry.register(_ColdTierCollector(cold_status))

    def render(self) -> bytes:
        return generate_latest(self.registry)
