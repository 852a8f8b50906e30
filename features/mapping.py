"""Source mappings: a team's own exports onto the contract's tables, through a YAML file.

A mapping names its **inputs** (CSV, Parquet or JSON files, globs of them, or a table of a SQLite database by URL)
and, per contract table, which input feeds it and how each contract column is made from the input's fields: a
field (`id`, a nested `address.country`), a DuckDB expression (`total / 100`), or a constant; then a date format
(`%m/%d/%Y`, `epoch` seconds as Stripe sends them, `epoch_ms`) and a value map (status codes -> contract values).
One input may feed several tables (split), and a table may take several inputs or a glob of files (merge).

The mapping does not load anything itself. It builds, per table and input file, one DuckDB query that turns the
input into the table's columns as text, and hands its rows to ingest's per-file load (`ingest.ingest_rows`), so
mapped rows pass the same parse, contract checks, key and reference checks and quarantine as a contract-shaped CSV
file; their lineage is the input file (or URL) and its row. A load is known by the sha256 of the input and of the
table's mapping, so ingesting the same export through the same mapping again is a no-op, while a changed mapping
loads it again.

Source field names are matched without regard to case or surrounding blanks (`"Customer ID "` is
`customer id`). DuckDB's sqlite and postgres extensions need a download, so a database table is read with Python's
sqlite3 (`sqlite:///path/to.db` and `table:`), as Arrow, in one piece.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pyarrow
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from c360.core import connections
from c360.core.contract import BY_ID, TABLES, Table
from c360.features.ingest import (
    CHUNK_ROWS,
    FileReport,
    IngestError,
    Suppress,
    ensure_schema,
    file_sha256,
    ingest_rows,
    q,
)

EPOCHS = {"epoch": 1_000_000, "epoch_ms": 1_000}  # microseconds per unit
FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet",
           ".json": "json", ".jsonl": "json", ".ndjson": "json"}
SHIPPED = "mappings"  # package data: c360/mappings/<name>.yaml
_ISO = "%Y-%m-%dT%H:%M:%S.%f"


class MappingError(Exception):
    """A mapping file is invalid, or names an input that is not there: nothing was loaded."""


# --- the file --------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Column(_Strict):
    """How one contract column is made: from a `field`, an `sql` expression or a constant `value`."""

    field: str | None = None
    sql: str | None = None
    value: str | None = None
    format: str | None = None  # a strptime format, or epoch / epoch_ms, for a datetime column
    map: dict[str, str | None] | None = None  # source value -> contract value (null: no value)

    @field_validator("map", mode="before")
    @classmethod
    def _text_keys(cls, value: Any) -> Any:
        # YAML reads 1, yes and on as numbers and booleans: a map's keys are the source's text
        if isinstance(value, dict):
            return {_text(k): None if v is None else _text(v) for k, v in value.items()}
        return value

    @field_validator("value", mode="before")
    @classmethod
    def _text_value(cls, value: Any) -> Any:
        return None if value is None else _text(value)

    @model_validator(mode="after")
    def _one_source(self) -> Column:
        given = [k for k in ("field", "sql", "value") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of field, sql, value (got {', '.join(given) or 'none'})")
        return self


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


class Input(_Strict):
    """Files (a path or glob, or a list of them) or a database table (`url` and `table`)."""

    path: str | list[str] | None = None
    url: str | None = None
    table: str | None = None
    format: Literal["csv", "parquet", "json"] | None = None

    @model_validator(mode="after")
    def _one_place(self) -> Input:
        if (self.path is None) == (self.url is None):
            raise ValueError("give either path or url")
        if self.url is not None and not (self.url.startswith("sqlite:///") and self.table):
            raise ValueError("url must be sqlite:///path/to.db, with table: the table to read")
        return self


class TableMap(_Strict):
    """One input onto one contract table."""

    input: str = Field(alias="from")
    where: str | None = None  # DuckDB condition: the input's rows for this table (when one input feeds several)
    mode: Literal["snapshot", "increment"] | None = None
    columns: dict[str, str | Column]

    def column(self, name: str) -> Column | None:
        spec = self.columns.get(name)
        return Column(field=spec) if isinstance(spec, str) else spec


class Spec(_Strict):
    name: str
    doc: str = ""
    inputs: dict[str, Input]
    tables: dict[str, TableMap | list[TableMap]]

    @model_validator(mode="after")
    def _known_names(self) -> Spec:
        # messages start with where they point ("tables.crm/accounts.from: ..."): `_first_error` finds the line
        for table_id, parts in self.tables.items():
            if table_id not in BY_ID:
                raise ValueError(f"tables.{table_id}: not a contract table ({', '.join(BY_ID)})")
            if isinstance(parts, list):
                for i, part in enumerate(parts):
                    _check_part(f"tables.{table_id}.{i}", BY_ID[table_id], part, self.inputs)
            else:
                _check_part(f"tables.{table_id}", BY_ID[table_id], parts, self.inputs)
        return self


def _check_part(where: str, table: Table, part: TableMap, inputs: dict[str, Input]) -> None:
    if part.input not in inputs:
        raise ValueError(f"{where}.from: {part.input!r} is not an input ({', '.join(inputs)})")
    for name in part.columns:
        if name not in table.column_names:
            raise ValueError(f"{where}.columns.{name}: not a column of {table.id} "
                             f"({', '.join(table.column_names)})")
        column = part.column(name)
        if column is not None and column.format is not None and table.col(name).kind != "datetime":
            raise ValueError(f"{where}.columns.{name}: format applies to datetime columns only")


# --- a mapping, resolved against its inputs --------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One file, or one database table, of an input."""

    input: str
    format: str  # csv, parquet, json or sqlite
    path: Path  # the file (the database's, for sqlite)
    table: str | None = None  # for sqlite

    @property
    def location(self) -> str:
        """The rows' `_file`: the file, or the database table's URL."""
        return f"sqlite:///{self.path}?table={self.table}" if self.table else str(self.path)

    def relation_sql(self) -> str:
        """The input with its fields named in lower case, without surrounding blanks (see `_fields`)."""
        if self.format == "sqlite":
            return "_mapping_sqlite"  # an Arrow table registered on the cursor (`_register`)
        reader = {"csv": "read_csv({}, header = true, all_varchar = true)",
                  "parquet": "read_parquet({})", "json": "read_json({}, format = 'auto')"}[self.format]
        return reader.format(_lit(str(self.path)))


