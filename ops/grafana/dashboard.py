"""The ProtoBase Grafana dashboard, as code (grafanalib); writes ops/grafana/protobase.json.

    python ops/grafana/dashboard.py           # (re)writes protobase.json (`make dashboard`)
    python ops/grafana/dashboard.py --check   # exits 1 if protobase.json is out of date

The JSON is checked in so that Grafana can be provisioned from it without
Python: docker-compose.yml mounts it where the provider of
ops/compose/grafana/dashboards/protobase.yml looks. The output is
deterministic (sorted keys, panel ids in layout order), so that
tests/ops/test_dashboard.py can compare it with what this file builds, and
so that it can check every metric the queries name against a live node.

Every query reads the data source that ops/compose/grafana/datasources/
prometheus.yml provisions (by its name: that file gives it no uid), and
selects the series of the Prometheus job that scrapes the nodes
(ops/prometheus.yml, ops/compose/prometheus.yml) on the instances chosen in
the dashboard's `instance` variable.
"""

from __future__ import annotations

import argparse
import difflib
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import attr
from grafanalib._gen import write_dashboard
from grafanalib.core import (
    GRAPH_TOOLTIP_MODE_SHARED_CROSSHAIR,
    Dashboard,
    GridPos,
    Panel,
    RowPanel,
    Stat,
    Target,
    Template,
    Templating,
    Time,
    TimeSeries,
)

OUTPUT = Path(__file__).resolve().with_name("protobase.json")
DATASOURCE = "Prometheus"
"""The `name` in ops/compose/grafana/datasources/prometheus.yml."""
JOB = "protobase"
"""The `job_name` that scrapes the nodes in ops/prometheus.yml and ops/compose/prometheus.yml."""
UID = "protobase"

NODES = f'job="{JOB}", instance=~"$instance"'
"""The label matchers of every query: the chosen nodes."""
RATE = "$__rate_interval"

PANEL_WIDTH = 8
PANEL_HEIGHT = 8
GRID_WIDTH = 24


def query(expr: str, legend: str = "") -> Target:
    return Target(expr=expr, legendFormat=legend, datasource=DATASOURCE)


def rate(counter: str, by: str) -> str:
    """Per-second rate of `counter` summed by the labels `by`."""
    return f"sum by ({by}) (rate({counter}{{{NODES}}}[{RATE}]))"


def quantile(q: float, histogram: str, by: str = "") -> str:
    """The `q` quantile of `histogram` (its `_bucket` series), per value of the labels `by`."""
    labels = ", ".join(["le", *filter(None, [by])])
    return (
        f"histogram_quantile({q}, sum by ({labels}) (rate({histogram}_bucket{{{NODES}}}[{RATE}])))"
    )


def graph(title: str, targets: list[Target], unit: str = "short", description: str = "") -> Panel:
    return TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets,
        unit=unit,
        tooltipMode="multi",
    )


def stat(title: str, targets: list[Target], description: str = "") -> Panel:
    return Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets,
        reduceCalc="lastNotNull",
        graphMode="none",
        thresholds=[{"color": "green", "value": None}],
    )


def overview() -> list[Panel]:
    return [
        stat(
            "Nodes up",
            [
                query(f'sum(up{{job="{JOB}"}})', "up"),
                query(f'count(up{{job="{JOB}"}})', "scraped"),
            ],
            "Nodes that answered their last scrape, of those Prometheus scrapes.",
        ),
        stat(
            "Groups with no known leader",
            [
                query(
                    f'count(max by (group) (protobase_raft_has_leader{{job="{JOB}"}}) == 0)'
                    " or vector(0)"
                )
            ],
            "Raft groups that no node knows a leader of: they take no writes "
            "(alert ProtoBaseLostQuorum).",
        ),
        graph("Up, by node", [query(f"up{{{NODES}}}", "{{instance}}")]),
    ]


def commits() -> list[Panel]:
    return [
        graph(
            "Commits by outcome",
            [query(rate("protobase_commits_total", "outcome"), "{{outcome}}")],
            "ops",
            "Commit requests answered as meta leader: committed, conflict, failed.",
        ),
        graph(
            "Commit latency",
            [
                query(quantile(0.5, "protobase_commit_seconds"), "p50"),
                query(quantile(0.99, "protobase_commit_seconds"), "p99"),
            ],
            "s",
            "At the meta leader (alert ProtoBaseCommitLatencyHigh: p99 over 0.5 s).",
        ),
        graph(
            "Commit phases, p99",
            [query(quantile(0.99, "protobase_commit_phase_seconds", "phase"), "{{phase}}")],
            "s",
            "Where a commit's time goes: put_batch, cas, fsync.",
        ),
        graph(
            "Rebases and merges",
            [
                query(rate("protobase_rebases_total", "instance"), "rebases {{instance}}"),
                query(rate("protobase_merges_total", "instance"), "merges {{instance}}"),
            ],
            "ops",
        ),
    ]


