"""The process the crash tests kill: it commits (and optionally packs) until it is killed.

Run as ``python crash_child.py PATH SEED [SEGMENT_BYTES] [--pack]``. After every commit has
returned it prints one line and flushes, so a line the parent read is a commit
that was acknowledged::

    commit COUNTER VERSION TRANSACTION_ID_HEX
    bulk-start COUNTER       (before a commit that writes a Dictionary of many keys)
    pack-start / pack-done   (around space.pack(), with --pack)

Every commit writes related values whose consistency the parent checks (see
`apply_commit`): the counter under the roots "a", "b" and "c", one more entry
in the "log" Dictionary, and for a bulk commit a new "bulk" Dictionary whose
values all carry the counter, with "bulk_at" naming it.

The test modules import this file for `open_storage`, `apply_commit` and the
constants, so that the layout is defined once.
"""

from __future__ import annotations

import datetime as dt
import random
import sys

from protobase import Dictionary, ObjectSpace, StandaloneFileStorage, Transaction

DATABASE = "crash"
SEGMENT_BYTES = 64 * 1024
CHECKPOINT_BYTES = 48 * 1024
BULK_KEYS = 300
PAD = "p" * 40


def open_storage(path: str, segment_bytes: int = SEGMENT_BYTES) -> StandaloneFileStorage:
    return StandaloneFileStorage(
        path, segment_bytes=segment_bytes, checkpoint_bytes=CHECKPOINT_BYTES
    )


def bulk_value(counter: int, key: int) -> str:
    return f"{counter}:{key}:{PAD}"


def apply_commit(tr: Transaction, counter: int, bulk: bool) -> None:
    """Write commit number `counter` into `tr` (the caller commits)."""
    for name in ("a", "b", "c"):
        tr.set_root_object(name, counter)
    log = tr.get_root_object("log")
    if log is None:
        log = Dictionary()
    tr.set_root_object("log", log.set_at(counter, "bulk" if bulk else "small"))
    if bulk:
        tr.set_root_object(
            "bulk", Dictionary((key, bulk_value(counter, key)) for key in range(BULK_KEYS))
        )
        tr.set_root_object("bulk_at", counter)


def current_counter(space: ObjectSpace) -> int:
    if DATABASE not in space.list_databases():
        space.new_database(DATABASE)
        return 0
    tr = space.open_database(DATABASE).new_read_only_transaction()
    try:
        return tr.get_root_object("a") or 0
    finally:
        tr.abort()


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    pack = "--pack" in argv
    arguments = [a for a in argv if a != "--pack"]
    path, seed = arguments[0], int(arguments[1])
    segment_bytes = int(arguments[2]) if len(arguments) > 2 else SEGMENT_BYTES
    rng = random.Random(seed)
    with ObjectSpace(open_storage(path, segment_bytes)) as space:
        counter = current_counter(space)
        db = space.open_database(DATABASE)
        while True:
            if pack:
                say("pack-start")
                keep = dt.timedelta(hours=1) if rng.random() < 0.5 else dt.timedelta(0)
                space.pack(keep)
                say("pack-done")
            counter += 1
            bulk = rng.random() < 0.15
            if bulk:
                say(f"bulk-start {counter}")
            with db.transaction() as tr:
                apply_commit(tr, counter, bulk)
            ref = tr.committed_root
            assert ref is not None and ref.pointer is not None
            say(f"commit {counter} {ref.version} {ref.pointer.transaction_id.hex()}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
