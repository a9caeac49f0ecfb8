"""report.html, rendered by headless Chromium (Debian's `chromium`), as a person sees it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tools import require

from chaos.history import FAIL, INFO, INVOKE, NEMESIS, OK, Recorder
from chaos.report import fault_windows, write_report


def chromium() -> str:
    return require("chromium", "chromium-browser")


def sample_history() -> Recorder:
    recorder = Recorder()
    recorder.add(0, INVOKE, "add", 1, 0.10)
    recorder.add(0, OK, "add", 1, 0.12)
    recorder.add(NEMESIS, INFO, "kill", 2, 0.20)
    recorder.add(1, INVOKE, "add", 2, 0.30)
    recorder.add(1, INFO, "add", 2, 1.30, "ClusterUnavailableError: timed out")
    recorder.add(NEMESIS, INFO, "end-kill", None, 1.40)
    recorder.add(2, INVOKE, "add", 3, 1.50)
    recorder.add(2, FAIL, "add", 3, 1.55, "ConflictError")
    return recorder


RESULTS = {
    "valid": False,
    "seed": 4242,
    "workload": "set",
    "faults": ["kill"],
    "seconds": 2,
    "operations": 3,
    "faults_injected": 1,
    "unknown_outcomes": 1,
    "checkers": {
        "set": {
            "valid": False,
            "anomalies": [
                {"kind": "lost", "explanation": "element 1 acknowledged, missing", "ops": [0]}
            ],
        }
    },
}


def test_fault_windows_pair_starts_and_ends() -> None:
    assert fault_windows(sample_history().ops) == [(0.20, 1.40, "kill")]


def test_the_report_renders_in_chromium_with_its_verdict_plots_and_anomalies(
    tmp_path: Path,
) -> None:
    browser = chromium()
    page = write_report(tmp_path, sample_history().ops, RESULTS)
    common = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Chaos run: INVALID" in dom.stdout
    assert 'id="seed">4242<' in dom.stdout
    assert "element 1 acknowledged, missing" in dom.stdout
    assert dom.stdout.count("data:image/png;base64,") == 2
    assert "ok 1, fail 1, info 1" in dom.stdout
    shot = tmp_path / "page.png"
    taken = subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1200,1400", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert taken.returncode == 0 and shot.stat().st_size > 20_000  # text and two plots drawn
