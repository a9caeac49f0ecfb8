"""ops/: the Prometheus config and alert rules, checked by the real promtool.

`make test` installs Debian's `prometheus` package (which brings promtool)
when it is missing; under CI a missing promtool fails these tests instead of
skipping them. The cross-check that every metric the rules (and the Grafana
dashboard) name is exported by a live node is in tests/ops/test_dashboard.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tools import require

OPS = Path(__file__).resolve().parents[2] / "ops"


def promtool() -> str:
    return require("promtool")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, cwd=OPS)


def test_the_scrape_config_and_the_rules_are_valid() -> None:
    result = run("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    result = run("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_every_alert_fires_and_stays_quiet_in_the_unit_tests() -> None:
    result = run("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = re.findall(r"^\s*- alert: (\w+)", (OPS / "alerts.yml").read_text(), re.M)
    tests = (OPS / "alerts.test.yml").read_text()
    cases = re.findall(r"alertname: (\w+)\n\s*exp_alerts:( \[\])?", tests)
    firing = {name for name, empty in cases if not empty}
    quiet = {name for name, empty in cases if empty}
    assert sorted(alerts) == sorted(firing), "an alert without a test that makes it fire"
    assert set(alerts) <= quiet, f"alerts never shown quiet: {sorted(set(alerts) - quiet)}"


def test_a_wrong_threshold_is_caught_by_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests can fail: a rule whose threshold moved no longer matches them."""
    for name in ("alerts.yml", "alerts.test.yml"):
        shutil.copy(OPS / name, tmp_path / name)
    rules = tmp_path / "alerts.yml"
    rules.write_text(rules.read_text().replace("< 0.1", "< 0.01"))
    result = subprocess.run(
        [promtool(), "test", "rules", "alerts.test.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "ProtoBaseDiskNearlyFull" in result.stdout + result.stderr


def metric_names_in_rules() -> set[str]:
    """The metrics the rules query (histogram series names reduced to the histogram)."""
    names = set(re.findall(r"\b(protobase_[a-z0-9_]+)", (OPS / "alerts.yml").read_text()))
    return {re.sub(r"_(bucket|count|sum)$", "", name) for name in names}


def test_the_rules_query_protobase_metrics() -> None:
    assert {"protobase_raft_has_leader", "protobase_fsync_seconds"} <= metric_names_in_rules()
