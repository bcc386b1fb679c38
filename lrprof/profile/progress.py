"""Progress of long work on stderr: what is being measured, items done of total, items
failed, an ETA. A live bar (rich) on a terminal; plain lines, one per finished item, when
the stream is not a terminal (CI logs, Slurm logs, a file); nothing when quiet.

    with Progress(total=len(rows), what="rows") as progress:
        for row in rows:
            progress.start(row.name)          # shown while it runs (terminal only)
            ok = measure(row)
            progress.advance(ok, row.name)    # one step done, failed or not

Items already done before this run (a resumed sweep) are given as `done`: they count
toward the total but not toward the ETA. The ETA is this run's time per unit of work
times the work left: each item is one unit, unless the caller knows better and gives
`total_work` and each item's `work` (a sweep weighs its rows by their estimated cost, so
a grid whose big rows come last does not promise an early finish).
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO


def duration_text(seconds: float | None) -> str:
    """'0:42', '12:05', '1:02:03'; '?' when unknown."""
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _fitted(head: str, note: str, tail: str, short_tail: str) -> str:
    """A progress line within the known width (COLUMNS, a terminal; else whole): the short
    tail first, then the note (figures, a reason) shortened, then the label cut in its
    middle (its end tells rows apart: their sizes)."""
    import shutil

    width = shutil.get_terminal_size((0, 0)).columns
    if not width or len(head + note + tail) <= width:
        return head + note + tail
    if len(head + note + short_tail) <= width:
        return head + note + short_tail
    room = width - len(head) - len(short_tail)
    if note and room >= 10:
        return head + note[:room - 2] + "…)" + short_tail
    room = width - len(short_tail)
    if room < 24:
        return (head + note + short_tail)[:width]
    return head[:room - 15] + "…" + head[-14:] + short_tail


class Progress:
    """A progress reporter; use it as a context manager. `stream` defaults to stderr."""

    def __init__(self, total: int, what: str = "rows", stream: TextIO | None = None,
                 quiet: bool = False, done: int = 0, title: str = "",
                 total_work: float | None = None, delay_s: float = 0.0) -> None:
        self.total = total
        self.total_work = total_work if total_work is not None else float(total - done)
        self.work_done = 0.0
        self.what = what
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.title = title
        self.skipped = done  # done before this run: outside the ETA
        self.done = done
        self.failed = 0
        self.current = ""
        self._started = time.perf_counter()
        self._bar = None
        self._task = None
        # Work shorter than delay_s shows nothing: a timer shows the bar (or the first plain
        # line) once it has passed, whether or not an item finished meanwhile.
        self.delay_s = delay_s
        self._shown = delay_s <= 0
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._titled = False  # the plain-line title went out

    # -- state ------------------------------------------------------------------------------

    @property
    def measured(self) -> int:
        """Items finished in this run."""
        return self.done - self.skipped

    def elapsed_s(self) -> float:
        return time.perf_counter() - self._started

    def eta_s(self) -> float | None:
        if self.measured == 0 or self.work_done <= 0:
            return None
        if self.done >= self.total:
            return 0.0
        return self.elapsed_s() / self.work_done * max(0.0, self.total_work - self.work_done)

    def status_text(self) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        return (f"{self.done}/{self.total} {self.what}{failed}, elapsed "
                f"{duration_text(self.elapsed_s())}, ETA {duration_text(self.eta_s())}")

    # -- the context manager ----------------------------------------------------------------

    def __enter__(self) -> Progress:
        self._started = time.perf_counter()
        if self.quiet:
            return self
        if self._shown:
            self._show()
        else:
            self._timer = threading.Timer(self.delay_s, self._show_late)
            self._timer.daemon = True
            self._timer.start()
        return self

    def _show(self) -> None:
        if self._is_terminal():
            self._start_bar()
        elif self.current:  # else at the first item: the caller may not know the total yet
            self._title()

    def _title(self) -> None:
        if self.title and not self._titled:
            self._titled = True
            self._line(f"{self.title}: {self.total} {self.what}"
                       + (f", {self.skipped} already done" if self.skipped else "")
                       + (f"; now {self.current}" if self.current else ""))

    def _show_late(self) -> None:
        with self._lock:
            if not self._shown:
                self._shown = True
                self._show()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            if self._bar is not None:
                self._bar.stop()
                self._bar = None
            if not self.quiet and kind is None and self._shown:
                self._line(f"done: {self.status_text()}")

    def plan(self, total: int, total_work: float | None = None) -> None:
        """The number of items (and their estimated work), once the caller knows it."""
        self.total = total
        self.total_work = total_work if total_work is not None else float(total - self.done)
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def start(self, label: str) -> None:
        """The item now being worked on."""
        self.current = label
        if self._shown and self._bar is None and not self.quiet and not self._is_terminal():
            self._title()
        if self._bar is not None and self._shown:
            self._bar.update(self._task, description=label, **self._fields())

    def advance(self, ok: bool = True, label: str = "", note: str = "", work: float = 1.0) -> None:
        """One item finished (`ok` False: it failed); `note` is added to its plain line;
        `work` is its share of `total_work`."""
        self.done += 1
        self.work_done += work
        self.failed += 0 if ok else 1
        label = label or self.current
        if self.quiet or not self._shown:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, **self._fields())
            if not ok:
                self._bar.console.print(f"failed: {label}" + (f": {note}" if note else ""),
                                        markup=False, highlight=False)
            return
        width = len(str(self.total))
        status = "ok" if ok else "FAILED"
        eta = duration_text(self.eta_s())
        self._line(_fitted(f"[{self.done:>{width}}/{self.total}] {status} {label}",
                           f" ({note})" if note else "",
                           f" | {self.failed} failed | elapsed {duration_text(self.elapsed_s())} | ETA {eta}",
                           f" | {self.failed} failed | ETA {eta}"))

    def message(self, text: str) -> None:
        """A line of its own (a worker restart, a warning), above the bar on a terminal."""
        if self.quiet or not self._shown:
            return
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            self._line(text)

    # -- rendering ----------------------------------------------------------------------------

    def _is_terminal(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        try:
            return bool(isatty and isatty())
        except (ValueError, OSError):  # a closed stream
            return False

    def _fields(self) -> dict[str, str]:
        return {"failed": str(self.failed), "eta": duration_text(self.eta_s())}

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        console = Console(file=self.stream)
        self._bar = Bar(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(f"{self.what}, failed {{task.fields[failed]}}"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=console,
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.title or "", total=self.total, completed=self.done,
                                        **self._fields())

    def _line(self, text: str) -> None:
        """One plain line; where a width is known (COLUMNS, a terminal), cut to fit it."""
        import shutil

        width = shutil.get_terminal_size((0, 0)).columns
        if width and len(text) > width:
            text = text[:width - 1] + "…"
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (ValueError, OSError):  # progress must never end the work it reports on
            pass


class NoProgress:
    """What the API uses when nobody watches: every report is dropped."""

    def plan(self, total: int, total_work: float | None = None) -> None:
        pass

    def start(self, label: str) -> None:
        pass

    def advance(self, ok: bool = True, label: str = "", note: str = "", work: float = 1.0) -> None:
        pass
