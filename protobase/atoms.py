"""Atoms and atom pointers: the framing every storage backend stores.

An *atom* is an immutable, serialized unit of data: a DBObject's state, a
collection node, a space root. Storage backends see atoms as opaque bytes.

Atom framing (every atom any backend stores)::

    offset  size  field
    0       1     format byte, 0x01
    1       8     xxh3-64 of the payload, big-endian
    9       n     payload: one msgpack value (see `protobase.codec`)

The checksum is computed by the writer and verified by `unframe_atom` on
every read, so corruption anywhere between the writer and the reader (disk,
network, cache, S3) raises `CorruptionError` naming the pointer, instead of
decoding garbage.

An `AtomPointer` is ``(transaction_id, index)``: a 128-bit id chosen by the
writer for the whole commit and the atom's position within the commit's batch.
The writer assigns pointers before it writes, so a parent atom can refer to
children of the same commit; pointers never depend on where bytes land.
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

import xxhash

from .errors import CorruptionError

TRANSACTION_ID_BYTES = 16
ATOM_FORMAT = 0x01
_HEADER = struct.Struct(">BQ")
HEADER_SIZE = _HEADER.size


class AtomPointer(NamedTuple):
    """Where an atom lives: the commit that wrote it and its index in that commit."""

    transaction_id: bytes
    index: int  # type: ignore[assignment]  # the design's name; shadows tuple.index

    def __str__(self) -> str:
        return f"{self.transaction_id.hex()}:{self.index}"


def new_transaction_id() -> bytes:
    """A fresh random 128-bit transaction id (collisions are negligible)."""
    return os.urandom(TRANSACTION_ID_BYTES)


def checksum(payload: bytes) -> int:
    """The 64-bit checksum stored in every atom frame."""
    return int(xxhash.xxh3_64_intdigest(payload))


def frame_atom(payload: bytes) -> bytes:
    """Wrap an encoded payload with the format byte and its checksum."""
    return _HEADER.pack(ATOM_FORMAT, checksum(payload)) + payload


def unframe_atom(data: bytes, pointer: AtomPointer | None = None) -> bytes:
    """Verify an atom frame and return its payload.

    Raises:
        CorruptionError: the frame is truncated, of an unknown format, or its
            checksum does not match; the message names the pointer.
    """
    where = f"atom {pointer}" if pointer is not None else "atom"
    if len(data) < HEADER_SIZE:
        raise CorruptionError(
            f"{where} is truncated: {len(data)} bytes, header needs {HEADER_SIZE}"
        )
    fmt, expected = _HEADER.unpack_from(data)
    if fmt != ATOM_FORMAT:
        raise CorruptionError(f"{where} has unknown format byte {fmt:#04x}")
    payload = bytes(data[HEADER_SIZE:])
    if checksum(payload) != expected:
        raise CorruptionError(
            f"{where} failed its checksum: the stored bytes are damaged; "
            "run `protobase fsck` on the storage and restore from a backup"
        )
    return payload
