"""`protobase.metrics.register_metrics`: an embedded space's metrics, scraped over HTTP."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from protobase import ConflictError, ObjectSpace, StandaloneFileStorage
from protobase.metrics import register_metrics


def scrape(port: int) -> dict[str, list[Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def sample(families: dict[str, list[Any]], family: str, name: str, **labels: str) -> float:
    found = [
        s.value for s in families[family] if s.name == name and s.labels.items() >= labels.items()
    ]
    assert len(found) == 1, f"{name} {labels}: {found}"
    return float(found[0])


def test_commits_conflicts_merges_phases_and_cache_are_exported(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    with ObjectSpace(StandaloneFileStorage(tmp_path / "db")) as space:
        metrics = register_metrics(space, registry)
        server, thread = prometheus_client.start_http_server(0, "127.0.0.1", registry)
        try:
            db = space.new_database("app")
            for n in range(5):
                db.run(lambda tr, n=n: tr.set_root_object("n", n))
            # Different roots on one base: the second is merged onto the first.
            first, second = db.new_transaction(), db.new_transaction()
            first.set_root_object("a", 1)
            second.set_root_object("b", 2)
            first.commit()
            second.commit()
            # The same root on one base: the second conflicts.
            first, second = db.new_transaction(), db.new_transaction()
            first.set_root_object("a", 3)
            second.set_root_object("a", 4)
            first.commit()
            with pytest.raises(ConflictError):
                second.commit()
            found = scrape(server.server_port)
        finally:
            server.shutdown()
            thread.join()
            metrics.stop()

    commits = "protobase_commits_total"
    # new_database, five runs, two merged, one first: 9 committed.
    assert sample(found, "protobase_commits", commits, outcome="committed") == 9
    assert sample(found, "protobase_commits", commits, outcome="conflict") == 1
    assert sample(found, "protobase_commits", commits, outcome="failed") == 0
    assert sample(found, "protobase_merges", "protobase_merges_total") >= 1
    assert sample(found, "protobase_commit_seconds", "protobase_commit_seconds_count") == 9
    phases = "protobase_commit_phase_seconds"
    assert sample(found, phases, phases + "_count", phase="cas") == 9
    assert sample(found, phases, phases + "_count", phase="fsync") == 9
    lookups = sample(
        found, "protobase_atom_cache_hits", "protobase_atom_cache_hits_total", cache="objects"
    ) + sample(
        found, "protobase_atom_cache_misses", "protobase_atom_cache_misses_total", cache="objects"
    )
    assert lookups > 0
    assert metrics.registry is registry and registry.get_sample_value(commits, {}) is None
    assert space.committer.stats.observe is None  # stop() unhooked it


def test_one_space_registers_once_and_names_are_not_shared(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    with (
        ObjectSpace(StandaloneFileStorage(tmp_path / "a")) as space,
        ObjectSpace(StandaloneFileStorage(tmp_path / "b")) as other,
    ):
        metrics = register_metrics(space, registry)
        with pytest.raises(ValueError, match="already exports"):
            register_metrics(space, CollectorRegistry())
        with pytest.raises(ValueError, match="Duplicated"):
            register_metrics(other, registry)
        assert other.committer.stats.observe is None  # the refused one observes nothing
        metrics.stop()
        again = register_metrics(other, registry)  # the names are free again
        other.new_database("x")
        assert registry.get_sample_value("protobase_commits_total", {"outcome": "committed"}) == 1
        again.stop()
