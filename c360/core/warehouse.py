"""The DuckDB warehouse under C360_HOME: opening it, rewriting it, and summarising what it holds.

Deleted rows' bytes stay in a DuckDB file after `DELETE`, `CHECKPOINT` and `VACUUM` (measured: the erased e-mail
was still in the file); only copying the database into a new file (`COPY FROM DATABASE`) and swapping the files
drops them. `rewrite` does that, for erasure; it runs under the writer lock (`connect(s, rewrite_after=True)`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import duckdb
import pandas as pd

from c360.core import connections, locks
from c360.core.contract import TABLES
from c360.core.settings import Settings

# What a customer id may look like (identity mints C00000001...; a company's own ids may differ): checked before an
# id reaches a query, an answer or the audit trail.
CUSTOMER_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


@contextmanager
def connect(s: Settings, read_only: bool = False, rewrite_after: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """The warehouse; a writer first takes the writer lock of `s.home` (see c360.locks), a reader does not.

    `rewrite_after`: on a clean exit, once the connection is closed and while the lock is still held, `rewrite(s)`."""
    s.home.mkdir(parents=True, exist_ok=True)
    with nullcontext() if read_only else locks.writer(s) as deadline:
        # A bounded memory limit makes DuckDB spill big ingests to disk instead of growing with the file.
        con = locks.when_free(s, lambda: connections.open_file(s.warehouse, read_only=read_only,
                                                               memory_limit=s.duckdb_memory), deadline)
        try:
            yield con
        finally:
            con.close()
        if rewrite_after:
            rewrite(s)


def rewrite(s: Settings) -> None:
    """Copy the warehouse into a new file and swap it in: the bytes of deleted rows are not carried over. The
    caller holds the writer lock and no connection to the file."""
    fresh = s.warehouse.with_name(s.warehouse.name + ".rewrite")
    fresh.unlink(missing_ok=True)
    con = connections.open_file(None)
    try:
        con.execute(f"ATTACH {_literal(s.warehouse)} AS old (READ_ONLY)")
        con.execute(f"ATTACH {_literal(fresh)} AS fresh")
        con.execute("COPY FROM DATABASE old TO fresh")
        con.execute("DETACH fresh")
        con.execute("DETACH old")
    finally:
        con.close()
    fd = os.open(fresh, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(fresh, s.warehouse)
    s.warehouse.with_name(s.warehouse.name + ".wal").unlink(missing_ok=True)


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def table_counts(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Per source table: rows loaded, rows quarantined, files loaded and when last."""
    loaded = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "ingest_log" not in loaded:
        return pd.DataFrame(columns=["table", "rows", "quarantined", "files", "last_ingest"])
    counts = con.execute("""
        SELECT table_id, sum(rows_accepted)::BIGINT AS rows, sum(rows_quarantined)::BIGINT AS quarantined,
               count(*) AS files, strftime(max(ingested_at), '%Y-%m-%d %H:%M') AS last_ingest
        FROM ingest_log GROUP BY table_id""").df().set_index("table_id")
    out = pd.DataFrame({"table": [t.id for t in TABLES]}).join(counts, on="table")
    return out.fillna({"rows": 0, "quarantined": 0, "files": 0}).astype(
        {"rows": int, "quarantined": int, "files": int})


def has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name])
                .fetchone()[0])  # type: ignore[index]


DATED = {"product_events": "event_time", "billing_invoices": "issued_at", "support_tickets": "opened_at",
         "marketing_sends": "sent_at", "crm_activities": "occurred_at"}


def data_end(con: duckdb.DuckDBPyConnection) -> pd.Timestamp:
    """The day after the latest event of the warehouse: "now" for the data it holds."""
    latest = " UNION ALL ".join(f"SELECT max({c}) AS t FROM {t}" for t, c in DATED.items())
    last = con.execute(f"SELECT max(t) FROM ({latest})").fetchone()[0]  # type: ignore[index]
    return pd.Timestamp(last).normalize() + pd.Timedelta(days=1)


def customer(con: duckdb.DuckDBPyConnection, customer_id: str) -> dict | None:
    """The golden record of one customer, or None."""
    rows = con.execute("SELECT * FROM identity_customers WHERE customer_id = ?", [customer_id]).df()
    return rows.iloc[0].to_dict() if len(rows) else None
