"""The node's HTTP surface, spoken with a raw HTTP client (urllib + msgpack).

One 3-node cluster serves the whole module (its configs set a small
``max_body_bytes``). Every request that must be refused is built from a
request that would succeed, with one field broken, so that a node that let
the field through would change the data, and the "nothing changed" checks
(root version, root pointer, contents, the batch's atoms) would see it.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from harness import LocalCluster

from protobase import (
    AuthenticationError,
    ClusterFileStorage,
    Dictionary,
    ObjectSpace,
    StorageError,
)
from protobase.storage.interfaces import RebaseRequest, RootRef

MAX_BODY = 65536
SPACE = "default"
CLIENT_ROUTES = [
    "/v1/cluster",
    "/v1/root/read",
    "/v1/batch/put",
    "/v1/atoms/get",
    "/v1/commit",
    "/v1/commit/outcome",
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(
        tmp_path_factory.mktemp("api") / "api", extra_config=f"max_body_bytes = {MAX_BODY}"
    ) as local:
        fill(local, SPACE)
        yield local


def fill(cluster: LocalCluster, space_name: str) -> None:
    with ObjectSpace(cluster.storage(space=space_name)) as space:
        db = space.new_database("api")

        def write(tr: Any) -> None:
            tr.set_root_object("accounts", Dictionary({"alice": 10, "bob": 20}))
            tr.set_root_object("note", "hello")

        db.run(write)


# -- raw HTTP ----------------------------------------------------------------------


class Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.content_type = headers.get("Content-Type", "")
        self.body = body

    def json(self) -> dict[str, Any]:
        assert self.content_type.startswith("application/json"), (self.content_type, self.body)
        value = json.loads(self.body)
        assert isinstance(value, dict), value
        return value

    def msgpack(self) -> Any:
        assert self.status == 200, (self.status, self.body[:300])
        return msgpack.unpackb(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {self.content_type} {self.body[:200]!r}>"


def request(
    url: str,
    method: str = "GET",
    data: bytes | None = None,
    authorization: str | None = None,
) -> Answer:
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/msgpack")
    if authorization is not None:
        req.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(req, timeout=20) as response:
            return Answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.headers, exc.read())


def post(cluster: LocalCluster, node: int, route: str, body: Any, raw: bool = False) -> Answer:
    data = body if raw else msgpack.packb(body)
    return request(cluster.url(node) + route, "POST", data, f"Bearer {cluster.token}")


def post_meta(cluster: LocalCluster, route: str, body: Any) -> Answer:
    """POST to the meta leader, following 421 (and waiting out 503) like the client."""
    node = cluster.leader_of(0)
    url = cluster.url(node)
    deadline = time.monotonic() + 20
    while True:
        answer = request(url + route, "POST", msgpack.packb(body), f"Bearer {cluster.token}")
        if answer.status == 421:
            url = answer.json()["leader_url"]
        elif answer.status != 503 or time.monotonic() > deadline:
            return answer
        else:
            time.sleep(0.1)


def assert_json_error(answer: Answer, status: int) -> dict[str, Any]:
    assert answer.status == status, answer
    error = answer.json()
    assert isinstance(error.get("error"), str) and error["error"], error
    assert isinstance(error.get("kind"), str), error
    return error


# -- what the data is --------------------------------------------------------------


def state(cluster: LocalCluster, space_name: str = SPACE) -> tuple[int, Any, dict[str, Any], str]:
    """Root version, root pointer and the database's contents, read as a client does."""
    with ObjectSpace(cluster.storage(space=space_name)) as space:
        ref = space.storage.read_root()
        tr = space.open_database("api").new_read_only_transaction()
        try:
            accounts = dict(tr.get_root_object("accounts").as_iterable())
            note = tr.get_root_object("note")
        finally:
            tr.abort()
    return ref.version, ref.pointer, accounts, note


def current_root(cluster: LocalCluster) -> tuple[list[Any], int]:
    answer = post_meta(cluster, "/v1/root/read", {"space": SPACE}).msgpack()
    return answer["root"], answer["version"]


def stored(cluster: LocalCluster, transaction_id: bytes) -> bool:
    """Whether any atom of batch `transaction_id` is stored (asked of every node)."""
    found = []
    for node in range(1, cluster.nodes + 1):
        answer = post(cluster, node, "/v1/atoms/get", {"pointers": [[transaction_id, 0]]})
        assert answer.status in (200, 404), answer
        found.append(answer.status == 200)
    return any(found)


