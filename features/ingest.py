"""Load source CSV exports into the DuckDB warehouse, quarantining every row that breaks the contract.

Each row read is either accepted into its table or written to `quarantine` with its reason and the raw row,
so per file read = accepted + quarantined. A file loads in one transaction, or not at all when it is broken
as a whole (`IngestError`). A file whose content (sha256) is already in `ingest_log` is skipped, so running
`ingest` again over the same directory only loads the new batches.

Per file: hash -> check the header -> stream chunks out of DuckDB's CSV reader -> parse and check the rows
(pandas, pandera) -> stage the good ones -> check keys and references in SQL -> move into place -> log.
"""

from __future__ import annotations

import csv
import hashlib
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow

from features import contract
from features.contract import TABLES, Table

CHUNK_ROWS = 500_000
SQL_TYPES = {"str": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "datetime": "TIMESTAMP"}
FAILURE_COLUMNS = ["row", "column", "value", "reason", "rule"]

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


@dataclass(frozen=True)
class _Load:
    table: Table
    file: str
    ingest_id: int

    @property
    def params(self) -> dict[str, object]:
        return {"id": self.ingest_id, "table_id": self.table.id, "file": self.file}


def q(name: str) -> str:
    """SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


# --- warehouse schema ------------------------------------------------------------------------------------


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the source tables, `quarantine` and `ingest_log`; add contract columns that old tables lack."""
    for t in TABLES:
        columns = [f"{q(c.name)} {SQL_TYPES[c.kind]}" for c in t.columns]
        lineage = ["_file VARCHAR", "_row BIGINT", "_ingest_id BIGINT"]
        con.execute(f"CREATE TABLE IF NOT EXISTS {q(t.sql_name)} ({', '.join(columns + lineage)})")
        existing = {
            r[0] for r in con.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = ?", [t.sql_name]).fetchall()
        }
        for c in t.columns:
            if c.name not in existing:
                con.execute(f"ALTER TABLE {q(t.sql_name)} ADD COLUMN {q(c.name)} {SQL_TYPES[c.kind]}")
    con.execute(QUARANTINE_DDL)
    con.execute(LOG_DDL)


# --- finding files ---------------------------------------------------------------------------------------


def discover(source: Path) -> list[tuple[Table, Path]]:
    """Source files under `source` (`<silo>/<table>*.csv`, or one such file), parents first, batches by name.

    Files that match no table are warned about (IngestWarning) and left out; dot-files are ignored.
    """
    source = Path(source)
    if source.is_file():
        table = _table_for(source)
        if table is None:
            raise IngestError(f"{source}: not a source file of the contract (expected <silo>/<table>*.csv)")
        return [(table, source)]
    if not source.is_dir():
        raise IngestError(f"{source}: no such file or directory")
    found = []
    for path in sorted(source.rglob("*")):
        if path.is_dir() or any(p.startswith(".") for p in path.relative_to(source).parts):
            continue
        table = _table_for(path) if path.parent.parent == source else None
        if table is None:
            warnings.warn(f"{path}: matches no table of the contract, ignored", IngestWarning, stacklevel=2)
        else:
            found.append((table, path))
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
) -> list[FileReport]:
    """Load every source file under `source` (see `discover`) into the warehouse behind `con`.

    Each file is its own transaction. The first broken file raises IngestError: the files before it stay
    loaded, it loads nothing and the files after it are not tried. Fix it and run again; the files already
    loaded are skipped by their hash. `on_file` is called with each file's report as soon as it is done.
    """
    ensure_schema(con)
    reports = []
    for table, path in discover(source):
        report = ingest_file(con, table, path, chunk_rows=chunk_rows)
        reports.append(report)
        if on_file is not None:
            on_file(report)
    return reports


def ingest_file(
    con: duckdb.DuckDBPyConnection, table: Table, path: Path, *, chunk_rows: int = CHUNK_ROWS
) -> FileReport:
    """Load one file of `table` in one transaction (schema must exist, see `ensure_schema`)."""
    path = Path(path)
    digest = file_sha256(path)
    seen = "SELECT 1 FROM ingest_log WHERE table_id = ? AND sha256 = ?"
    if con.execute(seen, [table.id, digest]).fetchone():
        return FileReport(table.id, path, 0, 0, 0, skipped=True)
    header = read_header(path)
    con.begin()
    try:
        ingest_id = con.execute("SELECT coalesce(max(ingest_id), 0) + 1 FROM ingest_log").fetchone()[0]
        load = _Load(table, str(path.resolve()), ingest_id)
        report = _load_rows(con, load, path, header, chunk_rows)
        con.execute(
            "INSERT INTO ingest_log "
            "VALUES ($id, $table_id, $file, $sha, $read, $accepted, $quarantined, $at)",
            load.params | {"sha": digest, "read": report.read, "accepted": report.accepted,
                           "quarantined": report.quarantined, "at": datetime.now(UTC).replace(tzinfo=None)})
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return report


