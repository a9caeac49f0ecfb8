"""The compiled hot path against the pure-Python form, in instructions per operation.

Wall-clock figures on a shared 2-core VM move by 30 % within minutes; the
number of instructions a workload executes does not. This script runs each
workload under valgrind's callgrind at two sizes, in both forms
(`PROTOBASE_PURE_PYTHON=1` and not), with a fixed hash seed, and divides the
difference in instructions by the difference in operations: start-up, imports
and set-up cancel out. It needs `valgrind` (Debian package) and a built hot
path (`make native`).

    python bench/hot_path.py                 # all workloads, about 10 minutes on 2 cores
    python bench/hot_path.py --only commit   # one of: commit, lookup, index

Workloads (one ProtoBase process each, MemoryStorage, so no disk):

- commit: one transaction that sets one key of a 1,000-key Dictionary and
  commits (bench/embedded.py's workload 1 without the fsync);
- lookup: `tr.query(people).where(F.ssn == v).to_list()` on a unique index
  over 100,000 DBObjects, on values already read once (warm nodes);
- index: 4 indexes added to a Dictionary of DBObjects and committed, per row
  (bench/queries.py's row 7), with the cost of creating the rows subtracted.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import textwrap

SETUP = """
import random, sys
from protobase import DBObject, Dictionary, F, MemoryStorage, ObjectSpace, register_class

@register_class("bench.HotPathPerson")
class Person(DBObject):
    pass

space = ObjectSpace(MemoryStorage())
db = space.new_database("hot")
n = int(sys.argv[1])
"""

WORKLOADS = {
    "commit": """
with db.transaction() as tr:
    tr.set_root_object("d", Dictionary((k, 0) for k in range(1000)))
for j in range(n):
    tr = db.new_transaction()
    tr.set_root_object("d", tr.get_root_object("d").set_at(j % 1000, j))
    tr.commit()
""",
    "lookup": """
rows = 100_000
with db.transaction() as tr:
    people = Dictionary(
        (i, Person(id=i, ssn=10**8 + (i * 7919) % rows, age=i % 100)) for i in range(rows)
    )
    tr.set_root_object("p", people.add_index("ssn", unique=True))
tr = db.new_read_only_transaction()
people = tr.get_root_object("p")
rng = random.Random(1)
values = [10**8 + rng.randrange(rows) for _ in range(1000)]
for v in values:
    tr.query(people).where(F.ssn == v).to_list()
for i in range(n):
    tr.query(people).where(F.ssn == values[i % 1000]).to_list()
""",
    "index": """
rng = random.Random(1)
cities = [f"city{i}" for i in range(100)]
with db.transaction() as tr:
    tr.set_root_object("plain", Dictionary(
        (i, Person(id=i, ssn=10**8 + (i * 7919) % 1000003, age=rng.randrange(100),
                   city=cities[rng.randrange(100)], score=rng.random() * 1000))
        for i in range(n)
    ))
if sys.argv[2] == "index":
    with db.transaction() as tr:
        indexed = tr.get_root_object("plain")
        for name in ["ssn", "age", "city", "score"]:
            indexed = indexed.add_index(name, unique=name == "ssn")
        tr.set_root_object("people", indexed)
""",
}

CALLGRIND = ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null")
SIZES = {"commit": (500, 2500), "lookup": (2000, 12000), "index": (10000, 30000)}


def instructions(workload: str, n: int, pure: bool, extra: str = "index") -> int:
    """Instructions callgrind counts for one run of `workload` at size `n`."""
    env = dict(os.environ, PYTHONHASHSEED="0", PROTOBASE_PURE_PYTHON="1" if pure else "0")
    code = textwrap.dedent(SETUP) + textwrap.dedent(WORKLOADS[workload])
    result = subprocess.run(
        [*CALLGRIND, sys.executable, "-c", code, str(n), extra],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected\s*:\s*([\d,]+)", result.stderr) or re.search(
        r"I\s+refs:\s*([\d,]+)", result.stderr
    )
    if found is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{result.stderr}")
    return int(found.group(1).replace(",", ""))


def per_operation(workload: str, pure: bool) -> float:
    small, large = SIZES[workload]
    delta = instructions(workload, large, pure) - instructions(workload, small, pure)
    if workload == "index":  # subtract creating and storing the rows
        delta -= instructions(workload, large, pure, "rows") - instructions(
            workload, small, pure, "rows"
        )
    return delta / (large - small)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(WORKLOADS), help="run one workload")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is needed (Debian: apt-get install valgrind)")
    check = subprocess.run(
        [sys.executable, "-c", "import protobase; print(protobase.HOT_PATH)"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PROTOBASE_PURE_PYTHON="0"),
    )
    if check.stdout.strip() != "compiled":
        sys.exit(
            f"the hot path is not built here ({check.stdout.strip() or check.stderr}); "
            "run `make native`"
        )
    print("| workload | compiled | pure Python | compiled / pure |")
    print("|---|--:|--:|--:|")
    for workload in [args.only] if args.only else list(WORKLOADS):
        compiled = per_operation(workload, pure=False)
        pure = per_operation(workload, pure=True)
        print(f"| {workload} | {compiled:,.0f} | {pure:,.0f} | {compiled / pure:.2f} |", flush=True)
    print("Instructions per operation (callgrind, PYTHONHASHSEED=0, difference of two sizes).")


if __name__ == "__main__":
    main()