# -- 6. authentication -------------------------------------------------------------


def test_client_routes_need_the_token_and_open_routes_do_not(cluster: LocalCluster) -> None:
    body = msgpack.packb({"space": SPACE})
    for node in range(1, cluster.nodes + 1):
        url = cluster.url(node)
        for route in CLIENT_ROUTES:
            for authorization in (
                None,
                "Bearer wrong-token",
                "Bearer ",
                f"Basic {cluster.token}",
                f"Bearer {cluster.token}x",
                cluster.token,
            ):
                answer = request(url + route, "POST", body, authorization)
                error = assert_json_error(answer, 401)
                assert error["kind"] == "authentication", (route, authorization, error)
        # The right token is let through (so the 401s above are about the token).
        assert post(cluster, node, "/v1/cluster", {}).status == 200
        assert post(cluster, node, "/v1/root/read", {"space": SPACE}).status in (200, 421)

        health = request(url + "/health")
        assert health.status == 200 and health.json()["ok"] is True
        ready = request(url + "/ready")
        assert ready.status == 200 and ready.json()["ready"] is True, ready
        status = request(url + "/status.json")
        assert status.status == 200 and status.json()["node_id"] == node
        page = request(url + "/status")
        assert page.status == 200 and page.content_type.startswith("text/html")
        assert f"node {node}</h1>".encode() in page.body


def test_cluster_file_storage_with_a_wrong_token_raises_authentication_error(
    cluster: LocalCluster,
) -> None:
    started = time.monotonic()
    with pytest.raises(AuthenticationError, match="token"):
        ClusterFileStorage(cluster.urls, token="wrong", timeout=20)
    # Refused at once, not retried until the timeout.
    assert time.monotonic() - started < 5


# -- 7. malformed bodies -----------------------------------------------------------


NOT_MSGPACK = [b"", b"\xc1", b"\x80\x80", b"\x92\x01", b"{json: 1}"]
NOT_A_MAP = [msgpack.packb([1, 2]), msgpack.packb("text"), msgpack.packb(None), b"\x81\x01\x02"]


def test_bodies_that_are_not_msgpack_maps_get_400_and_change_nothing(
    cluster: LocalCluster,
) -> None:
    before = state(cluster)
    for node in range(1, cluster.nodes + 1):
        for route in CLIENT_ROUTES[1:]:
            for data in NOT_MSGPACK + NOT_A_MAP:
                answer = post(cluster, node, route, data, raw=True)
                error = assert_json_error(answer, 400)
                assert error["kind"] == "malformed", (route, data, error)
    assert state(cluster) == before


def broken_puts() -> list[tuple[str, dict[str, Any]]]:
    """(what is broken, a put_batch body that differs from a good one in that)."""
    good = {"txid": os.urandom(16), "atoms": [b"atom"], "links": None}
    return [
        ("txid missing", {k: v for k, v in good.items() if k != "txid"}),
        ("txid of 15 bytes", {**good, "txid": os.urandom(15)}),
        ("txid of 17 bytes", {**good, "txid": os.urandom(17)}),
        ("txid a string", {**good, "txid": "a" * 16}),
        ("atoms missing", {k: v for k, v in good.items() if k != "atoms"}),
        ("atoms not a list", {**good, "atoms": b"atom"}),
        ("an atom not bytes", {**good, "atoms": [b"atom", 7]}),
        ("links not a list", {**good, "links": 5}),
        ("links of another length", {**good, "links": [[], []]}),
    ]


def test_malformed_put_batch_gets_400_and_stores_nothing(cluster: LocalCluster) -> None:
    before = state(cluster)
    for node in range(1, cluster.nodes + 1):
        for what, body in broken_puts():
            answer = post(cluster, node, "/v1/batch/put", body)
            error = assert_json_error(answer, 400)
            assert error["kind"] == "malformed", (what, error)
            if type(body.get("txid")) is bytes and len(body["txid"]) == 16:
                assert not stored(cluster, body["txid"]), what
    assert state(cluster) == before


def test_put_batch_with_bad_link_pointers_gets_400_and_stores_nothing(
    cluster: LocalCluster,
) -> None:
    for node in range(1, cluster.nodes + 1):
        for links in ([5], [["bad"]], [[[b"x" * 16, -1]]], [[[b"short", 0]]]):
            transaction_id = os.urandom(16)
            body = {"txid": transaction_id, "atoms": [b"atom"], "links": links}
            answer = post(cluster, node, "/v1/batch/put", body)
            assert assert_json_error(answer, 400)["kind"] == "malformed", (node, links)
            assert not stored(cluster, transaction_id), (node, links)


