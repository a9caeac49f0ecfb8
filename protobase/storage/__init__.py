"""Storage backends: they store atoms as bytes and move one root atomically."""

from .interfaces import CommitBatch, RootRef, Storage
from .memory import MemoryStorage

__all__ = ["CommitBatch", "MemoryStorage", "RootRef", "Storage"]
