"""docs/queries.md: every python example runs, in order, in one namespace.

The examples carry their own asserts; this test also checks that the text
block after the explain example is what that example prints.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "queries.md"
BLOCK = re.compile(r"```(python|text)\n(.*?)```", re.DOTALL)


def test_query_docs_examples_run_and_print_what_they_say() -> None:
    blocks = BLOCK.findall(DOC.read_text())
    assert sum(1 for kind, _ in blocks if kind == "python") >= 8
    namespace: dict[str, object] = {"__name__": "queries_md"}
    printed = ""
    for number, (kind, code) in enumerate(blocks):
        if kind == "text":
            assert printed.strip() == code.strip(), f"text block {number} differs from the output"
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"{DOC.name} block {number}", "exec"), namespace)
        printed = out.getvalue()
