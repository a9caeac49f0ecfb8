"""The embedded install needs neither aiohttp, boto3 nor the cluster packages."""

from __future__ import annotations

import subprocess
import sys
import textwrap

REFUSE = textwrap.dedent(
    """
    import importlib.abc, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("aiohttp", "cluster", "boto3", "botocore"):
                raise ImportError(f"{name} is not installed in this test")
            return None

    sys.meta_path.insert(0, Refuse())
    """
)


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", REFUSE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_embedded_use_imports_neither_aiohttp_boto3_nor_cluster(tmp_path: object) -> None:
    result = run(
        f"""
        from protobase import ObjectSpace, StandaloneFileStorage
        with ObjectSpace(StandaloneFileStorage({str(tmp_path)!r})) as space:
            db = space.new_database("d")
            with db.transaction() as tr:
                tr.set_root_object("x", 1)
        loaded = sorted(
            m for m in sys.modules if m.split(".")[0] in ("aiohttp", "cluster", "boto3", "botocore")
        )
        print("loaded:", loaded)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout


def test_cluster_client_without_aiohttp_says_which_extra_to_install() -> None:
    result = run(
        """
        from protobase import ClusterFileStorage, StorageError
        try:
            ClusterFileStorage(["http://127.0.0.1:9"], token="t")
        except StorageError as exc:
            print("refused:", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "protobase[cluster]" in result.stdout


def test_cloud_storage_without_boto3_says_which_extra_to_install() -> None:
    result = run(
        """
        from protobase import CloudFileStorage, StorageError
        try:
            CloudFileStorage(bucket="b", prefix="p")
        except StorageError as exc:
            print("refused:", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "protobase[s3]" in result.stdout
