"""What every command shares: the consoles, progress bars, tables, `--json` output, errors and the run log."""

from __future__ import annotations

import getpass
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import fields, is_dataclass
from datetime import date
from typing import Annotated, Any, TextIO, TypeVar

import numpy as np
import pandas as pd
import typer
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from c360.core import audit
from c360.core.settings import Settings

console = Console()  # results, for people
stderr = Console(stderr=True)  # progress, notes and errors: never in the way of a result piped on
R = TypeVar("R")
_json_stdout: TextIO | None = None  # the real stdout while a command runs with --json


@contextmanager
def _stdout_for_json() -> Iterator[None]:
    """Stdout is the JSON document's alone: whatever else prints to it (a library's print, a human line) goes to
    stderr meanwhile."""
    global _json_stdout
    _json_stdout = sys.stdout
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        _json_stdout = None


def _json_mode(ctx: typer.Context, on: bool) -> bool:
    if on:  # held by the root context: it ends after `fail` reported a WarehouseBusy of any command
        ctx.find_root().with_resource(_stdout_for_json())
    return on


Json = Annotated[bool, typer.Option("--json", callback=_json_mode,
                                    help="print the result as one JSON document on stdout (progress and logs on "
                                         "stderr; an error is {\"error\": message} with exit code 1)")]


def emit(result: R, as_json: bool, *human: RenderableType) -> R:
    """Print a command's result: `human` (tables, lines made from it) for people, or `result` as one JSON document
    for scripts. Returns `result`, so `c360 demo` can gather the results of the commands it runs."""
    if as_json:
        print(json.dumps(plain(result), allow_nan=False), file=_json_stdout or sys.stdout, flush=True)
    else:
        for item in human:
            console.print(item)
    return result


def plain(value: Any) -> Any:
    """`value` in JSON's types: data classes, dicts and series as objects, data frames as lists of rows, numpy
    numbers as numbers, NaN as null, dates and times in ISO 8601, paths as strings."""
    if is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, pd.DataFrame):
        value = _rows(value)
    if isinstance(value, pd.Series):
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | np.ndarray):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, date):  # datetimes and pandas' Timestamps too
        return value.isoformat()
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)  # paths, and anything else a person would read as text


def _rows(frame: pd.DataFrame) -> list[dict]:
    """One object per row, snake_case keys; a labelled index (model names, say) becomes the first column."""
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index()
    return frame.rename(columns=lambda c: snake(str(c))).to_dict("records")


def snake(name: str) -> str:
    """`FEBRL 4a ↔ 4b` → `febrl_4a_4b`: a column or title as a JSON key."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


@contextmanager
def progress(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar (a spinner when the total is unknown); yields `advance(n)`."""
    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=stderr) as bar:
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


def require_engine(s: Any) -> None:
    """Stop, saying why, when the engine the settings name (`C360_ENGINE`) cannot run here."""
    from c360.core import engine

    if reason := engine.unavailable(s):
        raise fail(reason)


def fail(message: str) -> typer.Exit:
    """The error to raise: one line on stderr, and with --json the document {"error": message} on stdout."""
    stderr.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)  # one line, whatever the width
    if _json_stdout:
        print(json.dumps({"error": message}), file=_json_stdout, flush=True)
    return typer.Exit(code=1)


def record_run(s: Settings, command: str, started: float, **summary: object) -> None:
    s.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    entry = {"command": command, "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "seconds": round(time.time() - started, 1), **summary}
    with s.runs.open("a") as f:
        f.write(json.dumps(entry, default=str) + "\n")


# Commands run as whoever can read C360_HOME (owner-only files): the role of a shell on the home is admin.
CLI_ROLE = "admin"


def cli_key() -> str:
    """The audit trail's name for a command's caller: the operating-system user."""
    return f"cli:{getpass.getuser()}"


@contextmanager
def audited(s: Settings, action: str, customers: Sequence[str]) -> Iterator[None]:
    """One audit record for a command that reads or changes these customers: status ok, or failed on an error."""
    status = "failed"
    try:
        yield
        status = "ok"
    finally:
        audit_command(s, action, customers, status)


def audit_command(s: Settings, action: str, customers: Sequence[str], status: str) -> None:
    """The audit record of a command: its caller is the operating-system user, with the role of a shell on the
    home."""
    audit.append(s, key=cli_key(), role=CLI_ROLE, action=action, customers=customers, status=status)
