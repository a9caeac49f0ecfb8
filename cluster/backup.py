"""Backup, restore and verification of a whole cluster, through its cold tier.

The cold tier (`cluster.cold_tier`) already holds every committed partition
entry and, now and then, the meta state. A backup makes that consistent at
one point and names it:

1. ``POST /v1/admin/checkpoint``: the meta leader uploads its state now, at
   meta log index M (the backup's *version*).
2. Every root of that state names batches that were applied in their
   partitions before the root changed. So once, for every partition group,
   the uploaded entries reach the highest applied index its replicas report
   *after* step 1, the tier holds everything M reaches. The backup waits for
   that (by listing the tier).
3. The objects are copied to the backup location (S3 copies them within the
   endpoint; objects already there with the same size are skipped, which
   makes backups incremental and a rerun resume), and last a manifest
   ``cluster-backups/MMMMMMMMMMMMMMMMMMMM.json`` names them: it is the commit
   point, so an interrupted backup is invisible.

Restore writes the configs of a new local cluster into a directory, starts
it, puts every batch of the backup (same transaction ids, so every pointer
is the same), sets each object space's root to the one in the chosen meta
state, and stops it; ``protobase cluster up DIR`` then serves the same
objects. Each space starts its version count again at 1 there. ``--at``
picks an older meta state of the same backup: VERSION is a meta log index,
TIME the time a meta state was uploaded (at each backup, and every
``meta_snapshot_interval`` in between).

Verify checks every object's checksum and framing, that the entries of each
group cover it without a gap, and that every atom reachable from every root
of every meta state is in the backup.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from protobase import reachability
from protobase.atoms import AtomPointer, new_transaction_id, unframe_atom
from protobase.errors import AtomNotFoundError, StorageError
from protobase.s3 import Bucket, ObjectMissing, S3Location

from .cold_tier import (
    META_MAGIC,
    ColdTierError,
    coverage,
    decode_entries,
    parse_entries_key,
    unframe,
)
from .meta import MetaMachine
from .partition_store import PartitionEntryError, parse_entry
from .raft.types import EntryKind

MANIFESTS = "cluster-backups/"
MANIFEST_FORMAT = 1
Progress = Callable[[int, int], None]


class ClusterBackupError(StorageError):
    """The cluster cannot be backed up or restored as asked; the message says why."""


@dataclass
class ClusterBackupReport:
    location: str
    meta_index: int
    objects: int = 0
    copied: int = 0
    copied_bytes: int = 0
    spaces: dict[str, int] = field(default_factory=dict)
    """Space -> its root version in the backed-up meta state."""


@dataclass
class ClusterRestoreReport:
    directory: Path
    meta_index: int
    batches: int = 0
    spaces: dict[str, int] = field(default_factory=dict)
    """Space -> the version it had when it was backed up."""


@dataclass
class ClusterVerifyReport:
    location: str
    backups: int = 0
    objects_checked: int = 0
    atoms_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


# -- talking to a node ---------------------------------------------------------------


def _http(url: str, token: str | None, body: Any = None, timeout: float = 30.0) -> Any:
    """GET (no body) a JSON route, or POST a msgpack body; follows 421 to the meta leader."""
    for _ in range(5):
        data = None if body is None else msgpack.packb(body)
        request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                if data is None:
                    return json.loads(raw)
                return msgpack.unpackb(raw)
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read())
            except ValueError:
                error = {"error": str(exc)}
            if exc.code == 421 and error.get("leader_url"):
                url = error["leader_url"] + url[url.index("/v1/") :]
                continue
            if exc.code == 401:
                raise ClusterBackupError(f"{url}: the token was refused (401)") from exc
            raise ClusterBackupError(f"{url}: {exc.code}: {error.get('error')}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ClusterBackupError(f"{url} did not answer: {exc}") from exc
    raise ClusterBackupError(f"{url}: the meta leader kept moving; retry")


# -- backup ---------------------------------------------------------------------------


def backup_cluster(
    url: str,
    token: str,
    destination: S3Location | str,
    endpoint_url: str | None = None,
    progress: Progress | None = None,
    timeout: float = 120.0,
) -> ClusterBackupReport:
    """Back the cluster at `url` up to `destination`; see the module docstring.

    `progress` is called as ``progress(bytes, total)`` while objects are
    copied (or found there already).

    Raises:
        ClusterBackupError: no cold tier, the token was refused, the tier did
            not catch up within `timeout`, or a node did not answer.
        S3Unavailable: S3 did not answer.
    """
    if isinstance(destination, str):
        destination = S3Location.parse(destination)
    url = url.rstrip("/")
    status = _http(url + "/status.json", None)
    if not status.get("s3"):
        raise ClusterBackupError(
            f"{url}: this cluster has no cold tier; add an [s3] table to every node.toml "
            "to back it up to S3"
        )
    cut = _http(url + "/v1/admin/checkpoint", token, {})
    tier_location = S3Location.parse(cut["location"])
    targets = _log_targets(status)
    tier = Bucket.open(tier_location, endpoint_url)
    deadline = time.monotonic() + timeout
    objects: dict[str, int] = {}
    while True:
        objects = dict(tier.list_objects(tier.key("partitions/")))
        behind = {
            group: target
            for group, target in targets.items()
            if _group_coverage(objects, tier, group) < target
        }
        if not behind:
            break
        if time.monotonic() > deadline:
            raise ClusterBackupError(
                f"the cold tier did not catch up within {timeout:g} s (groups behind, with the "
                f"entry they must reach: {behind}); is S3 reachable from the nodes? See "
                "s3.backlog_entries in /status.json"
            )
        time.sleep(0.2)
    for key, size in tier.list_objects(tier.key("meta/")):
        index = _meta_index(key)
        if index is not None and index <= cut["meta_index"]:
            objects[key] = size
    report = ClusterBackupReport(str(destination), int(cut["meta_index"]), objects=len(objects))
    target = Bucket(destination, tier.client, tier.endpoint)
    present = dict(target.list_objects(target.key("")))
    relative = {key[len(tier.key("")) :]: size for key, size in objects.items()}
    done, total = 0, sum(relative.values())
    for name, size in sorted(relative.items()):
        destination_key = target.key(name)
        if present.get(destination_key) != size:
            target.copy_from(tier, tier.key(name), destination_key)
            report.copied += 1
            report.copied_bytes += size
        done += size
        if progress is not None:
            progress(done, total)
    meta_name = cut["key"]
    state = _meta_state(target, meta_name)
    report.spaces = {space: root.version for space, root in state.spaces.items()}
    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": "cluster",
        "cluster": status["cluster"],
        "partitions": status["partitions"],
        "meta_index": report.meta_index,
        "meta": meta_name,
        "time": time.time(),
        "groups": {str(g): t for g, t in targets.items()},
        "objects": sorted(relative.items()),
        "spaces": report.spaces,
    }
    target.put(
        target.key(f"{MANIFESTS}{report.meta_index:020d}.json"),
        json.dumps(manifest, indent=1).encode(),
    )
    return report


def _log_targets(status: dict[str, Any]) -> dict[int, int]:
    """Partition group -> an index the tier must reach to hold everything committed now.

    A committed entry is in the logs of a majority of its group's replicas,
    and every majority shares a member with it: so the highest last log
    index among a majority of the replicas, asked after the checkpoint, is
    at or past every entry committed before it. (An entry in that range
    that is never committed is replaced at its index by one that is, so the
    tier reaches it either way.)
    """
    last: dict[int, dict[int, int]] = {}
    for member in status["members"]:
        try:
            state = _http(member["client"] + "/status.json", None, timeout=5)
        except ClusterBackupError:
            continue
        for group in state["groups"]:
            last.setdefault(int(group["group"]), {})[member["id"]] = int(group["last_index"])
    targets: dict[int, int] = {}
    for group, replicas in status["placement"].items():
        if int(group) == 0:
            continue  # the meta group: its state is the checkpoint itself
        answered = last.get(int(group), {})
        if len(answered) * 2 <= len(replicas):
            raise ClusterBackupError(
                f"partition group {group}: only {len(answered)} of its {len(replicas)} "
                "replicas answered; a backup needs a majority of each group to know what "
                "is committed"
            )
        targets[int(group)] = max(answered.values())
    return targets


def _group_coverage(objects: dict[str, int], bucket: Bucket, group: int) -> int:
    prefix = bucket.key(f"partitions/group-{group:04d}/")
    ranges = [
        parsed
        for key in objects
        if key.startswith(prefix)
        and (parsed := parse_entries_key(key.rsplit("/", 1)[-1])) is not None
    ]
    return coverage(ranges)


def _meta_index(key: str) -> int | None:
    name = key.rsplit("/", 1)[-1]
    stem, _, extension = name.partition(".")
    return int(stem) if extension == "pbs" and len(stem) == 20 and stem.isdigit() else None


def _meta_fields(bucket: Bucket, name: str) -> dict[str, Any]:
    key = bucket.key(name)
    try:
        fields = unframe(bucket.get(key), META_MAGIC, f"s3://{bucket.name}/{key}")
    except ColdTierError as exc:
        raise ClusterBackupError(str(exc)) from exc
    if type(fields) is not dict or "state" not in fields:
        raise ClusterBackupError(f"s3://{bucket.name}/{key}: not a meta state")
    return fields


def _meta_state(bucket: Bucket, name: str) -> Any:
    machine = MetaMachine()
    machine.restore_bytes(_meta_fields(bucket, name)["state"])
    return machine.state


# -- manifests ------------------------------------------------------------------------


def has_cluster_backups(location: S3Location | str, endpoint_url: str | None = None) -> bool:
    if isinstance(location, str):
        location = S3Location.parse(location)
    bucket = Bucket.open(location, endpoint_url)
    return any(True for _ in bucket.list_objects(bucket.key(MANIFESTS)))


def _manifests(bucket: Bucket) -> list[dict[str, Any]]:
    found = []
    for key, _ in bucket.list_objects(bucket.key(MANIFESTS)):
        try:
            manifest = json.loads(bucket.get(key))
        except ValueError as exc:
            raise ClusterBackupError(f"s3://{bucket.name}/{key} is not JSON: {exc}") from exc
        if manifest.get("kind") != "cluster" or manifest.get("format") != MANIFEST_FORMAT:
            raise ClusterBackupError(f"s3://{bucket.name}/{key} is not a cluster backup manifest")
        manifest["key"] = key
        found.append(manifest)
    if not found:
        raise ClusterBackupError(f"{bucket.location} holds no cluster backup")
    return sorted(found, key=lambda m: m["meta_index"])


def _choose(
    bucket: Bucket, at_index: int | None, at_time: float | None
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(manifest, meta state name, meta fields) of the point asked for."""
    manifest = _manifests(bucket)[-1]
    candidates = sorted(
        (index, name) for name, _ in manifest["objects"] if (index := _meta_index(name)) is not None
    )
    for index, name in reversed(candidates):
        if at_index is not None and index > at_index:
            continue
        fields = _meta_fields(bucket, name)
        if at_time is not None and fields["time"] > at_time:
            continue
        return manifest, name, fields
    oldest = candidates[0][0] if candidates else None
    raise ClusterBackupError(
        f"{bucket.location} has no meta state at or before the point asked for "
        f"(oldest kept: meta index {oldest})"
    )


