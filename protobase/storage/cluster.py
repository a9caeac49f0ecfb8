"""ClusterFileStorage: the storage contract over a ProtoBase cluster's HTTP API.

``ClusterFileStorage(["http://127.0.0.1:7101"], token=...)`` learns every
member from any one URL (``/v1/cluster``), then sends each request to a
node (atoms and batches: any node, which routes by partition; roots and
commits: the meta group's leader, found by following 421 answers).

Invariants:

- **Every request is idempotent**, so repeating one is always safe: a batch
  is put by transaction id, a commit is recorded under its transaction id,
  reads change nothing. The client repeats a request through node deaths
  and leader changes until `timeout` runs out (HTTP libraries may resend a
  request on a dropped connection, too).
- **Unknown outcomes are resolved before they are reported**: a commit whose
  answer was lost is sent again under the same transaction id, which
  answers the first outcome. Only when `timeout` runs out does the caller
  see `ClusterUnavailableError`, whose message says whether the commit
  certainly did not happen or may have.
- **Session monotonic reads**: `read_root` never returns a version older
  than one this storage has returned or committed.
- Wrong token: `AuthenticationError` at once, never retried.
- **Atoms are cached** (they never change): a root read brings the atoms
  of the root's batch along when the node has them, so a transaction that
  starts after another client's commit rarely waits for a fetch. Atoms are
  verified by their checksum when the object layer reads them.

The HTTP client (aiohttp) runs on an event loop in a thread of its own, so
the storage can be called from any number of application threads.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..atoms import AtomPointer, new_transaction_id
from ..cache import AtomCache
from ..errors import (
    AtomNotFoundError,
    AuthenticationError,
    ClusterUnavailableError,
    ConflictError,
    RootConflict,
    StorageError,
    ValidationError,
)
from .interfaces import CommitBatch, CommitInfo, RebaseRequest, RootRef
from .partitioning import partition_for

DEFAULT_SPACE = "default"
DEFAULT_CACHE_BYTES = 32 << 20
GET_ATOMS_CHUNK = 2048
"""Pointers per atoms request."""
ATTEMPT_SECONDS = 2.0
"""Longest wait for one node's answer to a small request before it is tried
elsewhere (a paused node accepts connections and never answers); a request
gets one more second per MiB of body."""
SUSPECT_SECONDS = 5.0
"""How long a node that did not answer is tried only when no other is left;
doubled with every further failure in a row, up to `SUSPECT_MAX_SECONDS`."""
SUSPECT_MAX_SECONDS = 60.0
INLINE_BATCH_BYTES = 1 << 20
PART_BYTES = 8 << 20
PREFETCH_BYTES = 4 << 20
"""Bytes of whole batches an atom read may bring along (the rest of a commit's
atoms, which are mostly read together)."""
"""Atom bytes per put request of a large batch (well under a node's body limit)."""
"""A commit whose batch is at most this large sends it with the commit request."""


class ClusterFileStorage:
    """A client of a ProtoBase cluster; see the module docstring.

    Args:
        urls: client URLs of one or more members (``http://host:port``).
        token: the cluster's client bearer token.
        space: which object space of the cluster to use.
        timeout: seconds a request keeps being retried before
            `ClusterUnavailableError`.
        cache_bytes: bytes of atoms kept (atoms never change, so the cache
            is never invalidated; root reads bring the root's batch along).
    """

    def __init__(
        self,
        urls: Sequence[str],
        token: str,
        *,
        space: str = DEFAULT_SPACE,
        timeout: float = 30.0,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        if isinstance(urls, str):
            urls = [urls]
        if not urls or not all(
            isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls
        ):
            raise ValidationError("ClusterFileStorage needs a list of http(s):// node URLs")
        if not isinstance(token, str) or not token:
            raise ValidationError("ClusterFileStorage needs the cluster's client token")
        try:
            import aiohttp
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise StorageError(
                "ClusterFileStorage needs aiohttp: pip install 'protobase[cluster]'"
            ) from exc
        self._aiohttp = aiohttp
        self._urls = [u.rstrip("/") for u in urls]
        self._token = token
        self._space = space
        self._timeout = timeout
        self._meta_url: str | None = None
        self._rotation = itertools.count(random.randrange(1 << 16))
        self._atoms = AtomCache(cache_bytes)
        self._suspect: dict[str, float] = {}
        """URL -> until when it is tried last (it did not answer)."""
        self._failures: dict[str, int] = {}
        """URL -> failed attempts in a row: its suspicion doubles with each."""
        self._seen_lock = threading.Lock()
        self._seen = RootRef(None, 0)
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="protobase-cluster-client", daemon=True
        )
        self._thread.start()
        self._session: Any = self._run(self._open_session())
        self._epoch = 0
        """The cluster map epoch this client knows; every request names it."""
        try:
            info = self._request("/v1/cluster", {})
        except BaseException:
            self.close()
            raise
        self._learn_map(info)
        self._meta_url = info.get("meta_leader")
        self._led: tuple[int, ...] = ()
        """Partitions the meta leader led at its last answer: a batch there is
        put and rooted by one node, with no hop between nodes."""

    def _learn_map(self, cluster_map: dict[str, Any]) -> None:
        """Take the members, partition count and epoch of a cluster map."""
        for member in cluster_map["members"]:
            url = member["client"].rstrip("/")
            if url not in self._urls:
                self._urls.append(url)
        self._partitions: int = cluster_map["partitions"]
        self._epoch = max(self._epoch, cluster_map.get("epoch", 0))

    @property
    def space(self) -> str:
        """The name of the cluster's object space this storage reads and writes."""
        return self._space

    async def _open_session(self) -> Any:
        return self._aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=self._aiohttp.ClientTimeout(total=max(2.0, min(10.0, self._timeout))),
        )

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    # -- requests ------------------------------------------------------------------

    def _request(self, route: str, body: dict[str, Any], *, meta: bool = False) -> Any:
        if self._closed:
            raise StorageError("this ClusterFileStorage is closed")
        return self._run(self._request_async(route, body, meta))

    async def _request_async(self, route: str, body: dict[str, Any], meta: bool) -> Any:
        import msgpack

        data = msgpack.packb({**body, "epoch": self._epoch})
        attempt_seconds = ATTEMPT_SECONDS + len(data) / (1 << 20)
        deadline = time.monotonic() + self._timeout
        problems: list[str] = []
        maybe_applied = False
        for attempt in itertools.count():
            if attempt and time.monotonic() > deadline:
                # Redirects count against the timeout too: two nodes that keep
                # naming each other must not hold a request forever.
                raise _unavailable(route, problems, maybe_applied, self._timeout)
            url = self._pick(meta)
            sent = False
            remaining = deadline - time.monotonic()
            try:
                async with self._session.post(
                    url + route,
                    data=data,
                    headers={"Content-Type": "application/msgpack"},
                    timeout=self._aiohttp.ClientTimeout(
                        total=max(0.1, min(remaining, attempt_seconds))
                    ),
                ) as response:
                    sent = True
                    payload = await response.read()
                    status = response.status
            except (self._aiohttp.ClientError, TimeoutError, OSError) as exc:
                problems.append(f"{url}: {type(exc).__name__}: {exc}")
                maybe_applied = (
                    maybe_applied or sent or not isinstance(exc, self._aiohttp.ClientConnectorError)
                )
                # A node that does not answer (dead, paused, cut off) is tried
                # last for a while, so one bad node costs one attempt, not many.
                failures = self._failures.get(url, 0)
                self._failures[url] = failures + 1
                self._suspect[url] = time.monotonic() + min(
                    SUSPECT_SECONDS * 2**failures, SUSPECT_MAX_SECONDS
                )
                if meta:
                    self._meta_url = None
            else:
                self._failures.pop(url, None)
                if status == 200:
                    return msgpack.unpackb(payload)
                error = _error_body(payload)
                message = error.get("error", f"HTTP {status}")
                if status == 401:
                    raise AuthenticationError(
                        f"{url} refused the token ({message}); use the cluster's client.token"
                    )
                if status == 421 and error.get("kind") == "stale_map":
                    self._learn_map(error["map"])
                    data = msgpack.packb({**body, "epoch": self._epoch})
                    continue
                if status == 421 and error.get("leader_url"):
                    self._meta_url = error["leader_url"].rstrip("/")
                    problems.append(f"{url}: redirected to {self._meta_url}")
                    continue
                if status == 404:
                    raise AtomNotFoundError(message)
                if status == 409:
                    if error.get("kind") == "root_conflict":
                        raise RootConflict(message)
                    raise ConflictError(message)
                if status != 503:
                    raise StorageError(f"{url}{route} refused the request ({status}): {message}")
                maybe_applied = maybe_applied or error.get("kind") == "outcome_unknown"
                problems.append(f"{url}: {message}")
                if meta:
                    self._meta_url = None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _unavailable(route, problems, maybe_applied, self._timeout)
            await asyncio.sleep(min(remaining, 0.02 * 2 ** min(attempt, 5) * random.random()))
        raise AssertionError("unreachable")

    def _pick(self, meta: bool) -> str:
        """The node for the next attempt: the meta leader when known (for meta
        requests), else the next in rotation; nodes that just failed come last."""
        now = time.monotonic()
        if meta and self._meta_url is not None and self._suspect.get(self._meta_url, 0) <= now:
            return self._meta_url
        start = next(self._rotation)
        for offset in range(len(self._urls)):
            url = self._urls[(start + offset) % len(self._urls)]
            if self._suspect.get(url, 0) <= now:
                return url
        return self._urls[start % len(self._urls)]

    # -- the storage contract ------------------------------------------------------

    def read_root(self) -> RootRef:
        with self._seen_lock:
            floor = self._seen.version
        answer = self._request("/v1/root/read", {"space": self._space}, meta=True)
        ref = _root_ref(answer["root"], answer["version"])
        atoms = answer.get("atoms")
        if ref.pointer is not None and type(atoms) is list:
            # The root's batch: what the next transaction reads first.
            self._atoms.put_batch(ref.pointer.transaction_id, atoms)
        with self._seen_lock:
            # Only what was seen before this read started bounds it: a commit
            # answered meanwhile may be newer than the root this read found.
            if ref.version < floor:
                raise StorageError(
                    f"the cluster answered root version {ref.version} after this client saw "
                    f"{floor}; refusing a stale read"
                )
            if ref.version > self._seen.version:
                self._seen = ref
        return ref

    def get_atoms(self, pointers: Sequence[AtomPointer]) -> list[bytes]:
        if self._closed:
            raise StorageError("this ClusterFileStorage is closed")
        found: list[bytes | None] = [self._atoms.get(p) for p in pointers]
        missing = [i for i, atom in enumerate(found) if atom is None]
        for start in range(0, len(missing), GET_ATOMS_CHUNK):
            part = missing[start : start + GET_ATOMS_CHUNK]
            answer = self._request(
                "/v1/atoms/get",
                {
                    "pointers": [[pointers[i].transaction_id, pointers[i].index] for i in part],
                    "prefetch": PREFETCH_BYTES,
                },
            )
            for i, atom in zip(part, answer["atoms"], strict=True):
                found[i] = atom
                self._atoms.put(pointers[i], atom)
            for transaction_id, atoms in answer.get("batches", {}).items():
                self._atoms.put_batch(transaction_id, atoms)
        return found  # type: ignore[return-value]

    def put_batch(self, batch: CommitBatch) -> None:
        """One request, or parts of at most `PART_BYTES` for a large batch."""
        atoms, links = list(batch.atoms), _wire_links(batch)
        start = 0
        while True:
            size, end = 0, start
            while end < len(atoms) and (end == start or size + len(atoms[end]) <= PART_BYTES):
                size += len(atoms[end])
                end += 1
            self._request(
                "/v1/batch/put",
                {
                    "txid": batch.transaction_id,
                    "atoms": atoms[start:end],
                    "links": None if links is None else links[start:end],
                    "first": start,
                    "total": len(atoms),
                },
            )
            start = end
            if start >= len(atoms):
                return

    def set_root(
        self, expected_root_version: int, new_root: AtomPointer, transaction_id: bytes
    ) -> RootRef:
        return self._commit(expected_root_version, new_root, transaction_id, "cas", {})

    def history(self) -> list[CommitInfo]:
        """The recent commits the cluster keeps (`HistoryStorage`), oldest first.

        The meta group keeps the last few thousand roots of each space;
        older versions are not readable with ``at_version`` (their atoms
        are, until pack).
        """
        answer = self._request("/v1/history", {"space": self._space}, meta=True)
        return [
            CommitInfo(version, when, size, change_id, AtomPointer(root[0], root[1]))
            for version, when, size, change_id, root in answer["commits"]
        ]

    def root_at(self, version: int) -> RootRef:
        """The root as of commit `version` (`HistoryStorage`)."""
        for commit in self.history():
            if commit.version == version:
                return RootRef(commit.root, version)
        raise StorageError(
            f"version {version} is not among the recent roots the cluster keeps for space "
            f"{self._space!r}"
        )

    def committed_root(self, transaction_id: bytes) -> RootRef | None:
        answer = self._request("/v1/commit/outcome", {"txid": transaction_id}, meta=True)
        if not answer["committed"]:
            return None
        return _root_ref(answer["root"], answer["version"])

    def commit(
        self, batch: CommitBatch, expected_root_version: int, new_root: AtomPointer
    ) -> RootRef:
        """One request when the batch is small: the meta leader checks the root's
        version and the new root before it puts the batch, then sets the root."""
        if sum(len(atom) for atom in batch.atoms) > INLINE_BATCH_BYTES:
            self.put_batch(batch)
            return self.set_root(expected_root_version, new_root, batch.transaction_id)
        extra = {"atoms": list(batch.atoms), "links": _wire_links(batch)}
        return self._commit(expected_root_version, new_root, batch.transaction_id, "cas", {}, extra)

    def new_transaction_id(self) -> bytes:
        """A random id, preferably of a partition the meta leader leads (`RebasingStorage`)."""
        led = self._led
        for _ in range(64 if led else 1):
            transaction_id = new_transaction_id()
            if not led or partition_for(transaction_id, self._partitions) in led:
                break
        return transaction_id

    def commit_rebasing(self, request: RebaseRequest) -> RootRef:
        """The meta leader puts the batch (sent along when small), then sets the root
        or rebases it (`RebasingStorage`)."""
        batch = request.batch
        extra: dict[str, Any] = {}
        if sum(len(atom) for atom in batch.atoms) <= INLINE_BATCH_BYTES:
            extra = {"atoms": list(batch.atoms), "links": _wire_links(batch)}
        else:
            self.put_batch(batch)
        reads = {name: [sorted(r.roots), sorted(r.objects)] for name, r in request.reads.items()}
        return self._commit(
            request.base_version, request.new_root, batch.transaction_id, "rebase", reads, extra
        )

    def _commit(
        self,
        base: int,
        new_root: AtomPointer,
        transaction_id: bytes,
        mode: str,
        reads: dict[str, Any],
        extra: dict[str, Any] | None = None,
    ) -> RootRef:
        answer = self._request(
            "/v1/commit",
            {
                "space": self._space,
                "txid": transaction_id,
                "base": base,
                "root": [new_root.transaction_id, new_root.index],
                "mode": mode,
                "reads": reads,
                **(extra or {}),
            },
            meta=True,
        )
        self._led = tuple(answer.get("led", ()))
        ref = _root_ref(answer["root"], answer["version"])
        with self._seen_lock:
            if ref.version > self._seen.version:
                self._seen = ref
        return ref

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        session = getattr(self, "_session", None)
        if session is not None:
            self._run(session.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> ClusterFileStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wire_links(batch: CommitBatch) -> list[list[list[Any]]] | None:
    if batch.links is None:
        return None
    return [[[p.transaction_id, p.index] for p in atom] for atom in batch.links]


def _root_ref(pointer: Any, version: int) -> RootRef:
    return RootRef(None if pointer is None else AtomPointer(pointer[0], pointer[1]), version)


def _error_body(payload: bytes) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except ValueError:
        return {"error": payload[:200].decode(errors="replace")}
    return body if isinstance(body, dict) else {"error": str(body)}


def _unavailable(
    route: str, problems: list[str], maybe_applied: bool, timeout: float
) -> ClusterUnavailableError:
    recent = "; ".join(problems[-3:]) or "no node answered"
    if route == "/v1/commit":
        fate = (
            "the commit's outcome is UNKNOWN: it may have been applied (read the data, or "
            "ask again later with committed_root(transaction_id))"
            if maybe_applied
            else "the commit certainly did not take effect"
        )
    elif route == "/v1/batch/put":
        fate = "nothing was committed (the batch may be stored, unreferenced)"
    else:
        fate = "this was a read; nothing changed"
    return ClusterUnavailableError(
        f"no node of the cluster answered {route} within {timeout} s; {fate}. Last errors: {recent}"
    )
