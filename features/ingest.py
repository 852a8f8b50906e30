"""Load source CSV exports into the DuckDB warehouse, quarantining every row that breaks the contract.

Each row read is either accepted into its table or written to `quarantine` with its reason and the raw row,
or, when it belongs to an erased person (the `suppress` function, `c360.features.privacy.Suppressed.mask`),
dropped before anything of it is stored; so per file read = accepted + quarantined + suppressed. A file loads
in one transaction, or not at all when it is broken
as a whole (`IngestError`). A file whose content (sha256) is already in `ingest_log` is skipped, so running
`ingest` again over the same directory only loads the new batches.

A row whose key the table holds already is its new version, the old one kept in the table's history; a file
that is a snapshot of its table (`Table.arrives`, or the `mode` given) also ends the keys it does not hold, as
deleted at the source (`c360.features.versions`).

Per file, in one transaction: stream chunks out of DuckDB's CSV reader -> parse and check each chunk's rows
(pandas, pandera) -> quarantine the bad rows, append the good ones -> check keys and references in SQL over
the whole file -> quarantine the rows failing those, put the others in place as versions -> log. Exports loaded
through a mapping (`c360.features.mapping`) take the same path from the second step on: `ingest_rows` streams
the rows a mapping's query gives in place of the CSV reader's.
"""

from __future__ import annotations

import csv
import hashlib
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import duckdb
import numpy as np
import pandas as pd
import pyarrow
import pyarrow.compute

from c360.core import contract, warehouse
from c360.core.contract import ARRIVALS, TABLES, Table
from c360.features import versions
from c360.features.versions import q

if TYPE_CHECKING:  # imported where rows are checked (see contract.py)
    import pandera.pandas as pa

CHUNK_ROWS = 500_000
MAX_LINE = 2_000_000  # bytes of one CSV line (a record, with its quoted line breaks): DuckDB's default
SQL_TYPES = {"str": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "datetime": "TIMESTAMP"}
TEXT = pd.StringDtype("pyarrow")  # Arrow-backed text: no Python object per value, fast pandera checks

QUARANTINE_DDL = """
CREATE TABLE IF NOT EXISTS quarantine (
    ingest_id BIGINT, table_id VARCHAR, file VARCHAR, row_number BIGINT, "column" VARCHAR, value VARCHAR,
    reason VARCHAR, rule VARCHAR, key VARCHAR, raw JSON
)"""
LOG_DDL = """
CREATE TABLE IF NOT EXISTS ingest_log (
    ingest_id BIGINT PRIMARY KEY, table_id VARCHAR, file VARCHAR, sha256 VARCHAR,
    rows_read BIGINT, rows_accepted BIGINT, rows_quarantined BIGINT, ingested_at TIMESTAMP
)"""
_MAX_HEADER_BYTES = 1 << 20
Suppress = Callable[[Table, pd.DataFrame], np.ndarray]  # rows (as text) of a table -> which belong to erased people


class Rows(Protocol):
    """Rows that reach a table through a mapping (`c360.features.mapping`) instead of a contract-shaped CSV file."""

    @property
    def file(self) -> str:
        """The `_file` of the rows: the input file or URL they come from."""

    def batches(self, cursor: duckdb.DuckDBPyConnection, chunk_rows: int) -> Iterator[pyarrow.Table]:
        """The rows as text: `_row` (the row in the input, 1-based) and the table's columns, in that order."""


class IngestError(Exception):
    """A whole file cannot be loaded (missing, not UTF-8, malformed CSV, missing columns): none of it was."""


class IngestWarning(UserWarning):
    """Something was left out on purpose: an unknown file or column, an absent optional column."""


@dataclass(frozen=True)
class FileReport:
    table_id: str
    file: Path
    read: int
    accepted: int
    quarantined: int
    skipped: bool = False
    suppressed: int = 0
    closed: int = 0  # keys a snapshot no longer holds: deleted at the source


@dataclass(frozen=True)
class _Load:
    """One file being loaded: where its contract columns are, and its lineage."""

    table: Table
    path: Path
    n_fields: int
    positions: tuple[int | None, ...]
    ingest_id: int
    max_line: int
    suppress: Suppress | None = None
    mode: str = "increment"
    at: datetime | None = None  # the moment the export was taken
    rows: Rows | None = None  # a mapped input's rows, read in place of the CSV file at `path`
    also_held: str | None = None  # a query of the keys the other files of a snapshot in several files hold

    @property
    def file(self) -> str:
        return self.rows.file if self.rows is not None else str(self.path.resolve())


