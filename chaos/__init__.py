"""A Jepsen-style harness for the ProtoBase cluster: real processes, faults,
workloads through the public API, and checkers that can fail.

- `history`: the record of a run (invocations and completions, faults).
- `checkers/`: pure functions from a history to a verdict (linearizable
  registers, bank, set, list-append anomalies).

`chaos/` drives the system only through its public API, its CLI and its
processes, never through their internals.
"""
