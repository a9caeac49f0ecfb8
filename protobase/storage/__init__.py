"""Storage backends: they store atoms as bytes and move one root atomically."""

from .cloud import CloudFileStorage
from .file import StandaloneFileStorage
from .interfaces import CommitBatch, CommitInfo, RootRef, Storage
from .memory import MemoryStorage

__all__ = [
    "CloudFileStorage",
    "CommitBatch",
    "CommitInfo",
    "MemoryStorage",
    "RootRef",
    "StandaloneFileStorage",
    "Storage",
]