def test_malformed_atoms_get_gets_400(cluster: LocalCluster) -> None:
    root, _ = current_root(cluster)
    assert post(cluster, 1, "/v1/atoms/get", {"pointers": [root]}).status == 200
    transaction_id = root[0]
    for node in range(1, cluster.nodes + 1):
        for pointers in (
            None,
            root,
            [[transaction_id]],
            [[transaction_id, 0, 0]],
            [[transaction_id[:15], 0]],
            [[transaction_id + b"x", 0]],
            [[transaction_id, -1]],
            [[transaction_id, "0"]],
            [[transaction_id.hex(), 0]],
            [root, "not a pointer"],
        ):
            answer = post(cluster, node, "/v1/atoms/get", {"pointers": pointers})
            error = assert_json_error(answer, 400)
            assert error["kind"] == "malformed", (pointers, error)


def good_commit(root: list[Any], version: int) -> dict[str, Any]:
    """A commit that succeeds: a compare-and-set of the current root onto itself."""
    return {
        "space": SPACE,
        "txid": os.urandom(16),
        "base": version,
        "root": root,
        "mode": "cas",
        "reads": {},
    }


def broken_commits(root: list[Any], version: int) -> list[tuple[str, dict[str, Any]]]:
    """(what is broken, `good_commit` with that broken)."""

    def good() -> dict[str, Any]:
        return good_commit(root, version)

    def without(key: str) -> dict[str, Any]:
        return {k: v for k, v in good().items() if k != key}

    return [
        ("space missing", without("space")),
        ("space empty", {**good(), "space": ""}),
        ("space not a string", {**good(), "space": 5}),
        ("space too long", {**good(), "space": "s" * 1000}),
        ("txid missing", without("txid")),
        ("txid of 8 bytes", {**good(), "txid": os.urandom(8)}),
        ("txid of 32 bytes", {**good(), "txid": os.urandom(32)}),
        ("base missing", without("base")),
        ("base a string", {**good(), "base": str(version)}),
        ("base a float", {**good(), "base": float(version)}),
        ("mode unknown", {**good(), "mode": "merge"}),
        ("root missing", without("root")),
        ("root txid short", {**good(), "root": [root[0][:15], root[1]]}),
        ("root index negative", {**good(), "root": [root[0], -1]}),
        ("root index a string", {**good(), "root": [root[0], "0"]}),
        ("root of three parts", {**good(), "root": [root[0], root[1], 0]}),
        ("reads not a map", {**good(), "reads": [1]}),
        ("reads entry not a pair", {**good(), "reads": {"api": [[]]}}),
        ("reads root names not strings", {**good(), "reads": {"api": [[1], []]}}),
        ("reads object ids not bytes", {**good(), "reads": {"api": [[], ["x"]]}}),
        # The batch may travel with the commit: the same checks as /v1/batch/put.
        ("inline atoms not a list", {**good(), "atoms": b"atom"}),
        ("an inline atom not bytes", {**good(), "atoms": [b"atom", 1]}),
        ("inline links of another length", {**good(), "atoms": [b"a"], "links": []}),
        ("an inline link not a pointer", {**good(), "atoms": [b"a"], "links": [[["bad"]]]}),
        ("an inline link index negative", {**good(), "atoms": [b"a"], "links": [[[root[0], -1]]]}),
    ]


def test_malformed_commit_and_root_requests_get_400_and_change_nothing(
    cluster: LocalCluster,
) -> None:
    before = state(cluster)
    root, version = current_root(cluster)
    for node in range(1, cluster.nodes + 1):
        for what, body in broken_commits(root, version):
            error = assert_json_error(post(cluster, node, "/v1/commit", body), 400)
            assert error["kind"] == "malformed", (what, error)
            if "atoms" in body and type(body.get("txid")) is bytes:
                assert not stored(cluster, body["txid"]), what
        for body in ({}, {"space": 5}, {"space": ""}, {"space": None}):
            error = assert_json_error(post(cluster, node, "/v1/root/read", body), 400)
            assert error["kind"] == "malformed", (body, error)
        for body in ({}, {"txid": b"abc"}, {"txid": "0" * 16}, {"txid": os.urandom(17)}):
            error = assert_json_error(post(cluster, node, "/v1/commit/outcome", body), 400)
            assert error["kind"] == "malformed", (body, error)
    assert state(cluster) == before
    # A base that is no version (set_root takes any expected version) conflicts.
    error = assert_json_error(post_meta(cluster, "/v1/commit", good_commit(root, -1)), 409)
    assert error["kind"] == "root_conflict", error
    assert state(cluster) == before
    # Control: the request the broken ones were made from moves the root.
    moved = post_meta(cluster, "/v1/commit", good_commit(root, version)).msgpack()
    assert (moved["version"], moved["root"]) == (version + 1, root)
    assert state(cluster)[0] == version + 1