def quarantine_summary(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Quarantined values per table and rule (required, enum, range, int, ...), with one example reason."""
    return con.execute(
        "SELECT table_id, rule, count(*) AS count, min(reason) AS example FROM quarantine "
        "GROUP BY ALL ORDER BY table_id, count DESC, rule").df()


# --- reading a file --------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except FileNotFoundError:
        raise IngestError(f"{path}: file not found") from None
    except OSError as err:
        raise IngestError(f"{path}: cannot read ({err.strerror})") from None
    return digest.hexdigest()


def read_header(path: Path) -> list[str]:
    """Column names of the file's first line, stripped and lower-cased."""
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


def _column_positions(header: list[str], table: Table, path: Path) -> list[int | None]:
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
                      IngestWarning, stacklevel=3)
    extra = [h for h in header if h not in wanted]
    if extra:
        warnings.warn(f"{path}: column(s) {', '.join(map(repr, extra))} not in the contract of {table.id}, "
                      "ignored", IngestWarning, stacklevel=3)
    return [header.index(c.name) if c.name in header else None for c in table.columns]


def _read_csv_sql(n_fields: int) -> str:
    # Strict and without sniffing: a row with the wrong number of fields or an open quote is an error, not
    # a guess; every field stays text so that parse() decides what is valid.
    columns = ", ".join(f"'c{i}': 'VARCHAR'" for i in range(n_fields))
    return (
        f"SELECT * FROM read_csv($path, header = true, auto_detect = false, columns = {{{columns}}}, "
        "delim = ',', quote = '\"', escape = '\"', strict_mode = true, null_padding = false)"
    )


def read_chunks(
    con: duckdb.DuckDBPyConnection, path: Path, table: Table, header: list[str], chunk_rows: int
) -> Iterator[pd.DataFrame]:
    """Raw text of the contract columns, `chunk_rows` rows at a time, indexed by 1-based data row number."""
    positions = _column_positions(header, table, path)
    cursor = con.cursor()  # a second connection: the CSV streams while `con` writes in its transaction
    try:
        first_row = 1
        for batch in _csv_batches(cursor, path, len(header), chunk_rows):
            yield _raw_frame(batch, positions, table, first_row)
            first_row += batch.num_rows
    finally:
        cursor.close()


def _csv_batches(
    cursor: duckdb.DuckDBPyConnection, path: Path, n_fields: int, chunk_rows: int
) -> Iterator[pyarrow.RecordBatch]:
    try:
        yield from cursor.execute(_read_csv_sql(n_fields), {"path": str(path)}).to_arrow_reader(chunk_rows)
    except (duckdb.Error, pyarrow.ArrowException) as err:
        raise IngestError(f"{path}: {_csv_problem(err)}") from None


def _csv_problem(err: Exception) -> str:
    text = str(err)
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


def _raw_frame(
    batch: pyarrow.RecordBatch, positions: list[int | None], table: Table, first_row: int
) -> pd.DataFrame:
    n = batch.num_rows
    data = {
        c.name: batch.column(p).to_numpy(zero_copy_only=False) if p is not None else np.full(n, None, object)
        for c, p in zip(table.columns, positions, strict=True)
    }
    return pd.DataFrame(data, index=pd.RangeIndex(first_row, first_row + n, name="_row"))


# --- row checks ------------------------------------------------------------------------------------------


