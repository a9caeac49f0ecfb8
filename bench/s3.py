"""S3 benchmark: CloudFileStorage, backup and restore, each beside plain boto3 on one endpoint.

Run from the repository root::

    python bench/s3.py                      # full run: backup of a 1,000,000-object database
    python bench/s3.py --objects 50000      # a quick run
    python bench/s3.py --only commits       # one part: backup, commits or reads
    python bench/s3.py --json results.json  # also write every figure

The script starts its own ``moto_server`` (extra ``test``: ``moto[server]``)
on a free port of 127.0.0.1, with dummy credentials in its own environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``),
and stops it by PID at the end, on errors, Ctrl-C and SIGTERM too. Every
figure and its baseline use that one endpoint; moto is a Python process on
the same machine, so the absolute figures are moto's, not AWS's, and it
takes CPU from the process it serves. Local data lives in one temporary
directory under /tmp, removed at the end.

What is measured (time.perf_counter; a missed target is printed as MISS and
never makes the exit status non-zero):

1. Backup. A StandaloneFileStorage database of ``--objects`` DBObjects
   (name, n, score) in one Dictionary, built through the object layer in
   transactions of 100,000. `protobase.backup.backup` of the closed
   directory (cold) to a fresh prefix, in MB/s: bytes of the backup (its WAL
   segments) / seconds. Baseline: a fresh boto3 client's ``upload_file`` of
   one file of the same size (the segments concatenated) to the same
   endpoint. Both times include making the client (backup makes its own).
   Target: >= 0.7x the baseline.
2. Restore. `protobase.backup.restore` of that backup into a new directory,
   in MB/s, against a fresh client's ``download_file`` of the one file.
   Restore also checks every piece and fsyncs what it wrote, which the
   baseline does not; ``download_file`` followed by an fsync of the file is
   printed for information. Target: >= 0.7x the baseline.
   Rows 1 and 2 take the median of ``--rounds`` rounds (upload, backup,
   download, restore), each to fresh keys; each round's objects are
   deleted after it, so moto's memory does not grow.
3. Commits. An ObjectSpace over a CloudFileStorage (fresh prefix, local
   cache directory); 32 threads (``--threads``), each committing
   ``--commits`` one-root transactions (``tr.set_root_object(f"t{n}-{i}",
   i)`` in ``with db.transaction() as tr:``: distinct roots, which merge)
   after 2 untimed ones; commits/s = all commits / wall time from a barrier
   to the last one. Baseline: the endpoint's sequential small-PUT rate,
   ``--puts`` ``put_object`` calls of 200 bytes from one boto3 client, one
   after another, before the commits and again after them (their mean).
   Target: >= 10x the PUT rate. Row 3a is the same with one thread.
   Where the time goes is printed under the table: S3 requests per commit;
   the group writes (`FlushMeter` wraps the storage instance's flusher
   step and its bucket's ``put`` in this process, nothing in protobase/
   changes): how many, commits in each, their PUTs' count, time and size,
   and how busy the flusher was; the time a committing thread spends before
   ``commit`` and in it; and the CPU of this process and of moto_server
   (from /proc) per commit.
4. Warm reads. ``--reads`` DBObjects in one Dictionary, committed once in a
   StandaloneFileStorage and in a CloudFileStorage; one read-only
   transaction reads every key (``get_at``) to warm the caches, then each
   of 3 timed passes reads every key again in a new read-only transaction;
   the two storages alternate, and each reports its median pass. Target:
   cloud >= 0.8x file. Row 4s repeats it with the ObjectSpace's atom cache
   off (``cache_bytes=0``), so that every read reaches the storage: the
   storage's own warm path (CloudFileStorage's local record cache against
   StandaloneFileStorage's pread); it has no target.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from common import Target, filesystem_of, machine_info, progress
from progress_bars import track

from protobase import (
    CloudFileStorage,
    DBObject,
    Dictionary,
    ObjectSpace,
    StandaloneFileStorage,
    register_class,
)
from protobase.backup import backup, restore
from protobase.cluster_cli import start_moto
from protobase.s3 import Bucket, S3Location, make_client

HOST = "127.0.0.1"
BUCKET = "protobase-bench"
DB_NAME = "b"
BATCH = 100_000  # objects per transaction while building the backup's database
WARMUP_COMMITS = 2  # per thread, before the commit window
PUT_BYTES = 200
READ_PASSES = 3
MB = 1e6
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "protobase-bench",
    "AWS_SECRET_ACCESS_KEY": "protobase-bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
PARTS = ("backup", "commits", "reads")


@register_class("bench.s3.Item")
class Item(DBObject):
    """A value object: name, n, score (as bench/embedded.py's)."""


def item(k: int) -> Item:
    return Item(name=f"item{k}", n=k, score=k * 0.5)


# -- moto_server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class MotoServer:
    """One ``moto_server`` on a free port of 127.0.0.1, in a session of its own."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = start_moto(self.port, self.log_path)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def cpu_seconds(self) -> float:
        """User + system CPU moto_server has used so far (from /proc)."""
        if self.process is None:
            return 0.0
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Kill the process by its PID and reap it."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def boto3_client(endpoint: str) -> Any:
    """A boto3 S3 client on `endpoint`, configured as ProtoBase configures its own.

    `protobase.s3.make_client` turns off S3's optional request checksums and
    the ``Expect: 100-continue`` handshake, which doubles moto's rate of small
    sequential PUTs. The baselines use the same client, so that the ratios
    measure ProtoBase's work, not a client setting.
    """
    return make_client(endpoint)


def delete_prefix(bucket: Bucket, prefix: str) -> None:
    bucket.delete(key for key, _ in bucket.list_objects(prefix))


# -- results -------------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    figure: str
    value: str
    baseline: str = ""
    baseline_value: str = ""
    ratio: float | None = None
    target: Target | None = None


def table(rows: list[Row]) -> str:
    lines = [
        "| # | figure | ProtoBase | baseline | its figure | ratio | target | result |",
        "|---|---|--:|---|--:|--:|---|---|",
    ]
    for row in rows:
        ratio = "—" if row.ratio is None else f"{row.ratio:.2f}"
        target = "—" if row.target is None else row.target.text
        result = "" if row.target is None else ("PASS" if row.target.passed else "**MISS**")
        lines.append(
            f"| {row.key} | {row.figure} | {row.value} | {row.baseline or '—'} | "
            f"{row.baseline_value or '—'} | {ratio} | {target} | {result} |"
        )
    return "\n".join(lines)


def rate(value: float, unit: str = "/s") -> str:
    return f"{value:,.0f}{unit}"


# -- 1 and 2: backup and restore -------------------------------------------------------------


def build_database(path: Path, count: int) -> float:
    """A StandaloneFileStorage with `count` Items in the Dictionary root "items"."""
    start = time.perf_counter()
    with ObjectSpace(StandaloneFileStorage(path)) as space:
        db = space.new_database(DB_NAME)
        for first in range(0, count, BATCH):
            keys = range(first, min(first + BATCH, count))
            with db.transaction() as tr:
                items = tr.get_root_object("items")
                pairs = [(k, item(k)) for k in keys]
                tr.set_root_object(
                    "items", Dictionary(pairs) if items is None else items.update(pairs)
                )
            progress(
                f"built {keys.stop:,} of {count:,} objects ({time.perf_counter() - start:.0f} s)"
            )
    return time.perf_counter() - start


def wal_segments(path: Path) -> list[Path]:
    """The WAL segment files of a database directory, in order."""
    return sorted(p for p in path.iterdir() if p.name.startswith("wal-") and p.suffix == ".pbw")


def concatenate(sources: list[Path], target: Path) -> int:
    with open(target, "wb") as out:
        for source in sources:
            with open(source, "rb") as handle:
                shutil.copyfileobj(handle, out, 8 * 1024 * 1024)
    return target.stat().st_size


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_and_restore(tmp: Path, endpoint: str, objects: int, rounds: int) -> dict[str, Any]:
    """Rows 1 and 2: `rounds` of upload_file, backup, download_file and restore."""
    source = tmp / "backup-source"
    progress(f"backup: building a {objects:,}-object StandaloneFileStorage database")
    built = build_database(source, objects)
    segments = wal_segments(source)
    whole = tmp / "one-file"
    size = concatenate(segments, whole)
    progress(f"backup: built in {built:.1f} s; {len(segments)} WAL segment(s), {size / MB:.1f} MB")
    bucket = Bucket.open(S3Location(BUCKET), endpoint)
    runs: list[dict[str, float]] = []
    for number in track(range(1, rounds + 1), "backup and restore", "rounds"):
        progress(f"backup: round {number} of {rounds}")
        run: dict[str, float] = {}
        key = f"baseline-{number}/one-file"
        gc.collect()
        started = time.perf_counter()
        boto3_client(endpoint).upload_file(str(whole), BUCKET, key)
        run["upload_s"] = time.perf_counter() - started

        gc.collect()
        started = time.perf_counter()
        report = backup(source, f"s3://{BUCKET}/backup-{number}", endpoint_url=endpoint)
        run["backup_s"] = time.perf_counter() - started
        if report.bytes != size or report.uploaded_bytes != size:
            raise RuntimeError(f"the backup holds {report.bytes} bytes, the segments {size}")
        run["backup_objects"] = report.objects

        downloaded = tmp / f"downloaded-{number}"
        gc.collect()
        started = time.perf_counter()
        boto3_client(endpoint).download_file(BUCKET, key, str(downloaded))
        run["download_s"] = time.perf_counter() - started
        fsync_file(downloaded)
        run["download_fsync_s"] = time.perf_counter() - started
        if downloaded.stat().st_size != size:
            raise RuntimeError(f"download_file wrote {downloaded.stat().st_size} bytes, not {size}")

        restored = tmp / f"restored-{number}"
        gc.collect()
        started = time.perf_counter()
        back = restore(f"s3://{BUCKET}/backup-{number}", restored, endpoint_url=endpoint)
        run["restore_s"] = time.perf_counter() - started
        if back.bytes != size:
            raise RuntimeError(f"restore wrote {back.bytes} bytes, not {size}")
        runs.append(run)
        progress(
            "backup: "
            + ", ".join(
                f"{name[:-2]} {size / MB / seconds:.0f} MB/s"
                for name, seconds in run.items()
                if name.endswith("_s")
            )
        )
        downloaded.unlink()
        if number == rounds:
            check_restored(restored, objects)
        shutil.rmtree(restored)
        delete_prefix(bucket, f"baseline-{number}/")
        delete_prefix(bucket, f"backup-{number}/")
    return {"bytes": size, "segments": len(segments), "build_s": built, "runs": runs}


def check_restored(path: Path, objects: int) -> None:
    """The restored database opens and holds every object (last round only)."""
    with ObjectSpace(StandaloneFileStorage(path)) as space:
        tr = space.open_database(DB_NAME).new_read_only_transaction()
        items = tr.get_root_object("items")
        last = items.get_at(objects - 1)
        if len(items) != objects or last.n != objects - 1:
            raise RuntimeError(f"the restored database holds {len(items)} objects")
        tr.abort()


# -- 3: commits from 32 threads against sequential small PUTs ----------------------------------


def put_rate(endpoint: str, count: int, label: str, moto: MotoServer) -> dict[str, float]:
    """`count` sequential 200-byte put_object calls from one boto3 client: PUTs/s, CPU per PUT."""
    client = boto3_client(endpoint)
    body = b"x" * PUT_BYTES
    for i in range(5):  # warm-up: the connection, the first requests
        client.put_object(Bucket=BUCKET, Key=f"puts-{label}/warmup-{i}", Body=body)
    cpu, moto_cpu = os.times(), moto.cpu_seconds()
    started = time.perf_counter()
    for i in range(count):
        client.put_object(Bucket=BUCKET, Key=f"puts-{label}/{i:06d}", Body=body)
    elapsed = time.perf_counter() - started
    cpu_end, moto_cpu_end = os.times(), moto.cpu_seconds()
    return {
        "puts_per_s": count / elapsed,
        "client_cpu_ms": (cpu_end.user - cpu.user + cpu_end.system - cpu.system) / count * 1e3,
        "moto_cpu_ms": (moto_cpu_end - moto_cpu) / count * 1e3,
    }


class FlushMeter:
    """Times a CloudFileStorage's group writes, in this process only (protobase/ is unchanged).

    Wraps the storage's bucket's ``put`` and counts the PUTs of each kind
    (``data``, ``index``, ``manifest``), their seconds and bytes. Each
    manifest PUT acknowledges one group of commits (the group's records
    travel inside it until the open object is sealed as a data object).
    """

    def __init__(self, storage: CloudFileStorage) -> None:
        self.lock = threading.Lock()
        self.reset()
        bucket = storage._bucket
        put = bucket.put

        def timed_put(key: str, body: bytes, **options: Any) -> str:
            started = time.perf_counter()
            try:
                return put(key, body, **options)
            finally:
                kind = key.rsplit("/", 2)[-2] if key.count("/") >= 2 else key.rsplit("/")[-1]
                with self.lock:
                    self.put_s[kind] = self.put_s.get(kind, 0.0) + time.perf_counter() - started
                    self.put_n[kind] = self.put_n.get(kind, 0) + 1
                    self.put_bytes[kind] = self.put_bytes.get(kind, 0) + len(body)

        setattr(bucket, "put", timed_put)  # noqa: B010

    def reset(self) -> None:
        with self.lock:
            self.put_s: dict[str, float] = {}
            self.put_n: dict[str, int] = {}
            self.put_bytes: dict[str, int] = {}

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "groups": self.put_n.get("manifest", 0),
                "flush_s": sum(self.put_s.values()),
                "put_s": dict(self.put_s),
                "put_n": dict(self.put_n),
                "put_bytes": dict(self.put_bytes),
            }


def commit_window(
    endpoint: str, cache_dir: Path, prefix: str, threads: int, commits: int, moto: MotoServer
) -> dict[str, Any]:
    """`threads` threads x `commits` one-root commits into one CloudFileStorage database."""
    storage = CloudFileStorage(
        bucket=BUCKET, prefix=prefix, endpoint_url=endpoint, cache_dir=cache_dir
    )
    meter = FlushMeter(storage)
    errors: list[BaseException] = []
    body_s = [0.0] * threads  # per thread: begin + set_root_object
    commit_s = [0.0] * threads  # per thread: tr.commit(), until acknowledged
    with ObjectSpace(storage) as space:
        db = space.new_database(DB_NAME)
        ready = threading.Barrier(threads + 1)

        def work(n: int) -> None:
            try:
                for i in range(WARMUP_COMMITS):
                    with db.transaction() as tr:
                        tr.set_root_object(f"w{n}-{i}", i)
                ready.wait()
                for i in range(commits):
                    began = time.perf_counter()
                    with db.transaction() as tr:
                        tr.set_root_object(f"t{n}-{i}", i)
                        body_end = time.perf_counter()
                    body_s[n] += body_end - began
                    commit_s[n] += time.perf_counter() - body_end
            except threading.BrokenBarrierError:
                pass
            except BaseException as exc:
                errors.append(exc)
                ready.abort()

        workers = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(threads)]
        for worker in workers:
            worker.start()
        with contextlib.suppress(threading.BrokenBarrierError):
            ready.wait()
        meter.reset()
        puts, gets = storage.requests["PUT"], storage.requests["GET"]
        cpu, moto_cpu = os.times(), moto.cpu_seconds()
        started = time.perf_counter()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - started
        cpu_end, moto_cpu_end = os.times(), moto.cpu_seconds()
        flushes = meter.snapshot()
        if errors:
            raise errors[0]
        puts, gets = storage.requests["PUT"] - puts, storage.requests["GET"] - gets
        tr = db.new_read_only_transaction()
        wrong = [
            n for n in range(threads) if tr.get_root_object(f"t{n}-{commits - 1}") != commits - 1
        ]
        tr.abort()
        if wrong:
            raise RuntimeError(f"threads {wrong} lost their last commit")
    total = threads * commits
    return {
        "commits": total,
        "seconds": elapsed,
        "commits_per_s": total / elapsed,
        "puts": puts,
        "gets": gets,
        "bench_cpu_s": cpu_end.user - cpu.user + cpu_end.system - cpu.system,
        "moto_cpu_s": moto_cpu_end - moto_cpu,
        "body_ms": sum(body_s) / total * 1e3,
        "commit_ms": sum(commit_s) / total * 1e3,
        "flushes": flushes,
    }


def commits_against_puts(
    tmp: Path, endpoint: str, moto: MotoServer, threads: int, commits: int, puts: int
) -> dict[str, Any]:
    progress(f"commits: {puts} sequential {PUT_BYTES}-byte PUTs")
    before = put_rate(endpoint, puts, "before", moto)
    progress(f"commits: {before['puts_per_s']:,.0f} PUTs/s; {threads} threads x {commits} commits")
    many = commit_window(endpoint, tmp / "cache-many", "commits-many", threads, commits, moto)
    progress(f"commits: {many['commits_per_s']:,.0f} commits/s; 1 thread x {commits * 2} commits")
    one = commit_window(endpoint, tmp / "cache-one", "commits-one", 1, commits * 2, moto)
    progress(f"commits: {one['commits_per_s']:,.0f} commits/s; {puts} sequential PUTs again")
    after = put_rate(endpoint, puts, "after", moto)
    return {"put_rates": [before, after], "threads": many, "one_thread": one}


# -- 4: warm reads ------------------------------------------------------------------------------


def fill(space: ObjectSpace, count: int) -> None:
    db = space.new_database(DB_NAME)
    with db.transaction() as tr:
        tr.set_root_object("items", Dictionary((k, item(k)) for k in range(count)))


def read_all(space: ObjectSpace, count: int) -> tuple[float, int]:
    """Read every key once (get_at) in a new read-only transaction: (seconds, checksum)."""
    tr = space.open_database(DB_NAME).new_read_only_transaction()
    try:
        started = time.perf_counter()
        items = tr.get_root_object("items")
        total = 0
        for k in range(count):
            total += items.get_at(k).n
        return time.perf_counter() - started, total
    finally:
        tr.abort()


def warm_reads(tmp: Path, endpoint: str, count: int, cache_bytes: int | None) -> dict[str, Any]:
    """Median reads/s of each storage's timed passes, after one warming pass."""
    label = "default" if cache_bytes is None else str(cache_bytes)
    options = {} if cache_bytes is None else {"cache_bytes": cache_bytes}
    spaces = {
        "file": ObjectSpace(StandaloneFileStorage(tmp / f"reads-file-{label}"), **options),
        "cloud": ObjectSpace(
            CloudFileStorage(
                bucket=BUCKET,
                prefix=f"reads-{label}",
                endpoint_url=endpoint,
                cache_dir=tmp / f"cache-reads-{label}",
            ),
            **options,
        ),
    }
    try:
        for space in spaces.values():
            fill(space, count)
        for space in spaces.values():
            read_all(space, count)  # warm: every atom through the caches once
        seconds: dict[str, list[float]] = {name: [] for name in spaces}
        totals = set()
        for _ in range(READ_PASSES):
            for name, space in spaces.items():
                gc.collect()
                elapsed, total = read_all(space, count)
                seconds[name].append(elapsed)
                totals.add(total)
        if len(totals) != 1:
            raise RuntimeError(f"the storages read different values: {totals}")
        cloud = spaces["cloud"].storage
        assert isinstance(cloud, CloudFileStorage)
        gets = cloud.requests["GET"]
    finally:
        for space in spaces.values():
            space.close()
    return {
        "reads_per_s": {name: count / statistics.median(s) for name, s in seconds.items()},
        "seconds": seconds,
        "cloud_gets": gets,
    }


# -- the whole run -----------------------------------------------------------------------------


def machine(tmp: Path) -> dict[str, Any]:
    info = machine_info(("protobase", "boto3", "botocore", "moto", "msgpack", "xxhash"))
    info["data_filesystem"] = filesystem_of(tmp)
    return info


def header(info: dict[str, Any], tmp: Path, moto: MotoServer, command: str) -> None:
    print("# ProtoBase S3 benchmark: CloudFileStorage, backup and restore")
    print()
    print(
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, "
        f"Linux {info['kernel']}"
    )
    print(f"- protobase source: {info['protobase_source']}")
    print(f"- data: {tmp} on {info['data_filesystem']}")
    print(f"- {info['python']}; " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print(
        f"- S3 endpoint: moto_server {info['versions']['moto']} at {moto.endpoint} (PID {moto.pid})"
    )
    print(f"- command: {command}")
    load = os.getloadavg()
    print(f"- load average at the start: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min)")
    print(flush=True)


def rows_of(results: dict[str, Any], args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    if "backup" in results:
        found = results["backup"]
        size = found["bytes"]
        runs = found["runs"]

        def mbps(name: str) -> float:
            return size / MB / statistics.median(run[name] for run in runs)

        backup_rate, upload_rate = mbps("backup_s"), mbps("upload_s")
        restore_rate, download_rate = mbps("restore_s"), mbps("download_s")
        what = (
            f"{args.objects:,}-object database, {size / MB:.1f} MB "
            f"in {found['segments']} segment(s)"
        )
        rows.append(
            Row(
                "1",
                f"backup of a {what}",
                f"{backup_rate:.1f} MB/s",
                "boto3 `upload_file`, one file of the same size",
                f"{upload_rate:.1f} MB/s",
                backup_rate / upload_rate,
                Target(">= 0.7x", backup_rate >= 0.7 * upload_rate),
            )
        )
        rows.append(
            Row(
                "2",
                "restore of it into a new directory",
                f"{restore_rate:.1f} MB/s",
                "boto3 `download_file` of the one file",
                f"{download_rate:.1f} MB/s",
                restore_rate / download_rate,
                Target(">= 0.7x", restore_rate >= 0.7 * download_rate),
            )
        )
        synced = mbps("download_fsync_s")
        rows.append(
            Row(
                "2f",
                "restore (as row 2)",
                f"{restore_rate:.1f} MB/s",
                "`download_file` + fsync of the file",
                f"{synced:.1f} MB/s",
                restore_rate / synced,
            )
        )
    if "commits" in results:
        found = results["commits"]
        puts = statistics.mean(rates["puts_per_s"] for rates in found["put_rates"])
        many, one = found["threads"], found["one_thread"]
        ratio = many["commits_per_s"] / puts
        rows.append(
            Row(
                "3",
                f"CloudFileStorage commits/s, {args.threads} threads, one root each",
                rate(many["commits_per_s"]),
                f"sequential {PUT_BYTES}-byte PUTs, one boto3 client",
                rate(puts),
                ratio,
                Target(">= 10x", ratio >= 10),
            )
        )
        rows.append(
            Row(
                "3a",
                "CloudFileStorage commits/s, 1 thread",
                rate(one["commits_per_s"]),
                "sequential PUTs (as row 3)",
                rate(puts),
                one["commits_per_s"] / puts,
            )
        )
    if "reads" in results:
        for key, name, found in (
            ("4", "warm reads", results["reads"]),
            ("4s", "warm reads, ObjectSpace atom cache off", results["reads_storage"]),
        ):
            cloud, file = found["reads_per_s"]["cloud"], found["reads_per_s"]["file"]
            rows.append(
                Row(
                    key,
                    f"CloudFileStorage {name} ({args.reads:,} objects, get_at each)",
                    rate(cloud),
                    "StandaloneFileStorage, the same",
                    rate(file),
                    cloud / file,
                    Target(">= 0.8x", cloud >= 0.8 * file) if key == "4" else None,
                )
            )
    return rows


def commit_breakdown(found: dict[str, Any], threads: int) -> list[str]:
    """Where row 3's time goes: the PUT baseline's cost, group sizes, PUT times, CPU."""
    before, after = found["put_rates"]
    moto_ms = statistics.mean(r["moto_cpu_ms"] for r in found["put_rates"])
    client_ms = statistics.mean(r["client_cpu_ms"] for r in found["put_rates"])
    runs = (found["threads"], found["one_thread"])

    def both(describe: Callable[[dict[str, Any]], str]) -> str:
        return " | ".join(describe(run) for run in runs)

    def requests(run: dict[str, Any]) -> str:
        return f"{run['puts'] / run['commits']:.3f} PUTs, {run['gets'] / run['commits']:.3f} GETs"

    def groups(run: dict[str, Any]) -> str:
        flushes = run["flushes"]
        count = max(1, flushes["groups"])
        return (
            f"{flushes['groups']} groups (manifest PUTs), {run['commits'] / count:.1f} commits "
            f"and {flushes['flush_s'] / count * 1e3:.1f} ms of PUTs each, the flusher busy "
            f"{flushes['flush_s'] / run['seconds'] * 100:.0f} % of the window"
        )

    def group_puts(run: dict[str, Any]) -> str:
        count, seconds = run["flushes"]["put_n"], run["flushes"]["put_s"]
        size = run["flushes"]["put_bytes"]
        return ", ".join(
            f"{kind} {count[kind]} x {seconds[kind] / count[kind] * 1e3:.1f} ms "
            f"({size[kind] / count[kind] / 1e3:.1f} kB)"
            for kind in sorted(count)
        )

    def in_thread(run: dict[str, Any]) -> str:
        return f"{run['body_ms']:.2f} ms + {run['commit_ms']:.2f} ms"

    def cpu(run: dict[str, Any]) -> str:
        per_commit = run["bench_cpu_s"] / run["commits"] * 1e3
        moto = run["moto_cpu_s"] / run["commits"] * 1e3
        cores = (run["bench_cpu_s"] + run["moto_cpu_s"]) / run["seconds"]
        return f"{per_commit:.2f} ms + {moto:.2f} ms ({cores:.2f} cores busy)"

    return [
        f"Sequential PUTs (row 3's baseline): {before['puts_per_s']:,.0f}/s before the commits, "
        f"{after['puts_per_s']:,.0f}/s after; per PUT, moto_server used {moto_ms:.2f} ms of "
        f"CPU and the client {client_ms:.2f} ms.",
        f"Row 3 ({threads} threads) | row 3a (1 thread), per commit unless said:",
        f"- S3 requests: {both(requests)}",
        f"- groups (a manifest PUT each; a data PUT when the open object is sealed): "
        f"{both(groups)}",
        f"- PUTs in group writes, count x mean time (mean size): {both(group_puts)}",
        "- in the committing thread, begin + set_root_object, then commit until "
        f"acknowledged: {both(in_thread)}",
        f"- CPU, this process + moto_server: {both(cpu)}",
    ]


def run(args: argparse.Namespace, tmp: Path, moto: MotoServer) -> dict[str, Any]:
    endpoint = moto.endpoint
    Bucket.open(S3Location(BUCKET), endpoint).ensure_bucket()
    parts = PARTS if args.only is None else (args.only,)
    results: dict[str, Any] = {}
    if "commits" in parts:
        results["commits"] = commits_against_puts(
            tmp, endpoint, moto, args.threads, args.commits, args.puts
        )
    if "reads" in parts:
        progress(f"reads: {args.reads:,} objects, warm, StandaloneFileStorage vs CloudFileStorage")
        results["reads"] = warm_reads(tmp, endpoint, args.reads, None)
        progress("reads: the same with the ObjectSpace's atom cache off")
        results["reads_storage"] = warm_reads(tmp, endpoint, args.reads, 0)
    if "backup" in parts:
        results["backup"] = backup_and_restore(tmp, endpoint, args.objects, args.rounds)
    return results


def stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1_000_000, help="objects to back up")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of rows 1 and 2")
    parser.add_argument("--threads", type=int, default=32, help="committing threads (row 3)")
    parser.add_argument("--commits", type=int, default=100, help="commits per thread (row 3)")
    parser.add_argument("--puts", type=int, default=300, help="sequential PUTs (row 3)")
    parser.add_argument("--reads", type=int, default=20_000, help="objects read warm (row 4)")
    parser.add_argument("--only", choices=PARTS, help="run one part only")
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    args = parser.parse_args()
    command = shlex.join(["python", "bench/s3.py", *sys.argv[1:]])
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    os.environ.update(CREDENTIALS)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="protobase-bench-s3-", dir="/tmp"))
    moto = MotoServer(tmp / "moto.log")
    began = time.perf_counter()
    try:
        moto.start()
        info = machine(tmp)
        header(info, tmp, moto, command)
        results = run(args, tmp, moto)
    finally:
        moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - began
    rows = rows_of(results, args)
    print(table(rows))
    print()
    print("Ratio: the ProtoBase figure divided by the baseline's; every target is a ratio.")
    if "commits" in results:
        print()
        print("\n".join(commit_breakdown(results["commits"], args.threads)))
        print()
    misses = [
        f"{row.key} ({row.target.text})" for row in rows if row.target and not row.target.passed
    ]
    print(f"Missed targets: {', '.join(misses) if misses else 'none'}")
    load = os.getloadavg()
    print(f"Load average at the end: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min)")
    print(f"Total run time: {elapsed:.0f} s")
    if args.json:
        report = {
            "command": command,
            "machine": info,
            "total_seconds": elapsed,
            "results": results,
            "rows": [
                {
                    "id": row.key,
                    "figure": row.figure,
                    "value": row.value,
                    "baseline": row.baseline,
                    "baseline_value": row.baseline_value,
                    "ratio": row.ratio,
                    "target": None if row.target is None else row.target.text,
                    "pass": None if row.target is None else row.target.passed,
                }
                for row in rows
            ],
        }
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"Results written to {args.json}")


if __name__ == "__main__":
    main()