# -- reading the entries back ----------------------------------------------------------

READERS = 8
"""Objects read from S3 at once (one small GET is mostly waiting on the endpoint)."""


def _read_objects(bucket: Bucket, keys: Sequence[str]) -> Iterator[bytes]:
    """The objects at `keys`, in that order, read `READERS` at a time.

    Raises:
        ClusterBackupError: an object is missing.
    """

    def read(key: str) -> bytes:
        try:
            return bucket.get(key)
        except ObjectMissing as exc:
            raise ClusterBackupError(f"s3://{bucket.name}/{key} is missing") from exc

    with ThreadPoolExecutor(READERS, thread_name_prefix="backup-read") as pool:
        yield from pool.map(read, keys)


def _batches(
    bucket: Bucket, manifest: dict[str, Any], progress: Progress | None
) -> dict[bytes, tuple[list[bytes], list[Any] | None]]:
    """Transaction id -> (atoms, links) of every batch in the backup's entries.

    `progress` is called in bytes of entries objects read.
    """
    parts: dict[bytes, dict[int, tuple[list[bytes], list[Any] | None]]] = {}
    totals: dict[bytes, int] = {}
    names = [(name, size) for name, size in manifest["objects"] if name.endswith(".pbe")]
    done, total_bytes = 0, sum(size for _, size in names)
    ranges = []
    for name, _ in names:
        first_last = parse_entries_key(name.rsplit("/", 1)[-1])
        if first_last is None:
            raise ClusterBackupError(f"{name}: not an entries object name")
        ranges.append(first_last)
    keys = [bucket.key(name) for name, _ in names]
    for key, (_, size), first_last, data in zip(
        keys, names, ranges, _read_objects(bucket, keys), strict=True
    ):
        try:
            entries = decode_entries(data, f"s3://{bucket.name}/{key}", *first_last)
        except ColdTierError as exc:
            raise ClusterBackupError(str(exc)) from exc
        for kind, data in entries.values():
            if kind != EntryKind.NORMAL or not data:
                continue  # a membership change, or a new leader's empty entry
            try:
                raw = msgpack.unpackb(data)
                transaction_id, first, chunk, total = parse_entry(data)
            except (PartitionEntryError, ValueError) as exc:
                raise ClusterBackupError(f"s3://{bucket.name}/{key}: {exc}") from exc
            # A chunk stored twice (a retried put) counts once: the first, as in the machine.
            parts.setdefault(transaction_id, {}).setdefault(first, (chunk, raw[4]))
            totals[transaction_id] = total
        done += size
        if progress is not None:
            progress(done, total_bytes)
    batches: dict[bytes, tuple[list[bytes], list[Any] | None]] = {}
    for transaction_id, chunks in parts.items():
        atoms: list[bytes] = []
        links: list[Any] | None = []
        for first in sorted(chunks):
            chunk_atoms, chunk_links = chunks[first]
            if first != len(atoms):
                break
            atoms.extend(chunk_atoms)
            if chunk_links is None or links is None:
                links = None
            else:
                links.extend(chunk_links)
        if len(atoms) == totals[transaction_id]:
            batches[transaction_id] = (atoms, links)
    return batches


