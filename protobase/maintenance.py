"""Maintenance of a StandaloneFileStorage directory: fsck, inspect, pack.

Library functions; `protobase fsck|inspect|pack PATH` are thin wrappers
(`protobase.cli`), and the tests call these functions directly.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import reachability
from .errors import ProtoBaseException
from .space import ObjectSpace
from .storage.file import Progress, StandaloneFileStorage


@dataclass
class FsckReport:
    """What `fsck` found. `clean` is True when nothing is wrong."""

    path: Path
    records_checked: int = 0
    versions_checked: int = 0
    atoms_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


def fsck(path: str | Path, progress: Progress | None = None) -> FsckReport:
    """Verify every record checksum and every pointer reachable from every kept root.

    Opening runs recovery first (a torn tail is truncated, as on any open).
    """
    report = FsckReport(Path(path))
    try:
        storage = StandaloneFileStorage(path, create=False)
    except ProtoBaseException as exc:
        report.problems.append(f"cannot open: {exc}")
        return report
    with ObjectSpace(storage) as space:
        report.problems.extend(storage.verify_records(progress))
        history = storage.history()
        report.records_checked = len(history)
        report.versions_checked = len(history)
        found = reachability.walk(
            space.read_payloads, [c.root for c in history], progress, collect_problems=True
        )
        report.atoms_checked = len(found.reachable)
        report.problems.extend(found.problems)
    return report


def inspect(path: str | Path) -> dict[str, Any]:
    """A summary of a storage directory: segments, commits, databases."""
    storage = StandaloneFileStorage(path, create=False)
    with ObjectSpace(storage) as space:
        history = storage.history()
        return {
            "path": str(path),
            "root_version": storage.read_root().version,
            "commits_kept": len(history),
            "oldest_version": history[0].version if history else None,
            "segments": storage.segment_sizes(),
            "wal_bytes": sum(size for _, size in storage.segment_sizes()),
            "databases": space.list_databases(),
            "recent_commits": [
                {
                    "version": c.version,
                    "time": dt.datetime.fromtimestamp(c.time, dt.UTC).isoformat(),
                    "bytes": c.size,
                }
                for c in history[-10:]
            ],
        }


def pack(
    path: str | Path, keep_history: dt.timedelta = dt.timedelta(0), progress: Progress | None = None
) -> tuple[int, int]:
    """Pack the directory; returns the WAL size in bytes before and after."""
    storage = StandaloneFileStorage(path, create=False)
    with ObjectSpace(storage) as space:
        before = sum(size for _, size in storage.segment_sizes())
        space.pack(keep_history, progress)
        after = sum(size for _, size in storage.segment_sizes())
    return before, after
