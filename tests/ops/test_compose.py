"""docker-compose.yml and the image it builds, checked with the real docker-compose.

No Docker engine runs here, so the compose file is validated (``docker-compose
config``), not started; `make test` installs Debian's docker-compose when it
is missing, and under CI a missing one fails these tests.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml
from tools import require

from cluster.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def compose(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    found = require("docker-compose")
    return subprocess.run(
        [found, "-f", "docker-compose.yml", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_the_compose_file_is_valid_and_has_every_service() -> None:
    result = compose("config", "--quiet")
    assert result.returncode == 0, result.stderr
    result = compose("config", "--services")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {
        "node1",
        "node2",
        "node3",
        "minio",
        "createbucket",
        "prometheus",
        "grafana",
    }


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A service's bind mounts, container path -> host path, from `docker-compose config`
    (short syntax as docker-compose 1 prints it, or long syntax)."""
    found = {}
    for volume in service["volumes"]:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        found[target] = Path(source)
    return found


def test_grafana_is_provisioned_with_the_generated_dashboard() -> None:
    result = compose("config")
    assert result.returncode == 0, result.stderr
    grafana = yaml.safe_load(result.stdout)["services"]["grafana"]
    mounted = mounts(grafana)
    provisioning = ROOT / "ops" / "compose" / "grafana"
    assert mounted["/etc/grafana/provisioning"] == provisioning
    assert (provisioning / "datasources" / "prometheus.yml").exists()
    provider = yaml.safe_load((provisioning / "dashboards" / "protobase.yml").read_text())
    [dashboards] = provider["providers"]
    assert dashboards["type"] == "file"
    dashboard = dashboards["options"]["path"] + "/protobase.json"
    assert mounted[dashboard] == ROOT / "ops" / "grafana" / "protobase.json"
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboard


def test_a_broken_compose_file_is_refused(tmp_path: Path) -> None:
    broken = (ROOT / "docker-compose.yml").read_text().replace("services:", "servces:", 1)
    (tmp_path / "docker-compose.yml").write_text(broken)
    result = compose("config", "--quiet", cwd=tmp_path)
    assert result.returncode != 0


def test_the_nodes_configs_load_and_name_each_other(tmp_path: Path) -> None:
    for k in (1, 2, 3):
        text = (ROOT / "ops" / "compose" / f"node{k}.toml").read_text()
        for secret in ("cluster_secret", "client_token"):
            (tmp_path / secret).write_text("s" * 64)
            text = text.replace(f"/run/secrets/{secret}", str(tmp_path / secret))
        (tmp_path / "node.toml").write_text(text)
        settings = load_config(tmp_path / "node.toml")
        assert settings.node_id == k
        assert [m.client for m in settings.members] == [f"http://node{n}:7100" for n in (1, 2, 3)]
        assert settings.s3 is not None and settings.s3.endpoint == "http://minio:9000"


def test_the_image_runs_as_a_user_and_checks_readiness() -> None:
    dockerfile = (ROOT / "ops" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert "\nUSER protobase\n" in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/ready" in dockerfile


def test_compose_secrets_are_written_once(tmp_path: Path) -> None:
    script = ROOT / "ops" / "compose" / "make_secrets.py"
    subprocess.run(["python3", str(script), str(tmp_path)], check=True, timeout=30)
    first = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert set(first) == {
        "cluster.secret",
        "client.token",
        "minio_root_user",
        "minio_root_password",
        "s3_credentials",
    }
    assert first["minio_root_password"].strip() in first["s3_credentials"]
    subprocess.run(["python3", str(script), str(tmp_path)], check=True, timeout=30)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == first
