"""node.toml's optional keys: the [s3] table and the log's sizes, checked before a node starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import ConfigError, S3Settings, load_config
from protobase.cluster_cli import write_configs


def config_with(tmp_path: Path, extra: str = "", tables: str = "") -> Path:
    (path,) = write_configs(tmp_path, 1, 7100, 4)
    path.write_text(extra + path.read_text() + tables)
    return path


def test_without_an_s3_table_there_is_no_cold_tier(tmp_path: Path) -> None:
    settings = load_config(config_with(tmp_path))
    assert settings.s3 is None
    assert (settings.keep_entries, settings.log_segment_bytes) == (5_000, 64 << 20)


def test_an_s3_table_with_every_key(tmp_path: Path) -> None:
    tables = (
        '\n[s3]\nbucket = "b"\nprefix = "/demo/"\nendpoint = "http://127.0.0.1:9000"\n'
        "upload_interval = 0.5\nobject_bytes = 65536\ndisk_budget_bytes = 1000000\n"
        "meta_snapshot_interval = 2\n"
    )
    settings = load_config(
        config_with(tmp_path, "keep_entries = 10\nlog_segment_bytes = 16384\n", tables)
    )
    assert settings.s3 == S3Settings(
        "b", "demo", "http://127.0.0.1:9000", 0.5, 65536, 1_000_000, 2.0
    )
    assert (settings.keep_entries, settings.log_segment_bytes) == (10, 16384)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[s3]\nprefix = "x"\n', "s3.bucket must be a non-empty string"),
        ('[s3]\nbucket = "b"\nendpoint = "ftp://x"\n', "s3.endpoint must be an http"),
        ('[s3]\nbucket = "b"\nupload_interval = 0\n', "s3.upload_interval must be seconds"),
        ('[s3]\nbucket = "b"\ndisk_budget_bytes = -1\n', "disk_budget_bytes must be an integer"),
        ('[s3]\nbucket = "b"\nbuket = "typo"\n', "unknown keys ['buket']"),
        ("s3 = 1\n", "[s3] must be a table"),
    ],
)
def test_a_bad_s3_table_is_refused_with_the_key_named(
    tmp_path: Path, table: str, message: str
) -> None:
    path = config_with(
        tmp_path,
        "" if table.startswith("[") else table,
        "\n" + table if table.startswith("[") else "",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value)


def test_peer_routes_say_how_to_reach_members_the_config_does_not_name(tmp_path: Path) -> None:
    tables = '\n[peer_routes]\n4 = "127.0.0.1:9304"\n7 = "proxy.local:1"\n'
    settings = load_config(config_with(tmp_path, tables=tables))
    assert settings.peer_route(4) == ("127.0.0.1", 9304)
    assert settings.peer_route(7) == ("proxy.local", 1)
    assert settings.peer_route(1) == ("127.0.0.1", 7201)  # [[members]] first
    assert settings.peer_route(5) is None  # as the cluster map says


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[peer_routes]\nfour = "127.0.0.1:1"\n', "keys are member ids"),
        ('[peer_routes]\n0 = "127.0.0.1:1"\n', "keys are member ids"),
        ('[peer_routes]\n4 = "127.0.0.1"\n', "peer_routes.4 = '127.0.0.1' is not HOST:PORT"),
        ("[peer_routes]\n4 = 9\n", "peer_routes.4 must be a string"),
    ],
)
def test_bad_peer_routes_are_refused_with_the_key_named(
    tmp_path: Path, table: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(config_with(tmp_path, tables="\n" + table))


def test_peer_routes_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a table"):
        load_config(config_with(tmp_path, "peer_routes = 1\n"))
