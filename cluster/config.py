"""A node's configuration: the ``node.toml`` contract (public: tools outside
the project start nodes with it).

Example (relative paths are relative to the file's folder)::

    cluster = "demo"
    node_id = 1
    data_dir = "n1"
    listen = "127.0.0.1:7101"        # client HTTP API
    peer_listen = "127.0.0.1:7201"   # Raft traffic
    partitions = 8
    secret_file = "cluster.secret"
    token_file = "client.token"

    [[members]]
    id = 1
    peer = "127.0.0.1:7201"
    client = "http://127.0.0.1:7101"

Optional keys: ``tick_interval`` (seconds, 0.1), ``election_ticks`` (10),
``max_body_bytes`` (64 MiB), ``replication`` (3), ``snapshot_every``
(entries between state machine snapshots, 10,000), ``keep_entries``
(entries a snapshot leaves in the log behind it for followers, 5,000),
``log_segment_bytes`` (size at which a Raft log segment is sealed, 64 MiB),
``zone`` (a failure-domain label for placement), ``leader_balance_after``
(seconds group leaders may stay unevenly spread before the meta leader moves
some, 30; 0: only on ``protobase cluster rebalance``), ``join`` (the URL of a member
of a running cluster: this node joins it, and its ``[[members]]`` name only
itself; ``protobase node --join URL`` sets it too).

Optional ``[peer_routes]`` table: how this node reaches members its
``[[members]]`` do not name, overriding the peer address the cluster map
gives (a proxy, NAT or tunnel between them)::

    [peer_routes]
    4 = "127.0.0.1:9304"             # member id = HOST:PORT

Optional ``[s3]`` table, the cold tier (`cluster.cold_tier`); credentials
come from the usual AWS environment variables or profile::

    [s3]
    bucket = "protobase"             # required in the table
    prefix = "demo"                  # key prefix ("" by default)
    endpoint = "http://127.0.0.1:9000"   # default: AWS_ENDPOINT_URL, else AWS
    upload_interval = 5.0            # seconds a committed entry may wait to be uploaded
    object_bytes = 8388608           # target size of one uploaded object
    disk_budget_bytes = 0            # > 0: evict uploaded partition log beyond this
    meta_snapshot_interval = 30.0    # seconds between uploads of the meta state

`load_config` checks everything a node needs before it touches its data
directory; a problem raises `ConfigError` with a message naming the key and
what to do, and `protobase node` exits with status 2.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """The node's configuration is missing, malformed or unusable."""


@dataclass(frozen=True)
class Member:
    id: int
    peer: tuple[str, int]
    client: str
    zone: str | None = None


@dataclass(frozen=True)
class S3Settings:
    """The ``[s3]`` table: where the cold tier lives and how it behaves."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    upload_interval: float = 5.0
    object_bytes: int = 8 << 20
    disk_budget_bytes: int = 0
    """0: keep the whole partition log on disk; otherwise evict uploaded
    entries once a partition's log passes this many bytes."""
    meta_snapshot_interval: float = 30.0


@dataclass(frozen=True)
class NodeSettings:
    cluster: str
    node_id: int
    data_dir: Path
    listen: tuple[str, int]
    peer_listen: tuple[str, int]
    partitions: int
    secret: bytes
    token: str
    members: tuple[Member, ...]
    tick_interval: float = 0.1
    election_ticks: int = 10
    max_body_bytes: int = 64 << 20
    replication: int = 3
    snapshot_every: int = 10_000
    keep_entries: int = 5_000
    log_segment_bytes: int = 64 << 20
    s3: S3Settings | None = None
    join: str | None = None
    """A member's URL: this node joins that running cluster instead of
    bootstrapping one with its `[[members]]` (which then name only itself)."""
    zone: str | None = None
    """A failure-domain label: no two replicas of a group share one when the
    zones allow it."""
    leader_balance_after: float = 30.0
    """Seconds group leaders may stay unevenly spread before the meta leader
    moves some (0: only on `protobase cluster rebalance`)."""
    peer_routes: tuple[tuple[int, tuple[str, int]], ...] = ()
    """(member id, address) pairs: how this node reaches those members, over
    the address the cluster map gives."""

    def peer_route(self, node_id: int) -> tuple[str, int] | None:
        """How this node reaches member `node_id` when its config says:
        `[[members]]` first, then `[peer_routes]` (None: as the map says)."""
        for member in self.members:
            if member.id == node_id:
                return member.peer
        return dict(self.peer_routes).get(node_id)

    @property
    def me(self) -> Member:
        return next(m for m in self.members if m.id == self.node_id)

    def client_url(self, node_id: int) -> str | None:
        for member in self.members:
            if member.id == node_id:
                return member.client
        return None


