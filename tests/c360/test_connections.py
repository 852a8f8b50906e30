"""DuckDB connections under threads: the snapshot history the profile page reads holds under 4 threads, and the
module-wide default connection it used to take does not (the counter-test)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from c360.core import connections
from c360.core.settings import Settings
from c360.features import store


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Eight small snapshots of 2,000 customers each."""
    s = Settings(home=tmp_path_factory.mktemp("home"))
    ids = [f"C{i:08d}" for i in range(2000)]
    for week in range(8):
        as_of = pd.Timestamp("2026-01-05") + pd.Timedelta(weeks=week)
        store.write_snapshot(s, pd.DataFrame({"customer_id": ids, "as_of": as_of, "logins": range(week, week + 2000)}))
    return s


def failures(read: Callable[[str], pd.DataFrame], threads: int = 4, calls: int = 30) -> list[str]:
    """Errors and wrong answers of `threads` threads each reading `calls` customers' histories at once."""
    found: list[str] = []

    def work(offset: int) -> None:
        for i in range(calls):
            customer = f"C{(offset * calls + i):08d}"
            try:
                rows = read(customer)
                if rows["customer_id"].tolist() != [customer] * 8:
                    found.append(f"{customer}: {len(rows)} rows")
            except Exception as e:
                found.append(type(e).__name__)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return found


def test_history_holds_under_threads(snapshots: Settings) -> None:
    assert failures(lambda c: store.history(snapshots, c)) == []


def test_the_default_connection_does_not(snapshots: Settings) -> None:
    """What the history read did before: DuckDB's module-wide connection, shared by every thread."""
    glob = str(snapshots.snapshots / "*.parquet")

    def shared(customer: str) -> pd.DataFrame:
        default = duckdb.default_connection()  # noqa: TID251 - the counter-test's point
        return default.execute(f"SELECT * FROM read_parquet('{glob}') WHERE customer_id = $id ORDER BY as_of",
                               {"id": customer}).df()

    assert failures(shared)


def test_each_thread_keeps_its_own_connection() -> None:
    mine = connections.local()
    theirs: list[duckdb.DuckDBPyConnection] = []
    worker = threading.Thread(target=lambda: theirs.append(connections.local()))
    worker.start()
    worker.join()
    assert connections.local() is mine and theirs[0] is not mine


def test_open_file_applies_its_settings(tmp_path: Path) -> None:
    con = connections.open_file(tmp_path / "x.duckdb", memory_limit="1GB")
    try:
        assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0].startswith("953")
    finally:
        con.close()