def _scalar(con: duckdb.DuckDBPyConnection, sql: str, params: object = None) -> Any:
    row = con.execute(sql, params).fetchone()
    assert row is not None, sql
    return row[0]


# --- warehouse schema ------------------------------------------------------------------------------------


LINEAGE = {"_file": "VARCHAR", "_row": "BIGINT", "_ingest_id": "BIGINT", versions.VALID_FROM: "TIMESTAMP"}


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the source tables and their histories (`versions`), `quarantine` and `ingest_log`; add the contract
    and lineage columns that old tables lack."""
    for t in TABLES:
        columns = {c.name: SQL_TYPES[c.kind] for c in t.columns} | LINEAGE
        _ensure_table(con, t.sql_name, columns)
        _ensure_table(con, versions.history(t), columns | {versions.VALID_TO: "TIMESTAMP"})
    con.execute(QUARANTINE_DDL)
    con.execute(LOG_DDL)


def upgrade(con: duckdb.DuckDBPyConnection) -> None:
    """A warehouse an older c360 wrote gains the tables and columns this one reads (`ensure_schema`: the rows'
    versions, say); one nothing was ever loaded into stays empty."""
    if warehouse.has_table(con, "ingest_log"):
        ensure_schema(con)


def _ensure_table(con: duckdb.DuckDBPyConnection, name: str, columns: dict[str, str]) -> None:
    con.execute(f"CREATE TABLE IF NOT EXISTS {q(name)} ({', '.join(f'{q(c)} {k}' for c, k in columns.items())})")
    existing = _columns_of(con, name)
    for column, kind in columns.items():
        if column not in existing:
            con.execute(f"ALTER TABLE {q(name)} ADD COLUMN {q(column)} {kind}")


def _columns_of(con: duckdb.DuckDBPyConnection, table_name: str) -> tuple[str, ...]:
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ?", [table_name])
    return tuple(r[0] for r in rows.fetchall())


# --- finding files ---------------------------------------------------------------------------------------


def discover(source: Path) -> list[tuple[Table, Path]]:
    """Source files under `source` (`<silo>/<table>*.csv`, or one such file), parents first, batches by name.

    Files that match no table are left out with one IngestWarning naming them; dot-files are ignored.
    """
    source = Path(source)
    if source.is_file():
        table = _table_for(source)
        if table is None:
            raise IngestError(f"{source}: not a source file of the contract (expected <silo>/<table>*.csv)")
        return [(table, source)]
    if not source.is_dir():
        raise IngestError(f"{source}: file not found")
    found, unknown = [], []
    for path in sorted(source.rglob("*")):
        if path.is_dir() or any(p.startswith(".") for p in path.relative_to(source).parts):
            continue
        table = _table_for(path) if path.parent.parent == source else None
        if table is None:
            unknown.append(str(path.relative_to(source)))
        else:
            found.append((table, path))
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        warnings.warn(f"{source}: {len(unknown)} file(s) match no table of the contract, ignored: "
                      f"{', '.join(unknown[:5])}{more}", IngestWarning, stacklevel=2)
    order = {t.id: i for i, t in enumerate(TABLES)}
    return sorted(found, key=lambda tp: (order[tp[0].id], tp[1].name))


def _table_for(path: Path) -> Table | None:
    if path.suffix.lower() != ".csv":
        return None
    matches = [t for t in TABLES if t.silo == path.parent.name and path.stem.startswith(t.name)]
    # the longest name wins, so a table "users_archive" would not be read as a batch of "users"
    return max(matches, key=lambda t: len(t.name), default=None)


# --- entry points ----------------------------------------------------------------------------------------


def ingest(
    con: duckdb.DuckDBPyConnection,
    source: Path,
    on_file: Callable[[FileReport], None] | None = None,
    *,
    chunk_rows: int = CHUNK_ROWS,
    max_line: int = MAX_LINE,
    suppress: Suppress | None = None,
    mode: str | None = None,
    exported_at: datetime | None = None,
) -> list[FileReport]:
    """Load every source file under `source` (see `discover`) into the warehouse behind `con`.

    Each file is its own transaction, so `con` must not be inside one. The first broken file raises
    IngestError: the files before it stay loaded, it loads nothing and the files after it are not tried.
    Fix it and run again; files already loaded are skipped by their hash. `on_file` gets each file's report
    as soon as the file is done (for progress bars). A file with a line longer than `max_line` bytes is broken.
    Rows `suppress` selects are dropped unread. `mode` and `exported_at`: see `ingest_file`.
    """
    ensure_schema(con)
    reports = []
    for table, path in discover(source):
        report = ingest_file(con, table, path, chunk_rows=chunk_rows, max_line=max_line, suppress=suppress,
                             mode=mode, exported_at=exported_at)
        reports.append(report)
        if on_file is not None:
            on_file(report)
    return reports


def ingest_file(
    con: duckdb.DuckDBPyConnection, table: Table, path: Path, *, chunk_rows: int = CHUNK_ROWS,
    max_line: int = MAX_LINE, suppress: Suppress | None = None, mode: str | None = None,
    exported_at: datetime | None = None,
) -> FileReport:
    """Load one file of `table` in one transaction (the schema must exist, see `ensure_schema`).

    `mode` says how the file arrives (`contract.ARRIVALS`; default the table's `arrives`): a snapshot ends the
    keys it does not hold. `exported_at` is the moment the export was taken (naive UTC; default the file's
    modification time): a changed row's new version is valid from it (see `versions`).
    """
    path = Path(path)
    mode = _mode(table, mode)
    digest, longest = file_sha256(path)
    if _seen(con, table, digest):
        return FileReport(table.id, path, 0, 0, 0, skipped=True)
    if longest > max_line:  # DuckDB's parallel reader can drop such a line, at the end of a file, without a word
        raise IngestError(f"{path}: {_long_line_problem(path, max_line)}")
    header = read_header(path)
    positions = _column_positions(header, table, path)
    at = exported_at or _modified(path)
    return _logged(con, digest, chunk_rows, lambda ingest_id: _Load(
        table, path, len(header), positions, ingest_id, max_line, suppress, mode, at))


def ingest_rows(
    con: duckdb.DuckDBPyConnection, table: Table, path: Path, rows: Rows, digest: str, *,
    chunk_rows: int = CHUNK_ROWS, suppress: Suppress | None = None, mode: str | None = None,
    exported_at: datetime | None = None, also_held: str | None = None,
) -> FileReport:
    """Load mapped `rows` of `table` (from the input at `path`) like a file: the same checks, quarantine and log.

    `digest` stands for the file's sha256: rows with a digest already logged for the table are skipped. `mode` and
    `exported_at`: see `ingest_file`. `also_held`: for the last file of a snapshot in several files, a query of the
    keys the others hold, which the snapshot does not end.
    """
    mode = _mode(table, mode)
    if _seen(con, table, digest):
        return FileReport(table.id, path, 0, 0, 0, skipped=True)
    at = exported_at or _modified(path)
    return _logged(con, digest, chunk_rows, lambda ingest_id: _Load(
        table, path, 0, (), ingest_id, MAX_LINE, suppress, mode, at, rows, also_held))


def _mode(table: Table, mode: str | None) -> str:
    """How a file of `table` arrives: `mode`, or the table's own."""
    mode = mode or table.arrives
    if mode not in ARRIVALS:
        raise IngestError(f"unknown mode {mode!r}: one of {', '.join(ARRIVALS)}")
    return mode


def _seen(con: duckdb.DuckDBPyConnection, table: Table, digest: str) -> bool:
    seen = "SELECT 1 FROM ingest_log WHERE table_id = ? AND sha256 = ?"
    return con.execute(seen, [table.id, digest]).fetchone() is not None


def _logged(
    con: duckdb.DuckDBPyConnection, digest: str, chunk_rows: int, make_load: Callable[[int], _Load]
) -> FileReport:
    """Load in one transaction, and log the load with its digest."""
    con.begin()
    try:
        ingest_id = _scalar(con, "SELECT coalesce(max(ingest_id), 0) + 1 FROM ingest_log")
        load = make_load(ingest_id)
        report = _load(con, load, chunk_rows)
        con.execute(
            "INSERT INTO ingest_log "
            "VALUES ($id, $table_id, $file, $sha, $read, $accepted, $quarantined, $at)",
            {"id": ingest_id, "table_id": load.table.id, "file": load.file, "sha": digest, "read": report.read,
             "accepted": report.accepted, "quarantined": report.quarantined,
             "at": datetime.now(UTC).replace(tzinfo=None)})
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return report


def _modified(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).replace(tzinfo=None)


def quarantine_summary(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Quarantined values per table and rule (required, enum, range, int, ...), with one example reason."""
    if not warehouse.has_table(con, "quarantine"):  # nothing ingested yet
        return pd.DataFrame(columns=["table_id", "rule", "count", "example"])
    return con.execute(
        "SELECT table_id, rule, count(*) AS count, min(reason) AS example FROM quarantine "
        "GROUP BY ALL ORDER BY table_id, count DESC, rule").df()


# --- reading a file --------------------------------------------------------------------------------------


def file_sha256(path: Path) -> tuple[str, int]:
    """The file's sha256, and the bytes of its longest line when every line break ends one (quoted ones too)."""
    digest, longest, running = hashlib.sha256(), 0, 0  # running: bytes of the line still open at a block's end
    try:
        with Path(path).open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
                ends = np.flatnonzero(np.frombuffer(block, np.uint8) == ord("\n"))
                if not len(ends):
                    running += len(block)
                    continue
                longest = max(longest, running + int(ends[0]), int(np.diff(ends).max(initial=1)) - 1)
                running = len(block) - int(ends[-1]) - 1
    except FileNotFoundError:
        raise IngestError(f"{path}: file not found") from None
    except OSError as err:
        raise IngestError(f"{path}: cannot read ({err.strerror})") from None
    return digest.hexdigest(), max(longest, running)


def read_header(path: Path) -> list[str]:
    """Column names on the file's first line, stripped and lower-cased."""
    with Path(path).open("rb") as f:
        line = f.readline(_MAX_HEADER_BYTES)
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise IngestError(f"{path}: not UTF-8 encoded (header, byte {err.start})") from None
    header = next(csv.reader([text]), None)
    if not header:
        raise IngestError(f"{path}: empty file, no header row")
    return [h.strip().lower() for h in header]


def _column_positions(header: list[str], table: Table, path: Path) -> tuple[int | None, ...]:
    """Where each contract column is in the file; None for an absent optional column."""
    wanted = set(table.column_names)
    doubled = sorted({h for h in header if h in wanted and header.count(h) > 1})
    if doubled:
        raise IngestError(f"{path}: duplicate column(s) {', '.join(doubled)}")
    missing = [c.name for c in table.columns if c.required and c.name not in header]
    if missing:
        raise IngestError(f"{path}: missing required column(s) {', '.join(missing)}")
    absent = [c.name for c in table.columns if c.name not in header]
    if absent:
        warnings.warn(f"{path}: optional column(s) {', '.join(absent)} absent, loaded as empty",
                      IngestWarning, stacklevel=4)
    extra = [h for h in header if h not in wanted]
    if extra:
        warnings.warn(f"{path}: column(s) {', '.join(map(repr, extra))} not in the contract of {table.id}, "
                      "ignored", IngestWarning, stacklevel=4)
    return tuple(header.index(c.name) if c.name in header else None for c in table.columns)


def _read_csv_sql(n_fields: int, max_line: int) -> str:
    # Strict and without sniffing: a row with the wrong number of fields or an open quote is an error, not
    # a guess. Every field stays text so that parse() decides what is valid. All fields are selected, as
    # DuckDB checks UTF-8 only in the columns a query reads.
    columns = ", ".join(f"'c{i}': 'VARCHAR'" for i in range(n_fields))
    return (
        f"SELECT * FROM read_csv($path, header = true, auto_detect = false, columns = {{{columns}}}, "
        "delim = ',', quote = '\"', escape = '\"', strict_mode = true, null_padding = false, "
        f"max_line_size = {max_line + 2})"  # DuckDB wants room for the line's end
    )


def _raw_batches(con: duckdb.DuckDBPyConnection, load: _Load, chunk_rows: int) -> Iterator[pyarrow.Table]:
    """The file's contract columns as text, `chunk_rows` rows at a time, plus `_row` (1-based, no header).

    DuckDB's parallel reader keeps file order when preserve_insertion_order is on, so counting gives exact
    row numbers across chunks.
    """
    cursor = con.cursor()  # a second connection: the CSV streams while `con` writes in its transaction
    try:
        cursor.execute("SET SESSION preserve_insertion_order = true")
        if load.rows is not None:
            yield from load.rows.batches(cursor, chunk_rows)
            return
        first = 1
        for batch in _csv_batches(cursor, load, chunk_rows):
            n = batch.num_rows
            if not n:
                continue
            columns = [pyarrow.array(np.arange(first, first + n, dtype=np.int64))] + [
                batch.column(p) if p is not None else pyarrow.nulls(n, pyarrow.string())
                for p in load.positions
            ]
            yield pyarrow.Table.from_arrays(columns, names=["_row", *load.table.column_names])
            first += n
    finally:
        cursor.close()


def _csv_batches(
    cursor: duckdb.DuckDBPyConnection, load: _Load, chunk_rows: int
) -> Iterator[pyarrow.RecordBatch]:
    try:
        result = cursor.execute(_read_csv_sql(load.n_fields, load.max_line), {"path": str(load.path)})
        yield from result.to_arrow_reader(chunk_rows)
    except (duckdb.Error, pyarrow.ArrowException, OSError) as err:  # mid-file errors come through Arrow
        raise IngestError(f"{load.path}: {_csv_problem(err, load)}") from None


def _csv_problem(err: Exception, load: _Load) -> str:
    text = str(err)
    # DuckDB says a line is too long only when it is a little too long: a much longer one it reports as an
    # unterminated quote, or as a file its parallel reader cannot read
    if any(sign in text for sign in _LONG_LINE_SIGNS) and (long := _long_line_problem(load.path, load.max_line)):
        return long
    line = re.search(r"CSV Error on Line: (\d+)", text)
    where = f" at line {line.group(1)}" if line else ""
    if fields := re.search(r"Expected Number of Columns: (\d+) Found: (\d+)", text):
        return f"wrong number of fields{where} (expected {fields.group(1)}, found {fields.group(2)})"
    if "unterminated quote" in text:
        return f"unterminated quote{where}"
    if "Invalid unicode" in text:
        return f"not UTF-8 encoded{where}"
    if "No files found" in text:
        return "file not found"
    return f"malformed CSV{where}: {text.splitlines()[0]}"


_LONG_LINE_SIGNS = ("Maximum line size", "unterminated quote", "Parallel CSV Reader")


def _long_line_problem(path: Path, limit: int) -> str | None:
    if (found := _long_line(path, limit)) is None:
        return None
    number, size, closed = found
    if not closed:
        return f"unterminated quote at line {number}"
    return f"line {number} is {size:,} bytes long, over the limit of {limit:,} bytes of a CSV line (C360_CSV_MAX_LINE)"


def _long_line(path: Path, limit: int) -> tuple[int, int, bool] | None:
    """The first line longer than `limit` bytes: (number, bytes, whether it ends before the file does), or None.

    Lines as DuckDB counts them: the header is line 1, and a line break inside quotes does not end a line.
    """
    number, start, quoted, offset = 1, 0, False, 0
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            for found in re.finditer(rb'["\n]', block):
                if found.group() == b'"':
                    quoted = not quoted  # an escaped quote ("") flips twice
                elif not quoted:
                    end = offset + found.start()
                    if end - start > limit:
                        return number, end - start, True
                    number, start = number + 1, end + 1
            offset += len(block)
    return (number, offset - start, not quoted) if offset - start > limit else None


def _raw_frame(raw: pyarrow.Table) -> pd.DataFrame:
    frame = raw.to_pandas(types_mapper={pyarrow.string(): TEXT, pyarrow.large_string(): TEXT}.get)
    return frame.set_index("_row")


# --- row checks ------------------------------------------------------------------------------------------


def parse(raw: pd.DataFrame, table: Table) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw text -> (values of their kinds, one failure row per bad value: row, column, value, reason, rule).

    `raw` holds the table's columns as text (missing or "" = no value), indexed by row number; the failures'
    `row` is that index. A value that does not parse is missing in the typed frame and fails once, as
    unparseable, not again as a missing required value.
    """
    typed, unparsed = {}, []
    for col in table.columns:
        text = raw[col.name].astype(TEXT)
        if col.kind == "str":
            typed[col.name] = _blank_to_na(text)
            continue
        text = _blank_to_na(text.str.strip())
        to_kind, reason = _PARSERS[col.kind]
        typed[col.name] = values = to_kind(text)
        bad = (text.notna() & values.isna()).to_numpy(dtype=bool)
        if bad.any():
            unparsed.append(_failures(raw.index[bad], col.name, raw[col.name][bad], reason, col.kind))
    frame = pd.DataFrame(typed, index=raw.index)
    checked = _contract_failures(frame, raw, table)
    if unparsed:
        unparsed_cells = pd.MultiIndex.from_frame(pd.concat(unparsed)[["row", "column"]])
        checked = checked[~pd.MultiIndex.from_frame(checked[["row", "column"]]).isin(unparsed_cells)]
    failures = pd.concat([*unparsed, checked], ignore_index=True)
    return frame, failures.sort_values(["row", "column"], ignore_index=True)


def _blank_to_na(text: pd.Series) -> pd.Series:
    """`text` (Arrow strings) with "" missing, in Arrow: pandas' `mask` took a quarter of parsing a few events."""
    array = pyarrow.array(text.array)
    blank = pyarrow.compute.if_else(pyarrow.compute.equal(array, ""), pyarrow.scalar(None, array.type), array)
    return pd.Series(pd.arrays.ArrowStringArray(blank), index=text.index, name=text.name)


def _floats(number: pd.Series) -> np.ndarray:
    return number.to_numpy(dtype="float64", na_value=np.nan)


def _to_int(text: pd.Series) -> pd.Series:
    number = pd.to_numeric(text, errors="coerce")
    if pd.api.types.is_signed_integer_dtype(number):
        return number.astype("Int64")
    value = _floats(number)
    with np.errstate(invalid="ignore"):
        whole = np.isfinite(value) & (value == np.round(value)) & (np.abs(value) < 2.0**63)
    return pd.Series(np.where(whole, value, np.nan), index=text.index).astype("Int64")


def _to_float(text: pd.Series) -> pd.Series:
    value = _floats(pd.to_numeric(text, errors="coerce"))
    return pd.Series(np.where(np.isfinite(value), value, np.nan), index=text.index)


def to_datetime(text: pd.Series) -> pd.Series:
    # ISO 8601 only (dates, date-times, with or without an offset): "03/04/2025" is ambiguous, so rejected.
    # Offsets are converted, then dropped: the warehouse holds naive UTC.
    return pd.to_datetime(text, errors="coerce", format="ISO8601", utc=True).dt.tz_convert(None)


_PARSERS: dict[str, tuple[Callable[[pd.Series], pd.Series], str]] = {
    "int": (_to_int, "not a valid integer"),
    "float": (_to_float, "not a valid number"),
    "datetime": (to_datetime, "not a valid datetime"),
}


def _failures(rows, column, values, reason, rule) -> pd.DataFrame:
    values = pd.Series(values, dtype=object)
    values = values.where(values.notna() & values.ne(""), None)
    return pd.DataFrame({
        "row": np.asarray(rows, dtype="int64"), "column": column,
        "value": values.to_numpy(), "reason": reason, "rule": rule,
    })


@cache
def _schema(table_id: str) -> pa.DataFrameSchema:
    # The contract's schema without a dtype check of text: parse() builds text as Arrow strings itself. Checked as
    # `str`, pandera calls isinstance on every value (10x all the other checks together); as Arrow strings it
    # answers per element and formats the (empty) failure cases of each column on every call (pandera 0.35): a
    # third of checking a few events.
    t = contract.table(table_id)
    text_columns = {c.name: {"dtype": None} for c in t.columns if c.kind == "str"}
    return contract.schema(table_id).update_columns(text_columns)


def _contract_failures(typed: pd.DataFrame, raw: pd.DataFrame, table: Table) -> pd.DataFrame:
    import pandera.pandas as pa

    if contract.passes(table.id, typed):  # most batches: no report to make
        return _failures([], None, [], None, None)
    try:
        _schema(table.id).validate(typed, lazy=True)
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases
    else:
        return _failures([], None, [], None, None)
    if cases["index"].isna().any():
        # a dtype or missing-column error: parse() built the wrong frame, not a problem of the data
        raise RuntimeError(f"{table.id}: contract check failed on no row: {cases.to_dict('records')}")
    # a check across columns (an ordered pair) fails once per column of the row: blame the later column
    later = {f"{b} before {a}": b for a, b in table.ordered}
    across = cases["schema_context"] != "Column"
    cases = cases.assign(column=cases["column"].where(~across, cases["check"].map(later)))
    cases = cases.drop_duplicates(["index", "column", "check"])
    rows, columns = cases["index"].astype("int64").to_numpy(), cases["column"].to_numpy()
    values = [raw.at[r, c] if c in raw.columns else None for r, c in zip(rows, columns, strict=True)]
    reasons = cases["check"].replace({"not_nullable": "required value missing"}).to_numpy()
    failures = _failures(rows, None, values, None, None)
    return failures.assign(column=columns, reason=reasons, rule=[_rule(r) for r in reasons])


def _rule(reason: str) -> str:
    if reason in ("required value missing", "empty"):
        return "required"
    if reason.startswith("not one of"):
        return "enum"
    if reason.startswith(("below minimum", "above maximum")):
        return "range"
    if " before " in reason:
        return "ordered"
    return "contract"


# --- loading ---------------------------------------------------------------------------------------------


def _load(con: duckdb.DuckDBPyConnection, load: _Load, chunk_rows: int) -> FileReport:
    """Rows of one file into its table and quarantine; the caller holds the transaction."""
    # Rows that pass the row checks wait in a temp table until the keys and references of the whole file are
    # checked: deleting rows from the table inside the transaction instead makes the commit rewrite them all.
    # Chunks go in through relations (con.from_arrow), not con.register: a view registered inside a
    # transaction keeps its data alive until the commit, which grows memory with the file.
    columns = ", ".join(f"{q(c.name)} {SQL_TYPES[c.kind]}" for c in load.table.columns)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _ingest_stage (_row BIGINT, {columns})")
    read = suppressed = 0
    for raw in _raw_batches(con, load, chunk_rows):
        read += raw.num_rows
        frame = _raw_frame(raw)
        if load.suppress is not None:
            dropped = load.suppress(load.table, frame)
            suppressed += int(dropped.sum())
            raw, frame = raw.filter(pyarrow.array(~dropped)), frame[~dropped]
        typed, failures = parse(frame, load.table)
        if len(failures):
            _quarantine(con, load, con.from_arrow(pyarrow.Table.from_pandas(failures)), raw)
        good = typed[~typed.index.isin(failures["row"])].reset_index()
        con.from_arrow(pyarrow.Table.from_pandas(good, preserve_index=False)).insert_into("_ingest_stage")
    if last_bad := _key_and_ref_failures(con, load):
        # a second pass over the file, so that these rows too are quarantined with the text the file had
        for raw in _raw_batches(con, load, chunk_rows):
            if raw["_row"][0].as_py() > last_bad:
                break
            _quarantine(con, load, con.table("_ingest_bad"), raw)
    accepted = _move_into_place(con, load)
    closed = _close_missing(con, load) if load.mode == "snapshot" else 0
    con.execute("DROP TABLE _ingest_stage; DROP TABLE _ingest_bad")
    quarantined = _scalar(con, "SELECT count(DISTINCT row_number) FROM quarantine WHERE ingest_id = $id",
                          {"id": load.ingest_id})
    if read != accepted + quarantined + suppressed:
        raise RuntimeError(f"{load.path}: read {read} rows, accepted {accepted} + quarantined {quarantined} "
                           f"+ suppressed {suppressed}")
    return FileReport(load.table.id, load.path, read, accepted, quarantined, suppressed=suppressed, closed=closed)


def _lit(text: str) -> str:
    """SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _move_into_place(con: duckdb.DuckDBPyConnection, load: _Load) -> int:
    """Put the staged rows that passed the key and reference checks in place, as versions from the export's
    moment (`versions.place`); return how many."""
    good = 'FROM _ingest_stage s ANTI JOIN _ingest_bad b ON s._row = b."row"'
    versions.place(con, load.table, f"""SELECT s.* EXCLUDE (_row), {_lit(load.file)} AS _file, s._row,
                                               {load.ingest_id} AS _ingest_id, $at::TIMESTAMP AS _at {good}""",
                   {"at": load.at})
    return _scalar(con, f"SELECT count(*) {good}")


def _close_missing(con: duckdb.DuckDBPyConnection, load: _Load) -> int:
    """End the rows whose key a snapshot does not hold, accepted or quarantined; return how many."""
    held = f"""SELECT {q(load.table.key)} FROM _ingest_stage
               UNION SELECT key FROM quarantine WHERE ingest_id = {load.ingest_id} AND key IS NOT NULL"""
    if load.also_held is not None:
        held += f" UNION SELECT key FROM ({load.also_held})"
    return versions.close(con, load.table, held, load.at)


def _quarantine(
    con: duckdb.DuckDBPyConnection, load: _Load, failures: duckdb.DuckDBPyRelation, raw: pyarrow.Table
) -> None:
    """Quarantine the `failures` (row, column, value, reason, rule) that fall in this chunk of the file."""
    first, last = raw["_row"][0].as_py(), raw["_row"][-1].as_py()
    raw_row = ", ".join(f"{q(name)} := r.{q(name)}" for name in load.table.column_names)
    (failures.set_alias("f")
        .filter(f'f."row" BETWEEN {first} AND {last}')
        .join(con.from_arrow(raw).set_alias("r"), 'f."row" = r._row')
        .order('f."row", f."column"')
        .project(f"""{load.ingest_id}, {_lit(load.table.id)}, {_lit(load.file)}, f."row", f."column", f.value,
                     f.reason, f.rule, nullif(r.{q(load.table.key)}, ''), to_json(struct_pack({raw_row}))""")
        .insert_into("quarantine"))


def _key_and_ref_failures(con: duckdb.DuckDBPyConnection, load: _Load) -> int:
    """Put this file's key and reference failures in `_ingest_bad`; return the last row with one, or 0.

    `_ingest_bad` has the columns of parse()'s failures: row, column, value, reason, rule.

    A key belongs to its first row in the file, whether that row was accepted or quarantined; a key loaded
    by an earlier file is not a failure: the row is its new version (`_move_into_place`). References are
    checked against every key the parent has read, quarantined or deleted at the source since, so that one bad
    parent row does not take its children down with it.
    """
    t = load.table
    key = q(t.key)
    this = f"SELECT {key} AS key, _row FROM _ingest_stage"
    checks = [
        f"""SELECT r._row, '{t.key}', r.key,
                   'duplicate key ''' || r.key || ''', first at row ' || f.first_row, 'duplicate'
            FROM ({this}) r JOIN (
                SELECT key, min(_row) AS first_row FROM (
                    {this}
                    UNION ALL
                    SELECT DISTINCT key, row_number FROM quarantine WHERE ingest_id = $id AND key IS NOT NULL)
                GROUP BY key HAVING count(*) > 1) f ON r.key = f.key
            WHERE r._row > f.first_row""",
    ]
    for ref in t.refs:
        parent = contract.table(ref.table)
        column = q(ref.column)
        # refs point at the parent's key, which is what quarantine keeps of a quarantined row
        parent_keys = f"""SELECT {q(parent.key)} AS key FROM {q(parent.sql_name)}
                          UNION ALL SELECT {q(parent.key)} FROM {q(versions.history(parent))}
                          UNION ALL SELECT key FROM quarantine WHERE table_id = '{parent.id}'"""
        if parent.id == t.id:
            parent_keys += f" UNION ALL SELECT {key} FROM _ingest_stage"
        checks.append(
            f"""SELECT r._row, '{ref.column}', r.{column},
                       'unknown {ref.parent_column} ''' || r.{column} || '''', 'reference'
                FROM _ingest_stage r ANTI JOIN ({parent_keys}) p ON r.{column} = p.key
                WHERE r.{column} IS NOT NULL""")
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _ingest_bad AS SELECT * FROM ("
        + "\nUNION ALL\n".join(checks)
        + ') AS bad ("row", "column", value, reason, rule) ORDER BY "row", "column"',
        {"id": load.ingest_id})
    return _scalar(con, 'SELECT coalesce(max("row"), 0) FROM _ingest_bad')
