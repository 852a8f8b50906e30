"""`c360 mapping check | list`: source mappings (`features.mapping`), checked before anything is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from c360.cli.ui import Json, emit, fail, stderr
from c360.features import mapping
from c360.features.ingest import IngestError

mapping_app = typer.Typer(help="Source mappings: your own exports (CSV, Parquet, JSON lines, SQLite) onto the "
                               "contract's tables.", no_args_is_help=True)

MappingArg = Annotated[str, typer.Argument(help="a mapping file (YAML), or the name of a shipped one (`c360 mapping "
                                                "list`)")]
SourceOpt = Annotated[Path | None, typer.Option(help="folder the mapping's relative input paths start from "
                                                     "[default: the mapping file's folder; for a shipped mapping, "
                                                     "the current folder]")]


def load(name: str, source: Path | None) -> mapping.Mapping:
    """The mapping at path `name`, or the shipped one of that name; a one-line error when it is not valid."""
    path, shipped = Path(name), mapping.shipped()
    if not path.exists() and name in shipped:
        path, source = shipped[name], source or Path.cwd()
    try:
        return mapping.load(path, source)
    except mapping.MappingError as e:
        raise fail(str(e)) from None


@mapping_app.command("check")
def check(file: MappingArg, source: SourceOpt = None, as_json: Json = False) -> dict:
    """Say, per contract table, what the mapping maps (contract column <- source field), which contract columns
    nothing maps, and which fields of the inputs no table reads, without loading anything.

    Exits with 1 when a required column is not mapped or a mapped field is not in its input: `c360 ingest
    --mapping` would load nothing."""
    m = load(file, source)
    try:
        checks = mapping.check(m)
    except IngestError as e:
        raise fail(str(e)) from None
    problems = [p for c in checks for p in c.problems]
    error = f"{len(problems)} problem(s): {'; '.join(problems)}" if problems else None
    emit({"mapping": m.path, "name": m.spec.name, "tables": checks, "problems": problems, "ok": not problems,
          "error": error}, as_json, *[_shown(c) for c in checks])
    if error:
        stderr.print(f"[bold red]error:[/] {escape(error)}", soft_wrap=True)
        raise typer.Exit(code=1)
    return {"ok": True}


def _shown(c: mapping.TableCheck) -> Table:
    mode = f", {c.mode}" if c.mode else ""
    out = Table("contract column", "from", title=f"{c.table_id} <- {c.input} ({Path(c.file).name}{mode})")
    for column, source in c.mapped.items():
        out.add_row(column, escape(source))
    for column in c.missing_required:
        out.add_row(column, "[bold red]missing (required)[/]")
    for column in c.missing_optional:
        out.add_row(column, "[dim]not mapped (optional, loaded empty)[/]")
    for field in c.unknown_fields:
        out.add_row("", f"[bold red]{escape(field)}: not in the input[/]")
    if c.error:
        out.add_row("", f"[bold red]{escape(c.error)}[/]")
    if c.ignored_fields:
        out.caption = "ignored fields: " + ", ".join(c.ignored_fields)
    return out


@mapping_app.command("list")
def list_mappings(as_json: Json = False) -> dict:
    """List the mappings c360 ships: name, what they read, the tables they fill."""
    specs = {name: (path, mapping.read_spec(path)) for name, path in mapping.shipped().items()}
    out = Table("name", "reads", "tables", title="shipped mappings (c360 mapping check NAME --source DIR)")
    for name, (_, spec) in specs.items():
        out.add_row(name, spec.doc, ", ".join(spec.tables))
    found = [{"name": name, "path": path, "doc": spec.doc, "tables": list(spec.tables)}
             for name, (path, spec) in specs.items()]
    return emit({"mappings": found}, as_json, out)
