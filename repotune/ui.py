"""What the command line shows people: consoles, progress bars with ETA, JSON output."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


@contextmanager
def progress_bar(description: str, quiet: bool = False) -> Iterator[Callable[..., None]]:
    """Yield `update(done, total, **metrics)`; draws a bar with ETA on stderr unless quiet.

    The bar appears at the first update, so work that turns out to be cached shows none.
    """
    if quiet:
        yield lambda *args, **kwargs: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[metrics]}"),
        console=err,
    )
    task = bar.add_task(description, total=None, metrics="")
    started = False

    def update(done: int, total: int, **metrics: float) -> None:
        nonlocal started
        if not started:
            bar.start()
            started = True
        shown = " ".join(f"{k} {v:.3f}" for k, v in metrics.items())
        bar.update(task, completed=done, total=total, metrics=shown)

    try:
        yield update
    finally:
        if started:
            bar.stop()


@contextmanager
def progress_bars(quiet: bool = False) -> Iterator[Callable[[str, int, int | None, str], None]]:
    """Yield `update(name, done, total, note)`: one bar with ETA per name, on stderr.

    For work in several named parts (ingest's sources); like `progress_bar`, nothing is
    drawn until the first update, and `quiet` draws nothing at all."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bars = Progress(TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), TextColumn("{task.fields[note]}"), console=err)
    tasks: dict[str, Any] = {}
    lock = threading.Lock()  # parts may run side by side, in threads

    def update(name: str, done: int, total: int | None, note: str) -> None:
        if quiet or not name:
            return
        with lock:
            if not tasks:
                bars.start()
            if name not in tasks:
                tasks[name] = bars.add_task(name, total=total, note=note)
        bars.update(tasks[name], completed=done, total=total, note=note)

    try:
        yield update
    finally:
        if tasks:
            bars.stop()
