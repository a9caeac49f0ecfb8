"""The ProtoBase server: the pieces a `protobase node` process is made of.

`cluster/` depends on `protobase/storage/interfaces.py` and `protobase/codec.py`
only; nothing in `protobase/` imports it.
"""
