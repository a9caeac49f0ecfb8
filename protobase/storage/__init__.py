"""Storage backends: they store atoms as bytes and move one root atomically."""

from .file import StandaloneFileStorage
from .interfaces import CommitBatch, CommitInfo, RootRef, Storage
from .memory import MemoryStorage

__all__ = [
    "CommitBatch",
    "CommitInfo",
    "MemoryStorage",
    "RootRef",
    "StandaloneFileStorage",
    "Storage",
]
