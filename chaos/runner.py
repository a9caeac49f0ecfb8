"""One chaos run: a cluster, a workload, a nemesis, the checkers, a run directory.

`run_chaos` starts a `ChaosCluster`, creates the workload's data, starts
the clients and the nemesis, lets them run, ends every fault, waits until
the cluster is ready again, performs the workload's final operation, and
writes into the run directory:

- ``history.jsonl``: every operation and fault (`chaos.history`);
- ``results.json``: per checker, valid (true, false, or null when the
  checker could not decide), its counts and its anomalies with the
  operations involved; plus the seed, the workload and the faults;
- ``report.html``: the same for a person, with plots (`chaos.report`).

`valid` is True only when every checker said valid. The seed replays the
same fault schedule and the same client choices (not the same timing).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protobase import ObjectSpace

from .cluster import ChaosCluster
from .history import Op, write_history
from .membership import MembershipNemesis
from .nemesis import KINDS, Nemesis, schedule
from .report import write_report
from .workloads import (
    ACCOUNTS,
    DATABASE,
    START_BALANCE,
    WORKLOADS,
    BankWorkload,
    Client,
    Run,
    Workload,
    perform,
)


@dataclass(frozen=True)
class ChaosResult:
    valid: bool | None
    """True: every checker valid; False: an anomaly; None: undecided."""
    directory: Path
    seed: int
    checkers: dict[str, Any]
    operations: int
    faults: int
    unknown: int
    errors: list[str]
    membership: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """The membership changes made (kind, members, outcome, seconds)."""


MEMBERSHIP = "membership"
"""The fault kind that runs the membership nemesis (`chaos.membership`) beside
the others: members added, removed and replaced during the run."""

SPARES = 4
"""Spare members a run with membership changes may add."""


def check(workload: Workload, history: Sequence[Op]) -> dict[str, Any]:
    """The checkers that apply to the workload's history, each as a JSON-able dict."""
    from .checkers import bank, sets

    if isinstance(workload, BankWorkload):
        initial = {account: START_BALANCE for account in workload.accounts}
        result: Any = bank.check_bank(history, workload.accounts, ACCOUNTS * START_BALANCE, initial)
        return {"bank": _plain(result)}
    if workload.name == "set":
        return {"set": _plain(sets.check_set(history))}
    if workload.name == "register":
        from .checkers import linearizable

        return {"linearizable": _plain(linearizable.check_register(history))}
    from .checkers import elle

    return {"elle": _plain(elle.check_list_append(history))}


def _plain(result: Any) -> dict[str, Any]:
    plain = dataclasses.asdict(result)
    found: dict[str, Any] = json.loads(json.dumps(plain, default=str))
    return found


