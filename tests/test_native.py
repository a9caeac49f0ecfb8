"""The compiled hot path's switch (protobase/native.py): which form loads, and refusals.

Each case imports protobase in a fresh interpreter: the choice is made once, at
the package's import. The stale and partial builds are made in a copy of the
installed package, never in the tree the other tests use.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import protobase
from protobase import native

PACKAGE = Path(protobase.__file__).resolve().parent
CI = os.environ.get("CI") == "true"
PROBE = "import protobase, protobase.collections.btree as b; print(protobase.HOT_PATH, b.__file__)"


def run_python(
    code: str, pure: str | None, path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != native.ENV_SWITCH}
    if pure is not None:
        env[native.ENV_SWITCH] = pure
    if path is not None:
        env["PYTHONPATH"] = str(path)
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=path or PACKAGE.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def built() -> bool:
    return all(native._extension_of(module) is not None for module in native.COMPILED_MODULES)


def require_build() -> None:
    if built():
        return
    message = "the compiled hot path is not built here (`make native` builds it)"
    if CI:
        pytest.fail(message + "; `make test` builds it before the suite")
    pytest.skip(message)


def test_make_test_runs_the_suite_on_the_form_it_was_asked_for() -> None:
    # The first pass runs compiled, the second (PROTOBASE_PURE_PYTHON=1) pure.
    wanted = os.environ.get(native.ENV_SWITCH) == "1"
    if wanted:
        assert protobase.HOT_PATH == "pure"
        assert protobase.collections.btree.__file__.endswith(".py")
    else:
        require_build()
        assert protobase.HOT_PATH == "compiled"
        assert not protobase.collections.btree.__file__.endswith(".py")


def test_the_switch_loads_every_listed_module_from_its_source() -> None:
    code = (
        "import importlib, protobase; from protobase import native; "
        "print(all(importlib.import_module(m).__file__.endswith('.py') "
        "for m in native.COMPILED_MODULES), protobase.HOT_PATH)"
    )
    result = run_python(code, "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "pure"]


def test_without_the_switch_every_listed_module_loads_compiled() -> None:
    require_build()
    code = (
        "import importlib, protobase; from protobase import native; "
        "print(sorted({importlib.import_module(m).__file__.rsplit('.', 1)[1] "
        "for m in native.COMPILED_MODULES}), protobase.HOT_PATH)"
    )
    result = run_python(code, None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["['so']", "compiled"]


def test_a_bad_switch_value_is_refused() -> None:
    result = run_python(PROBE, "yes")
    assert result.returncode != 0
    assert "PROTOBASE_PURE_PYTHON must be 1 (run pure Python) or 0, not 'yes'" in result.stderr


def package_copy(tmp_path: Path) -> Path:
    """A copy of the installed package (with its extensions) under tmp_path."""
    shutil.copytree(PACKAGE, tmp_path / "protobase", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_a_source_changed_after_the_build_is_refused_not_run_stale(tmp_path: Path) -> None:
    require_build()
    root = package_copy(tmp_path)
    source = root / "protobase" / "collections" / "btree.py"
    source.write_text(source.read_text() + "\n# edited after the build\n")
    result = run_python(PROBE, None, root)
    assert result.returncode != 0
    assert "btree.py changed since its compiled form was built" in result.stderr
    # The way out the message names works: the edited source runs pure.
    result = run_python(PROBE, "1", root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["pure", str(source)]


def test_a_partial_build_is_refused(tmp_path: Path) -> None:
    require_build()
    root = package_copy(tmp_path)
    missing = native._extension_of("protobase.codec")
    assert missing is not None
    (root / "protobase" / missing.name).unlink()
    result = run_python(PROBE, None, root)
    assert result.returncode != 0
    assert "compiled hot path is incomplete" in result.stderr
    assert "codec.py has no extension" in result.stderr


def test_a_build_without_its_manifest_is_refused(tmp_path: Path) -> None:
    require_build()
    root = package_copy(tmp_path)
    (root / "protobase" / native.MANIFEST_NAME).unlink()
    result = run_python(PROBE, None, root)
    assert result.returncode != 0
    assert "compiled modules have no readable build manifest" in result.stderr


def test_the_manifest_records_every_compiled_source() -> None:
    # What setup.py writes: a hash per listed module, as the import reads it back.
    sources = json.loads(native.manifest_text(PACKAGE.parent))
    assert sorted(sources) == sorted(native.COMPILED_MODULES)
    for module, digest in sources.items():
        assert digest == native.source_hash(native.source_path(module))


def test_an_extension_left_by_an_older_build_is_refused(tmp_path: Path) -> None:
    # A module dropped from the list keeps its extension until a build deletes it;
    # it would shadow the source, so the import refuses it, in either form.
    require_build()
    root = package_copy(tmp_path)
    built = native._extension_of("protobase.codec")
    assert built is not None
    leftover = root / "protobase" / built.name.replace("codec", "values", 1)
    shutil.copy(built, leftover)
    for pure in (None, "1"):
        result = run_python(PROBE, pure, root)
        assert result.returncode != 0
        assert f"{leftover} is left from an older build" in result.stderr
