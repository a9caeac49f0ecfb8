"""The core's view of one group's log: the stable part (a `LogReader`, on
disk) followed by the unstable part (entries and perhaps a snapshot the
driver has been handed in a `Ready` but not yet confirmed durable).

Invariants:
- every index in [first_index(), last_index()] has exactly one entry;
- `unstable[0].index == offset`; everything below `offset` is in `stable`
  (or covered by `unstable_snapshot`);
- applied <= committed <= last_index(); a committed entry is never replaced.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import LogError, LogUnavailableError
from .types import Entry, LogReader, SnapshotMeta


class RaftLog:
    def __init__(self, stable: LogReader, applied: int | None = None) -> None:
        self.stable = stable
        self.unstable: list[Entry] = []
        self.unstable_snapshot: SnapshotMeta | None = None
        self.offset = stable.last_index() + 1
        snap_index = stable.snapshot_meta().index
        self.committed = max(stable.hard_state().commit, snap_index)
        self.applied = snap_index if applied is None else max(applied, snap_index)
        if self.applied > self.committed:
            raise LogError(f"applied index {self.applied} is past the commit {self.committed}")

    # -- reading ---------------------------------------------------------------
    def first_index(self) -> int:
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.index + 1
        return self.stable.first_index()

    def last_index(self) -> int:
        if self.unstable:
            return self.unstable[-1].index
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.index
        return self.stable.last_index()

    def durable_last_index(self) -> int:
        """The last index of the part of the log that is on disk (the
        entries handed to the driver and acknowledged by `advance`)."""
        return self.offset - 1 if self.unstable else self.last_index()

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, index: int) -> int:
        """The term of `index`. Raises LogUnavailableError when it is compacted
        or past the end."""
        unstable = self.unstable
        if unstable and index >= self.offset:
            position = index - self.offset
            if position < len(unstable):
                return unstable[position].term
            raise LogUnavailableError(f"index {index} is past the end of the log")
        snap = self.unstable_snapshot
        if snap is not None:
            if index == snap.index:
                return snap.term
            raise LogUnavailableError(f"index {index} is behind the snapshot at {snap.index}")
        return self.stable.term(index)

    def term_or_none(self, index: int) -> int | None:
        try:
            return self.term(index)
        except LogUnavailableError:
            return None

    def match_term(self, index: int, term: int) -> bool:
        return self.term_or_none(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft's election restriction (§5.4.1): a vote only for a log at
        least as up to date as ours."""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi): at least one if lo < hi, then up to max_bytes of data."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise LogUnavailableError(f"index {lo} is compacted")
        result: list[Entry] = []
        if lo < self.offset:
            result = self.stable.entries(lo, min(hi, self.offset), max_bytes)
            if len(result) < min(hi, self.offset) - lo:
                return result
        if hi > self.offset and self.unstable:
            start = max(lo, self.offset) - self.offset
            tail = self.unstable[start : hi - self.offset]
            if max_bytes is None:
                result.extend(tail)
            else:
                size = sum(len(e.data) for e in result)
                for entry in tail:
                    size += len(entry.data)
                    if size > max_bytes and result:
                        break
                    result.append(entry)
        return result

    def entry(self, index: int) -> Entry:
        """One entry, from the unstable tail or read on its own from the
        stable log. Raises LogUnavailableError outside the log."""
        if index >= self.offset:
            position = index - self.offset
            if position < len(self.unstable):
                return self.unstable[position]
            raise LogUnavailableError(f"index {index} is past the end of the log")
        if index < self.first_index():
            raise LogUnavailableError(f"index {index} is compacted")
        return self.stable.entry(index)

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= `index` whose term is <= `term` (fast back-off:
        everything after it can be skipped in one step)."""
        index = min(index, self.last_index())
        first = self.first_index() - 1
        while index > first:
            found = self.term_or_none(index)
            if found is None or found <= term:
                return index
            index -= 1
        return index

    # -- writing ---------------------------------------------------------------
    def append(self, entries: Sequence[Entry]) -> None:
        """Put `entries` after the last one or over an uncommitted suffix."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.committed:
            raise LogError(
                f"entry {first} would overwrite the committed log (commit {self.committed})"
            )
        if first > self.last_index() + 1:
            raise LogError(f"entry {first} leaves a gap after {self.last_index()}")
        if first == self.offset + len(self.unstable):
            self.unstable.extend(entries)
        elif first <= self.offset:
            # The new entries replace part of the stable log: the driver
            # appends them, which truncates the stable suffix.
            self.offset = first
            self.unstable = list(entries)
        else:
            del self.unstable[first - self.offset :]
            self.unstable.extend(entries)

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: Sequence[Entry]
    ) -> int | None:
        """A follower's append: None when the entry before `entries` does not
        match; otherwise the index of the last entry now known to match."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self._find_conflict(entries)
        if conflict:
            self.append(entries[conflict - entries[0].index :])
        self.commit_to(min(commit, last_new))
        return last_new

    def _find_conflict(self, entries: Sequence[Entry]) -> int:
        """The index of the first new entry that is not in the log as given
        (different term or past the end); 0 when all are present."""
        for entry in entries:
            if entry.index <= self.committed:
                continue  # committed entries match by the log matching property
            if self.term_or_none(entry.index) != entry.term:
                return entry.index
        return 0

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise LogError(f"commit {index} is past the last index {self.last_index()}")
            self.committed = index

    def restore(self, snapshot: SnapshotMeta) -> None:
        """Replace the whole log by `snapshot` (a follower far behind)."""
        self.unstable_snapshot = snapshot
        self.unstable = []
        self.offset = snapshot.index + 1
        self.committed = snapshot.index

    # -- the driver's confirmations ---------------------------------------------
    def stable_to(self, index: int, term: int) -> None:
        """Entries up to `index` (whose term was `term`) are now durable."""
        if not self.unstable or index < self.offset:
            return
        position = index - self.offset
        if position < len(self.unstable) and self.unstable[position].term == term:
            del self.unstable[: position + 1]
            self.offset = index + 1

    def stable_snapshot_to(self, index: int) -> None:
        if self.unstable_snapshot is not None and self.unstable_snapshot.index == index:
            self.unstable_snapshot = None
            if not self.unstable:
                # A log that held the snapshot's last entry keeps what follows it.
                self.offset = self.stable.last_index() + 1

    def next_committed(self, max_bytes: int) -> list[Entry]:
        if self.committed <= self.applied:
            return []
        low = max(self.applied + 1, self.first_index())
        return self.slice(low, self.committed + 1, max_bytes)
