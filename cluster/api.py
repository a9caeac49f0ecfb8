"""The node's HTTP surface (aiohttp): the client API, health and status.

Client API: POST, msgpack bodies in and out, ``Authorization: Bearer
<token>`` required (compared in constant time; 401 when missing or wrong).

    /v1/cluster         {} -> {"cluster", "epoch", "partitions", "members": [{"id", "client"}],
                              "meta_leader": url | None}
    /v1/root/read       {"space"} -> {"root": pointer | None, "version",
                                   "atoms": [bytes] of the root's batch, when at hand}
    /v1/batch/put       {"txid", "atoms": [bytes], "links": [[pointer]] | None,
                         optional "first", "total": a part of a larger batch} -> {}
    /v1/atoms/get       {"pointers": [pointer], optional "prefetch": bytes}
                        -> {"atoms": [bytes], "batches": {transaction id: [bytes]}}
                        (whole batches of the atoms read, up to "prefetch" bytes)
    /v1/commit          {"space", "txid", "base", "root": pointer, "mode": "rebase" | "cas",
                         "reads": {db: [[root name], [object id]]},
                         optional "atoms", "links": the batch, put first (one request)}
                        -> {"version", "root", "led": [partitions the meta leader leads]}
                        ("cas" answers 409 root_conflict instead of rebasing)
    /v1/commit/outcome  {"txid"} -> {"committed": bool, "version", "root"}
    /v1/history         {"space"} -> {"commits": [[version, time, size, change id, root]]}
    /v1/admin/checkpoint  {} -> {"meta_index", "key", "location"}: the meta
                        leader uploads the meta state to the cold tier now
                        (the cut of a cluster backup; 400 without [s3])
                        (the recent roots the meta group keeps, oldest first)

A pointer is ``[transaction id (16 bytes), index]``. Any body may carry
``"epoch"``, the cluster map epoch the client knows; an older one than the
node applied gets 421 ``"stale_map"`` with the current map, and the
client learns it and repeats the request. Errors are JSON
``{"error": message, "kind": ...}``: 400 malformed (nothing changed), 401
token, 404 atom not found, 409 conflict (nothing written), 413 body too
large, 421 not the meta leader (``"leader_url"`` says where to go), 500
``"corruption"`` (stored bytes, such as a cold tier object, failed their
checks), 503 unavailable (``"kind": "outcome_unknown"`` when a write may
have happened).

Open routes: ``GET /health`` (200 while serving), ``GET /ready`` (200 once
every group placed here has a leader, else 503 with the reason),
``GET /status.json``, ``GET /status`` (HTML), ``GET /metrics`` (Prometheus
text format; see `cluster.metrics`). They show no stored data.
"""

from __future__ import annotations

import hmac
import html
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
from aiohttp import web

from protobase.atoms import AtomPointer
from protobase.errors import (
    AtomNotFoundError,
    CommitOutcomeUnknown,
    CorruptionError,
    RootConflict,
    StorageError,
)
from protobase.s3 import S3Unavailable
from protobase.storage.interfaces import DatabaseReads

from .membership import MembershipError
from .meta import MEMBER_STATES, MetaEntryError
from .metrics import CONTENT_TYPE
from .node import FORWARDED, ClusterNode, CommitConflict, Unavailable, UnknownOutcome
from .partitions import META_GROUP
from .raft.errors import GroupNotHere, GroupRemoved, NotLeader
from .raft.node import NodeStopped
from .wire import wire_pointer

OPEN_ROUTES = frozenset({"/health", "/ready", "/status", "/status.json", "/metrics"})
MAX_SPACE_NAME = 256

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    """The request body is not what the route takes."""


class StaleMap(Exception):
    """The request names an older cluster map epoch than this node applied."""


def _error(status: int, message: str, kind: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, "kind": kind, **extra}, status=status)


def _pack(value: Any) -> web.Response:
    return web.Response(body=msgpack.packb(value), content_type="application/msgpack")


def _pointer(raw: Any, what: str) -> AtomPointer:
    pointer = wire_pointer(raw)
    if pointer is None:
        raise BadRequest(f"{what} must be [16-byte transaction id, index >= 0]")
    return AtomPointer(*pointer)


