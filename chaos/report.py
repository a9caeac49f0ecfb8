"""``report.html``: one page a person opens after a chaos run.

It shows the verdict and the seed, latency over time with the fault
windows shaded, throughput per second, the outcome counts, and every
anomaly the checkers found with the operations involved. The plots are
drawn by matplotlib (the ``chaos`` extra) into PNG images embedded in the
page, so the file stands alone.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .history import FAIL, INFO, INVOKE, OK, Op, pair

COLOURS = {OK: "#2e7d32", FAIL: "#f9a825", INFO: "#c62828"}


def fault_windows(history: Sequence[Op]) -> list[tuple[float, float, str]]:
    """(start, end, kind) of every fault in the history."""
    windows = []
    started: dict[str, float] = {}
    for op in history:
        if op.process >= 0:
            continue
        if op.f.startswith("end-"):
            kind = op.f[4:]
            if kind in started:
                windows.append((started.pop(kind), op.time, kind))
        else:
            started[op.f] = op.time
    end = history[-1].time if history else 0.0
    windows.extend((start, end, kind) for kind, start in started.items())
    return windows


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _plots(history: Sequence[Op]) -> tuple[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    operations = [o for o in pair(history) if o.complete is not None]
    windows = fault_windows(history)
    end = max((op.time for op in history), default=1.0)

    figure, axis = plt.subplots(figsize=(10, 3.2))
    for kind in (OK, FAIL, INFO):
        points = [o for o in operations if o.type == kind]
        axis.scatter(
            [o.invoke.time for o in points],
            [max(o.complete.time - o.invoke.time, 1e-4) * 1000 for o in points if o.complete],
            s=4,
            color=COLOURS[kind],
            label=f"{kind} ({len(points)})",
        )
    for start, stop, kind in windows:
        axis.axvspan(start, stop, color="#90a4ae", alpha=0.25)
        axis.text(start, 1.02, kind, transform=axis.get_xaxis_transform(), fontsize=7)
    axis.set_yscale("log")
    axis.set_xlim(0, end)
    axis.set_xlabel("seconds since the start")
    axis.set_ylabel("latency (ms)")
    axis.legend(loc="upper right", fontsize=8)
    latency = _png(figure)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(10, 2.4))
    seconds = int(end) + 1
    for kind in (OK, FAIL, INFO):
        per_second = Counter(
            int(o.complete.time) for o in operations if o.type == kind and o.complete
        )
        axis.plot(
            range(seconds),
            [per_second.get(s, 0) for s in range(seconds)],
            color=COLOURS[kind],
            label=kind,
        )
    for start, stop, _ in windows:
        axis.axvspan(start, stop, color="#90a4ae", alpha=0.25)
    axis.set_xlabel("seconds since the start")
    axis.set_ylabel("completed per second")
    axis.legend(loc="upper right", fontsize=8)
    throughput = _png(figure)
    plt.close(figure)
    return latency, throughput


def write_report(directory: Path, history: Sequence[Op], results: dict[str, Any]) -> Path:
    """Write ``report.html`` into `directory`; its path."""
    latency, throughput = _plots(history)
    counts = Counter(op.type for op in history if op.process >= 0 and op.type != INVOKE)
    verdict = {True: "VALID", False: "INVALID", None: "UNDECIDED"}[results.get("valid")]
    rows = []
    for name, checker in results.get("checkers", {}).items():
        anomalies = checker.get("anomalies") or []
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td class='v-{checker.get('valid')}'>"
            f"{html.escape(str(checker.get('valid')))}</td><td>{len(anomalies)}</td></tr>"
        )
    anomaly_items = []
    for name, checker in results.get("checkers", {}).items():
        for anomaly in checker.get("anomalies") or []:
            involved = json.dumps(anomaly.get("ops") or anomaly.get("transactions") or [])
            anomaly_items.append(
                f"<li><b>{html.escape(name)}: {html.escape(str(anomaly.get('kind')))}</b> "
                f"{html.escape(str(anomaly.get('explanation', '')))}"
                f" <code>{html.escape(involved)}</code></li>"
            )
    workload = html.escape(str(results.get("workload")))
    faults = html.escape(",".join(results.get("faults", [])))
    seed = results.get("seed")
    totals = (
        f"{results.get('seconds')} s: {results.get('operations')} operations, "
        f"{results.get('faults_injected')} faults injected, "
        f"{results.get('unknown_outcomes')} unknown outcomes"
    )
    outcomes = f"ok {counts.get(OK, 0)}, fail {counts.get(FAIL, 0)}, info {counts.get(INFO, 0)}"
    header = "<tr><th>checker</th><th>valid</th><th>anomalies</th></tr>"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ProtoBase chaos run: {verdict}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
.v-True {{ color: #2e7d32; font-weight: bold; }} .v-False {{ color: #c62828; font-weight: bold; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1 id="verdict">Chaos run: {verdict}</h1>
<p>Workload <b>{workload}</b>, faults {faults}, seed <b id="seed">{seed}</b>, {totals}.
Replay: <code>protobase chaos run --workload {workload} --faults {faults} --seed {seed}</code></p>
<h2>Checkers</h2>
<table id="checkers">{header}{"".join(rows)}</table>
<h2>Outcomes</h2>
<p id="outcomes">{outcomes}</p>
<h2>Latency over time (faults shaded)</h2>
<img id="latency" alt="latency over time" src="data:image/png;base64,{latency}">
<h2>Throughput</h2>
<img id="throughput" alt="throughput" src="data:image/png;base64,{throughput}">
<h2>Anomalies</h2>
<ul id="anomalies">{"".join(anomaly_items) or "<li>none</li>"}</ul>
</body></html>
"""
    path = directory / "report.html"
    path.write_text(page)
    return path