@dataclass(frozen=True)
class MappedTable:
    """One input onto one contract table, with the files it reads; `mode` says how its exports arrive."""

    table: Table
    spec: TableMap
    sources: tuple[Source, ...]

    @property
    def mode(self) -> str | None:
        return self.spec.mode


@dataclass(frozen=True)
class Mapping:
    path: Path
    spec: Spec
    tables: tuple[MappedTable, ...]  # in the contract's order: parents before children


def load(path: Path, source: Path | None = None) -> Mapping:
    """Read and check a mapping file; relative input paths resolve against `source`, or else the file's folder."""
    path = Path(path)
    spec = read_spec(path)
    folder = Path(source) if source is not None else path.parent
    order = {t.id: i for i, t in enumerate(TABLES)}
    tables = [MappedTable(BY_ID[table_id], part, _sources(part.input, spec.inputs[part.input], folder))
              for table_id, parts in spec.tables.items() for part in (parts if isinstance(parts, list) else [parts])]
    return Mapping(path, spec, tuple(sorted(tables, key=lambda m: order[m.table.id])))


def read_spec(path: Path) -> Spec:
    """The mapping file, checked against the contract; its inputs are not looked for."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as err:
        raise MappingError(f"{path}: cannot read ({err.strerror})") from None
    try:
        return Spec.model_validate(yaml.safe_load(text))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise MappingError(f"{path}:{where} not valid YAML ({getattr(err, 'problem', err)})") from None
    except ValidationError as err:
        raise MappingError(_first_error(path, text, err)) from None


def shipped() -> dict[str, Path]:
    """The mappings c360 ships (c360/mappings/*.yaml), by name."""
    folder = Path(str(resources.files("c360") / SHIPPED))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def _first_error(path: Path, text: str, err: ValidationError) -> str:
    # A value that fits no branch of a union (a column as text or as an object) fails once per branch: the
    # branch whose type it has says what is wrong with it
    errors = err.errors()
    first = next((e for e in errors if not e["type"].endswith(("_type", "_parsing"))), errors[0])
    loc = [str(part) for part in first["loc"] if str(part) not in _BRANCHES and not str(part).startswith(
        ("function-", "list["))]
    message = first["msg"].removeprefix("Value error, ")
    if not loc and (pointed := re.match(r"(tables\.[^: ]+): (.*)", message)):
        where, message = pointed.groups()
        loc = re.findall(r"[^./]+/[^./]+|[^.]+", where)  # table ids hold a slash, not a dot
    where = ".".join(loc)
    line = _line_of(text, loc)
    return f"{path}:{f' line {line}' if line else ''}{f' {where}:' if where else ''} {message}"


_BRANCHES = {"str", "Column", "TableMap", "Input"}


def _line_of(text: str, loc: list[str]) -> int | None:
    """The line of the YAML key (or list item) at `loc`, or of its nearest parent found."""
    node, line = yaml.compose(text), None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and key.isdigit() and int(key) < len(node.value):
            found = (node.value[int(key)],) * 2
        else:
            found = None
        if found is None:
            break
        line, node = found[0].start_mark.line + 1, found[1]
    return line


def _sources(name: str, spec: Input, folder: Path) -> tuple[Source, ...]:
    if spec.url is not None:
        db = _resolve(folder, spec.url.removeprefix("sqlite:///"))
        if not db.is_file():
            raise MappingError(f"input {name}: {db} not found")
        return (Source(name, "sqlite", db, spec.table),)
    patterns = [spec.path] if isinstance(spec.path, str) else list(spec.path or [])
    found = []
    for pattern in patterns:
        full = _resolve(folder, pattern)
        matches = sorted(full.parent.glob(full.name)) if any(c in full.name for c in "*?[") else [full]
        matches = [m for m in matches if m.is_file()]
        if not matches:
            raise MappingError(f"input {name}: no file matches {full}")
        found += matches
    return tuple(Source(name, spec.format or _format_of(name, p), p) for p in found)


def _resolve(folder: Path, path: str) -> Path:
    return (folder / Path(path).expanduser()).resolve()


def _format_of(name: str, path: Path) -> str:
    if path.suffix.lower() not in FORMATS:
        raise MappingError(f"input {name}: cannot tell the format of {path.name}: set format: csv, parquet or json")
    return FORMATS[path.suffix.lower()]


# --- the query of one input file -------------------------------------------------------------------------


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def norm(name: str) -> str:
    """A source field's name as a mapping names it: lower case, no surrounding blanks."""
    return name.strip().lower()


@dataclass(frozen=True)
class MappedRows:
    """The rows one source gives one table: ingest's `Rows`."""

    mapped: MappedTable
    source: Source

    @property
    def file(self) -> str:
        return self.source.location

    @cached_property
    def digest(self) -> str:
        """sha256 of the input and of the table's mapping: a changed mapping loads the same file again."""
        content, _ = file_sha256(self.source.path)
        mapping = f"{self.mapped.table.id}\n{self.source.table}\n{self.mapped.spec.model_dump_json()}"
        return hashlib.sha256(f"{content}\n{mapping}".encode()).hexdigest()

    def fields(self, cursor: duckdb.DuckDBPyConnection) -> list[str]:
        """The input's field names, as they are in the file."""
        self._register(cursor)
        try:
            return [row[0] for row in cursor.execute(f"DESCRIBE SELECT * FROM {self.source.relation_sql()}").fetchall()]
        except duckdb.Error as err:
            raise IngestError(f"{self.file}: {_first_line(err)}") from None

    def sql(self, fields: list[str]) -> str:
        """`_keep` (the row is for this table) and the table's columns as text, over the input."""
        named = ", ".join(f"{q(f)} AS {q(norm(f))}" for f in fields)
        spec = self.mapped.spec
        keep = f"coalesce(({spec.where}), false)" if spec.where else "true"
        columns = [f"{_column_sql(spec.column(c.name), {norm(f) for f in fields})} AS {q(c.name)}"
                   for c in self.mapped.table.columns]
        return (f"SELECT {keep} AS _keep, {', '.join(columns)} "
                f"FROM (SELECT {named} FROM {self.source.relation_sql()}) AS input")

    def batches(self, cursor: duckdb.DuckDBPyConnection, chunk_rows: int) -> Iterator[pyarrow.Table]:
        names = ["_row", *self.mapped.table.column_names]
        first = 1
        try:
            result = cursor.execute(self.sql(self.fields(cursor)))
            for batch in result.to_arrow_reader(chunk_rows):
                n = batch.num_rows
                rows = pyarrow.array(np.arange(first, first + n, dtype=np.int64))
                first += n
                keep = batch.column(0).fill_null(False)
                table = pyarrow.Table.from_arrays([rows, *batch.columns[1:]], names=names).filter(keep)
                if table.num_rows:
                    yield table
        except (duckdb.Error, pyarrow.ArrowException) as err:
            raise IngestError(f"{self.file}: {_first_line(err)}") from None

    def _register(self, cursor: duckdb.DuckDBPyConnection) -> None:
        if self.source.format == "sqlite":
            cursor.register("_mapping_sqlite", _sqlite_table(self.source.path, self.source.table or ""))


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0]


def _sqlite_table(path: Path, table: str) -> pyarrow.Table:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        try:
            cursor = db.execute(f"SELECT * FROM {q(table)}")
        except sqlite3.Error as err:
            raise IngestError(f"sqlite:///{path}?table={table}: {err}") from None
        names = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    # text, as the CSV reader gives: SQLite's columns may hold values of any type
    columns = [pyarrow.array([None if r[i] is None else str(r[i]) for r in rows], pyarrow.string())
               for i in range(len(names))]
    return pyarrow.Table.from_arrays(columns, names=names)


def _column_sql(column: Column | None, fields: set[str]) -> str:
    """A contract column's text, from the input's (normalised) fields."""
    if column is None:
        return "CAST(NULL AS VARCHAR)"
    if column.value is not None:
        return _lit(column.value)
    value = f"({column.sql})" if column.sql is not None else _field_sql(column.field or "", fields)
    text = f"CAST({value} AS VARCHAR)"
    if column.format in EPOCHS:
        # make_timestamp takes microseconds since 1970 and gives UTC without a time zone, whatever the session's
        micros = f"CAST(round(TRY_CAST({text} AS DOUBLE) * {EPOCHS[column.format]}) AS BIGINT)"
        text = f"coalesce(strftime(make_timestamp({micros}), '{_ISO}'), {text})"
    elif column.format is not None:
        text = f"coalesce(strftime(try_strptime({text}, {_lit(column.format)}), '{_ISO}'), {text})"
    if column.map:
        cases = " ".join(f"WHEN {_lit(k)} THEN {'NULL' if v is None else _lit(v)}" for k, v in column.map.items())
        text = f"CASE {text} {cases} ELSE {text} END"
    return text  # a value that does not convert stays as it was, for the contract checks to quarantine


def _field_sql(field: str, fields: set[str]) -> str:
    """A field, or a nested one (`address.country`) of a field holding objects."""
    name = norm(field)
    if name in fields or "." not in name:
        return q(name)
    head, *rest = name.split(".")
    return ".".join(q(part) for part in [head, *rest])


# --- loading, and checking before loading ----------------------------------------------------------------


def rows_of(mapping: Mapping) -> list[MappedRows]:
    return [MappedRows(m, s) for m in mapping.tables for s in m.sources]


def ingest_mapping(
    con: duckdb.DuckDBPyConnection,
    mapping: Mapping,
    on_file: Any = None,
    *,
    chunk_rows: int = CHUNK_ROWS,
    suppress: Suppress | None = None,
    mode: str | None = None,
    exported_at: datetime | None = None,
) -> list[FileReport]:
    """Load every input of `mapping` into the warehouse behind `con`, table by table (parents first).

    Checked first (`check`): a required contract column that nothing maps, or a mapped field that an input lacks,
    loads nothing. Then each input file of each table is its own transaction, as files are in `ingest.ingest`.
    A table arrives as `mode` says, else as its mapping's `mode:` says, else as the contract's table does.
    """
    problems = [p for c in check(mapping) for p in c.problems]
    if problems:
        raise IngestError(f"{mapping.path}: {problems[0]}" + (f" (and {len(problems) - 1} more: `c360 mapping "
                                                               "check`)" if len(problems) > 1 else ""))
    ensure_schema(con)
    reports = []
    for mapped in mapping.tables:
        parts = [MappedRows(mapped, s) for s in mapped.sources]
        snapshot = (mode or mapped.mode or mapped.table.arrives) == "snapshot"
        for i, rows in enumerate(parts):
            last = i == len(parts) - 1
            also_held = _keys_of(con, parts[:-1], chunk_rows) if snapshot and last and len(parts) > 1 else None
            report = ingest_rows(con, mapped.table, rows.source.path, rows, rows.digest, chunk_rows=chunk_rows,
                                 suppress=suppress, mode="snapshot" if snapshot and last else "increment",
                                 exported_at=exported_at, also_held=also_held)
            reports.append(report)
            if on_file is not None:
                on_file(report)
    return reports


def _keys_of(con: duckdb.DuckDBPyConnection, parts: list[MappedRows], chunk_rows: int) -> str:
    """A query of the keys `parts` hold: a table's snapshot merged from several files is one snapshot, so its last
    file ends only the keys none of them holds."""
    key = parts[0].mapped.table.key
    cursor = con.cursor()
    try:
        keys = [b.select([key]).rename_columns(["key"]) for p in parts for b in p.batches(cursor, chunk_rows)]
    finally:
        cursor.close()
    schema = pyarrow.schema([("key", pyarrow.string())])
    con.register("_snapshot_parts", pyarrow.concat_tables(keys) if keys else schema.empty_table())
    return "SELECT key FROM _snapshot_parts"


@dataclass(frozen=True)
class TableCheck:
    """What one input gives one table: `mapped` contract column -> source (field, expression or constant)."""

    table_id: str
    input: str
    file: str
    mode: str | None
    mapped: dict[str, str]
    missing_required: list[str]
    missing_optional: list[str]
    unknown_fields: list[str]  # fields the mapping reads that the input lacks
    ignored_fields: list[str]  # fields of the input no table reads
    error: str | None = None

    @property
    def problems(self) -> list[str]:
        found = [f"{self.table_id}: required column {c} is not mapped" for c in self.missing_required]
        found += [f"{self.table_id}: {self.file} has no field {f!r}" for f in self.unknown_fields]
        return found + ([f"{self.table_id}: {self.error}"] if self.error else [])


def check(mapping: Mapping) -> list[TableCheck]:
    """Per table and input file: what maps, what is missing, what is ignored; nothing is loaded."""
    with connections.open_file() as cursor:  # in memory: reads the inputs only
        return [_check_rows(cursor, rows, mapping) for rows in rows_of(mapping)]


def _check_rows(cursor: duckdb.DuckDBPyConnection, rows: MappedRows, mapping: Mapping) -> TableCheck:
    table, spec = rows.mapped.table, rows.mapped.spec
    fields = [norm(f) for f in rows.fields(cursor)]
    used = {name: _reads(spec.column(name), fields) for name in spec.columns}
    unknown = sorted({f for read in used.values() for f in _absent(read, fields)})
    read_anywhere = {f for m in mapping.tables if m.spec.input == spec.input
                     for c in m.table.columns for f in _reads(m.spec.column(c.name), fields)}
    read_anywhere |= {f for m in mapping.tables if m.spec.input == spec.input and m.spec.where
                      for f in _named_in(m.spec.where, fields)}
    missing = [c for c in table.columns if c.name not in spec.columns or _absent(used[c.name], fields)]
    error = None
    if not unknown:
        try:
            cursor.execute(f"DESCRIBE {rows.sql(rows.fields(cursor))}")
        except duckdb.Error as err:
            error = _first_line(err)
    return TableCheck(
        table.id, spec.input, rows.file, rows.mapped.mode,
        {name: _shown(spec.column(name)) for name in spec.columns},
        [c.name for c in missing if c.required], [c.name for c in missing if not c.required],
        unknown, [f for f in fields if f not in read_anywhere], error)


def _absent(read: list[str], fields: list[str]) -> list[str]:
    """The fields read that the input lacks (a nested field needs its top field)."""
    return [f for f in read if f not in fields and f.split(".")[0] not in fields]


def _reads(column: Column | None, fields: list[str]) -> list[str]:
    """The input fields a column reads: its field, or the fields an expression names."""
    if column is None or column.value is not None:
        return []
    if column.field is not None:
        return [norm(column.field)]
    return _named_in(column.sql or "", fields)


def _named_in(expression: str, fields: list[str]) -> list[str]:
    # a field is named as a word or in double quotes; fields are compared in lower case, as the query names them
    text = expression.lower()
    return [f for f in fields if re.search(rf'(?<![\w"]){re.escape(f)}(?![\w"])|"{re.escape(f)}"', text)]


def _shown(column: Column | None) -> str:
    assert column is not None
    source = (column.field if column.field is not None else f"= {column.sql}" if column.sql is not None
              else f"constant {column.value!r}")
    extras = ([f"format {column.format}"] if column.format else []) + (
        [f"map {len(column.map)} value(s)"] if column.map else [])
    return source + (f" ({', '.join(extras)})" if extras else "")
