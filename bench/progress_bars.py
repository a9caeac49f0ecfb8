"""A progress bar for a benchmark's long loop: ``for run in track(runs, "workload 3", "runs")``.

Drawn on stderr, and only when stderr is a terminal (the results go to
stdout; the ``.. message`` lines of `common.progress` stay the log). The
bar moves when a step ends, between the pieces the benchmarks time, and is
redrawn only then: no thread of its own runs beside the measured code.
Shared by the benchmarks in bench/ but membership.py (run as scripts, so
this module is imported from the script's own directory).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from typing import TypeVar

from protobase.progress_bars import Phase, ProgressBars

T = TypeVar("T")


def track(steps: Iterable[T], description: str, unit: str, total: int | None = None) -> Iterator[T]:
    """Yield `steps`, advancing a bar after each one's loop body has run.

    Args:
        steps: the loop's items (a sized collection, or give `total`).
        description: what the loop does, such as ``"workload 3: inserts"``.
        unit: what a step is, in the plural (``"runs"``, ``"levels"``).
        total: the number of steps, when `steps` has no length.
    """
    if total is None:
        if not isinstance(steps, Sized):
            raise TypeError("track needs a total for steps without a length")
        total = len(steps)
    with ProgressBars(auto_refresh=False) as bars:
        report = bars.callback(Phase(description, unit))
        report(0, total)
        for done, step in enumerate(steps, start=1):
            yield step
            report(done, total)