def run_chaos(
    directory: Path,
    workload_name: str,
    faults: Sequence[str],
    seed: int,
    seconds: float,
    clients: int = 4,
    nodes: int = 3,
    partitions: int = 2,
    failpoints: tuple[str, ...] = (),
) -> ChaosResult:
    """Run once; see the module docstring. `failpoints` starts the nodes with
    deliberate bugs (`cluster.failpoints`), for the mutation check."""
    workload = WORKLOADS[workload_name]()
    if "disk" in faults and "disk-faults" not in failpoints:
        failpoints = (*failpoints, "disk-faults")
    directory.mkdir(parents=True, exist_ok=True)
    changes_members = MEMBERSHIP in faults
    cluster = ChaosCluster(
        directory / "cluster",
        nodes=nodes,
        partitions=partitions,
        seed=seed,
        failpoints=failpoints,
        spares=SPARES if changes_members else 0,
    )
    run = Run(cluster.urls, cluster.token, seed)
    plan = schedule(seed, cluster.nodes, [f for f in faults if f != MEMBERSHIP], seconds)
    membership: MembershipNemesis | None = None
    try:
        cluster.start()
        cluster.wait_ready()
        with ObjectSpace(run.storage(0)) as space:
            workload.setup(space.new_database(DATABASE))
        run.started = time.monotonic()
        nemesis = Nemesis(cluster, plan, run.record)
        threads = [Client(k, run, workload) for k in range(clients)]
        threads += [
            Client(clients + k, run, workload, reader=True) for k in range(workload.readers)
        ]
        for thread in threads:
            thread.start()
        nemesis.start()
        if changes_members:
            membership = MembershipNemesis(cluster, run.record, seed)
            membership.start()
        time.sleep(seconds)
        nemesis.stop()
        if membership is not None:
            membership.stop()
        cluster.net.heal()
        for node in cluster.members():
            cluster.resume(node)
            cluster.start(node)
        cluster.wait_ready()
        if membership is not None:
            try:
                membership.settle()
            except TimeoutError as exc:
                run.errors.append(str(exc))
        time.sleep(0.5)  # clients commit once more on the healed cluster
        run.stopping.set()
        for thread in threads:
            thread.join(run.timeout + 10)
        final = workload.final()
        if final is not None:
            with ObjectSpace(run.storage(0)) as space:
                perform(run, space, workload, next(run.processes), *final)
        errors = run.errors + nemesis.errors
    finally:
        cluster.stop()
    history = run.recorder.ops
    write_history(directory / "history.jsonl", history)
    checkers = check(workload, history)
    verdicts = [c.get("valid") for c in checkers.values()]
    valid = False if False in verdicts else (None if None in verdicts else True)
    if errors:
        valid = False
    client_ops = [op for op in history if op.process >= 0]
    result = ChaosResult(
        valid=valid,
        directory=directory,
        seed=seed,
        checkers=checkers,
        operations=sum(1 for op in client_ops if op.type == "invoke"),
        faults=sum(1 for op in history if op.process < 0 and not op.f.startswith("end-")),
        unknown=sum(1 for op in client_ops if op.type == "info"),
        errors=errors,
        membership=membership.changes if membership is not None else [],
    )
    summary = {
        "valid": result.valid,
        "seed": seed,
        "workload": workload_name,
        "faults": list(faults),
        "failpoints": list(failpoints),
        "schedule": [dataclasses.asdict(f) for f in plan],
        "seconds": seconds,
        "operations": result.operations,
        "faults_injected": result.faults,
        "unknown_outcomes": result.unknown,
        "errors": errors,
        "membership": result.membership,
        "checkers": checkers,
    }
    (directory / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    write_report(directory, history, json.loads(json.dumps(summary, default=str)))
    return result


MIXES: dict[str, list[str]] = {
    "crashes": ["kill", "kill-all"],
    "pauses": ["pause", "kill"],
    "partitions": ["partition", "isolate-leader", "bridge", "one-way"],
    "slow": ["slow", "partition"],
    "disks": ["disk", "kill"],
    "membership": [MEMBERSHIP, "kill", "pause", "partition", "isolate-leader"],
    "everything": [*KINDS, MEMBERSHIP],
}
"""Named fault mixes a campaign runs every workload under."""


def run_campaign(
    directory: Path, minutes: float, seed: int, clients: int = 4
) -> list[tuple[str, str, ChaosResult]]:
    """Every workload under every mix, `minutes` in all; the results in order."""
    runs = [(workload, mix) for workload in WORKLOADS for mix in MIXES]
    seconds = max(5.0, minutes * 60 / len(runs))
    results = []
    for number, (workload, mix) in enumerate(runs):
        result = run_chaos(
            directory / f"{number:02d}-{workload}-{mix}",
            workload,
            MIXES[mix],
            seed + number,
            seconds,
            clients=clients,
        )
        results.append((workload, mix, result))
    summary = [
        {
            "workload": workload,
            "mix": mix,
            "seed": result.seed,
            "valid": result.valid,
            "operations": result.operations,
            "faults": result.faults,
            "unknown_outcomes": result.unknown,
            "directory": str(result.directory),
        }
        for workload, mix, result in results
    ]
    (directory / "campaign.json").write_text(json.dumps(summary, indent=1))
    return results
