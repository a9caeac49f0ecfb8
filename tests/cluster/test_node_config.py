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
