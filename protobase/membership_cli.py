"""`protobase cluster add-node | remove-node | replace-node | rebalance`.

Each command changes the cluster map through the meta leader's admin API
and then watches the cluster carry the change out (the meta leader moves
replicas one at a time; see `cluster.membership`), printing a line for
every step. A command only states what the map should say, so it can be
interrupted and run again: the second run finds the change made and goes
on waiting.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from .cluster_cli import pid_file

POLL_SECONDS = 0.25
"""How often a watch reads the cluster map (one small GET): a step shows within 0.25 s."""


class MembershipCommandError(Exception):
    """A membership command cannot go on; the message says why and what to do."""


class ClusterBusy(MembershipCommandError):
    """The cluster did not answer now (a 503, an election); waiting goes on."""


def admin_post(url: str, route: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    """POST a msgpack request to a member, following the meta leader's redirects.

    Raises:
        MembershipCommandError: no member answered, or the request was refused.
    """
    target = url.rstrip("/")
    for _ in range(4):
        request = urllib.request.Request(target + route, data=msgpack.packb(body), method="POST")
        request.add_header("Authorization", f"Bearer {token}")
        request.add_header("Content-Type", "application/msgpack")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer: dict[str, Any] = msgpack.unpackb(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read())
            except ValueError:
                error = {"error": exc.reason}
            if exc.code == 421 and error.get("leader_url"):
                target = str(error["leader_url"]).rstrip("/")
                continue
            if exc.code == 401:
                raise MembershipCommandError(
                    f"{target} refused the client token (401); give it with --token-file"
                ) from exc
            if exc.code == 503:
                raise ClusterBusy(f"{target}{route}: {error.get('error')}") from exc
            raise MembershipCommandError(
                f"{target}{route} answered {exc.code}: {error.get('error')}"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ClusterBusy(
                f"no ProtoBase node answered at {target} ({getattr(exc, 'reason', exc)}); "
                "give the client URL of a running member"
            ) from exc
    raise MembershipCommandError(f"{route}: the meta leader kept moving; run the command again")


def current_map(url: str, token: str) -> dict[str, Any]:
    """The cluster map as the meta leader holds it now (and its URL, as ``leader``)."""
    answer = admin_post(url, "/v1/cluster", {"current": True}, token)
    found: dict[str, Any] = {
        "epoch": answer["epoch"],
        "members": {m[0]: {"peer": m[1], "client": m[2]} for m in answer["map"][1]},
        "leader": answer.get("meta_leader") or url,
    }
    extra = answer["map"][4] if len(answer["map"]) > 4 else {"groups": [], "states": []}
    found["placement"] = {g: tuple(r) for g, r in extra["groups"]}
    found["states"] = dict((m, s) for m, s in extra["states"])
    found["retired"] = set(extra.get("retired", ()))
    return found


def _any_current_map(urls: list[str], token: str) -> dict[str, Any]:
    """`current_map` from the first of `urls` that answers.

    Raises:
        ClusterBusy: none answered (the last one's reason).
    """
    for position, url in enumerate(urls):
        try:
            return current_map(url, token)
        except ClusterBusy:
            if position == len(urls) - 1:
                raise
    raise ClusterBusy("no member to ask")


def leader_step(leader_url: str, epoch: int) -> str:
    """What the meta leader's last membership step did ("balanced": nothing
    was left to do at map `epoch` or later, leaders included when a rebalance
    asked for them)."""
    try:
        with urllib.request.urlopen(leader_url.rstrip("/") + "/status.json", timeout=5) as r:
            status = json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return "the meta leader did not answer; waiting"
    membership = status.get("membership") or {}
    if membership.get("balancing_leaders"):
        return "spreading the group leaders"
    step = str(membership.get("last_step", "?"))
    if step == "balanced" and int(membership.get("balanced_epoch", 0)) < epoch:
        # Said of an older map: the step that made this one is still going on.
        return "planning the next step"
    return step


def _watch(
    url: str,
    token: str,
    done: Callable[[dict[str, Any]], bool],
    describe: Callable[[dict[str, Any]], str],
    timeout: float,
    out: Callable[[str], None],
) -> dict[str, Any]:
    """Poll the map until `done(map)` and the meta leader has nothing left to do;
    print a line whenever the map or the leader's last step changes."""
    deadline = time.monotonic() + timeout
    last = ""
    urls = [url]
    while True:
        found: dict[str, Any] | None = None
        try:
            found = _any_current_map(urls, token)
        except ClusterBusy as exc:
            line = f"waiting: {exc}"
        else:
            # The member asked first may leave (remove-node of itself): ask the
            # others the map names, in turn, when it stops answering.
            others = [m["client"] for m in found["members"].values()]
            urls = [url, *(u for u in others if u.rstrip("/") != url.rstrip("/"))]
            step = leader_step(found["leader"], found["epoch"])
            line = f"epoch {found['epoch']}: {describe(found)}; {step}"
        if line != last:
            out(line)
            last = line
        if found is not None and done(found) and step == "balanced":
            return found
        if time.monotonic() > deadline:
            raise MembershipCommandError(
                f"not finished within {timeout:g} s (last: {line}); run the command again "
                "to keep waiting"
            )
        time.sleep(POLL_SECONDS)


