"""`c360`: one command line for every stage. Each command is a thin wrapper around a plain function."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from c360 import warehouse
from c360.settings import Settings

app = typer.Typer(help="Customer 360: unify customer silos, one profile per customer, churn / CLV / next best "
                       "action with reasons.", no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()


def settings() -> Settings:
    return Settings()


@contextmanager
def progress(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def record_run(s: Settings, command: str, started: float, **summary: object) -> None:
    s.home.mkdir(parents=True, exist_ok=True)
    entry = {"command": command, "at": time.strftime("%Y-%m-%d %H:%M:%S"),
             "seconds": round(time.time() - started, 1), **summary}
    with s.runs.open("a") as f:
        f.write(json.dumps(entry, default=str) + "\n")


def fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=1)


@app.command()
def generate(
    customers: Annotated[int, typer.Option(min=1, help="number of customer accounts")] = 20_000,
    seed: Annotated[int, typer.Option(help="random seed; same seed, same files")] = 42,
    out: Annotated[Path | None, typer.Option(help="output folder [default: C360_HOME/data/generated]")] = None,
    corrupt_rate: Annotated[float, typer.Option(min=0, max=0.5, help="share of rows given one fault")] = 0.0,
) -> None:
    """Generate six silos of a synthetic SaaS company, with ground truth in OUT/ground_truth."""
    from features.generate import generate as run

    s, started = settings(), time.time()
    out = out or s.generated
    with progress("generating customers", customers) as advance:
        report = run(out, customers, seed=seed, corrupt_rate=corrupt_rate, on_chunk=advance)
    table = Table("file", "rows", title=f"{customers:,} customers → {out}")
    for name, rows in report.rows.items():
        table.add_row(name, f"{rows:,}")
    console.print(table)
    console.print(f"{report.faults:,} injected faults listed in {out / 'ground_truth' / 'faults.csv'}")
    record_run(s, "generate", started, out=out, customers=customers, seed=seed, faults=report.faults)


@app.command()
def ingest(
    source: Annotated[Path, typer.Option(help="folder of silo exports (<silo>/<table>*.csv), or one file")],
) -> None:
    """Check source files against the data contract and load them into the warehouse.

    Rows that break the contract go to the quarantine table with their reason; files already loaded are skipped.
    """
    from features.ingest import IngestError, discover
    from features.ingest import ingest as run

    s, started = settings(), time.time()
    try:
        files = discover(source)
    except IngestError as e:
        raise fail(str(e)) from None
    with warehouse.connect(s) as con, progress("ingesting files", len(files)) as advance:
        try:
            reports = run(con, source, on_file=lambda _: advance(1))
        except IngestError as e:
            raise fail(str(e)) from None
    table = Table("table", "file", "read", "accepted", "quarantined", title=f"ingest {source}")
    for r in reports:
        note = " (already loaded)" if r.skipped else ""
        table.add_row(r.table_id, Path(r.file).name + note, f"{r.read:,}", f"{r.accepted:,}", f"{r.quarantined:,}")
    console.print(table)
    totals = {k: sum(getattr(r, k) for r in reports) for k in ("read", "accepted", "quarantined")}
    console.print("total: " + ", ".join(f"{k} {v:,}" for k, v in totals.items()))
    record_run(s, "ingest", started, source=source, **totals)


@app.command()
def status() -> None:
    """Show what C360_HOME holds: source tables, row counts, quarantine counts and the last runs."""
    s = settings()
    if not s.warehouse.exists():
        console.print(f"No warehouse yet in {s.home}. Run `c360 demo` or `c360 ingest --source DIR`.")
    else:
        from features.ingest import quarantine_summary

        with warehouse.connect(s, read_only=True) as con:
            console.print(_table("sources", warehouse.table_counts(con)))
            quarantine = quarantine_summary(con)
            if len(quarantine):
                by_rule = quarantine.pivot_table(index="table_id", columns="rule", values="count", fill_value=0)
                by_rule = by_rule.astype(int)
                console.print(_table("quarantined rows by rule (details: table `quarantine`)",
                                     by_rule.reset_index()))
    if s.runs.exists():
        runs = [json.loads(line) for line in s.runs.read_text().splitlines()[-10:]]
        table = Table("at", "command", "seconds", "summary", title="last runs")
        for r in runs:
            summary = {k: v for k, v in r.items() if k not in ("at", "command", "seconds")}
            table.add_row(r["at"], r["command"], str(r["seconds"]), json.dumps(summary))
        console.print(table)


def _table(title: str, df) -> Table:
    table = Table(*map(str, df.columns), title=title)
    for row in df.itertuples(index=False):
        table.add_row(*(f"{v:,}" if isinstance(v, int | np.integer) else str(v) for v in row))
    return table


@app.command()
def contract(
    out: Annotated[Path | None, typer.Option(help="write the page here instead of printing it")] = None,
) -> None:
    """Print the data contract: every source table, its columns, keys and what makes a row invalid."""
    from features.contract_doc import markdown

    text = markdown()
    if out:
        out.write_text(text)
        console.print(f"wrote {out}")
    else:
        print(text)


@app.command()
def demo(
    customers: Annotated[int | None, typer.Option(help="customers to generate [default: C360_CUSTOMERS]")] = None,
) -> None:
    """Run the whole pipeline on generated data and print where to look."""
    s = settings()
    n = customers or s.customers
    generate(customers=n, seed=s.seed, out=s.generated, corrupt_rate=s.corrupt_rate)
    ingest(source=s.generated)
    status()
    console.print(f"\n[bold]Where to look[/]: warehouse {s.warehouse} (duckdb), quarantine table `quarantine`, "
                  f"ground truth {s.generated / 'ground_truth'}, run log {s.runs}.")


if __name__ == "__main__":
    app()
