"""Progress bars for long work (rich, on stderr; silent when stderr is not a terminal and CI is set)."""

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
