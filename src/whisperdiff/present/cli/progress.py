"""The one progress bar: transient, on stderr, shown only on a terminal. It hands the library the one
callback shape every long call takes: on_total(n) when the count is known, on_op(name) after each
step, on_status(text) for what is happening meanwhile (loading, compiling, the step under way)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from whisperdiff.present.cli.app import err, escape_markup


@dataclass(frozen=True)
class Callbacks:
    on_op: Callable[[str], None]
    on_total: Callable[[int], None]
    on_status: Callable[[str], None]


@contextmanager
def progress(
    label: str, *, status: str = "", total: int | None = None, quiet: bool = False, eta: bool = False, log: bool = False
) -> Iterator[Callbacks]:
    """A bar labelled `label` while the block runs (`quiet`: none, e.g. under --json). eta: show the time
    left, not the time taken. log: where stderr is no terminal (a CI log), one line per step instead."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn(f"[bold]{escape_markup(label)}"),
        BarColumn(),
        MofNCompleteColumn(),
        *((TextColumn("ETA"), TimeRemainingColumn()) if eta else (TimeElapsedColumn(),)),
        TextColumn("{task.fields[status]}", markup=False),
        console=err,
        transient=True,
        disable=quiet or not err.is_terminal,
    ) as bar:
        task = bar.add_task(label, total=total, status=status)
        lines = log and not quiet and not err.is_terminal
        t0 = time.perf_counter()

        def on_op(name: str) -> None:
            bar.update(task, advance=1, status=name)
            if lines:
                done, count = int(bar.tasks[0].completed), bar.tasks[0].total
                left = f"  (ETA {(time.perf_counter() - t0) / done * (count - done):.0f} s)" if count else ""
                err.print(f"[{done}/{count or '?'}] {name}{left}", highlight=False, markup=False)

        yield Callbacks(
            on_op=on_op,
            on_total=lambda n: bar.update(task, total=n),
            on_status=lambda text: bar.update(task, status=text),
        )
