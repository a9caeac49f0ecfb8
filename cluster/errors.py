"""What a node's operations raise; the HTTP API maps each to a status.

`Unavailable` (and `UnknownOutcome`, its kind that may have taken effect)
is a 503 a client retries; `CommitConflict` becomes the client's
ConflictError.
"""

from __future__ import annotations


class Unavailable(Exception):
    """The operation cannot be served now (no leader, a timeout); retry."""


class UnknownOutcome(Unavailable):
    """The operation may or may not have taken effect."""


class CommitConflict(Exception):
    """The commit overlaps a concurrent one (the client sees ConflictError)."""
