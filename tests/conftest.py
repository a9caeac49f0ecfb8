"""Fixtures shared by the tests of the object layer, and the session's cluster.

`space` is an ObjectSpace on a fresh MemoryStorage. In the modules listed in
`CLUSTER_RUNS` it is parametrized: each test runs once on memory and once
on a ClusterFileStorage of `local_cluster` (3 real `protobase node`
processes, started once per session, stopped by PID at its end), on an
object space name of its own so that it starts empty.
"""

from __future__ import annotations

import atexit
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import protobase
from protobase import ClusterFileStorage, MemoryStorage, ObjectSpace

TESTS = Path(__file__).parent
# The harness lives next to the cluster tests; tests/cluster is no package (it
# would shadow the top-level `cluster` package), so it is put on the path.
sys.path.insert(0, str(TESTS / "cluster"))

ALL = None
CLUSTER_RUNS: dict[str, frozenset[str] | None] = {
    # module path under tests/ -> the test functions that also run on the
    # cluster (ALL: every test of the module that uses `space`)
    "test_transactions.py": ALL,
    "test_objects.py": ALL,
    "query/test_expressions.py": ALL,
    "query/test_plans.py": ALL,
    "query/test_indexes.py": ALL,
    # Not here: query/test_explain.py commits its module-scoped `indexed`
    # Dictionary in `db`, and a collection stored in one space cannot be
    # stored in a second (ValidationError), so it runs on one backend only;
    # query/test_differential.py opens MemoryStorage spaces of its own.
}
CLUSTER_XFAILS: dict[str, str] = {
    # test function -> the bug it shows on the cluster (marked xfail, strict)
}


PURE_PASS: frozenset[str] = frozenset(
    # The modules `make test` runs a second time on the pure-Python fallback of the
    # compiled hot path (protobase/native.py), memory backend only: they drive every
    # compiled module. Tests marked `pure_python` run there as well.
    {
        "test_native.py",
        "test_transactions.py",
        "test_objects.py",
        "test_object_runs.py",
        "test_committer.py",
        "test_sharing.py",
        "test_codec.py",
        "test_errors.py",
        "test_complexity.py",
        "test_concurrency.py",
        "collections/test_btree.py",
        "query/test_indexes.py",
        "query/test_plans.py",
        "query/test_covering.py",
        "query/test_explain.py",
        "query/test_expressions.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the pure pass's tests; on the compiled form, skip those that need the pure one."""
    for item in items:
        module = Path(item.path).relative_to(TESTS).as_posix()
        needs_pure = item.get_closest_marker("pure_python")
        callspec = getattr(item, "callspec", None)
        on_cluster = callspec is not None and callspec.params.get("space") == "cluster"
        if needs_pure is not None or (module in PURE_PASS and not on_cluster):
            item.add_marker(pytest.mark.pure_pass)
        if needs_pure is not None and protobase.HOT_PATH == "compiled":
            reason = needs_pure.args[0] if needs_pure.args else "needs the pure-Python form"
            item.add_marker(pytest.mark.skip(reason=f"compiled hot path; pure pass only: {reason}"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "space" not in metafunc.fixturenames:
        return
    module = Path(metafunc.definition.path).relative_to(TESTS).as_posix()
    if module not in CLUSTER_RUNS:
        return
    chosen = CLUSTER_RUNS[module]
    backends = ["memory"]
    if chosen is ALL or metafunc.definition.originalname in chosen:
        backends.append("cluster")
    metafunc.parametrize("space", backends, indirect=True)


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A 3-node LocalCluster for the whole session; its processes end with it."""
    from harness import LocalCluster

    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), nodes=3)
    # The nodes run in sessions of their own, so nothing stops them when pytest
    # dies: SIGTERM (a CI timeout) becomes an interrupt, which runs teardown,
    # and atexit covers an exit that skips it.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    atexit.register(cluster.stop)
    try:
        cluster.start()
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()
        atexit.unregister(cluster.stop)
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def new_cluster_storage(local_cluster: Any) -> Callable[[], ClusterFileStorage]:
    """Opens a ClusterFileStorage on a fresh object space of `local_cluster`.

    A fresh space name is an empty storage: root version 0, pointer None.
    """

    def opened() -> ClusterFileStorage:
        # A dead member would make every later test wait out the client's timeout.
        for node, process in local_cluster.processes.items():
            if process.poll() is not None:
                pytest.fail(
                    f"cluster node {node} exited with {process.returncode} during the "
                    f"session:\n{local_cluster.log(node)}",
                    pytrace=False,
                )
        storage: ClusterFileStorage = local_cluster.storage(
            space=f"test-{uuid.uuid4().hex}", timeout=20.0, urls=local_cluster.urls
        )
        return storage

    return opened


@pytest.fixture
def space(request: pytest.FixtureRequest) -> Iterator[ObjectSpace]:
    """An ObjectSpace on a fresh, empty storage (see the module docstring), closed afterwards."""
    backend = getattr(request, "param", "memory")
    if backend == "cluster":
        reason = CLUSTER_XFAILS.get(request.function.__name__)
        if reason is not None:
            request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
        storage = request.getfixturevalue("new_cluster_storage")()
    else:
        storage = MemoryStorage()
    with ObjectSpace(storage) as opened:
        yield opened


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A moto_server for the session (tests/s3server.py); its credentials are in os.environ."""
    import os

    from s3server import S3Server, credentials_env

    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log")
    server.start()
    saved = {name: os.environ.get(name) for name in credentials_env(server.endpoint)}
    os.environ.update(credentials_env(server.endpoint))
    atexit.register(server.stop)
    try:
        yield server
    finally:
        server.stop()
        atexit.unregister(server.stop)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def s3_bucket(s3_server: Any) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    name: str = s3_server.new_bucket()
    return name