def _txid(raw: Any) -> bytes:
    if type(raw) is not bytes or len(raw) != 16:
        raise BadRequest("txid must be 16 bytes")
    return raw


def _space(raw: Any) -> str:
    if type(raw) is not str or not raw or len(raw) > MAX_SPACE_NAME:
        raise BadRequest("space must be a non-empty string")
    return raw


def _batch(body: dict[str, Any]) -> tuple[list[bytes], list[Any] | None]:
    atoms, links = body.get("atoms"), body.get("links")
    if type(atoms) is not list or not all(type(a) is bytes for a in atoms):
        raise BadRequest("atoms must be a list of bytes")
    if links is not None:
        if type(links) is not list or len(links) != len(atoms):
            raise BadRequest("links must be null or one list of pointers per atom")
        for atom_links in links:
            if type(atom_links) is not list:
                raise BadRequest("links must be null or one list of pointers per atom")
            for link in atom_links:
                _pointer(link, "a link")
    return atoms, links


def _reads(raw: Any) -> dict[str, DatabaseReads]:
    if raw is None:
        return {}
    if type(raw) is not dict:
        raise BadRequest("reads must be a map")
    reads = {}
    for name, pair in raw.items():
        if (
            type(name) is not str
            or type(pair) is not list
            or len(pair) != 2
            or type(pair[0]) is not list
            or type(pair[1]) is not list
            or not all(type(r) is str for r in pair[0])
            or not all(type(o) is bytes for o in pair[1])
        ):
            raise BadRequest("reads maps a database to [[root name], [object id]]")
        reads[name] = DatabaseReads(frozenset(pair[0]), frozenset(pair[1]))
    return reads


