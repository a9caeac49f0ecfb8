"""History on a cluster: `space.history()` and `at_version`, as on StandaloneFileStorage."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from protobase import ClusterFileStorage, ObjectSpace, StorageError


def test_history_and_at_version_read_earlier_commits(
    new_cluster_storage: Callable[[], ClusterFileStorage],
) -> None:
    with ObjectSpace(new_cluster_storage()) as space:
        db = space.new_database("h")
        for n in range(3):
            db.run(lambda tr, n=n: tr.set_root_object("n", n))
        history = space.history()
        assert [c.version for c in history] == [1, 2, 3, 4]
        assert all(c.size > 0 and c.time > 0 for c in history)
        for commit, expected in zip(history[1:], range(3), strict=True):
            tr = db.new_transaction(at_version=commit.version)
            assert tr.get_root_object("n") == expected
            tr.abort()
        with pytest.raises(StorageError, match="not among the recent roots"):
            db.new_transaction(at_version=99)
