"""What every command shares: the console, progress bars, tables, errors and the run log."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from c360.core.settings import Settings

console = Console()


@contextmanager
def progress(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar (a spinner when the total is unknown); yields `advance(n)`."""
    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def table(title: str, df: pd.DataFrame) -> Table:
    out = Table(*map(str, df.columns), title=title)
    for row in df.itertuples(index=False):
        out.add_row(*(_cell(v) for v in row))
    return out


def _cell(value: object) -> str:
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{value:,}"
    if isinstance(value, float | np.floating):
        return "—" if np.isnan(value) else f"{value:.4f}"
    return str(value)


def fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)  # one line, whatever the width
    return typer.Exit(code=1)


def record_run(s: Settings, command: str, started: float, **summary: object) -> None:
    s.home.mkdir(parents=True, exist_ok=True)
    entry = {"command": command, "at": time.strftime("%Y-%m-%d %H:%M:%S"),
             "seconds": round(time.time() - started, 1), **summary}
    with s.runs.open("a") as f:
        f.write(json.dumps(entry, default=str) + "\n")
