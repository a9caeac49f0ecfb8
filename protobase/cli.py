"""The `protobase` command: thin wrappers over library functions."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from . import HOT_PATH, __version__
from .logs import FORMATS, LEVELS, configure_logging

if TYPE_CHECKING:
    from rich.console import Console

    from .progress_bars import ProgressBars


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.cluster:
        from .storage.cluster import ClusterFileStorage

        token = _read_token(args.token_file)
        run_demo(args.path, storage=ClusterFileStorage([args.cluster], token=token))
        return 0
    run_demo(args.path)
    return 0


def _read_token(path: str | None) -> str:
    token = os.environ.get("PROTOBASE_TOKEN", "")
    if path:
        try:
            with open(path) as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise SystemExit(
                f"protobase: cannot read the token file {path}: {exc.strerror}; "
                "it is client.token in the directory `protobase cluster up` made"
            ) from exc
    if not token:
        raise SystemExit("give the client token with --token-file FILE or PROTOBASE_TOKEN")
    return token


def _bars(args: argparse.Namespace) -> ProgressBars:
    """Progress bars on stderr, drawn only when it is a terminal (see progress_bars)."""
    from .progress_bars import ProgressBars

    return ProgressBars(args.progress_console)


def _node(args: argparse.Namespace) -> int:
    from cluster.main import run_node

    return run_node(args.config, args.join)


def _chaos_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from chaos.runner import MIXES, run_chaos

    everything = MIXES["everything"]
    faults = [k for k in args.faults.split(",") if k] if args.faults != "all" else everything
    failpoints = tuple(f for f in args.failpoints.split(",") if f)
    result = run_chaos(
        Path(args.out),
        args.workload,
        faults,
        args.seed,
        args.seconds,
        clients=args.clients,
        failpoints=failpoints,
    )
    for name, checker in result.checkers.items():
        print(f"{name}: valid={checker.get('valid')} anomalies={len(checker.get('anomalies', []))}")
    print(
        f"{result.operations} operations, {result.faults} faults, {result.unknown} unknown "
        f"outcomes; results in {result.directory}"
    )
    for error in result.errors:
        print(f"ERROR: {error}")
    if result.valid is not True:
        print(
            f"chaos run {'FAILED' if result.valid is False else 'UNDECIDED'}; replay with "
            f"--seed {result.seed} --workload {args.workload} --faults {args.faults}"
        )
        return 1
    return 0


def _chaos_campaign(args: argparse.Namespace) -> int:
    from pathlib import Path

    from chaos.runner import run_campaign

    results = run_campaign(Path(args.out), args.minutes, args.seed, clients=args.clients)
    failed = 0
    for workload, mix, result in results:
        verdict = {True: "valid", False: "INVALID", None: "UNDECIDED"}[result.valid]
        print(
            f"{workload:12} {mix:11} seed {result.seed:5}: {verdict}; {result.operations} ops, "
            f"{result.faults} faults, {result.unknown} unknown"
        )
        failed += result.valid is not True
    total_ops = sum(r.operations for _, _, r in results)
    total_faults = sum(r.faults for _, _, r in results)
    print(f"{len(results)} runs, {total_ops} operations, {total_faults} faults, {failed} not valid")
    return 1 if failed else 0


def _cluster_up(args: argparse.Namespace) -> int:
    from .cluster_cli import cluster_up

    return cluster_up(
        args.dir,
        args.nodes,
        args.base_port,
        args.partitions,
        args.with_monitoring,
        log_format=args.log_format,
        log_level=args.log_level,
    )


def _membership(args: argparse.Namespace) -> int:
    """`cluster add-node | remove-node | replace-node | rebalance`."""
    from pathlib import Path

    from . import membership_cli as m

    def out(line: str) -> None:
        print(line, flush=True)

    try:
        if args.cluster_command == "add-node":
            m.add_node(Path(args.dir), args.join, args.zone, args.timeout, out)
            return 0
        token = _read_token(args.token_file)
        if args.cluster_command == "remove-node":
            m.remove_node(args.url, args.member, token, args.timeout, out)
        elif args.cluster_command == "replace-node":
            m.replace_node(args.url, args.member, token, args.timeout, out)
        else:
            m.rebalance(args.url, token, args.timeout, out)
    except m.MembershipCommandError as exc:
        print(f"protobase cluster {args.cluster_command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the change goes on; run the command again to watch it", file=sys.stderr)
        return 130
    return 0


def _cluster_status(args: argparse.Namespace) -> int:
    from .cluster_cli import cluster_status

    token = _read_token(args.token_file) if args.token_file else os.environ.get("PROTOBASE_TOKEN")
    return cluster_status(args.url, token=token or None, raw_json=args.json)


def _fsck(args: argparse.Namespace) -> int:
    from .maintenance import fsck
    from .progress_bars import Phase

    with _bars(args) as bars:
        progress = bars.callback(
            Phase("fsck: WAL records", "bytes"), Phase("fsck: reachable atoms", "atoms")
        )
        report = fsck(args.path, progress)
    print(
        f"{report.path}: {report.versions_checked} versions, {report.atoms_checked} atoms checked"
    )
    for note in report.notes:
        print(f"NOTE: {note}")
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    if not report.clean:
        print(f"{len(report.problems)} problem(s) found; fsck changed nothing")
    elif report.notes:
        print("clean, once opening has made the repairs noted above (fsck changed nothing)")
    else:
        print("clean")
    return 0 if report.clean else 1


def _inspect(args: argparse.Namespace) -> int:
    from .maintenance import inspect

    print(json.dumps(inspect(args.path), indent=2))
    return 0


def _pack(args: argparse.Namespace) -> int:
    from .maintenance import pack
    from .progress_bars import Phase

    with _bars(args) as bars:
        progress = bars.callback(
            Phase("pack: reachable atoms", "atoms"), Phase("pack: rewriting the WAL", "bytes")
        )
        before, after = pack(args.path, dt.timedelta(seconds=args.keep_seconds), progress)
    print(f"packed {args.path}: WAL {before} -> {after} bytes")
    return 0


def _backup(args: argparse.Namespace) -> int:
    if args.source == "verify":
        return _backup_verify(args)
    if args.source.startswith(("http://", "https://")):
        return _backup_cluster(args)
    from .backup import backup
    from .progress_bars import Phase

    with _bars(args) as bars:
        progress = bars.callback(Phase("backup: WAL segments", "bytes"))
        report = backup(args.source, args.location, progress, endpoint_url=args.endpoint_url)
    kind = "hot" if report.hot else "cold"
    print(
        f"backed up {args.source} to {report.location} ({kind}): versions "
        f"{report.first_version} to {report.last_version} (committed "
        f"{report.first_time.isoformat()} to {report.last_time.isoformat()}), WAL generation "
        f"{report.generation}"
    )
    print(
        f"{report.objects} objects, {report.bytes} bytes; uploaded {report.uploaded_objects} "
        f"objects, {report.uploaded_bytes} bytes ({report.reused_objects} were in the bucket "
        f"already); manifest {report.manifest}"
    )
    return 0


def _backup_cluster(args: argparse.Namespace) -> int:
    """SOURCE is a node's URL: back the cluster up through its S3 cold tier."""
    from cluster.backup import backup_cluster

    from .progress_bars import Phase

    token = _read_token(args.token_file)
    with _bars(args) as bars:
        progress = bars.callback(Phase("backup: cold tier objects", "bytes"))
        report = backup_cluster(args.source, token, args.location, args.endpoint_url, progress)
    spaces = ", ".join(f"{name} v{version}" for name, version in sorted(report.spaces.items()))
    print(
        f"backed up the cluster at {args.source} to {report.location} as of meta index "
        f"{report.meta_index} ({spaces or 'no object spaces'}); {report.objects} objects, "
        f"{report.copied} copied ({report.copied_bytes} bytes), the others were there already"
    )
    return 0


