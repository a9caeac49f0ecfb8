"""How the cluster writes pointers and snapshots, for its state machines and its API.

A pointer travels as ``[transaction id (16 bytes), index >= 0]`` in
msgpack. State machines whose state is one msgpack value write it whole as
their snapshot (`BytesSnapshots`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, BinaryIO

from protobase.atoms import TRANSACTION_ID_BYTES


def wire_pointer(raw: Any) -> tuple[bytes, int] | None:
    """``(transaction id, index)`` when `raw` is a well-formed wire pointer, else None."""
    if (
        type(raw) is not list
        or len(raw) != 2
        or type(raw[0]) is not bytes
        or len(raw[0]) != TRANSACTION_ID_BYTES
        or type(raw[1]) is not int
        or raw[1] < 0
    ):
        return None
    return raw[0], raw[1]


class BytesSnapshots(ABC):
    """`StateMachine.snapshot`/`restore` for a machine whose state is small enough
    to encode in one piece (`snapshot_bytes` / `restore_bytes`)."""

    @abstractmethod
    def snapshot_bytes(self) -> bytes:
        """The whole state, as `restore_bytes` takes it."""

    @abstractmethod
    def restore_bytes(self, data: bytes) -> None:
        """Replace the state by a snapshot's (b"" for the empty state)."""

    def snapshot(self, sink: BinaryIO) -> None:
        sink.write(self.snapshot_bytes())

    def restore(self, source: BinaryIO) -> None:
        self.restore_bytes(source.read())
