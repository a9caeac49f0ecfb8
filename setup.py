"""Builds ProtoBase's compiled hot path (protobase/native.py, docs/native.md).

The package metadata is in pyproject.toml; this file only adds the C extensions
mypyc makes of the modules in `protobase.native.COMPILED_MODULES`. With
PROTOBASE_PURE_PYTHON=1 in the environment nothing is compiled and the package
runs its Python sources. A failed compilation fails the install: it never falls
back to pure Python without being asked.
"""

import os
import runpy
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
native = runpy.run_path(str(ROOT / "protobase" / "native.py"))


def compiled_extensions() -> list:
    manifest = ROOT / "protobase" / native["MANIFEST_NAME"]
    if os.environ.get(native["ENV_SWITCH"]) == "1":
        manifest.unlink(missing_ok=True)
        return []
    from mypyc.build import mypycify

    sources = [
        str(native["source_path"](module, ROOT).relative_to(ROOT))
        for module in native["COMPILED_MODULES"]
    ]
    manifest.write_text(native["manifest_text"](ROOT))
    for leftover in native["orphan_extensions"](ROOT / "protobase"):
        leftover.unlink()  # a module no longer compiled: its source must load again
    # -O1: the same instruction counts as -O3 on the commit and index-build paths
    # (measured with callgrind), in two thirds of the compile time.
    # The build environment has none of the optional dependencies (aiohttp, boto3) that
    # modules outside the compiled set import; their types do not reach the hot path.
    return mypycify(
        ["--ignore-missing-imports", *sources],
        group_name=native["GROUP_NAME"],
        opt_level="1",
        debug_level="0",
    )


setup(ext_modules=compiled_extensions())