def test_commit_of_a_root_that_is_not_stored_gets_404_and_changes_nothing(
    cluster: LocalCluster,
) -> None:
    before = state(cluster)
    _, version = current_root(cluster)
    for mode in ("cas", "rebase"):
        body = {
            "space": SPACE,
            "txid": os.urandom(16),
            "base": version,
            "root": [os.urandom(16), 0],
            "mode": mode,
            "reads": {},
        }
        error = assert_json_error(post_meta(cluster, "/v1/commit", body), 404)
        assert error["kind"] == "atom_not_found", error
    assert state(cluster) == before


# -- 8. body size ------------------------------------------------------------------


def test_oversized_bodies_get_413_and_change_nothing(cluster: LocalCluster) -> None:
    before = state(cluster)
    root, version = current_root(cluster)
    big = b"x" * (MAX_BODY + 1024)
    for node in range(1, cluster.nodes + 1):
        transaction_id = os.urandom(16)
        put = {"txid": transaction_id, "atoms": [big], "links": None}
        error = assert_json_error(post(cluster, node, "/v1/batch/put", put), 413)
        assert str(MAX_BODY) in error["error"], error
        assert not stored(cluster, transaction_id)
        commit = {
            "space": SPACE,
            "txid": os.urandom(16),
            "base": version,
            "root": root,
            "mode": "cas",
            "reads": {"api": [["x" * MAX_BODY], []]},
        }
        assert_json_error(post(cluster, node, "/v1/commit", commit), 413)
        assert_json_error(post(cluster, node, "/v1/atoms/get", {"pointers": [root] * 5000}), 413)
        # Just under the limit is served.
        fits = {"txid": os.urandom(16), "atoms": [b"y" * (MAX_BODY - 200)], "links": None}
        assert len(msgpack.packb(fits)) < MAX_BODY
        assert post(cluster, node, "/v1/batch/put", fits).status == 200
    assert state(cluster) == before
    # A client commit larger than the limit is refused with a StorageError.
    with ObjectSpace(cluster.storage()) as space:
        db = space.open_database("api")
        with pytest.raises(StorageError, match="413"):
            db.run(lambda tr: tr.set_root_object("note", "z" * (2 * MAX_BODY)))
    assert state(cluster) == before


# -- 9. idempotency ----------------------------------------------------------------


class HeldCommitStorage(ClusterFileStorage):
    """Puts a commit's batch, then keeps its commit request instead of sending it."""

    held: RebaseRequest | None = None

    def commit_rebasing(self, request: RebaseRequest) -> RootRef:
        self.put_batch(request.batch)
        self.held = request
        raise RuntimeError("held back by the test")


def held_commit(cluster: LocalCluster, note: str, space_name: str = SPACE) -> RebaseRequest:
    """The commit request of a transaction that sets the root "note" (batch put, not rooted)."""
    storage = HeldCommitStorage(cluster.urls, token=cluster.token, space=space_name)
    with ObjectSpace(storage) as space:
        db = space.open_database("api")
        with pytest.raises(RuntimeError, match="held back"):
            db.run(lambda tr: tr.set_root_object("note", note))
    assert storage.held is not None
    return storage.held


def wire_batch(request_: RebaseRequest) -> dict[str, Any]:
    batch = request_.batch
    links = None
    if batch.links is not None:
        links = [[[p.transaction_id, p.index] for p in atom] for atom in batch.links]
    return {"txid": batch.transaction_id, "atoms": list(batch.atoms), "links": links}


def wire_commit(
    request_: RebaseRequest, inline: bool = False, space_name: str = SPACE
) -> dict[str, Any]:
    body = {
        "space": space_name,
        "txid": request_.batch.transaction_id,
        "base": request_.base_version,
        "root": [request_.new_root.transaction_id, request_.new_root.index],
        "mode": "rebase",
        "reads": {n: [sorted(r.roots), sorted(r.objects)] for n, r in request_.reads.items()},
    }
    if inline:
        batch = wire_batch(request_)
        body.update(atoms=batch["atoms"], links=batch["links"])
    return body