def parse(raw: pd.DataFrame, table: Table) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw text -> (values of their kinds, one failure row per bad value: row, column, value, reason, rule).

    `raw` holds the table's columns as text (None or "" = missing), indexed by row number. A value that does
    not parse becomes missing in the typed frame and fails once, as unparseable, not again as missing.
    """
    typed, parse_failures = {}, []
    for col in table.columns:
        text = raw[col.name]
        if col.kind == "str":
            typed[col.name] = _blank_to_none(text)
            continue
        text = _blank_to_none(text.str.strip())
        to_kind, reason = _PARSERS[col.kind]
        values = to_kind(text)
        bad = text.notna() & values.isna()
        if bad.any():
            parse_failures.append(_failures(raw.index[bad], col.name, raw[col.name][bad], reason, col.kind))
        typed[col.name] = values
    frame = pd.DataFrame(typed, index=raw.index)
    unparsed = pd.concat(parse_failures) if parse_failures else _no_failures()
    checked = _contract_failures(frame, raw, table)
    follow_on = pd.MultiIndex.from_frame(checked[["row", "column"]]).isin(
        pd.MultiIndex.from_frame(unparsed[["row", "column"]]))
    failures = pd.concat([unparsed, checked[~follow_on]], ignore_index=True)
    return frame, failures.sort_values(["row", "column"], ignore_index=True)


def _blank_to_none(text: pd.Series) -> pd.Series:
    return text.where(text.notna() & (text != ""), None)


def _to_int(text: pd.Series) -> pd.Series:
    number = pd.to_numeric(text, errors="coerce")
    whole = np.isfinite(number) & (number == np.round(number)) & (np.abs(number) < 2**63)
    return number.where(whole).astype("Int64")


def _to_float(text: pd.Series) -> pd.Series:
    number = pd.to_numeric(text, errors="coerce").astype("float64")
    return number.where(np.isfinite(number))


def _to_datetime(text: pd.Series) -> pd.Series:
    # ISO 8601 only (dates, date-times, with or without an offset): "03/04/2025" is ambiguous, so rejected
    return pd.to_datetime(text, errors="coerce", format="ISO8601", utc=True).dt.tz_convert(None)


_PARSERS: dict[str, tuple[Callable[[pd.Series], pd.Series], str]] = {
    "int": (_to_int, "not a valid integer"),
    "float": (_to_float, "not a valid number"),
    "datetime": (_to_datetime, "not a valid datetime"),
}


def _no_failures() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if c == "row" else object) for c in FAILURE_COLUMNS})


def _failures(rows, column, values, reason, rule) -> pd.DataFrame:
    return pd.DataFrame({"row": np.asarray(rows, dtype="int64"), "column": column,
                         "value": np.asarray(values, dtype=object), "reason": reason, "rule": rule})


def _contract_failures(typed: pd.DataFrame, raw: pd.DataFrame, table: Table) -> pd.DataFrame:
    try:
        contract.schema(table.id).validate(typed, lazy=True)
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases
    else:
        return _no_failures()
    if cases["index"].isna().any():
        # a dtype or missing-column error: parse() produced the wrong frame, not a problem of the data
        raise RuntimeError(f"{table.id}: contract check failed on no row: {cases.to_dict('records')}")
    # a check across columns (ordered pair) fails once per column of the row; blame the later column
    later = {f"{b} before {a}": b for a, b in table.ordered}
    across = cases["schema_context"] != "Column"
    cases = cases.assign(column=cases["column"].where(~across, cases["check"].map(later)))
    cases = cases.drop_duplicates(["index", "column", "check"])
    rows = cases["index"].astype("int64").to_numpy()
    columns = cases["column"].to_numpy()
    values = [raw.at[r, c] if c in raw.columns else None for r, c in zip(rows, columns, strict=True)]
    reasons = cases["check"].replace({"not_nullable": "required value missing"})
    return pd.DataFrame({"row": rows, "column": columns, "value": np.asarray(values, dtype=object),
                         "reason": reasons.to_numpy(), "rule": reasons.map(_rule).to_numpy()})


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


def _load_rows(
    con: duckdb.DuckDBPyConnection, load: _Load, path: Path, header: list[str], chunk_rows: int
) -> FileReport:
    table = load.table
    con.execute(_stage_ddl(table))
    read = 0
    for raw in read_chunks(con, path, table, header, chunk_rows):
        read += len(raw)
        typed, failures = parse(raw, table)
        if len(failures):
            _quarantine_rows(con, load, raw, failures)
        good = ~raw.index.isin(failures["row"])
        _stage(con, table, typed[good], raw[good])
    _check_keys_and_refs(con, load)
    accepted = _move_into_place(con, load)
    quarantined = con.execute(
        "SELECT count(DISTINCT row_number) FROM quarantine WHERE ingest_id = $id", {"id": load.ingest_id}
    ).fetchone()[0]
    con.execute("DROP TABLE _ingest_stage; DROP TABLE _ingest_bad")
    if read != accepted + quarantined:
        raise RuntimeError(f"{path}: read {read} rows but accepted {accepted} + quarantined {quarantined}")
    return FileReport(table.id, path, read, accepted, quarantined)


def _raw_columns(table: Table) -> list[str]:
    # Text of str columns is stored as read; other kinds keep their text beside the parsed value, so a row
    # quarantined later for its key or references still shows exactly what the file said.
    return [c.name for c in table.columns if c.kind != "str"]


def _stage_ddl(table: Table) -> str:
    columns = [f"{q(c.name)} {SQL_TYPES[c.kind]}" for c in table.columns]
    raw = [f"{q('_raw_' + name)} VARCHAR" for name in _raw_columns(table)]
    return f"CREATE OR REPLACE TEMP TABLE _ingest_stage (_row BIGINT, {', '.join(columns + raw)})"


def _stage(con: duckdb.DuckDBPyConnection, table: Table, typed: pd.DataFrame, raw: pd.DataFrame) -> None:
    chunk = typed.assign(**{f"_raw_{name}": raw[name] for name in _raw_columns(table)}).reset_index()
    con.register("_ingest_chunk", chunk)
    try:
        con.execute("INSERT INTO _ingest_stage BY NAME SELECT * FROM _ingest_chunk")
    finally:
        con.unregister("_ingest_chunk")


def _quarantine_rows(
    con: duckdb.DuckDBPyConnection, load: _Load, raw: pd.DataFrame, failures: pd.DataFrame
) -> None:
    rows = raw.loc[failures["row"].unique()].reset_index()
    raw_json = ", ".join(f"{q(c.name)} := r.{q(c.name)}::VARCHAR" for c in load.table.columns)
    con.register("_ingest_failures", failures)
    con.register("_ingest_raw", rows)
    try:
        con.execute(
            f"""INSERT INTO quarantine
            SELECT $id, $table_id, $file, f."row", f."column", f.value::VARCHAR, f.reason, f.rule,
                   r.{q(load.table.key)}::VARCHAR, to_json(struct_pack({raw_json}))
            FROM _ingest_failures f JOIN _ingest_raw r ON r._row = f."row"
            ORDER BY f."row" """, load.params)
    finally:
        con.unregister("_ingest_failures")
        con.unregister("_ingest_raw")


def _check_keys_and_refs(con: duckdb.DuckDBPyConnection, load: _Load) -> None:
    """Fill `_ingest_bad` (row, column, value, reason, rule) with the staged rows' key and reference failures.

    A key is taken by its first row in the file, whether that row was accepted or quarantined; a key
    loaded by an earlier file is taken for good. References are checked against every key the parent has
    read, quarantined or not, so one bad parent row does not take its children down with it.
    """
    t = load.table
    key = q(t.key)
    checks = [
        f"""SELECT s._row, '{t.key}', s.{key},
                   'duplicate key ''' || s.{key} || ''', first at row ' || f.first_row, 'duplicate'
            FROM _ingest_stage s JOIN (
                SELECT key, min(_row) AS first_row FROM (
                    SELECT {key} AS key, _row FROM _ingest_stage
                    UNION ALL
                    SELECT key, row_number FROM quarantine WHERE ingest_id = $id AND key IS NOT NULL)
                GROUP BY key) f ON s.{key} = f.key
            WHERE s._row > f.first_row""",
        f"""SELECT s._row, '{t.key}', s.{key}, 'key already loaded from ' || l._file, 'already_loaded'
            FROM _ingest_stage s JOIN {q(t.sql_name)} l ON s.{key} = l.{key}""",
    ]
    for ref in t.refs:
        parent = contract.table(ref.table)
        column = q(ref.column)
        # refs point at the parent's key, which is what quarantine keeps of a quarantined row
        parent_keys = f"""SELECT {q(parent.key)} AS key FROM {q(parent.sql_name)}
                          UNION ALL SELECT key FROM quarantine WHERE table_id = '{parent.id}'"""
        if parent.id == t.id:
            parent_keys += f" UNION ALL SELECT {key} FROM _ingest_stage"
        checks.append(
            f"""SELECT s._row, '{ref.column}', s.{column},
                       'unknown {ref.parent_column} ''' || s.{column} || '''', 'reference'
                FROM _ingest_stage s ANTI JOIN ({parent_keys}) p ON s.{column} = p.key
                WHERE s.{column} IS NOT NULL""")
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _ingest_bad AS SELECT * FROM ("
        + "\nUNION ALL\n".join(checks) + ') AS bad ("row", "column", value, reason, rule)',
        {"id": load.ingest_id})


def _move_into_place(con: duckdb.DuckDBPyConnection, load: _Load) -> int:
    """Quarantine the key/reference failures and append the rest to the table; returns rows appended."""
    t = load.table
    raw_columns = set(_raw_columns(t))
    raw_json = ", ".join(
        f"{q(c.name)} := s.{q('_raw_' + c.name if c.name in raw_columns else c.name)}" for c in t.columns)
    con.execute(
        f"""INSERT INTO quarantine
        SELECT $id, $table_id, $file, b."row", b."column", b.value, b.reason, b.rule, s.{q(t.key)},
               to_json(struct_pack({raw_json}))
        FROM _ingest_bad b JOIN _ingest_stage s ON s._row = b."row"
        ORDER BY b."row" """, load.params)
    columns = ", ".join(f"s.{q(c.name)}" for c in t.columns)
    return con.execute(
        f"""INSERT INTO {q(t.sql_name)}
        SELECT {columns}, $file, s._row, $id
        FROM _ingest_stage s ANTI JOIN _ingest_bad b ON s._row = b."row" """,
        {"file": load.file, "id": load.ingest_id}).fetchone()[0]
