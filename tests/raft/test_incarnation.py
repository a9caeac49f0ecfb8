"""Incarnations (`cluster/raft/incarnation.py`): the files, then real nodes.

The node tests run `RaftNode`s in this process on 127.0.0.1 with the
harness of `test_node.py`, and wipe a node's data directory between two of
its runs, as an operator replacing a disk would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

import pytest
from test_node import GROUP, run, running

import cluster.raft.incarnation as incarnation_module
from cluster.raft.incarnation import (
    INCARNATION_FILE,
    PEER_INCARNATIONS_FILE,
    IncarnationFileError,
    IncarnationRefused,
    PeerIncarnations,
    load_incarnation,
)
from cluster.raft.node import NodeStopped

# -- the files ------------------------------------------------------------------------------


def test_an_incarnation_is_created_once_and_stable_across_reopens(tmp_path: Path) -> None:
    first = load_incarnation(tmp_path / "data")
    assert len(first) == 16
    text = (tmp_path / "data" / INCARNATION_FILE).read_text()
    assert text == f"protobase-raft-incarnation 1 {first.hex()}\n"
    assert load_incarnation(tmp_path / "data") == first
    assert (tmp_path / "data" / INCARNATION_FILE).read_text() == text
    assert load_incarnation(tmp_path / "other") != first  # random per directory
    assert sorted(os.listdir(tmp_path / "data")) == [INCARNATION_FILE]


def test_a_crash_mid_write_leaves_the_old_incarnation_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(source: object, target: object) -> None:
        raise OSError("crash before the rename")

    with monkeypatch.context() as patch:
        patch.setattr(incarnation_module.os, "replace", crash)
        with pytest.raises(OSError, match="crash"):
            load_incarnation(tmp_path)
    assert (tmp_path / f"{INCARNATION_FILE}.tmp").exists()
    assert not (tmp_path / INCARNATION_FILE).exists()
    # Never published, so never sent: a new one is made, the leftover replaced.
    created = load_incarnation(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [INCARNATION_FILE]
    # A leftover beside a complete file is ignored.
    (tmp_path / f"{INCARNATION_FILE}.tmp").write_text("protobase-raft-incarnation 1 " + "ab" * 16)
    assert load_incarnation(tmp_path) == created


def test_a_directory_of_an_older_version_gets_an_incarnation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "group-1").mkdir()
    caplog.set_level(logging.INFO, logger="protobase.raft.incarnation")
    created = load_incarnation(tmp_path)
    assert "data from a version without incarnations" in caplog.text
    assert created.hex() in caplog.text
    assert load_incarnation(tmp_path) == created


@pytest.mark.parametrize(
    "content", [b"", b"protobase-raft-incarnation 1 abc\n", b"\xff" * 60], ids=repr
)
def test_a_damaged_incarnation_file_is_not_replaced(tmp_path: Path, content: bytes) -> None:
    (tmp_path / INCARNATION_FILE).write_bytes(content)
    with pytest.raises(IncarnationFileError, match=r"is damaged.*restore it"):
        load_incarnation(tmp_path)
    assert (tmp_path / INCARNATION_FILE).read_bytes() == content


def test_peer_incarnations_are_durable_and_never_silently_overwritten(tmp_path: Path) -> None:
    book = PeerIncarnations(tmp_path)
    assert book.get(2) is None and book.known() == {}
    book.learn(2, b"2" * 16)
    book.learn(2, b"2" * 16)  # the same again: nothing to do
    book.learn(3, b"3" * 16)
    with pytest.raises(ValueError, match="already has incarnation"):
        book.learn(2, b"x" * 16)
    with pytest.raises(ValueError, match="16 bytes"):
        book.learn(4, b"short")
    assert PeerIncarnations(tmp_path).known() == {2: b"2" * 16, 3: b"3" * 16}
    book.forget(2)
    book.forget(7)  # unknown: nothing to do
    assert PeerIncarnations(tmp_path).known() == {3: b"3" * 16}
    assert sorted(os.listdir(tmp_path)) == [PEER_INCARNATIONS_FILE]


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b'{"format": 2, "peers": {}}',
        b'{"format": 1, "peers": {"2": "abcd"}}',
        b'{"format": 1, "peers": {"two": "' + b"00" * 16 + b'"}}',
        b'{"format": 1}',
        b"[]",
    ],
)
def test_a_damaged_peer_incarnations_file_raises(tmp_path: Path, content: bytes) -> None:
    (tmp_path / PEER_INCARNATIONS_FILE).write_bytes(content)
    with pytest.raises(IncarnationFileError, match="is damaged"):
        PeerIncarnations(tmp_path)


# -- real nodes -----------------------------------------------------------------------------


@pytest.mark.parametrize("victim", [3, 1], ids=["acceptor-wiped", "dialer-wiped"])
def test_a_wiped_member_is_refused_and_stops_and_the_others_go_on(
    tmp_path: Path, victim: int, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as cluster:
            for k in range(3):
                await cluster.propose(b"before %d" % k)
            await cluster.wait_converged()
            first_life = cluster.nodes[victim].incarnation
            await cluster.stop(victim)
            shutil.rmtree(tmp_path / f"node-{victim}")
            wiped = await cluster.start(victim)
            assert wiped.incarnation != first_life
            failure = await asyncio.wait_for(wiped.wait_failed(), 10)
            assert isinstance(failure, IncarnationRefused), failure
            assert (failure.node_id, failure.incarnation) == (victim, wiped.incarnation)
            assert failure.known == first_life and failure.refused_by != victim
            message = str(failure)
            assert (
                f"node {victim}'s data directory was wiped or replaced (incarnation "
                f"{wiped.incarnation.hex()}, the cluster knows {first_life.hex()})"
            ) in message
            assert (
                f"declare member {victim} dead (`protobase cluster replace-node URL {victim}`), "
                "or restore its data directory"
            ) in message
            with pytest.raises(NodeStopped, match="refused its incarnation"):
                await wiped.propose(GROUP, b"from the wiped node")
            # It heard from nobody: no entry applied, no leader known.
            assert cluster.ledger(victim).applied == []
            assert wiped.groups[GROUP].raft.leader == 0
            others = [n for n in (1, 2, 3) if n != victim]
            for k in range(3):
                await cluster.propose(b"after %d" % k, among=others)
            values = await cluster.wait_converged(among=others)
            assert values[-3:] == [b"after 0", b"after 1", b"after 2"]
            assert all(cluster.nodes[n].failure is None for n in others)
            refusals = sum(cluster.nodes[n].transport.stats.peers_refused for n in others)
            assert refusals >= 1
            await cluster.stop(victim)

    caplog.set_level(logging.WARNING)
    run(scenario)
    assert f"refused node {victim}: it presents incarnation" in caplog.text


def test_a_member_restarted_on_its_own_directory_rejoins(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as cluster:
            await cluster.propose(b"one")
            await cluster.wait_converged()
            lives = {n: node.incarnation for n, node in cluster.nodes.items()}
            await cluster.stop(3)
            await cluster.propose(b"two", among=(1, 2))
            again = await cluster.start(3)
            assert again.incarnation == lives[3]
            await cluster.propose(b"three")
            assert await cluster.wait_converged() == [b"one", b"two", b"three"]
            for node in cluster.nodes.values():
                assert node.peer_incarnations.known() == {
                    n: life for n, life in lives.items() if n != node.id
                }
                assert node.transport.stats.peers_refused == 0
                assert node.failure is None

    run(scenario)
