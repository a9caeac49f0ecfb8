"""Progress bars on stderr (rich), fed by the library's ``progress(done, total)`` callbacks.

Long operations (`maintenance.fsck` and `pack`, `backup.backup`, `verify`
and `restore`, and the cluster's in `cluster.backup`) report progress by
calling ``progress(done, total)``, from worker threads in backup and
restore. `ProgressBars` turns those calls into bars on a rich console,
stderr by default, and draws them only when that console is a terminal:
stdout stays what scripts read, and a log file gets no bar.

Some operations report two phases, in different units, through the one
callback (fsck: WAL bytes, then atoms; pack: atoms, then WAL bytes). The
callback tells them apart by a rule every caller keeps: within a phase,
`done` never goes down and never passes the `total` of the call before.
So a call that does either, or any different call after a phase reached
its total, starts the next phase, and each phase gets a bar of its own,
labelled with its unit.

The benchmarks (bench/progress_bars.py) draw their bars with the same
columns, refreshing only when a step ends (`auto_refresh=False`), so
nothing runs beside the code they time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

from rich import filesize
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Phase:
    """One bar: what is being done, and the unit `done` and `total` count."""

    description: str
    unit: str
    """``bytes`` (shown as kB, MB, ...), or a plural noun such as ``atoms``."""


def stderr_console() -> Console:
    """The console the command-line bars draw on: stderr, no markup."""
    return Console(stderr=True, markup=False, highlight=False)


class _AmountColumn(ProgressColumn):
    """``1.2 MB of 3.4 MB``, or ``120 of 560 atoms``."""

    def render(self, task: Task) -> Text:
        unit = str(task.fields.get("unit", ""))
        done = int(task.completed)
        total = None if task.total is None else int(task.total)
        if unit == "bytes":
            known = "?" if total is None else filesize.decimal(total)
            return Text(f"{filesize.decimal(done)} of {known}", style="progress.download")
        known = "?" if total is None else f"{total:,}"
        return Text(f"{done:,} of {known} {unit}", style="progress.download")


class ProgressBars:
    """A rich progress display; `callback` makes the functions that feed it.

    Use it as a context manager around the operation; on a console that is
    not a terminal it draws nothing.
    """

    def __init__(self, console: Console | None = None, auto_refresh: bool = True) -> None:
        """
        Args:
            console: where to draw (default: `stderr_console()`).
            auto_refresh: redraw 10 times a second from a thread of rich's
                (the elapsed time moves); without it, redraw at each call.
        """
        self.console = stderr_console() if console is None else console
        self._refresh_each_call = not auto_refresh
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TaskProgressColumn(),
            _AmountColumn(),
            TimeRemainingColumn(),
            console=self.console,
            auto_refresh=auto_refresh,
            # Log records written to sys.stderr print above the bars; stdout is
            # left alone, so that what a command prints never lands on stderr.
            redirect_stdout=False,
            redirect_stderr=True,
            disable=not self.console.is_terminal,
        )

    def __enter__(self) -> ProgressBars:
        self.progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def callback(self, *phases: Phase) -> PhasedCallback:
        """A ``progress(done, total)`` function drawing one bar per phase, in order."""
        if not phases:
            raise ValueError("callback needs at least one Phase")
        return PhasedCallback(self, phases)

    def _start(self, phase: Phase, total: int) -> TaskID:
        return self.progress.add_task(phase.description, total=total, unit=phase.unit)

    def _update(self, task: TaskID, done: int, total: int) -> None:
        self.progress.update(task, completed=done, total=total, refresh=self._refresh_each_call)


class PhasedCallback:
    """``progress(done, total)`` for `ProgressBars`; safe to call from several threads."""

    def __init__(self, bars: ProgressBars, phases: Sequence[Phase]) -> None:
        self._bars = bars
        self._phases = list(phases)
        self._lock = threading.Lock()
        self._phase = -1
        self._task: TaskID | None = None
        self._last: tuple[int, int] | None = None

    def __call__(self, done: int, total: int) -> None:
        with self._lock:
            if self._task is None or self._next_phase_starts(done, total):
                self._phase += 1
                self._task = self._bars._start(self._phases[self._phase], total)
            self._bars._update(self._task, done, total)
            self._last = (done, total)

    def _next_phase_starts(self, done: int, total: int) -> bool:
        """The rule of the module docstring (never past the last phase)."""
        if self._last is None or self._phase + 1 >= len(self._phases):
            return False
        last_done, last_total = self._last
        finished = last_done >= last_total and (done, total) != self._last
        return finished or done < last_done or done > last_total