def raft() -> list[Panel]:
    return [
        graph("Term", [query(f"max by (group) (protobase_raft_term{{{NODES}}})", "{{group}}")]),
        graph(
            "Commit index",
            [query(f"max by (group) (protobase_raft_commit_index{{{NODES}}})", "{{group}}")],
        ),
        graph(
            "Committed, not yet applied",
            [
                query(
                    f"protobase_raft_commit_index{{{NODES}}}"
                    f" - protobase_raft_applied_index{{{NODES}}}",
                    "{{instance}} {{group}}",
                )
            ],
            description="Entries a node knows committed and has not applied yet.",
        ),
        graph(
            "Leaders per node",
            [query(f"sum by (instance) (protobase_raft_is_leader{{{NODES}}})", "{{instance}}")],
        ),
        graph(
            "Groups without a known leader, per node",
            [
                query(
                    f"sum by (instance) (1 - protobase_raft_has_leader{{{NODES}}})",
                    "{{instance}}",
                )
            ],
            description="Alert ProtoBaseNoLeader when one stays above 0 for 30 s.",
        ),
        graph(
            "Follower lag",
            [
                query(
                    f"max by (group) (protobase_raft_follower_lag_entries{{{NODES}}})",
                    "{{group}}",
                )
            ],
            description="On each group's leader: the entries its furthest-behind voter lacks.",
        ),
        graph(
            "Leader changes",
            [
                query(
                    f"sum by (group) (increase(protobase_raft_leader_changes_total{{{NODES}}}"
                    f"[{RATE}]))",
                    "{{group}}",
                )
            ],
        ),
        graph(
            "Dropped proposals and snapshot sends",
            [
                query(rate("protobase_raft_proposals_dropped_total", "group"), "dropped {{group}}"),
                query(rate("protobase_raft_snapshot_sends_total", "group"), "snapshots {{group}}"),
            ],
            "ops",
        ),
        graph(
            "Raft log fsync, p99",
            [query(quantile(0.99, "protobase_fsync_seconds", "instance"), "{{instance}}")],
            "s",
            "Alert ProtoBaseFsyncSlow: over 100 ms for 10 minutes.",
        ),
    ]


def transport() -> list[Panel]:
    return [
        graph(
            "Raft transport traffic",
            [
                query(
                    rate("protobase_transport_sent_bytes_total", "instance"), "sent {{instance}}"
                ),
                query(
                    rate("protobase_transport_received_bytes_total", "instance"),
                    "received {{instance}}",
                ),
            ],
            "Bps",
        ),
        graph(
            "Reconnects, refused handshakes, dropped messages",
            [
                query(
                    rate("protobase_transport_reconnects_total", "instance"),
                    "reconnects {{instance}}",
                ),
                query(
                    rate("protobase_transport_auth_failures_total", "instance"),
                    "auth failures {{instance}}",
                ),
                query(
                    rate("protobase_transport_dropped_messages_total", "instance"),
                    "dropped {{instance}}",
                ),
            ],
            "ops",
            "Refused handshakes: a wrong secret, or a wiped member's new incarnation. "
            "Dropped messages: a peer's send queue was full.",
        ),
    ]


def http() -> list[Panel]:
    status_class = (
        f"sum by (class) (label_replace(rate(protobase_http_requests_total{{{NODES}}}[{RATE}]),"
        ' "class", "${1}xx", "status", "([0-9]).*"))'
    )
    return [
        graph(
            "Requests by route",
            [query(rate("protobase_http_requests_total", "route"), "{{route}}")],
            "reqps",
        ),
        graph("Requests by status class", [query(status_class, "{{class}}")], "reqps"),
        graph(
            "Request latency by route, p99",
            [query(quantile(0.99, "protobase_http_request_seconds", "route"), "{{route}}")],
            "s",
        ),
    ]


def cold_tier() -> list[Panel]:
    return [
        graph(
            "Uploads by kind",
            [query(rate("protobase_s3_uploads_total", "kind"), "{{kind}}")],
            "ops",
        ),
        graph(
            "Uploaded bytes",
            [query(rate("protobase_s3_uploaded_bytes_total", "instance"), "{{instance}}")],
            "Bps",
        ),
        graph(
            "Upload failures and fetches",
            [
                query(
                    rate("protobase_s3_upload_failures_total", "instance"),
                    "failures {{instance}}",
                ),
                query(rate("protobase_s3_fetches_total", "instance"), "fetches {{instance}}"),
            ],
            "ops",
            "Failed upload rounds, and entry objects read back from S3.",
        ),
        graph(
            "Backlog entries",
            [query(f"protobase_s3_backlog_entries{{{NODES}}}", "{{instance}}")],
            description="Applied here, not yet in S3 (alert ProtoBaseS3BacklogGrowing).",
        ),
        graph(
            "Backlog bytes",
            [query(f"protobase_s3_backlog_bytes{{{NODES}}}", "{{instance}}")],
            "bytes",
        ),
        graph(
            "Evicted entries",
            [query(rate("protobase_s3_evicted_entries_total", "instance"), "{{instance}}")],
            "ops",
            "Uploaded entries released to compaction under the disk budget (disk_budget_bytes).",
        ),
    ]