def parse_address(text: Any, key: str) -> tuple[str, int]:
    if type(text) is not str:
        raise ConfigError(f"{key} must be a string HOST:PORT, not {text!r}")
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key} = {text!r} is not HOST:PORT")
    return host, int(port)


def _read_secret(base: Path, raw: Any, key: str) -> bytes:
    if type(raw) is not str or not raw:
        raise ConfigError(
            f"{key} is required: the path of a file holding it (`protobase cluster up` writes one)"
        )
    path = base / raw
    try:
        value = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(
            f"{key}: cannot read {path}: {exc.strerror}; create it or fix the path"
        ) from exc
    if not value:
        raise ConfigError(f"{key}: {path} is empty; a node refuses to start without it")
    return value


def _int(table: dict[str, Any], key: str, default: int | None = None, low: int = 1) -> int:
    value = table.get(key, default)
    if type(value) is not int or value < low:
        raise ConfigError(f"{key} must be an integer >= {low}, not {value!r}")
    return value


def load_config(path: str | Path) -> NodeSettings:
    """Read and check ``node.toml``; `ConfigError` says what is wrong."""
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    base = path.resolve().parent
    cluster = table.get("cluster")
    if type(cluster) is not str or not cluster:
        raise ConfigError("cluster must be a non-empty string (the cluster's name)")
    node_id = _int(table, "node_id")
    raw_dir = table.get("data_dir")
    if type(raw_dir) is not str or not raw_dir:
        raise ConfigError("data_dir is required")
    raw_members = table.get("members")
    if type(raw_members) is not list or not raw_members:
        raise ConfigError("[[members]] must list every member, this node included")
    members = []
    for position, raw in enumerate(raw_members):
        if type(raw) is not dict:
            raise ConfigError(f"members[{position}] must be a table")
        member_id = _int(raw, "id")
        client = raw.get("client")
        if type(client) is not str or not client.startswith(("http://", "https://")):
            raise ConfigError(f"members[{position}].client must be an http(s) URL")
        zone = raw.get("zone")
        if zone is not None and (type(zone) is not str or not zone):
            raise ConfigError(f"members[{position}].zone must be a non-empty string")
        members.append(
            Member(
                member_id,
                parse_address(raw.get("peer"), f"members[{position}].peer"),
                client,
                zone,
            )
        )
    ids = [m.id for m in members]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"member ids must be unique: {ids}")
    if node_id not in ids:
        raise ConfigError(f"node_id {node_id} is not among the members {sorted(ids)}")
    join = table.get("join")
    if join is not None and (type(join) is not str or not join.startswith(("http://", "https://"))):
        raise ConfigError(f"join must be the http(s) URL of a member, not {join!r}")
    zone = table.get("zone")
    if zone is not None and (type(zone) is not str or not zone):
        raise ConfigError(f"zone must be a non-empty string, not {zone!r}")
    tick = table.get("tick_interval", 0.1)
    if type(tick) not in (int, float) or not 0.001 <= tick <= 10:
        raise ConfigError(f"tick_interval must be seconds between 0.001 and 10, not {tick!r}")
    return NodeSettings(
        cluster=cluster,
        node_id=node_id,
        data_dir=base / raw_dir,
        listen=parse_address(table.get("listen"), "listen"),
        peer_listen=parse_address(table.get("peer_listen"), "peer_listen"),
        partitions=_int(table, "partitions", 8),
        secret=_read_secret(base, table.get("secret_file"), "secret_file"),
        token=_read_secret(base, table.get("token_file"), "token_file").decode(),
        members=tuple(sorted(members, key=lambda m: m.id)),
        tick_interval=float(tick),
        election_ticks=_int(table, "election_ticks", 10, low=2),
        max_body_bytes=_int(table, "max_body_bytes", 64 << 20, low=1024),
        replication=_int(table, "replication", 3),
        snapshot_every=_int(table, "snapshot_every", 10_000),
        keep_entries=_int(table, "keep_entries", 5_000, low=0),
        log_segment_bytes=_int(table, "log_segment_bytes", 64 << 20, low=4096),
        s3=_s3_settings(table.get("s3")),
        join=join,
        zone=zone,
        leader_balance_after=_leader_balance_after(table),
        peer_routes=_peer_routes(table.get("peer_routes")),
    )