def test_repeated_requests_are_idempotent(cluster: LocalCluster) -> None:
    request_ = held_commit(cluster, "idempotent")
    batch = request_.batch
    put = wire_batch(request_)
    version_before, _, _, note_before = state(cluster)
    assert note_before != "idempotent"

    # The same put_batch again, through every node: accepted, stored once.
    for node in range(1, cluster.nodes + 1):
        assert post(cluster, node, "/v1/batch/put", put).status == 200
    stored_atoms = post(
        cluster, 1, "/v1/atoms/get", {"pointers": [[batch.transaction_id, 0]]}
    ).msgpack()["atoms"]
    assert stored_atoms == [batch.atoms[0]]

    # The same commit request twice: one new version, and the same answer.
    commit = wire_commit(request_)
    first = post_meta(cluster, "/v1/commit", commit).msgpack()
    second = post_meta(cluster, "/v1/commit", commit).msgpack()
    assert (first["version"], first["root"]) == (second["version"], second["root"])
    assert first["version"] == version_before + 1
    outcome = post_meta(cluster, "/v1/commit/outcome", {"txid": batch.transaction_id}).msgpack()
    assert outcome == {"committed": True, "version": first["version"], "root": first["root"]}
    version, pointer, _, note = state(cluster)
    assert (version, note) == (version_before + 1, "idempotent")
    assert [pointer.transaction_id, pointer.index] == first["root"]

    # The same txid with other atoms is refused, through every node; nothing changes.
    other = {**put, "atoms": [b"other" + a for a in batch.atoms]}
    for node in range(1, cluster.nodes + 1):
        answer = post(cluster, node, "/v1/batch/put", other)
        assert 400 <= answer.status < 500, answer
        assert "different atoms" in answer.json()["error"]
    assert post(cluster, 2, "/v1/atoms/get", {"pointers": [[batch.transaction_id, 0]]}).msgpack()[
        "atoms"
    ] == [batch.atoms[0]]
    assert state(cluster)[:2] == (version, pointer)
    # An unknown transaction id has no outcome.
    assert post_meta(cluster, "/v1/commit/outcome", {"txid": os.urandom(16)}).msgpack() == {
        "committed": False
    }


def test_commit_with_its_batch_inline_is_idempotent(cluster: LocalCluster) -> None:
    space_name = "inline"  # a space of its own: a wrong root here spoils no other test
    fill(cluster, space_name)
    request_ = held_commit(cluster, "inline", space_name)
    before = state(cluster, space_name)
    good = wire_commit(request_, inline=True, space_name=space_name)
    transaction_id = request_.batch.transaction_id
    count = len(request_.batch.atoms)
    # A compare-and-set to a root that is not stored, nor in the batch, is refused.
    for root in ([os.urandom(16), 0], [transaction_id, count], [transaction_id, count + 7]):
        body = {**good, "mode": "cas", "root": root, "txid": os.urandom(16)}
        answer = post_meta(cluster, "/v1/commit", body)
        assert 400 <= answer.status < 500, (root, answer)
        assert_json_error(answer, answer.status)
        assert state(cluster, space_name) == before, root

    first = post_meta(cluster, "/v1/commit", good).msgpack()
    second = post_meta(cluster, "/v1/commit", good).msgpack()
    assert (first["version"], first["root"]) == (second["version"], second["root"])
    assert first["version"] == before[0] + 1
    version, pointer, accounts, note = state(cluster, space_name)
    assert (version, accounts, note) == (before[0] + 1, before[2], "inline")
    assert [pointer.transaction_id, pointer.index] == first["root"]


def test_rebasing_commit_with_its_batch_inline_refuses_a_root_not_stored(
    cluster: LocalCluster,
) -> None:
    space_name = "inline-dangling"
    fill(cluster, space_name)
    request_ = held_commit(cluster, "dangling", space_name)
    before = state(cluster, space_name)
    good = wire_commit(request_, inline=True, space_name=space_name)
    body = {**good, "root": [os.urandom(16), 0], "txid": os.urandom(16)}
    answer = post_meta(cluster, "/v1/commit", body)
    assert 400 <= answer.status < 500, answer
    assert state(cluster, space_name) == before


def test_module_cluster_is_still_whole(cluster: LocalCluster) -> None:
    """None of the requests above took a node down."""
    for node, process in cluster.processes.items():
        assert process.poll() is None, cluster.log(node)
        assert request(cluster.url(node) + "/ready").status == 200