def storage() -> list[Panel]:
    hits = rate("protobase_atom_cache_hits_total", "cache")
    misses = rate("protobase_atom_cache_misses_total", "cache")
    return [
        graph(
            "Partition atoms",
            [query(f"max by (group) (protobase_partition_atoms{{{NODES}}})", "{{group}}")],
        ),
        graph(
            "Partition bytes",
            [query(f"max by (group) (protobase_partition_bytes{{{NODES}}})", "{{group}}")],
            "bytes",
        ),
        graph(
            "Atom cache hit ratio",
            [query(f"{hits} / ({hits} + {misses})", "{{cache}}")],
            "percentunit",
            "objects: the atoms of the object spaces that rebase commits; "
            "entries: decoded partition log entries that atom reads are served from.",
        ),
        graph(
            "Data disk free",
            [
                query(
                    f"protobase_disk_free_bytes{{{NODES}}} / protobase_disk_size_bytes{{{NODES}}}",
                    "{{instance}}",
                )
            ],
            "percentunit",
            "Alert ProtoBaseDiskNearlyFull under 10 %.",
        ),
        graph(
            "Resident memory",
            [query(f"process_resident_memory_bytes{{{NODES}}}", "{{instance}}")],
            "bytes",
        ),
    ]


ROWS = (
    ("Overview", overview),
    ("Commits", commits),
    ("Raft", raft),
    ("Transport", transport),
    ("HTTP", http),
    ("S3 cold tier", cold_tier),
    ("Storage", storage),
)


def layout(rows: Sequence[tuple[str, list[Panel]]]) -> list[Panel]:
    """Each row's title bar, then its panels three to a line; ids and refIds in this order."""
    placed: list[Panel] = []
    y = 0
    per_line = GRID_WIDTH // PANEL_WIDTH
    for title, panels in rows:
        placed.append(RowPanel(title=title, gridPos=GridPos(h=1, w=GRID_WIDTH, x=0, y=y)))
        y += 1
        for index, panel in enumerate(panels):
            column, line = index % per_line, index // per_line
            position = GridPos(
                h=PANEL_HEIGHT, w=PANEL_WIDTH, x=column * PANEL_WIDTH, y=y + line * PANEL_HEIGHT
            )
            targets = [
                attr.evolve(target, refId=chr(ord("A") + ref))
                for ref, target in enumerate(panel.targets)
            ]
            placed.append(attr.evolve(panel, gridPos=position, targets=targets))
        y += -(-len(panels) // per_line) * PANEL_HEIGHT
    return [attr.evolve(panel, id=number) for number, panel in enumerate(placed, start=1)]


def build() -> Dashboard:
    """The dashboard: one row per part of a node (see the module docstring)."""
    instance = Template(
        name="instance",
        label="Node",
        query=f'label_values(up{{job="{JOB}"}}, instance)',
        dataSource=DATASOURCE,
        includeAll=True,
        multi=True,
        allValue=".*",
        default="$__all",
    )
    return Dashboard(
        title="ProtoBase",
        uid=UID,
        description="A ProtoBase cluster: commits, Raft, transport, HTTP, S3 cold tier, storage.",
        tags=["protobase"],
        timezone="browser",
        time=Time("now-1h", "now"),
        refresh="10s",
        graphTooltip=GRAPH_TOOLTIP_MODE_SHARED_CROSSHAIR,
        templating=Templating(list=[instance]),
        panels=layout([(title, panels()) for title, panels in ROWS]),
    )


def render() -> str:
    """The dashboard's JSON text, exactly as it is checked in."""
    out = io.StringIO()
    write_dashboard(build(), out)  # sorted keys, indent 2, final newline
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if OUTPUT is out of date")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default: {OUTPUT}")
    args = parser.parse_args(argv)
    wanted = render()
    if not args.check:
        args.output.write_text(wanted)
        return 0
    current = args.output.read_text() if args.output.exists() else ""
    if current == wanted:
        return 0
    diff = difflib.unified_diff(
        current.splitlines(), wanted.splitlines(), str(args.output), "generated", lineterm=""
    )
    shown = list(diff)[:40]
    print(
        f"{args.output} is not what ops/grafana/dashboard.py generates; "
        "run `make dashboard` and commit the result.\n" + "\n".join(shown),
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
