"""Storage backends: they store atoms as bytes and move one root atomically."""

from .file import CommitInfo, StandaloneFileStorage
from .interfaces import CommitBatch, RootRef, Storage
from .memory import MemoryStorage

__all__ = [
    "CommitBatch",
    "CommitInfo",
    "MemoryStorage",
    "RootRef",
    "StandaloneFileStorage",
    "Storage",
]