# -- restore --------------------------------------------------------------------------

LOADERS = 8
"""Batches put into the new cluster at once."""


def restore_cluster(
    location: S3Location | str,
    directory: str | Path,
    at_index: int | None = None,
    at_time: float | None = None,
    nodes: int = 3,
    base_port: int = 7100,
    endpoint_url: str | None = None,
    progress: Progress | None = None,
) -> ClusterRestoreReport:
    """Restore a cluster backup into a new local cluster in `directory`.

    `progress` is called in two phases: ``(bytes, total)`` while the
    entries are read from the backup, then ``(batches, total)`` while they
    are put into the new cluster.

    Raises:
        ClusterBackupError: no backup, no point at or before `at_*`, a
            damaged object, `directory` not empty, or the new cluster did not
            start.
    """
    from protobase.cluster_cli import start_node, stop_processes, wait_ready, write_configs
    from protobase.storage.cluster import ClusterFileStorage

    if isinstance(location, str):
        location = S3Location.parse(location)
    target = Path(directory)
    if target.exists() and any(target.iterdir()):
        raise ClusterBackupError(f"{target} is not empty; restore into a new directory")
    bucket = Bucket.open(location, endpoint_url)
    manifest, _, fields = _choose(bucket, at_index, at_time)
    machine = MetaMachine()
    machine.restore_bytes(fields["state"])
    batches = _batches(bucket, manifest, progress)
    roots = [AtomPointer(*r.pointer) for r in machine.state.spaces.values() if r.pointer]
    missing = reachability.walk(_payload_reader(batches), roots, None, collect_problems=True)
    if missing.problems:
        raise ClusterBackupError(
            f"{location}: {len(missing.problems)} atom(s) reachable from the backed-up roots "
            f"are not in the backup (first: {missing.problems[0]}); nothing was restored. "
            "Run `protobase backup verify`"
        )
    configs = write_configs(target, nodes, base_port, int(manifest["partitions"]))
    processes = [start_node(config, target / f"node{k}.log") for k, config in enumerate(configs, 1)]
    report = ClusterRestoreReport(target, int(fields["index"]))
    try:
        urls = [f"http://127.0.0.1:{base_port + k}" for k in range(1, nodes + 1)]
        wait_ready(urls)
        token = (target / "client.token").read_text().strip()
        loader = ClusterFileStorage(urls, token=token, space="restore")
        try:
            from protobase.storage.interfaces import CommitBatch

            def put(item: tuple[bytes, tuple[list[bytes], list[Any] | None]]) -> None:
                transaction_id, (atoms, links) = item
                wire_links = (
                    None
                    if links is None
                    else [[AtomPointer(bytes(p[0]), p[1]) for p in atom] for atom in links]
                )
                loader.put_batch(CommitBatch(transaction_id, atoms, wire_links))

            # Batches are independent: several in flight share the partitions' syncs.
            with ThreadPoolExecutor(LOADERS, thread_name_prefix="restore-put") as pool:
                for _ in pool.map(put, batches.items()):
                    report.batches += 1
                    if progress is not None:
                        progress(report.batches, len(batches))
        finally:
            loader.close()
        for space, root in machine.state.spaces.items():
            if root.pointer is None:
                continue
            storage = ClusterFileStorage(urls, token=token, space=space)
            try:
                pointer = AtomPointer(*root.pointer)
                if pointer.transaction_id not in batches:
                    raise ClusterBackupError(
                        f"space {space!r}: its root's batch {pointer.transaction_id.hex()} "
                        "is not in the backup; run `protobase backup verify`"
                    )
                storage.set_root(0, pointer, new_transaction_id())
            finally:
                storage.close()
            report.spaces[space] = root.version
    finally:
        stop_processes(processes)
    return report