def _cluster_backups_at(location: str, endpoint_url: str | None) -> bool:
    """Whether `location` holds cluster backups (else it is an embedded database's)."""
    try:
        from cluster.backup import has_cluster_backups
    except ImportError:  # the cluster extra is not installed: no cluster backups here
        return False
    return has_cluster_backups(location, endpoint_url)


def _backup_verify(args: argparse.Namespace) -> int:
    from .backup import verify
    from .progress_bars import Phase

    if _cluster_backups_at(args.location, args.endpoint_url):
        return _backup_verify_cluster(args)

    with _bars(args) as bars:
        progress = bars.callback(Phase("verify: backup objects", "bytes"))
        report = verify(args.location, progress, endpoint_url=args.endpoint_url)
    print(
        f"{report.location}: {report.manifests} backup(s), {report.objects} objects "
        f"({report.bytes} bytes) checked; {report.databases_checked} restore(s) checked by "
        f"fsck: {report.versions_checked} versions, {report.atoms_checked} atoms"
    )
    return _verdict(report.problems, report.notes)


def _verdict(problems: list[str], notes: Sequence[str] = ()) -> int:
    """Print what verify found; exit status 0 when clean, 1 otherwise."""
    for note in notes:
        print(f"NOTE: {note}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if not problems:
        print("clean")
        return 0
    print(f"{len(problems)} problem(s) found; verify changed nothing")
    return 1


def _backup_verify_cluster(args: argparse.Namespace) -> int:
    from cluster.backup import verify_cluster

    from .progress_bars import Phase

    with _bars(args) as bars:
        progress = bars.callback(Phase("verify: partition entries", "bytes"))
        report = verify_cluster(args.location, args.endpoint_url, progress)
    print(
        f"{report.location}: {report.backups} cluster backup(s), {report.objects_checked} "
        f"objects and {report.atoms_checked} reachable atoms checked"
    )
    return _verdict(report.problems)


def _parse_at(text: str) -> int | dt.datetime:
    """``--at``: a root version (an integer), or an ISO-8601 time (naive = local time)."""
    if text.isdigit():
        version = int(text)
        if version < 1:
            raise argparse.ArgumentTypeError("a root version is 1 or more")
        return version
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a root version (an integer) nor an ISO-8601 time such as "
            "2026-12-06T10:00:00+00:00 (without an offset it is local time)"
        ) from exc