def _held(found: dict[str, Any], member: int) -> int:
    return sum(member in replicas for replicas in found["placement"].values())


def wait_added(
    url: str, token: str, member: int, timeout: float, out: Callable[[str], None]
) -> None:
    """Wait until the new `member` is in the map, holds replicas, and nothing is
    left to move."""
    _watch(
        url,
        token,
        lambda m: member in m["members"] and _held(m, member) > 0,
        lambda m: (
            f"member {member} holds {_held(m, member)} replicas"
            if member in m["members"]
            else f"member {member} is joining"
        ),
        timeout,
        out,
    )


def remove_node(
    url: str, member: int, token: str, timeout: float, out: Callable[[str], None]
) -> None:
    """Decommission `member`: its replicas move off, then it is forgotten."""
    _take_out(url, member, "leaving", token, timeout, out)
    out(f"member {member} is out of the cluster; its process stops by itself")


def replace_node(
    url: str, dead: int, token: str, timeout: float, out: Callable[[str], None]
) -> None:
    """Declare `dead` gone for good: its replicas are rebuilt on the other members
    (add a new node first, and they go to it), then it is forgotten."""
    _take_out(url, dead, "dead", token, timeout, out)
    out(f"member {dead} is replaced")


def _take_out(
    url: str, member: int, state: str, token: str, timeout: float, out: Callable[[str], None]
) -> None:
    """Mark `member` leaving or dead, then watch until the map forgot it."""
    found = current_map(url, token)
    if member not in found["members"]:
        out(f"member {member} is not in the cluster (already out)")
        return
    if found["states"].get(member) != state:  # a second run finds it done
        admin_post(url, "/v1/admin/members/state", {"member": member, "state": state}, token)
    out(f"member {member} is {state}; its replicas move to the other members")
    _watch(
        url,
        token,
        lambda m: member not in m["members"],
        lambda m: (
            f"member {member} holds {_held(m, member)} replicas"
            if member in m["members"]
            else f"member {member} is removed"
        ),
        timeout,
        out,
    )


def rebalance(url: str, token: str, timeout: float, out: Callable[[str], None]) -> None:
    """Spread replicas and group leaders evenly."""
    admin_post(url, "/v1/admin/rebalance", {}, token)
    _watch(
        url,
        token,
        lambda m: True,
        lambda m: f"{len(m['members'])} members",
        timeout,
        out,
    )
    out("balanced")


def add_node(
    directory: Path,
    join: str | None,
    zone: str | None,
    timeout: float,
    out: Callable[[str], None],
) -> int:
    """Add a member to the local cluster in `directory` (made by `cluster up`):
    write its node.toml (the next id, the ports `cluster up` would give it,
    ``join`` set), start it in the background and wait until it holds its
    share of the replicas. Returns the new member's id."""
    token = _read(directory / "client.token")
    configs = sorted(directory.glob("node*.toml"))
    if not configs:
        raise MembershipCommandError(
            f"{directory} has no node*.toml; give the directory `protobase cluster up` made"
        )
    first = tomllib.loads(configs[0].read_text())
    base = int(str(first["listen"]).rsplit(":", 1)[1]) - int(first["node_id"])
    url = join or f"http://127.0.0.1:{base + int(first['node_id'])}"
    found = current_map(url, token)
    # An id no member has, had or has a config for: ids are never used twice.
    taken = [*found["members"], *found["retired"], *(int(p.stem[4:]) for p in configs)]
    member = max(taken) + 1
    config = join_config(directory, member, base, configs[0], url, zone)
    log_path = directory / f"node{member}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "protobase.cli", "node", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # it outlives this command
        )
    # `cluster up` on this directory stops it with the others, and starts it next time.
    pid_file(config).write_text(f"{process.pid}\n")
    out(f"member {member} started (pid {process.pid}, log {log_path}); it joins through {url}")
    wait_added(url, token, member, timeout, out)
    out(f"member {member} holds its share: http://127.0.0.1:{base + member}")
    return member


def join_config(
    directory: Path, member: int, base: int, like: Path, join: str, zone: str | None
) -> Path:
    """Write ``node<member>.toml`` for a member joining through `join`, on the
    ports `cluster up` gives member `member` (client base+member, peer
    base+100+member), with the cluster name and partitions of `like`."""
    first = tomllib.loads(like.read_text())
    config = directory / f"node{member}.toml"
    zone_line = f'zone = "{zone}"\n' if zone else ""
    config.write_text(
        f'cluster = "{first["cluster"]}"\n'
        f"node_id = {member}\n"
        f'data_dir = "n{member}"\n'
        f'listen = "127.0.0.1:{base + member}"\n'
        f'peer_listen = "127.0.0.1:{base + 100 + member}"\n'
        f"partitions = {first['partitions']}\n"
        'secret_file = "cluster.secret"\n'
        'token_file = "client.token"\n'
        f'join = "{join}"\n' + zone_line + "\n[[members]]\n"
        f"id = {member}\n"
        f'peer = "127.0.0.1:{base + 100 + member}"\n'
        f'client = "http://127.0.0.1:{base + member}"\n'
    )
    return config


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise MembershipCommandError(f"cannot read {path}: {exc.strerror}") from exc
