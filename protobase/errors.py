"""The exception hierarchy: one root, specific subclasses.

Every error raised on purpose by ProtoBase derives from `ProtoBaseException`.
Messages say what happened and what the caller can do about it. Some classes
also derive from a built-in exception (`TypeError`, `AttributeError`,
`KeyError`) so that code written against plain Python containers keeps
working.
"""

from __future__ import annotations


class ProtoBaseException(Exception):
    """Root of every exception ProtoBase raises on purpose."""


class ConflictError(ProtoBaseException):
    """A commit could not be merged with a concurrent one; nothing was written.

    Retryable: run the transaction again on a fresh snapshot (`Database.run`
    does this for you).
    """


class TransactionClosedError(ProtoBaseException):
    """A transaction (or an object read through it) was used after it ended."""


class ReadOnlyTransactionError(ProtoBaseException):
    """A write was attempted in a read-only (historical) transaction."""


class DatabaseExistsError(ProtoBaseException):
    """`new_database` was given a name that already exists."""


class DatabaseNotFoundError(ProtoBaseException):
    """`open_database` was given a name that does not exist."""


class ValidationError(ProtoBaseException, TypeError):
    """A value cannot be stored: its type is not one ProtoBase can encode."""


class ImmutableObjectError(ProtoBaseException, AttributeError):
    """An attribute of an immutable `DBObject` was assigned."""


class StorageError(ProtoBaseException):
    """The storage backend failed or refused an operation."""


class RootConflict(StorageError):
    """The storage root moved since the version the committer expected.

    Raised by `Storage.commit` and `Storage.set_root`; the object layer
    turns it into a rebase.
    """


class CommitOutcomeUnknown(StorageError):
    """The storage cannot tell whether a root change took effect.

    A connection dropped, or a leader died, after the request left. The
    object layer resolves it with `Storage.committed_root(transaction_id)`
    before it reports anything to the caller.
    """

    def __init__(self, message: str, transaction_id: bytes) -> None:
        super().__init__(message)
        self.transaction_id = transaction_id


class AtomNotFoundError(StorageError):
    """A pointer names an atom the storage does not hold."""


class CorruptionError(StorageError):
    """Stored bytes failed verification (checksum, framing or decoding)."""


class ClusterUnavailableError(StorageError):
    """No node of the cluster could serve the request."""


class AuthenticationError(ProtoBaseException):
    """A token or secret was missing or wrong."""


class QueryError(ProtoBaseException, ValueError):
    """A query expression or plan is malformed; the message names the part."""


class UniqueConstraintError(ProtoBaseException, ValueError):
    """A change would give two rows one value of a unique index; nothing changed."""


__all__ = [
    "AtomNotFoundError",
    "AuthenticationError",
    "ClusterUnavailableError",
    "ConflictError",
    "CorruptionError",
    "DatabaseExistsError",
    "DatabaseNotFoundError",
    "ImmutableObjectError",
    "ProtoBaseException",
    "QueryError",
    "ReadOnlyTransactionError",
    "RootConflict",
    "StorageError",
    "TransactionClosedError",
    "UniqueConstraintError",
    "ValidationError",
]
