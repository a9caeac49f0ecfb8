"""Prometheus metrics of an embedded object space, in one call.

A cluster node exports its metrics at ``GET /metrics``. An application that
embeds ProtoBase exports the same commit and cache figures from its own
process::

    import prometheus_client
    from protobase.metrics import register_metrics

    register_metrics(space)                   # into prometheus_client's default registry
    prometheus_client.start_http_server(9464, addr="127.0.0.1")  # if the app has no /metrics yet

The names are the node's (see `cluster.metrics`), so one dashboard serves both:

- ``protobase_commits_total{outcome}``: ``committed``, ``conflict`` (the
  commit raised ConflictError), ``failed`` (any other error);
- ``protobase_commit_seconds``: the latency of successful commits;
- ``protobase_commit_phase_seconds{phase}``: ``cas`` (merge, encode, write
  the batch and move the root) and, on storages that share syncs between
  threads (StandaloneFileStorage), ``fsync`` (the wait for durability);
- ``protobase_merges_total``: changes merged onto a root newer than their base;
- ``protobase_atom_cache_hits_total{cache="objects"}``,
  ``protobase_atom_cache_misses_total{cache="objects"}``: the space's atom cache.

Counters are read from the space when scraped; latencies are observed as
commits end (a few hundred nanoseconds each). Needs ``prometheus-client``
(the ``cluster`` extra, or installed on its own).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .space import ObjectSpace

LATENCY_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1)
"""Seconds: embedded commits take from tens of microseconds (memory) to a few syncs."""


class SpaceMetrics(Collector):
    """The metrics of one object space; made by `register_metrics`.

    Invariant: while registered, every commit of the space is counted once,
    under exactly one outcome.
    """

    def __init__(self, space: ObjectSpace, registry: CollectorRegistry) -> None:
        self._space = space
        self._stats = space.committer.stats
        if self._stats.observe is not None:
            raise ValueError("this object space already exports its metrics")
        self.registry = registry
        self.commit_seconds = Histogram(
            "protobase_commit_seconds",
            "Latency of successful commits",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.phase_seconds = Histogram(
            "protobase_commit_phase_seconds",
            "Commit phases: cas (merge, encode, write, move the root), fsync",
            ["phase"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )

    def _observe(self, phase: str, seconds: float) -> None:
        if phase == "total":
            self.commit_seconds.observe(seconds)
        else:
            self.phase_seconds.labels(phase).observe(seconds)

    def start(self) -> None:
        """Register in the registry and begin observing commits."""
        self.registry.register(self)
        self._stats.observe = self._observe

    def stop(self) -> None:
        """Stop observing and leave the registry."""
        self._stats.observe = None
        self.registry.unregister(self)

    def describe(self) -> Iterator[Any]:
        """The families `collect` yields, without samples: the registry refuses a
        second collector of the same names."""
        for family in self.collect():
            family.samples = []
            yield family

    def collect(self) -> Iterator[Any]:
        stats = self._stats
        commits = CounterMetricFamily("protobase_commits", "Commits by outcome", labels=["outcome"])
        commits.add_metric(["committed"], stats.committed)
        commits.add_metric(["conflict"], stats.conflicts)
        commits.add_metric(["failed"], stats.failed)
        yield commits
        yield CounterMetricFamily(
            "protobase_merges",
            "Changes merged onto a root newer than their base",
            value=stats.merges,
        )
        cache = self._space.atom_cache
        hits = CounterMetricFamily(
            "protobase_atom_cache_hits", "Atom reads served from memory", labels=["cache"]
        )
        hits.add_metric(["objects"], cache.hits)
        yield hits
        misses = CounterMetricFamily(
            "protobase_atom_cache_misses", "Atom reads that missed the cache", labels=["cache"]
        )
        misses.add_metric(["objects"], cache.misses)
        yield misses
        yield from self.commit_seconds.collect()
        yield from self.phase_seconds.collect()


def register_metrics(space: ObjectSpace, registry: CollectorRegistry = REGISTRY) -> SpaceMetrics:
    """Export `space`'s metrics from `registry` (prometheus_client's default one).

    One space per registry: the names carry no space label, so a second
    space needs a registry of its own. ``stop()`` on the result unregisters.

    Raises:
        ValueError: the space already exports its metrics, or the registry
            already holds these names.
    """
    metrics = SpaceMetrics(space, registry)
    metrics.start()
    return metrics
