"""Raft for ProtoBase: a sans-IO core, a durable segmented log, a transport
and an asyncio driver that runs many groups on one loop.

The library replicates opaque byte entries; it knows nothing about atoms.

- `types`: entries, messages, hard state, configurations, `Ready`.
- `core`: the sans-IO state machine of one group (`RaftGroup`).
- `memlog`: the in-memory log, the reference implementation of `GroupLog`.
- `log`: the durable segmented log (`LogStore`, `FileGroupLog`).
- `transport`: authenticated TCP between nodes, msgpack frames.
- `node`: the asyncio driver (`RaftNode`).
"""