def _payload_reader(
    batches: dict[bytes, tuple[list[bytes], list[Any] | None]],
) -> Callable[[Sequence[AtomPointer]], list[bytes]]:
    """`reachability.walk`'s reader over the batches of a backup."""

    def read_payloads(pointers: Sequence[AtomPointer]) -> list[bytes]:
        found = []
        for pointer in pointers:
            batch = batches.get(pointer.transaction_id)
            if batch is None or not 0 <= pointer.index < len(batch[0]):
                raise AtomNotFoundError(f"no atom at {pointer} in the backup")
            found.append(unframe_atom(batch[0][pointer.index]))
        return found

    return read_payloads


# -- verify ---------------------------------------------------------------------------


def verify_cluster(
    location: S3Location | str, endpoint_url: str | None = None, progress: Progress | None = None
) -> ClusterVerifyReport:
    """Check every cluster backup at `location`; see the module docstring.

    `progress` is called in bytes of entries objects read.
    """
    if isinstance(location, str):
        location = S3Location.parse(location)
    bucket = Bucket.open(location, endpoint_url)
    report = ClusterVerifyReport(str(location))
    manifests = _manifests(bucket)
    report.backups = len(manifests)
    manifest = manifests[-1]  # every later backup names a superset of the objects
    present = dict(bucket.list_objects(bucket.key("")))  # one listing, not a HEAD each
    for name, size in manifest["objects"]:
        found = present.get(bucket.key(name))
        if found != size:
            report.problems.append(f"{name}: {found} bytes in the bucket, {size} in the manifest")
        report.objects_checked += 1
    try:
        batches = _batches(bucket, manifest, progress)
    except ClusterBackupError as exc:
        report.problems.append(str(exc))
        return report
    ranges: dict[str, list[tuple[int, int]]] = {}
    for name, _ in manifest["objects"]:
        parsed = parse_entries_key(name.rsplit("/", 1)[-1])
        if parsed is not None:
            ranges.setdefault(name.rsplit("/", 2)[-2], []).append(parsed)
    for group, target in manifest["groups"].items():
        through = coverage(ranges.get(f"group-{int(group):04d}", []))
        if through < target:
            report.problems.append(
                f"partition group {group}: entries reach {through}, the backup needs {target}"
            )

    # Every backed-up point's roots in one walk: the points share most of their atoms.
    roots: dict[AtomPointer, None] = {}  # in order, each once
    for name, _ in manifest["objects"]:
        if _meta_index(name) is None:
            continue
        try:
            machine = MetaMachine()
            machine.restore_bytes(_meta_fields(bucket, name)["state"])
        except ClusterBackupError as exc:
            report.problems.append(str(exc))
            continue
        for space in machine.state.spaces.values():
            if space.pointer:
                roots[AtomPointer(*space.pointer)] = None
    walked = reachability.walk(_payload_reader(batches), list(roots), None, collect_problems=True)
    report.problems.extend(walked.problems)
    report.atoms_checked += len(walked.reachable)
    return report