def _peer_routes(raw: Any) -> tuple[tuple[int, tuple[str, int]], ...]:
    if raw is None:
        return ()
    if type(raw) is not dict:
        raise ConfigError('[peer_routes] must be a table of member id = "HOST:PORT"')
    routes = []
    for key, address in raw.items():
        if not key.isdigit() or int(key) < 1:
            raise ConfigError(f"peer_routes keys are member ids (integers > 0), not {key!r}")
        routes.append((int(key), parse_address(address, f"peer_routes.{key}")))
    return tuple(sorted(routes))


def _seconds(table: dict[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if type(value) not in (int, float) or not 0.01 <= value <= 86_400:
        raise ConfigError(f"s3.{key} must be seconds between 0.01 and 86400, not {value!r}")
    return float(value)


def _leader_balance_after(table: dict[str, Any]) -> float:
    value = table.get("leader_balance_after", 30.0)
    if type(value) not in (int, float) or not 0 <= value <= 86_400:
        raise ConfigError(
            f"leader_balance_after must be seconds between 0 (never by itself) and 86400, "
            f"not {value!r}"
        )
    return float(value)


def _object_bytes(raw: dict[str, Any]) -> int:
    value = _int(raw, "object_bytes", 8 << 20, low=1024)
    if value > 64 << 20:
        raise ConfigError(f"s3.object_bytes must be at most 64 MiB, not {value}")
    return value


def _s3_settings(raw: Any) -> S3Settings | None:
    if raw is None:
        return None
    if type(raw) is not dict:
        raise ConfigError("[s3] must be a table")
    known = set(S3Settings.__dataclass_fields__)
    unknown = sorted(set(raw) - known - {"endpoint"})
    if unknown:
        raise ConfigError(f"[s3] has unknown keys {unknown}; known: {sorted(known)}")
    bucket = raw.get("bucket")
    if type(bucket) is not str or not bucket:
        raise ConfigError("s3.bucket must be a non-empty string")
    prefix = raw.get("prefix", "")
    if type(prefix) is not str:
        raise ConfigError("s3.prefix must be a string")
    endpoint = raw.get("endpoint")
    if endpoint is not None and (
        type(endpoint) is not str or not endpoint.startswith(("http://", "https://"))
    ):
        raise ConfigError(f"s3.endpoint must be an http(s) URL, not {endpoint!r}")
    budget = raw.get("disk_budget_bytes", 0)
    if type(budget) is not int or budget < 0:
        raise ConfigError(f"s3.disk_budget_bytes must be an integer >= 0, not {budget!r}")
    return S3Settings(
        bucket=bucket,
        prefix=prefix.strip("/"),
        endpoint=endpoint,
        upload_interval=_seconds(raw, "upload_interval", 5.0),
        object_bytes=_object_bytes(raw),
        disk_budget_bytes=budget,
        meta_snapshot_interval=_seconds(raw, "meta_snapshot_interval", 30.0),
    )
