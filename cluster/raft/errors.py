"""Errors of the Raft library, under its own root `RaftError`.

The library imports nothing from `protobase` (the project's package
boundaries): an application that wants one exception root wraps these.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "GroupAlreadyRunning",
    "GroupRemoved",
    "LogCorruptionError",
    "LogError",
    "LogUnavailableError",
    "NotLeader",
    "ProposalDropped",
    "ProtocolError",
    "RaftError",
]


class RaftError(Exception):
    """Root of the Raft library's errors."""


class AuthenticationError(RaftError):
    """A peer failed the handshake (wrong cluster secret or cluster id, or a
    node id it may not claim); the connection is closed."""


class NotLeader(RaftError):
    """This node is not the group's leader; `leader_hint` is who it believes is (or None)."""

    def __init__(self, group: int, leader_hint: int | None) -> None:
        self.group = group
        self.leader_hint = leader_hint
        hint = f"node {leader_hint}" if leader_hint is not None else "unknown"
        super().__init__(f"not the leader of group {group}; leader: {hint}; retry there")


class GroupAlreadyRunning(RaftError):
    """`RaftNode.add_group` was asked for a group this node already runs (or
    is still removing: wait for `remove_group` to return)."""


class GroupNotHere(RaftError):
    """This node does not run the group (never did, or it was removed): ask a
    node that runs it."""


class GroupRemoved(RaftError):
    """The group was removed from this node (`RaftNode.remove_group`) while
    the call waited: ask a node that still runs it."""


class ProposalDropped(RaftError):
    """A proposal was not accepted (a leadership transfer is in progress, a
    configuration change is already pending, or the entry was overwritten
    by a new leader). Retry it."""


class ProtocolError(RaftError, ValueError):
    """A peer sent a message that is not a well-formed Raft message."""


class LogError(RaftError):
    """The log was asked to do something that would break an invariant
    (remove a committed entry, append with a gap)."""


class LogUnavailableError(RaftError):
    """The entries asked for are compacted behind the snapshot, or not written yet."""


class LogCorruptionError(RaftError):
    """A log file is damaged somewhere other than its torn tail; the message
    names the file and the byte offset."""
