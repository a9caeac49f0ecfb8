"""What the benchmarks share: the machine header, progress lines, targets.

Imported by every benchmark in bench/ (run as scripts, so this module is
imported from the script's own directory).
"""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any


def _proc_field(path: str, prefix: str) -> str | None:
    """The rest of the first line of a /proc file that starts with `prefix`."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:  # not Linux: the header says "unknown"
        return None
    return next((line[len(prefix) :].strip() for line in lines if line.startswith(prefix)), None)


def filesystem_of(directory: Path) -> str | None:
    """``fstype on device (mounted at m)`` for the mount that holds `directory`."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    best, found = "", None
    resolved = str(directory.resolve())
    for line in mounts:
        device, mount, fstype = line.split()[:3]
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, found = mount, f"{fstype} on {device} (mounted at {mount})"
    return found


def machine_info(packages: Sequence[str]) -> dict[str, Any]:
    """CPUs, memory, kernel, Python, the checkout's commit and `packages`' versions."""
    cpu = _proc_field("/proc/cpuinfo", "model name")
    memory = _proc_field("/proc/meminfo", "MemTotal:")
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["sqlite (library)"] = sqlite3.sqlite_version
    return {
        "protobase_source": source_revision(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": (cpu or "unknown").lstrip(": "),
        "memory": None if memory is None else f"{int(memory.split()[0]) / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": versions,
    }


def source_revision() -> str:
    """The git commit of this checkout, and whether protobase/ differs from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit, subject = git("log", "-1", "--format=%h%n%s").split("\n", 1)
        commit = f"{commit} ({subject[:60]}{'...' if len(subject) > 60 else ''})"
        dirty = git("status", "--porcelain", "--", "protobase")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    changed = len(dirty.splitlines())
    return commit + (f" + uncommitted changes in {changed} file(s) of protobase/" if dirty else "")


def progress(message: str) -> None:
    """A progress line on stderr (the results go to stdout)."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


@dataclass
class Target:
    """One target of the issue: what it asks, and whether the run met it."""

    text: str
    passed: bool
