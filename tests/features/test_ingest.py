"""Ingest: every row read is accepted or quarantined with its reason; broken files load nothing.

Rows are built from the contract itself, so a table or rule added to the contract is covered here too.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd
import pytest

import c360.features.ingest as ingest_module
from c360.core import contract
from c360.core.contract import BY_ID, TABLES, Col, Table
from c360.features.ingest import (
    FileReport,
    IngestError,
    IngestWarning,
    discover,
    ingest,
    ingest_file,
    parse,
    quarantine_summary,
)

WHEN = "2025-03-01T10:00:00Z"
ACCOUNTS, CONTACTS, ACTIVITIES = BY_ID["crm/accounts"], BY_ID["crm/contacts"], BY_ID["crm/activities"]


# ---------------------------------------------------------------- building sources from the contract


def key_of(t: Table, n: int) -> str:
    return f"{t.name}-{n}"


def _in_range(c: Col) -> str:
    value = c.min if c.min is not None else c.max if c.max is not None else 1
    return f"{value:g}"


def valid_row(t: Table, n: int, **changes: str) -> dict[str, str]:
    """Row n of `t`, valid by the contract; references point at row 1 of the parent."""
    refs = {r.column: r for r in t.refs}
    row = {}
    for c in t.columns:
        if c.name == t.key:
            row[c.name] = key_of(t, n)
        elif c.name in refs:
            row[c.name] = key_of(BY_ID[refs[c.name].table], 1)
        elif c.allowed:
            row[c.name] = c.allowed[-1]
        elif c.kind in ("int", "float"):
            row[c.name] = _in_range(c)
        elif c.kind == "datetime":
            row[c.name] = WHEN
        else:
            row[c.name] = f"{c.name} {n}"
    return row | changes


def bad_values(t: Table) -> list[tuple[str, str, str, str]]:
    """(column, value, rule, reason) for one invalid value per rule of each column of `t`."""
    cases = []
    for c in t.columns:
        if c.required:
            cases.append((c.name, "", "required", "required value missing"))
        if c.allowed:
            cases.append((c.name, "bogus", "enum", f"not one of {', '.join(c.allowed)}"))
        if c.min is not None:
            cases.append((c.name, f"{c.min - 1:g}", "range", f"below minimum {c.min:g}"))
        if c.max is not None:
            cases.append((c.name, f"{c.max + 1:g}", "range", f"above maximum {c.max:g}"))
        if c.kind == "datetime":
            cases += [(c.name, v, "datetime", "not a valid datetime") for v in ("03/01/2025", "2025-13-45")]
        if c.kind == "int":
            cases += [(c.name, v, "int", "not a valid integer") for v in ("1.5", "twelve")]
        if c.kind == "float":
            cases += [(c.name, v, "float", "not a valid number") for v in ("1.2.3", "inf")]
    for earlier, later in t.ordered:
        cases.append((later, "2025-02-28", "ordered", f"{later} before {earlier}"))
    return cases


def ancestors(t: Table) -> list[Table]:
    parents = [BY_ID[r.table] for r in t.refs if r.table != t.id]
    found = [a for p in parents for a in [*ancestors(p), p]]
    return [a for a in TABLES if a in found]


def write(source: Path, t: Table, rows: list[dict[str, str]], name: str | None = None,
          header: list[str] | None = None) -> Path:
    path = source / t.silo / f"{name or t.name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = header or t.column_names
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([[r.get(h, "") for h in header] for r in rows])
    return path


@pytest.fixture
def con(tmp_path_factory: pytest.TempPathFactory):
    with duckdb.connect(str(tmp_path_factory.mktemp("db") / "warehouse.duckdb")) as c:
        yield c


def quarantine(con, table_id: str | None = None) -> list[tuple]:
    where = "WHERE table_id = ?" if table_id else ""
    return con.execute(
        f'SELECT row_number, "column", value, rule, reason FROM quarantine {where} ORDER BY ALL',
        [table_id] if table_id else []).fetchall()


def rows_of(con, t: Table) -> int:
    return con.execute(f"SELECT count(*) FROM {t.sql_name}").fetchone()[0]


# ---------------------------------------------------------------- every rule of every table


@pytest.mark.parametrize("t", TABLES, ids=lambda t: t.id)
def test_valid_row_loads_and_each_kind_of_invalid_value_is_quarantined(con, tmp_path: Path, t: Table) -> None:
    source = tmp_path / "src"
    for parent in ancestors(t):
        write(source, parent, [valid_row(parent, 1)])
    cases = bad_values(t)
    write(source, t, [valid_row(t, 1)] + [valid_row(t, i + 2, **{c: v}) for i, (c, v, *_) in enumerate(cases)])

    report = next(r for r in ingest(con, source) if r.table_id == t.id)

    assert (report.read, report.accepted, report.quarantined) == (len(cases) + 1, 1, len(cases))
    # one failure per bad row: an unparseable required value is not also reported as missing
    expected = [(i + 2, c, v or None, rule, reason) for i, (c, v, rule, reason) in enumerate(cases)]
    assert quarantine(con, t.id) == sorted(expected)
    assert con.execute(f"SELECT {t.key}, _row FROM {t.sql_name}").fetchall() == [(key_of(t, 1), 1)]
    raw = json.loads(con.execute("SELECT raw FROM quarantine WHERE table_id = ? AND row_number = 2",
                                 [t.id]).fetchone()[0])
    assert list(raw) == t.column_names


def test_values_are_stored_as_their_kinds_and_datetimes_as_naive_utc(con, tmp_path: Path) -> None:
    subs = BY_ID["billing/subscriptions"]
    write(tmp_path, BY_ID["billing/customers"], [valid_row(BY_ID["billing/customers"], 1)])
    write(tmp_path, subs, [
        valid_row(subs, 1, seats="3", mrr=" 12.5 ", started_at="2025-03-01", ended_at=""),
        valid_row(subs, 2, seats="1e1", started_at="2025-03-01 10:00:00", ended_at="2025-03-01T12:30:00+02:00"),
        valid_row(subs, 3, started_at="2025-03-01T10:00:00Z", ended_at="2025-03-01T10:00:00.5Z"),
    ])
    ingest(con, tmp_path)
    got = con.execute("SELECT seats, mrr, started_at::VARCHAR, ended_at::VARCHAR FROM billing_subscriptions "
                      "ORDER BY _row").fetchall()
    assert got == [(3, 12.5, "2025-03-01 00:00:00", None),
                   (10, float(_in_range(subs.col("mrr"))), "2025-03-01 10:00:00", "2025-03-01 10:30:00"),
                   (1, float(_in_range(subs.col("mrr"))), "2025-03-01 10:00:00", "2025-03-01 10:00:00.5")]


def test_parse_reports_each_bad_value_once_and_keeps_row_numbers() -> None:
    raw = pd.DataFrame([valid_row(BY_ID["feedback/nps"], n) for n in (1, 2, 3)], index=[7, 8, 9])
    raw.loc[8, "score"], raw.loc[9, "score"], raw.loc[9, "responded_at"] = "ten", "11", ""
    typed, failures = parse(raw, BY_ID["feedback/nps"])
    assert str(typed["score"].dtype) == "Int64" and str(typed["responded_at"].dtype) == "datetime64[ns]"
    assert typed["score"].isna().tolist() == [False, True, False]
    assert failures[["row", "column", "value", "rule"]].values.tolist() == [
        [8, "score", "ten", "int"], [9, "responded_at", None, "required"], [9, "score", "11", "range"]]


@pytest.mark.parametrize("t", TABLES, ids=lambda t: t.id)
def test_the_quick_check_passes_a_batch_exactly_when_pandera_does(t: Table) -> None:
    """`contract.passes` (the rules on Arrow arrays, before pandera's report) says a batch passes exactly when
    pandera's validation of the contract's schema finds no failure: valid rows, rows with missing optional values,
    and each kind of invalid value alone in a batch."""
    import pandera.errors

    def pandera_passes(typed: pd.DataFrame) -> bool:
        try:
            contract.schema(t.id).validate(typed, lazy=True)
        except pandera.errors.SchemaErrors:
            return False
        return True

    optional_missing = valid_row(t, 2, **{c.name: "" for c in t.columns if not c.required})
    batches = [[valid_row(t, 1), valid_row(t, 2)], [valid_row(t, 1), optional_missing],
               *([valid_row(t, 1), valid_row(t, 2, **{c: v})] for c, v, *_ in bad_values(t))]
    typed = [parse(pd.DataFrame(rows, index=[1, 2]), t)[0] for rows in batches]
    quick = [contract.passes(t.id, frame) for frame in typed]
    assert quick == [pandera_passes(frame) for frame in typed]
    assert quick[0] and quick[1] and not all(quick)


# ---------------------------------------------------------------- keys and references


def test_duplicate_key_in_a_file_keeps_the_first_row(con, tmp_path: Path) -> None:
    write(tmp_path, ACCOUNTS, [valid_row(ACCOUNTS, 1), valid_row(ACCOUNTS, 2, segment="bogus"),
                               valid_row(ACCOUNTS, 1), valid_row(ACCOUNTS, 2), valid_row(ACCOUNTS, 3)])
    [report] = ingest(con, tmp_path)
    assert (report.read, report.accepted, report.quarantined) == (5, 2, 3)
    # the first occurrence wins even when it was itself quarantined
    assert [r[:2] + r[3:] for r in quarantine(con)] == [
        (2, "segment", "enum", "not one of consumer, smb, enterprise"),
        (3, "account_id", "duplicate", "duplicate key 'accounts-1', first at row 1"),
        (4, "account_id", "duplicate", "duplicate key 'accounts-2', first at row 2"),
    ]
    raw = json.loads(con.execute("SELECT raw FROM quarantine WHERE row_number = 3").fetchone()[0])
    assert raw == valid_row(ACCOUNTS, 1)  # the row as the file had it, not as parsed


def test_a_key_loaded_by_an_earlier_batch_is_updated_and_its_old_version_kept_in_the_history(
        con, tmp_path: Path) -> None:
    write(tmp_path, ACCOUNTS, [valid_row(ACCOUNTS, 1), valid_row(ACCOUNTS, 2, region="Mars")])
    write(tmp_path, ACCOUNTS, [valid_row(ACCOUNTS, 1), valid_row(ACCOUNTS, 2), valid_row(ACCOUNTS, 3, owner="Ann")],
          name="accounts_2026-11")
    ingest(con, tmp_path, mode="increment", exported_at=datetime(2026, 11, 1))
    write(tmp_path, ACCOUNTS, [valid_row(ACCOUNTS, 3, owner="Bob")], name="accounts_2026-12")
    reports = ingest(con, tmp_path, mode="increment", exported_at=datetime(2026, 12, 1))
    assert [(r.file.name, r.accepted, r.quarantined, r.skipped) for r in reports] == [
        ("accounts.csv", 0, 0, True), ("accounts_2026-11.csv", 0, 0, True), ("accounts_2026-12.csv", 1, 0, False)]
    assert con.execute("SELECT count(*) FROM quarantine WHERE rule <> 'enum'").fetchone()[0] == 0
    # row 1 repeated unchanged: no new version; row 2 quarantined first, then loaded as new; row 3 changed
    assert con.execute("SELECT account_id, owner, _valid_from FROM crm_accounts ORDER BY 1").fetchall() == [
        ("accounts-1", "owner 1", None), ("accounts-2", "owner 2", None),
        ("accounts-3", "Bob", datetime(2026, 12, 1))]
    assert con.execute("SELECT account_id, owner, _valid_from, _valid_to FROM crm_accounts__history").fetchall() == [
        ("accounts-3", "Ann", None, datetime(2026, 12, 1))]


def test_a_snapshot_ends_the_keys_it_no_longer_holds_and_an_increment_does_not(con, tmp_path: Path) -> None:
    write(tmp_path, ACCOUNTS, [valid_row(ACCOUNTS, n) for n in (1, 2, 3)])
    ingest(con, tmp_path, exported_at=datetime(2026, 1, 1))
    later = tmp_path / "later"
    write(later, ACCOUNTS, [valid_row(ACCOUNTS, 1), valid_row(ACCOUNTS, 2, segment="bogus")])
    increment = ingest(con, later, mode="increment", exported_at=datetime(2026, 2, 1))
    assert [(r.accepted, r.quarantined, r.closed) for r in increment] == [(1, 1, 0)]
    assert ACCOUNTS.arrives == "snapshot"
    con.execute("DELETE FROM ingest_log WHERE ingest_id = 2")  # the same file again, as a snapshot this time
    snapshot = ingest(con, later, exported_at=datetime(2026, 2, 1))
    # account 2 is in the file (quarantined), so still there; account 3 is not: deleted at the source
    assert [(r.accepted, r.quarantined, r.closed) for r in snapshot] == [(1, 1, 1)]
    assert [r[0] for r in con.execute("SELECT account_id FROM crm_accounts ORDER BY 1").fetchall()] == [
        "accounts-1", "accounts-2"]
    assert con.execute("SELECT account_id, _valid_to FROM crm_accounts__history").fetchall() == [
        ("accounts-3", datetime(2026, 2, 1))]
    with pytest.raises(IngestError, match="unknown mode"):
        ingest(con, tmp_path / "crm" / "accounts.csv", mode="full")


def test_unknown_reference_is_quarantined_and_an_empty_optional_one_is_fine(con, tmp_path: Path) -> None:
    write(tmp_path, ACCOUNTS, [valid_row(ACCOUNTS, 1)])
    write(tmp_path, CONTACTS, [valid_row(CONTACTS, 1), valid_row(CONTACTS, 2, account_id="nope")])
    write(tmp_path, ACTIVITIES, [valid_row(ACTIVITIES, 1, contact_id=""),
                                 valid_row(ACTIVITIES, 2, contact_id="ghost", account_id="nope")])
    ingest(con, tmp_path)
    assert quarantine(con, CONTACTS.id) == [(2, "account_id", "nope", "reference", "unknown account_id 'nope'")]
    assert quarantine(con, ACTIVITIES.id) == [
        (2, "account_id", "nope", "reference", "unknown account_id 'nope'"),
        (2, "contact_id", "ghost", "reference", "unknown contact_id 'ghost'")]
    assert con.execute("SELECT activity_id, contact_id FROM crm_activities").fetchall() == [("activities-1", None)]


def test_children_of_a_quarantined_parent_are_not_quarantined_with_it(con, tmp_path: Path) -> None:
    write(tmp_path, ACCOUNTS, [valid_row(ACCOUNTS, 1, segment="bogus")])
    write(tmp_path, CONTACTS, [valid_row(CONTACTS, 1)])
    write(tmp_path, ACTIVITIES, [valid_row(ACTIVITIES, 1)])
    reports = ingest(con, tmp_path, chunk_rows=1)
    assert [(r.table_id, r.accepted, r.quarantined) for r in reports] == [
        ("crm/accounts", 0, 1), ("crm/contacts", 1, 0), ("crm/activities", 1, 0)]


# ---------------------------------------------------------------- bookkeeping


def test_read_is_accepted_plus_quarantined_in_reports_log_and_tables(con, tmp_path: Path) -> None:
    write(tmp_path, ACCOUNTS, [valid_row(ACCOUNTS, n) for n in range(1, 6)] + [valid_row(ACCOUNTS, 1)])
    write(tmp_path, CONTACTS, [valid_row(CONTACTS, n, role="x" if n % 3 else "admin") for n in range(1, 8)])
    reports = ingest(con, tmp_path, chunk_rows=2)
    for r in reports:
        assert r.read == r.accepted + r.quarantined and not r.skipped
    log = con.execute("SELECT table_id, rows_read, rows_accepted, rows_quarantined, length(sha256) "
                      "FROM ingest_log ORDER BY ingest_id").fetchall()
    assert log == [("crm/accounts", 6, 5, 1, 64), ("crm/contacts", 7, 2, 5, 64)]
    assert (rows_of(con, ACCOUNTS), rows_of(con, CONTACTS)) == (5, 2)
    distinct = "SELECT count(DISTINCT row_number) FROM quarantine WHERE table_id = ?"
    assert con.execute(distinct, [CONTACTS.id]).fetchone()[0] == 5


def test_ingesting_the_same_files_again_adds_nothing_and_a_new_batch_appends(con, tmp_path: Path) -> None:
    write(tmp_path, ACCOUNTS, [valid_row(ACCOUNTS, 1), valid_row(ACCOUNTS, 2, segment="")])
    write(tmp_path, CONTACTS, [valid_row(CONTACTS, 1)])
    ingest(con, tmp_path)
    counts = lambda: (rows_of(con, ACCOUNTS), rows_of(con, CONTACTS), len(quarantine(con)),  # noqa: E731
                      con.execute("SELECT count(*) FROM ingest_log").fetchone()[0])
    before = counts()

    seen: list[FileReport] = []
    again = ingest(con, tmp_path, on_file=seen.append)
    assert seen == again and all(r.skipped and r.read == r.accepted == r.quarantined == 0 for r in again)
    assert counts() == before == (1, 1, 1, 2)

    write(tmp_path, ACCOUNTS, [valid_row(ACCOUNTS, 3)], name="accounts_2026-11")
    third = ingest(con, tmp_path, mode="increment")  # accounts arrive as snapshots by default
    assert [(r.file.name, r.skipped, r.accepted) for r in third] == [
        ("accounts.csv", True, 0), ("accounts_2026-11.csv", False, 1), ("contacts.csv", True, 0)]
    assert counts() == (2, 1, 1, 3)


def test_row_numbers_and_duplicates_stay_exact_across_chunk_boundaries(tmp_path: Path) -> None:
    rows = [valid_row(ACCOUNTS, n) for n in range(1, 5)] + [
        valid_row(ACCOUNTS, 2), valid_row(ACCOUNTS, 6, created_at="soon"), valid_row(ACCOUNTS, 7),
        valid_row(ACCOUNTS, 4)]
    write(tmp_path / "src", ACCOUNTS, rows)
    results = []
    for chunk_rows in (1, 2, 3, 1000):
        with duckdb.connect(str(tmp_path / f"w{chunk_rows}.duckdb")) as con:
            [report] = ingest(con, tmp_path / "src", chunk_rows=chunk_rows)
            results.append((report.read, report.accepted, report.quarantined, quarantine(con),
                            con.execute("SELECT _row, account_id FROM crm_accounts ORDER BY _row").fetchall()))
    assert all(r == results[-1] for r in results)
    read, accepted, quarantined, bad, good = results[-1]
    assert (read, accepted, quarantined) == (8, 5, 3)
    assert [(r[0], r[4]) for r in bad] == [
        (5, "duplicate key 'accounts-2', first at row 2"), (6, "not a valid datetime"),
        (8, "duplicate key 'accounts-4', first at row 4")]
    assert good == [(1, "accounts-1"), (2, "accounts-2"), (3, "accounts-3"), (4, "accounts-4"), (7, "accounts-7")]


def test_quarantine_summary_counts_by_table_and_rule(con, tmp_path: Path) -> None:
    write(tmp_path, ACCOUNTS, [valid_row(ACCOUNTS, 1, segment="a"), valid_row(ACCOUNTS, 2, segment="b"),
                               valid_row(ACCOUNTS, 3, created_at="x")])
    write(tmp_path, CONTACTS, [valid_row(CONTACTS, 1, account_id="nope")])
    ingest(con, tmp_path)
    summary = quarantine_summary(con)
    assert list(summary.columns) == ["table_id", "rule", "count", "example"]
    assert summary[["table_id", "rule", "count"]].values.tolist() == [
        ["crm/accounts", "enum", 2], ["crm/accounts", "datetime", 1], ["crm/contacts", "reference", 1]]


# ---------------------------------------------------------------- broken files


GOOD = ",".join(valid_row(ACCOUNTS, 1).values())
HEADER = ",".join(ACCOUNTS.column_names)
BAD_VALUE = ",".join(valid_row(ACCOUNTS, 2, segment="bogus").values())


@pytest.mark.parametrize(("content", "problem"), [
    (f"{HEADER}\n{BAD_VALUE}\n{GOOD}\n{GOOD}\nA9,Caf\xe9,smb,,NA,,,{WHEN}\n".encode("latin-1"),
     "not UTF-8 encoded at line 5"),
    (f"{HEADER}\n{BAD_VALUE}\n{GOOD}\n{GOOD}\nA9,truncated".encode(), "wrong number of fields at line 5"),
    (f"{HEADER}\n{BAD_VALUE}\n{GOOD}\n{GOOD}\n{GOOD},extra\n".encode(), "wrong number of fields at line 5"),
    (f'{HEADER}\n{BAD_VALUE}\n{GOOD}\n{GOOD}\nA9,"open,smb,,NA,,,{WHEN}\n'.encode(), "unterminated quote"),
    (f"{HEADER.replace(',segment', '').replace(',region', '')}\nA1,x,,,,{WHEN}\n".encode(),
     "missing required column(s) segment, region"),
    (f"{HEADER}\n".encode("utf-16"), "not UTF-8 encoded"),
    (b"", "empty file"),
], ids=["latin-1", "truncated row", "extra field", "unterminated quote", "missing columns", "utf-16", "empty"])
def test_a_broken_file_raises_and_loads_nothing_of_itself(con, tmp_path: Path, content: bytes,
                                                            problem: str) -> None:
    write(tmp_path, BY_ID["billing/customers"], [valid_row(BY_ID["billing/customers"], 1)])
    broken = write(tmp_path, ACCOUNTS, [])
    broken.write_bytes(content)
    with pytest.raises(IngestError) as err:
        ingest(con, tmp_path, chunk_rows=1)  # earlier chunks of the file were written, then rolled back
    assert str(broken) in str(err.value) and problem in str(err.value)
    assert rows_of(con, ACCOUNTS) == 0 and quarantine(con, ACCOUNTS.id) == []
    assert con.execute("SELECT table_id FROM ingest_log").fetchall() == []

    broken.write_text(f"{HEADER}\n{GOOD}\n")  # fixed: loads, then the files after it
    assert [r.table_id for r in ingest(con, tmp_path)] == ["crm/accounts", "billing/customers"]


def test_an_error_late_in_a_big_file_rolls_back_the_chunks_already_written(
        con, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [valid_row(ACCOUNTS, 0, segment="bogus")] + [valid_row(ACCOUNTS, n) for n in range(1, 30_000)]
    broken = write(tmp_path, ACCOUNTS, rows)
    with broken.open("a") as f:
        f.write("A9,truncated\r\n")  # csv.writer ends lines with \r\n
    written = []
    quarantine_chunk = ingest_module._quarantine
    monkeypatch.setattr(ingest_module, "_quarantine", lambda *a: written.append(quarantine_chunk(*a)))
    with pytest.raises(IngestError, match="wrong number of fields at line 30002"):
        ingest(con, tmp_path, chunk_rows=1000)
    assert written, "DuckDB read ahead the whole file: this test no longer tests the rollback"
    assert rows_of(con, ACCOUNTS) == 0 and quarantine(con) == []
    assert con.execute("SELECT count(*) FROM ingest_log").fetchone()[0] == 0


def test_any_error_while_loading_a_file_rolls_all_of_it_back(
        con, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, ACCOUNTS, [valid_row(ACCOUNTS, 1), valid_row(ACCOUNTS, 2, segment="bogus")])

    def crash(*_):
        raise RuntimeError("disk full")

    with monkeypatch.context() as m:
        m.setattr(ingest_module, "_move_into_place", crash)
        with pytest.raises(RuntimeError, match="disk full"):
            ingest(con, tmp_path)
    assert rows_of(con, ACCOUNTS) == 0 and quarantine(con) == []
    assert con.execute("SELECT count(*) FROM ingest_log").fetchone()[0] == 0
    [report] = ingest(con, tmp_path)
    assert (report.accepted, report.quarantined) == (1, 1)


def test_files_before_a_broken_one_stay_loaded(con, tmp_path: Path) -> None:
    write(tmp_path, ACCOUNTS, [valid_row(ACCOUNTS, 1)])
    write(tmp_path, CONTACTS, [valid_row(CONTACTS, 1)], header=["contact_id", "created_at"])
    done: list[FileReport] = []
    with pytest.raises(IngestError, match=r"contacts.csv: missing required column.*account_id"):
        ingest(con, tmp_path, on_file=done.append)
    assert [r.table_id for r in done] == ["crm/accounts"]
    assert (rows_of(con, ACCOUNTS), rows_of(con, CONTACTS)) == (1, 0)


LONG = 50 << 20  # DuckDB reports a line this long as an unterminated quote, or as unreadable in parallel


@pytest.mark.parametrize(("value", "size"), [
    (f'"{"x" * LONG}"', LONG + 2), ("x" * LONG, LONG), ("x" * (3 << 20), 3 << 20),
], ids=["quoted 50 MB", "50 MB", "3 MB"])
def test_a_line_over_the_limit_is_named_with_its_length_and_loads_under_a_higher_one(
        con, tmp_path: Path, value: str, size: int) -> None:
    broken = write(tmp_path, ACCOUNTS, [])
    broken.write_text(f"{HEADER}\n{GOOD}\nA2,{value},smb,,NA,,,{WHEN}\n")
    line_bytes = size + len(f"A2,,smb,,NA,,,{WHEN}")
    with pytest.raises(IngestError) as err:
        ingest(con, tmp_path)
    assert str(err.value) == (f"{broken}: line 3 is {line_bytes:,} bytes long, over the limit of 2,000,000 bytes "
                              "of a CSV line (C360_CSV_MAX_LINE)")
    assert rows_of(con, ACCOUNTS) == 0 and quarantine(con) == []
    if size < LONG:
        [report] = ingest(con, tmp_path, max_line=line_bytes)
        assert (report.read, report.accepted) == (2, 2)


def test_a_multiline_value_is_one_line_and_an_open_quote_is_not_a_long_line(con, tmp_path: Path) -> None:
    path = write(tmp_path, ACCOUNTS, [valid_row(ACCOUNTS, 1, account_name=f"one\n{'x' * 60}\ntwo"),
                                      valid_row(ACCOUNTS, 2)])
    with pytest.raises(IngestError, match=r"line 2 is 1\d\d bytes long, over the limit of 120 bytes"):
        ingest(con, tmp_path, max_line=120)  # each of its three lines is shorter, the header too
    [report] = ingest(con, tmp_path, max_line=200)
    assert (report.read, report.accepted) == (2, 2)
    # the open quote runs to the end of the file, past the limit: still an unterminated quote, on the line it opens
    path.write_text(path.read_text() + f'A9,"open,smb,,NA,,,{WHEN}\n' + f"{GOOD}\n" * 20)
    with pytest.raises(IngestError, match=r"unterminated quote at line 4$"):
        ingest(con, tmp_path, max_line=200)


def test_a_missing_file_raises(con, tmp_path: Path) -> None:
    missing = tmp_path / "crm" / "accounts.csv"
    with pytest.raises(IngestError, match=f"{missing}: file not found"):
        ingest(con, missing)
    with pytest.raises(IngestError, match=f"{missing}: file not found"):
        ingest_file(con, ACCOUNTS, missing)


# ---------------------------------------------------------------- files and headers


def test_discover_orders_parents_first_and_batches_by_name_and_warns_about_strangers(tmp_path: Path) -> None:
    for name in ("contacts_2026-02", "contacts"):
        write(tmp_path, CONTACTS, [], name=name)
    write(tmp_path, ACCOUNTS, [])
    (tmp_path / "crm" / "notes.txt").write_text("hi")
    (tmp_path / "crm" / ".DS_Store").write_text("")
    (tmp_path / "ground_truth").mkdir()
    (tmp_path / "ground_truth" / "faults.csv").write_text("x\n")
    with pytest.warns(IngestWarning, match=r"2 file\(s\) match no table.*crm/notes.txt, ground_truth/faults.csv"):
        found = discover(tmp_path)
    assert [(t.id, p.name) for t, p in found] == [
        ("crm/accounts", "accounts.csv"), ("crm/contacts", "contacts.csv"),
        ("crm/contacts", "contacts_2026-02.csv")]
    assert discover(tmp_path / "crm" / "contacts_2026-02.csv") == [(CONTACTS, found[2][1])]
    with pytest.raises(IngestError, match="not a source file"):
        discover(tmp_path / "crm" / "notes.txt")


def test_header_case_spaces_and_extra_or_absent_optional_columns(con, tmp_path: Path) -> None:
    header = [f" {c.upper()} " for c in ACCOUNTS.column_names if c != "industry"] + ["notes"]
    row = {h: valid_row(ACCOUNTS, 1)[h.strip().lower()] for h in header[:-1]} | {"notes": "n"}
    write(tmp_path, ACCOUNTS, [row], header=header)
    with pytest.warns(IngestWarning) as warned:
        [report] = ingest(con, tmp_path)
    messages = " | ".join(str(w.message) for w in warned)
    assert "optional column(s) industry absent" in messages and "'notes' not in the contract" in messages
    assert report.accepted == 1
    assert con.execute("SELECT account_id, industry FROM crm_accounts").fetchall() == [("accounts-1", None)]


def test_a_table_from_an_older_contract_gains_the_new_columns(con, tmp_path: Path) -> None:
    con.execute("CREATE TABLE crm_accounts (account_id VARCHAR, _file VARCHAR, _row BIGINT, _ingest_id BIGINT)")
    write(tmp_path, ACCOUNTS, [valid_row(ACCOUNTS, 1)])
    ingest(con, tmp_path)
    got = con.execute("SELECT account_id, account_name, created_at::VARCHAR, _row FROM crm_accounts").fetchall()
    assert got == [("accounts-1", "account_name 1", "2025-03-01 10:00:00", 1)]


def test_every_reference_points_at_its_parents_key() -> None:
    # ingest checks references against parent keys, including those kept for quarantined rows
    for t in TABLES:
        for r in t.refs:
            assert BY_ID[r.table].key == r.parent_column, (t.id, r)
            assert TABLES.index(BY_ID[r.table]) < TABLES.index(t), "parents are listed first"


def test_bad_consent_rows_are_quarantined_with_their_reason(con, tmp_path: Path) -> None:
    contacts, consents = BY_ID["marketing/contacts"], BY_ID["marketing/consents"]
    write(tmp_path, contacts, [valid_row(contacts, 1)])
    write(tmp_path, consents, [
        valid_row(consents, 1, purpose="marketing_email", status="withdrawn"),
        valid_row(consents, 2, purpose="newsletter"),
        valid_row(consents, 3, status="maybe"),
        valid_row(consents, 4, changed_at="yesterday"),
        valid_row(consents, 5, mkt_contact_id="MC-ghost"),
        valid_row(consents, 6, source=""),
    ])
    ingest(con, tmp_path)
    assert quarantine(con, consents.id) == [
        (2, "purpose", "newsletter", "enum", "not one of marketing_email, other_channels, analytics"),
        (3, "status", "maybe", "enum", "not one of granted, withdrawn"),
        (4, "changed_at", "yesterday", "datetime", "not a valid datetime"),
        (5, "mkt_contact_id", "MC-ghost", "reference", "unknown mkt_contact_id 'MC-ghost'"),
    ]
    assert con.execute("SELECT consent_id, purpose, status FROM marketing_consents ORDER BY 1").fetchall() == [
        ("consents-1", "marketing_email", "withdrawn"), ("consents-6", "analytics", "withdrawn")]


def test_an_older_warehouse_is_upgraded_and_an_empty_one_left_empty(tmp_path: Path) -> None:
    """A warehouse written before the rows' versions existed (no `_valid_from`, no histories) gains them, as the
    features and the live path read them; an empty warehouse gets no tables."""
    from c360.features import versions
    from c360.features.ingest import ensure_schema, upgrade

    contacts = BY_ID["crm/contacts"]
    with duckdb.connect(str(tmp_path / "old.duckdb")) as con:
        ensure_schema(con)
        con.execute(f"DROP TABLE {versions.history(contacts)}")
        con.execute(f"ALTER TABLE {contacts.sql_name} DROP COLUMN {versions.VALID_FROM}")
        upgrade(con)
        assert versions.VALID_FROM in {r[0] for r in con.execute(f"DESCRIBE {contacts.sql_name}").fetchall()}
        assert con.execute(f"SELECT count(*) FROM {versions.history(contacts)}").fetchone() == (0,)
    with duckdb.connect(str(tmp_path / "empty.duckdb")) as con:
        upgrade(con)
        assert con.execute("SELECT count(*) FROM information_schema.tables").fetchone() == (0,)
