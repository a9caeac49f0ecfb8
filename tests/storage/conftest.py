"""Backends the storage conformance suite runs against.

To add a backend, add one entry to `BACKENDS`: its test id and a factory that
receives pytest's request (``request.getfixturevalue("tmp_path")`` is a
fresh, empty directory for each test) and returns an open, empty `Storage`.
The `storage` fixture closes it afterwards.

"cloud" is a CloudFileStorage on a fresh bucket of the session's moto_server
(`s3_server`, tests/conftest.py).

"cluster" is a ClusterFileStorage on a fresh object space of the session's
3-node `local_cluster` (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from protobase import CloudFileStorage, MemoryStorage, StandaloneFileStorage, Storage

BACKENDS: dict[str, Callable[[pytest.FixtureRequest], Storage]] = {
    "memory": lambda request: MemoryStorage(),
    "file": lambda request: StandaloneFileStorage(request.getfixturevalue("tmp_path") / "db"),
    "cloud": lambda request: CloudFileStorage(
        bucket=request.getfixturevalue("s3_bucket"),
        prefix="db",
        cache_dir=request.getfixturevalue("tmp_path") / "cache",
    ),
    "cluster": lambda request: request.getfixturevalue("new_cluster_storage")(),
}

CLUSTER_XFAILS: dict[str, str] = {
    # a test function, or one parametrized test by its name ("test_x[cluster-1]")
    # -> the bug it shows on the cluster (marked xfail, strict)
}


@pytest.fixture(params=list(BACKENDS))
def storage(request: pytest.FixtureRequest) -> Iterator[Storage]:
    if request.param == "cluster":
        reason = CLUSTER_XFAILS.get(request.node.name) or CLUSTER_XFAILS.get(
            request.function.__name__
        )
        if reason is not None:
            request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    opened = BACKENDS[request.param](request)
    try:
        yield opened
    finally:
        opened.close()
