"""Progress messages and bars for long work (rich, on stderr).

INTFORMER_QUIET=1 silences them (the tests set it); warnings are printed all the same. When stderr is not a
terminal (a log, CI), bars are not left behind and tuning prints one line per update instead of redrawing.
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def progress_bar(description: str, total: int):
    """Yield an `advance()` callable; shows a rich progress bar on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    quiet = os.environ.get("INTFORMER_QUIET") == "1"
    console = Console(stderr=True)
    if quiet or total <= 1:
        yield lambda: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=not console.is_terminal) as prog:
        task = prog.add_task(description, total=total)
        yield lambda: prog.advance(task)


def status(message: str) -> None:
    """A one-line progress message on stderr."""
    if os.environ.get("INTFORMER_QUIET") != "1":
        print(f"intformer: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A one-line warning on stderr, printed even when progress messages are silenced (INTFORMER_QUIET)."""
    print(f"intformer: warning: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def tuning_progress(total: int):
    """Yield ``update(task_name, trials_done, best_us_of_task)``: one rich bar over all trials, naming the task
    being tuned and its best latency so far."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if os.environ.get("INTFORMER_QUIET") == "1":
        yield lambda *a: None
        return
    with Progress(TextColumn("tuning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console, transient=False) as prog:
        bar = prog.add_task("", total=total)

        def update(task: str, done: int, best_us):
            best = f"best {best_us:.1f} us" if best_us is not None else "no valid candidate yet"
            prog.update(bar, completed=min(done, total), description=f"{task}: {best}")
            if not console.is_terminal:  # CI logs: one line per update instead of a redrawn bar
                console.print(f"intformer: tuning {done}/{total}  {task}: {best}", highlight=False)

        yield update