def _restore(args: argparse.Namespace) -> int:
    from .backup import restore
    from .errors import CorruptionError
    from .progress_bars import Phase

    at_version = args.at if isinstance(args.at, int) else None
    at_time = args.at if isinstance(args.at, dt.datetime) else None
    if _cluster_backups_at(args.location, args.endpoint_url):
        return _restore_cluster(args, at_version, at_time)
    try:
        with _bars(args) as bars:
            progress = bars.callback(Phase("restore: backup objects", "bytes"))
            report = restore(
                args.location,
                args.dest,
                at_version,
                at_time,
                progress,
                endpoint_url=args.endpoint_url,
            )
    except CorruptionError as exc:  # the backup is damaged: exit 1, as verify does
        print(f"protobase restore: {exc}", file=sys.stderr)
        return 1
    print(
        f"restored {report.location} ({report.manifest}) into {report.destination}: version "
        f"{report.version} (committed {report.time.isoformat()}), versions from "
        f"{report.first_version} kept; {report.objects} objects, {report.bytes} bytes downloaded"
    )
    return 0


def _restore_cluster(
    args: argparse.Namespace, at_version: int | None, at_time: dt.datetime | None
) -> int:
    from cluster.backup import restore_cluster

    from .progress_bars import Phase

    with _bars(args) as bars:
        progress = bars.callback(
            Phase("restore: partition entries", "bytes"), Phase("restore: loading", "batches")
        )
        report = restore_cluster(
            args.location,
            args.dest,
            at_index=at_version,
            at_time=None if at_time is None else at_time.timestamp(),
            nodes=args.nodes,
            base_port=args.base_port,
            endpoint_url=args.endpoint_url,
            progress=progress,
        )
    spaces = ", ".join(
        f"{name} (was v{version})" for name, version in sorted(report.spaces.items())
    )
    print(
        f"restored the cluster backup {args.location} as of meta index {report.meta_index} "
        f"into {report.directory}: {report.batches} batches, spaces {spaces or 'none'}; "
        f"start it with: protobase cluster up {report.directory} --nodes {args.nodes} "
        f"--base-port {args.base_port}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protobase", description="ProtoBase object database")
    parser.add_argument(
        "--version", action="version", version=f"protobase {__version__} (hot path: {HOT_PATH})"
    )
    parser.add_argument(
        "--log-format",
        type=str.lower,
        choices=FORMATS,
        help="log lines on stderr as text (the default) or json, one object per line "
        "(default: PROTOBASE_LOG_FORMAT, else text)",
    )
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=tuple(LEVELS),
        help="the least severe records logged (default: PROTOBASE_LOG_LEVEL, else info for "
        "`protobase node` and warning for the other commands)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.set_defaults(handler=handler)
        return sub

    demo = command("demo", _demo, "run the embedded demo")
    demo.add_argument(
        "path", nargs="?", default="demo-data", help="database directory (default: demo-data)"
    )
    demo.add_argument("--cluster", help="run the demo on the cluster at this node URL")
    demo.add_argument("--token-file", help="file holding the cluster's client token")
    node = command("node", _node, "run one cluster member in the foreground")
    node.add_argument("--config", required=True, help="the node's node.toml")
    node.add_argument(
        "--join",
        metavar="URL",
        help="join the running cluster this member URL belongs to (a new node)",
    )
    cluster = commands.add_parser("cluster", help="local clusters: up, status")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True)
    up = cluster_commands.add_parser("up", help="start a local cluster (Ctrl-C stops it)")
    up.set_defaults(handler=_cluster_up)
    up.add_argument("dir", help="directory for configs, secret, token and data")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--base-port", type=int, default=7100, help="node K listens on base+K")
    up.add_argument("--partitions", type=int, default=8)
    up.add_argument(
        "--with-monitoring",
        action="store_true",
        help="also run an S3 server (moto_server, port base+90) for the cold tier and "
        "Prometheus (port base+91) scraping every node with ops/alerts.yml",
    )
    add = cluster_commands.add_parser(
        "add-node", help="start one more member of a local cluster and wait for its share"
    )
    add.set_defaults(handler=_membership)
    add.add_argument("dir", help="the directory `protobase cluster up` made")
    add.add_argument("--join", metavar="URL", help="a member to join through (default: node 1)")
    add.add_argument("--zone", help="the new member's zone label")
    add.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (600)")
    for name, what in (
        ("remove-node", "decommission a member: move its replicas off, then forget it"),
        ("replace-node", "declare a member dead: rebuild its replicas elsewhere, forget it"),
        ("rebalance", "spread replicas and group leaders evenly"),
    ):
        changer = cluster_commands.add_parser(name, help=what)
        changer.set_defaults(handler=_membership)
        changer.add_argument("url", help="the client URL of any member (http://HOST:PORT)")
        if name != "rebalance":
            changer.add_argument("member", type=int, help="the member's id")
        changer.add_argument("--token-file", help="the client token (or PROTOBASE_TOKEN)")
        changer.add_argument("--timeout", type=float, default=600.0, help="seconds (600)")
    status = cluster_commands.add_parser("status", help="members, groups, leaders, terms, lag")
    status.set_defaults(handler=_cluster_status)
    status.add_argument("url", help="the client URL of any member (http://HOST:PORT)")
    status.add_argument(
        "--token-file",
        metavar="F",
        help="send this client token (or PROTOBASE_TOKEN); the status needs none today",
    )
    status.add_argument(
        "--json", action="store_true", help="print the node's /status.json as it is"
    )
    chaos = commands.add_parser("chaos", help="Jepsen-style runs against a local cluster")
    chaos_commands = chaos.add_subparsers(dest="chaos_command", required=True)
    chaos_run = chaos_commands.add_parser("run", help="one workload under one fault mix")
    chaos_run.set_defaults(handler=_chaos_run)
    chaos_run.add_argument(
        "--workload", default="bank", choices=["register", "bank", "set", "list-append"]
    )
    chaos_run.add_argument(
        "--faults",
        default="kill,pause,partition",
        help="comma-separated kinds (kill, kill-all, pause, partition, isolate-leader, bridge, "
        "one-way, slow, disk, membership), or all",
    )
    chaos_run.add_argument("--seed", type=int, default=1)
    chaos_run.add_argument("--seconds", type=float, default=20.0)
    chaos_run.add_argument("--clients", type=int, default=4)
    chaos_run.add_argument("--out", default="chaos-runs/latest", help="the run directory")
    chaos_run.add_argument(
        "--failpoints",
        default="",
        help="start the nodes with deliberate bugs (cluster/failpoints.py), to see a failure",
    )
    campaign = chaos_commands.add_parser("campaign", help="every workload under every fault mix")
    campaign.set_defaults(handler=_chaos_campaign)
    campaign.add_argument("--minutes", type=float, default=10.0)
    campaign.add_argument("--seed", type=int, default=1)
    campaign.add_argument("--clients", type=int, default=4)
    campaign.add_argument("--out", default="chaos-runs/campaign")
    command("fsck", _fsck, "verify checksums and pointers (read-only)").add_argument("path")
    command("inspect", _inspect, "show commits, segments and sizes").add_argument("path")
    pack = command("pack", _pack, "remove unreachable data and old versions")
    pack.add_argument("path")
    pack.add_argument(
        "--keep-seconds",
        type=float,
        default=0.0,
        help="keep versions younger than this many seconds (default 0)",
    )
    backup = command(
        "backup",
        _backup,
        "back up a database directory or a cluster to S3, or check the backups there "
        "(backup verify)",
    )
    backup.usage = (
        "protobase backup [-h] [--endpoint-url URL] [--token-file F] SOURCE LOCATION\n"
        "       protobase backup [-h] [--endpoint-url URL] verify LOCATION"
    )
    backup.description = (
        "Back up SOURCE to LOCATION (s3://bucket/prefix), uploading only what is not there "
        "yet. SOURCE is the directory of a database no process has open, or the URL of a "
        "cluster node (the cluster needs an [s3] cold tier; give the client token with "
        "--token-file or PROTOBASE_TOKEN). With the word verify, download and check every "
        "backup at LOCATION (exit 1 when it finds a problem). To back up a directory named "
        "verify, write ./verify."
    )
    backup.add_argument(
        "source", metavar="SOURCE", help="database directory, node URL, or the word verify"
    )
    backup.add_argument("location", metavar="LOCATION", help="s3://bucket/prefix")
    backup.add_argument(
        "--endpoint-url", metavar="URL", help="S3 endpoint (default: AWS_ENDPOINT_URL, else AWS)"
    )
    backup.add_argument(
        "--token-file",
        metavar="F",
        help="the client token, when SOURCE is a cluster node's URL (or PROTOBASE_TOKEN)",
    )
    restore = command("restore", _restore, "restore a database from its backups in S3")
    restore.add_argument("location", metavar="LOCATION", help="s3://bucket/prefix")
    restore.add_argument("dest", metavar="DEST", help="a new or empty directory")
    restore.add_argument(
        "--at",
        type=_parse_at,
        metavar="VERSION|TIME",
        help="restore the database as of this root version, or of the last commit at or "
        "before this ISO-8601 time (without an offset: local time)",
    )
    restore.add_argument(
        "--endpoint-url", metavar="URL", help="S3 endpoint (default: AWS_ENDPOINT_URL, else AWS)"
    )
    restore.add_argument(
        "--nodes", type=int, default=3, help="members of a restored cluster (default 3)"
    )
    restore.add_argument(
        "--base-port",
        type=int,
        default=7100,
        help="a restored cluster's client ports are BASE+k, peer ports BASE+100+k (default 7100)",
    )
    return parser


def main(argv: Sequence[str] | None = None, *, progress_console: Console | None = None) -> int:
    """Run the command `argv` (default: ``sys.argv[1:]``); returns the exit status.

    Args:
        progress_console: where progress bars are drawn (default: stderr,
            and only when it is a terminal).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        configure_logging(
            args.log_format,
            args.log_level,
            default_level="info" if args.command == "node" else "warning",
        )
    except ValueError as exc:  # a bad PROTOBASE_LOG_* value
        parser.error(str(exc))
    args.progress_console = progress_console
    try:
        return int(args.handler(args))
    except Exception as exc:
        from .errors import ProtoBaseException

        if isinstance(exc, ProtoBaseException):
            print(f"protobase {args.command}: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
