"""ops/grafana: the dashboard generated as code, and the one cross-check of every query.

The checked-in ops/grafana/protobase.json must be what ops/grafana/dashboard.py
writes, and have the shape Grafana loads, on the data source that
docker-compose provisions. The cross-check scrapes the nodes of a live
cluster with every part (an S3 cold tier included) and fails if a query of
the dashboard or a rule of ops/alerts.yml names a metric that none of them
exports.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import LocalCluster
from prometheus_client.parser import text_string_to_metric_families
from tools import load_script

from protobase import DBObject, ObjectSpace

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
GENERATOR = OPS / "grafana" / "dashboard.py"
DATASOURCES = OPS / "compose" / "grafana" / "datasources" / "prometheus.yml"


generator = load_script(GENERATOR, "ops_grafana_dashboard")

METRIC = re.compile(r"\b(protobase_[a-z0-9_]+|process_[a-z0-9_]+|up)\b")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
MADE_BY_PROMETHEUS = frozenset({"up"})
"""Series Prometheus writes for each target it scrapes; no node exports them."""
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}
"""The series a metric family of each type gives Prometheus (other types: its own name)."""


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or `label_values` query) selects.

    Label values and other strings are dropped first, so `status="up"` names nothing.
    """
    return set(METRIC.findall(STRING.sub('""', expr)))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside a collapsed row included."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expr) for each query of the checked-in dashboard and of its variables."""
    dashboard = json.loads(generator.OUTPUT.read_text())
    queries = [
        (f"dashboard panel {panel['title']!r}", target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]
    queries += [
        (f"dashboard variable ${variable['name']}", variable["query"])
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    ]
    return queries


def rule_queries() -> list[tuple[str, str]]:
    """(where, expr) for each rule of ops/alerts.yml."""
    rules = yaml.safe_load((OPS / "alerts.yml").read_text())
    return [
        (f"alerts.yml {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def exported_names(text: str) -> set[str]:
    """The series names a /metrics page gives Prometheus.

    A family counts with or without samples: a labelled metric no child of
    which exists yet (upload failures on a healthy node) is still exported.
    The parser names a counter's family without `_total`, a histogram's
    without `_bucket`, `_sum` and `_count`: the suffixes come from its type.
    """
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SERIES_SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def test_the_checked_in_json_is_what_the_generator_writes() -> None:
    assert generator.render() == generator.OUTPUT.read_text(), (
        "ops/grafana/protobase.json is out of date: run `make dashboard`"
    )
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_check_refuses_a_stale_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "protobase.json"
    stale.write_text(generator.render().replace('"Commit latency"', '"Old title"'))
    assert generator.main(["--check", "--output", str(stale)]) == 1
    message = capsys.readouterr().err
    assert "run `make dashboard`" in message and '+      "title": "Commit latency"' in message
    assert generator.main(["--output", str(stale)]) == 0
    assert generator.main(["--check", "--output", str(stale)]) == 0


def test_the_json_is_a_dashboard_on_the_provisioned_data_source() -> None:
    dashboard = json.loads(generator.OUTPUT.read_text())
    provisioned = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert [source["name"] for source in provisioned] == [generator.DATASOURCE]
    assert dashboard["uid"] == "protobase" and dashboard["title"] == "ProtoBase"

    every = panels(dashboard)
    ids = [panel["id"] for panel in every]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    taken: set[tuple[int, int]] = set()
    for panel in every:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"panel {panel['title']!r} overlaps another"
        taken |= cells
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert panel["datasource"] == generator.DATASOURCE, panel["title"]
        targets = panel["targets"]
        assert targets, f"panel {panel['title']!r} has no query"
        assert all(t["expr"] and t["datasource"] == generator.DATASOURCE for t in targets)
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
    assert [v["datasource"] for v in dashboard["templating"]["list"]] == [generator.DATASOURCE]


def test_the_dashboard_selects_the_scrape_job_of_the_nodes() -> None:
    for config in (OPS / "prometheus.yml", OPS / "compose" / "prometheus.yml"):
        jobs = [job["job_name"] for job in yaml.safe_load(config.read_text())["scrape_configs"]]
        assert jobs == [generator.JOB], config
    for where, expr in dashboard_queries():
        if metric_names(expr):
            assert f'job="{generator.JOB}"' in expr, where


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, instance) "
        '(rate(protobase_fsync_seconds_bucket{job="up"}[5m]))) > 0.1'
        " and on (instance) up == 1 unless process_open_fds offset 5m"
    )
    assert metric_names(expr) == {"protobase_fsync_seconds_bucket", "up", "process_open_fds"}
    assert metric_names('label_values(up{job="protobase"}, instance)') == {"up"}
    used = {name for _, expr in dashboard_queries() + rule_queries() for name in metric_names(expr)}
    assert {"up", "protobase_commits_total", "protobase_raft_has_leader"} <= used
    assert "protobase_commit_seconds_bucket" in used


def test_exported_names_follow_each_metric_type() -> None:
    text = (
        "# HELP a_total A counter no child of which exists yet.\n"
        "# TYPE a_total counter\n"
        "# HELP b_seconds A histogram.\n"
        "# TYPE b_seconds histogram\n"
        'b_seconds_bucket{le="+Inf"} 1.0\n'
        "b_seconds_count 1.0\n"
        "b_seconds_sum 0.5\n"
        "# HELP c A gauge.\n"
        "# TYPE c gauge\n"
        "c 3.0\n"
    )
    names = exported_names(text)
    assert {"a_total", "b_seconds_bucket", "b_seconds_sum", "b_seconds_count", "c"} <= names
    assert not {"a", "b_seconds"} & names


class DashboardNote(DBObject):
    """What the cross-check commits, so that the commit and read metrics have samples."""


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory, s3_server: Any) -> dict[int, str]:
    """Each node's /metrics page, from a 3-node cluster with an S3 cold tier, after
    a few commits and reads; the cluster is stopped before the tests look.

    A cluster of its own (about 4 s): the S3-tiered one of tests/cluster/
    test_cold_tier.py is scoped to that module, and the session's
    `local_cluster` has no cold tier, whose metrics only a node with an
    ``[s3]`` table exports.
    """
    cluster = LocalCluster(
        tmp_path_factory.mktemp("dashboard"),
        nodes=3,
        partitions=2,
        tables=(
            "[s3]\n"
            f'bucket = "{s3_server.new_bucket()}"\n'
            'prefix = "tier"\n'
            f'endpoint = "{s3_server.endpoint}"\n'
            "upload_interval = 0.3\n"
        ),
    )
    try:
        cluster.start()
        cluster.wait_ready()
        with ObjectSpace(cluster.storage(space="dashboard", urls=cluster.urls)) as space:
            db = space.new_database("db")
            for i in range(5):
                with db.transaction() as tr:
                    tr.set_root_object(f"k{i}", DashboardNote(text=str(i)))
            with db.transaction() as tr:
                assert tr.get_root_object("k4").text == "4"
        pages = {}
        for node in range(1, cluster.nodes + 1):
            with urllib.request.urlopen(cluster.url(node) + "/metrics", timeout=5) as response:
                pages[node] = response.read().decode()
        return pages
    finally:
        cluster.stop()


def test_every_metric_the_dashboard_and_the_rules_name_is_exported(
    scraped: dict[int, str],
) -> None:
    exported = set().union(*(exported_names(page) for page in scraped.values()))
    missing: dict[str, set[str]] = {}
    for where, expr in dashboard_queries() + rule_queries():
        for name in metric_names(expr) - exported - MADE_BY_PROMETHEUS:
            missing.setdefault(name, set()).add(where)
    assert not missing, "metrics that no node exports, with the queries that name them:\n" + (
        "\n".join(f"  {name}: {', '.join(sorted(missing[name]))}" for name in sorted(missing))
    )