class NodeAPI:
    """Routes of one node; see the module docstring."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.token = node.settings.token.encode()

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.node.settings.max_body_bytes,
            middlewares=[self._count, self._guard],
        )
        app.router.add_get("/health", self.health)
        app.router.add_get("/ready", self.ready)
        app.router.add_get("/status.json", self.status_json)
        app.router.add_get("/status", self.status_html)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/cluster", self.cluster)
        app.router.add_post("/v1/root/read", self.read_root)
        app.router.add_post("/v1/batch/put", self.put_batch)
        app.router.add_post("/v1/atoms/get", self.get_atoms)
        app.router.add_post("/v1/commit", self.commit)
        app.router.add_post("/v1/commit/outcome", self.commit_outcome)
        app.router.add_post("/v1/history", self.history)
        app.router.add_post("/v1/admin/checkpoint", self.checkpoint)
        app.router.add_post("/v1/admin/members/join", self.join_member)
        app.router.add_post("/v1/admin/members/state", self.member_state)
        app.router.add_post("/v1/admin/groups/{action}", self.group_action)
        app.router.add_post("/v1/admin/rebalance", self.rebalance)
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count every answer by route (its pattern, never the raw path) and status,
        and time it by route."""
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        metrics = self.node.metrics
        started = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            metrics.http.labels(name, str(exc.status)).inc()
            raise
        finally:
            metrics.http_seconds.labels(name).observe(time.perf_counter() - started)
        metrics.http.labels(name, str(response.status)).inc()
        return response

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_ROUTES:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme != "Bearer" or not hmac.compare_digest(given.encode(), self.token):
                return _error(401, "missing or wrong bearer token", "authentication")
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return _error(
                413,
                f"request body over this node's limit of {self.node.settings.max_body_bytes} "
                "bytes; nothing was changed",
                "too_large",
            )
        except web.HTTPException:
            raise
        except BadRequest as exc:
            return _error(400, f"malformed request: {exc}; nothing was changed", "malformed")
        except StaleMap as exc:
            return _error(421, str(exc), "stale_map", map=self._map())
        except AtomNotFoundError as exc:
            return _error(404, str(exc), "atom_not_found")
        except CommitConflict as exc:
            return _error(409, str(exc), "conflict")
        except RootConflict as exc:
            return _error(409, str(exc), "root_conflict")
        except NotLeader as exc:
            url = self.node.client_url(exc.leader_hint) if exc.leader_hint is not None else None
            if url is None:
                message = f"group {exc.group} has no leader known yet; retry"
                return _error(503, message, "unavailable")
            return _error(421, str(exc), "not_leader", leader_url=url)
        except (MembershipError, MetaEntryError) as exc:
            return _error(409, str(exc), "membership")
        except (UnknownOutcome, CommitOutcomeUnknown) as exc:
            # Before StorageError: a commit whose outcome is unknown was not
            # refused (a 400 says nothing changed), it may still take effect.
            return _error(503, str(exc), "outcome_unknown")
        except (Unavailable, NodeStopped, S3Unavailable, GroupNotHere, GroupRemoved) as exc:
            # A group moved away a moment ago counts as not served here now.
            return _error(503, str(exc), "unavailable")
        except CorruptionError as exc:
            return _error(500, str(exc), "corruption")
        except StorageError as exc:
            return _error(400, str(exc), "refused")

    async def _body(self, request: web.Request) -> dict[str, Any]:
        data = await request.read()
        try:
            body = msgpack.unpackb(data, strict_map_key=True)
        except (ValueError, msgpack.UnpackException) as exc:
            raise BadRequest(f"body is not msgpack ({exc})") from exc
        if type(body) is not dict:
            raise BadRequest("body must be a msgpack map")
        epoch = body.get("epoch")
        if epoch is not None:
            if type(epoch) is not int:
                raise BadRequest("epoch must be an integer")
            if epoch < self.node.map_epoch:
                raise StaleMap(
                    f"the request names cluster map epoch {epoch}; it is at "
                    f"{self.node.map_epoch}: learn the members again and retry"
                )
        return body

    # -- open routes ---------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "node_id": self.node.id})

    async def ready(self, request: web.Request) -> web.Response:
        ok, reason = self.node.ready()
        return web.json_response({"ready": ok, "reason": reason}, status=200 if ok else 503)

    async def status_json(self, request: web.Request) -> web.Response:
        return web.json_response(self.node.status())

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.node.metrics.render(),
            headers={"Content-Type": CONTENT_TYPE},
        )

    async def status_html(self, request: web.Request) -> web.Response:
        return web.Response(text=status_page(self.node), content_type="text/html")

    # -- client API ----------------------------------------------------------------

    def _map(self) -> dict[str, Any]:
        """The cluster map as clients see it (the configured one before the first)."""
        cluster_map = self.node.cluster_map
        return {
            "epoch": self.node.map_epoch,
            "partitions": cluster_map.partitions,
            "members": [{"id": m[0], "client": m[2]} for m in cluster_map.members],
            # The whole map, for members that do not replicate the meta group.
            "map": cluster_map.to_wire() if self.node.map_epoch else None,
        }

    async def cluster(self, request: web.Request) -> web.Response:
        """The cluster map. With ``{"current": true}``, only the meta leader
        answers (others: 421 with its URL), after a read barrier: every map
        change committed before the request is in the answer."""
        body = await self._body(request) if request.can_read_body else {}
        if body.get("current") is True:
            self.node.check_meta_leader()
            await self.node.current_map()
        leader = self.node.leader(META_GROUP)
        return _pack(
            {
                "cluster": self.node.settings.cluster,
                **self._map(),
                "meta_leader": self.node.client_url(leader) if leader else None,
            }
        )

    async def read_root(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        ref = await self.node.read_root(_space(body.get("space")))
        answer: dict[str, Any] = {"root": None, "version": ref.version}
        if ref.pointer is not None:
            answer["root"] = list(ref.pointer)
            atoms = self.node.recent_batches.get(ref.pointer.transaction_id)
            if atoms is not None:
                answer["atoms"] = atoms
        return _pack(answer)

    async def put_batch(self, request: web.Request) -> web.Response:
        data = await request.read()
        body = await self._body(request)
        transaction_id = _txid(body.get("txid"))
        atoms, links = _batch(body)
        first, total = body.get("first", 0), body.get("total")
        if total is None:
            total = len(atoms)
        if (
            type(first) is not int
            or type(total) is not int
            or not 0 <= first <= first + len(atoms) <= total
            or (not atoms and total)
        ):
            raise BadRequest("first and total must place the atoms inside the batch")
        await self.node.put_batch(
            transaction_id,
            atoms,
            links,
            data,
            forwarded=FORWARDED in request.headers,
            first=first,
            total=total,
        )
        return _pack({})

    async def get_atoms(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        raw = body.get("pointers")
        if type(raw) is not list:
            raise BadRequest("pointers must be a list")
        pointers = [_pointer(p, "a pointer") for p in raw]
        prefetch = body.get("prefetch", 0)
        if type(prefetch) is not int or prefetch < 0:
            raise BadRequest("prefetch must be a byte count >= 0")
        atoms, batches = await self.node.get_atoms_and_batches(
            [(p.transaction_id, p.index) for p in pointers], FORWARDED in request.headers, prefetch
        )
        return _pack({"atoms": atoms, "batches": batches})

    async def commit(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        base = body.get("base")
        if type(base) is not int:
            raise BadRequest("base must be the root version the commit was built on")
        mode = body.get("mode", "rebase")
        if mode not in ("rebase", "cas"):
            raise BadRequest('mode must be "rebase" or "cas"')
        space, root = _space(body.get("space")), _pointer(body.get("root"), "root")
        transaction_id, reads = _txid(body.get("txid")), _reads(body.get("reads"))
        inline = "atoms" in body
        if inline:
            atoms, links = _batch(body)
            self.node.check_meta_leader()
            # Refuse what the root change would refuse before storing anything.
            await self.node.check_cas(
                space, base if mode == "cas" else None, root, transaction_id, len(atoms)
            )
            await self.node.put_batch(transaction_id, atoms, links, None)
            if mode == "rebase":
                # A rebase reads the new root's atoms: keep them at hand.
                self.node.object_space(space).cache_batch(transaction_id, atoms)
            self.node.remember_batch(transaction_id, atoms)
        ref = await self.node.commit(
            space,
            base,
            root,
            transaction_id,
            reads,
            rebase=mode == "rebase",
            stored=inline,
            size=sum(len(atom) for atom in atoms) if inline else 0,
        )
        assert ref.pointer is not None
        return _pack(
            {"version": ref.version, "root": list(ref.pointer), "led": self.node.led_partitions()}
        )

    async def history(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        commits = await self.node.history(_space(body.get("space")))
        return _pack(
            {
                "commits": [
                    [c.version, c.time, c.size, c.transaction_id, list(c.root)] for c in commits
                ]
            }
        )

    async def checkpoint(self, request: web.Request) -> web.Response:
        await self._body(request)
        return _pack(await self.node.checkpoint())

    async def join_member(self, request: web.Request) -> web.Response:
        """Meta leader: add a member ``{member?, peer, client, zone?}``; answers its id
        and the new map. Repeating a join with the same addresses is harmless."""
        body = await self._body(request)
        member = body.get("member")
        if member is not None and (type(member) is not int or member < 1):
            raise BadRequest("member must be a positive integer id")
        peer, client, zone = body.get("peer"), body.get("client"), body.get("zone")
        if type(peer) is not str or type(client) is not str:
            raise BadRequest("peer (HOST:PORT) and client (URL) are required strings")
        if zone is not None and (type(zone) is not str or not zone):
            raise BadRequest("zone must be a non-empty string")
        member_id, current = await self.node.join_member(member, peer, client, zone)
        return _pack({"member": member_id, "epoch": current.epoch, "map": current.to_wire()})

    async def member_state(self, request: web.Request) -> web.Response:
        """Meta leader: ``{member, state}`` with state active, leaving or dead."""
        body = await self._body(request)
        member, state = body.get("member"), body.get("state")
        if type(member) is not int or state not in MEMBER_STATES:
            raise BadRequest(f"member (an id) and state (one of {MEMBER_STATES}) are required")
        current = await self.node.set_member_state(member, state)
        return _pack({"epoch": current.epoch, "map": current.to_wire()})

    async def rebalance(self, request: web.Request) -> web.Response:
        """Meta leader: spread the group leaders as well as the replicas."""
        await self._body(request)
        self.node.rebalance()
        return _pack({"epoch": self.node.map_epoch})

    async def group_action(self, request: web.Request) -> web.Response:
        """On a group's leader: ``add-voter``, ``remove`` or ``transfer`` with
        ``{group, member, timeout?}``."""
        body = await self._body(request)
        group, member = body.get("group"), body.get("member")
        timeout = body.get("timeout", 30.0)
        if type(group) is not int or type(member) is not int:
            raise BadRequest("group and member are required integers")
        if type(timeout) not in (int, float) or not 0 < timeout <= 600:
            raise BadRequest("timeout must be seconds, at most 600")
        action = request.match_info["action"]
        if action not in ("add-voter", "remove", "transfer"):
            raise BadRequest(f"unknown group action {action!r}: add-voter, remove or transfer")
        await self.node.group_admin(action, group, member, float(timeout))
        return _pack({"done": True})

    async def commit_outcome(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        ref = await self.node.commit_outcome(_txid(body.get("txid")))
        if ref is None or ref.pointer is None:
            return _pack({"committed": False})
        return _pack({"committed": True, "version": ref.version, "root": list(ref.pointer)})


def status_page(node: ClusterNode) -> str:
    """`GET /status`: what a person checks first, refreshed every 5 seconds.

    Members, each group's leader (by node id and URL), term, commit and
    applied indexes and follower lag, the S3 cold tier's backlog, and the
    latest leader changes this node saw.
    """
    status = node.status()
    clients = {m["id"]: m["client"] for m in status["members"]}

    def cell(value: Any) -> str:
        return f"<td>{html.escape('' if value is None else str(value))}</td>"

    def leader(group: dict[str, Any]) -> str:
        found = group.get("leader")
        if found is None:
            return "no leader"
        return f"node {found} ({clients.get(found, '?')})"

    groups = "".join(
        "<tr>"
        + cell(g["name"])
        + cell(leader(g))
        + "".join(cell(g.get(k)) for k in ("role", "term", "commit", "applied", "follower_lag"))
        + cell(", ".join(str(v) for v in g.get("voters", ())))
        + "</tr>"
        for g in status["groups"]
    )
    members = "".join(
        "<tr>" + cell(m["id"]) + cell(m["client"]) + cell(m["peer"]) + "</tr>"
        for m in status["members"]
    )
    changes = "".join(
        "<tr>"
        + cell(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(change["time"])))
        + cell(change["group"])
        + cell(change["term"])
        + cell("none" if change["leader"] is None else f"node {change['leader']}")
        + "</tr>"
        for change in status["leader_history"]
    )
    s3 = status.get("s3")
    tier = (
        "<p>No S3 cold tier is configured on this node.</p>"
        if s3 is None
        else (
            f"<p id=s3>{html.escape(s3['location'])}: backlog {s3['backlog_entries']} entries, "
            f"{s3['uploads']['entries']} uploads, {s3['failures']} failed rounds"
            + (f", last error: {html.escape(s3['last_error'])}" if s3["last_error"] else "")
            + "</p>"
        )
    )
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        "<meta http-equiv=refresh content=5>"
        f"<title>ProtoBase {html.escape(status['cluster'])}: node {status['node_id']}</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left}</style>"
        "</head><body>"
        f"<h1>Cluster {html.escape(status['cluster'])}: node {status['node_id']}</h1>"
        f"<p id=ready>{'ready' if status['ready'] else 'not ready'}; map epoch "
        f"{status['epoch']}, {status['partitions']} partitions, up "
        f"{status['uptime_seconds']} s</p>"
        "<h2>Groups</h2><table id=groups border=1><tr><th>group</th><th>leader</th>"
        "<th>role here</th><th>term</th><th>commit</th><th>applied</th>"
        "<th>follower lag</th><th>voters</th></tr>"
        f"{groups}</table>"
        "<h2>Members</h2><table id=members border=1><tr><th>id</th><th>client</th>"
        f"<th>peer</th></tr>{members}</table>"
        f"<h2>S3 cold tier</h2>{tier}"
        "<h2>Recent leader changes</h2><table id=changes border=1><tr><th>time (UTC)</th>"
        f"<th>group</th><th>term</th><th>new leader</th></tr>{changes}</table>"
        "</body></html>"
    )
