"""DuckDB connections: the one place c360 gets them.

A DuckDB connection must not be shared across threads, and DuckDB's module-level functions (`duckdb.sql`,
`duckdb.query`, `duckdb.execute`, ...) all use one default connection per process: the service reads from several
threads at once, and 8 concurrent profile pages got 500s from it. So c360 never calls those functions (ruff's
banned-api rule in pyproject.toml enforces it) and takes connections from here:

* `local()` — an in-memory connection of the calling thread, for queries over files (Parquet snapshots). Opening
  one costs about 9 ms, so each thread keeps its own and reuses it.
* `open_file(path, ...)` — a new connection to a database file (the warehouse: `c360.core.warehouse.connect`), closed
  by the caller; one per use, since a connection held open would lock out writers.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import duckdb

_thread = threading.local()


def local() -> duckdb.DuckDBPyConnection:
    """The calling thread's in-memory connection (a new one after a fork)."""
    con = getattr(_thread, "con", None)
    if con is None or _thread.pid != os.getpid():
        con = _thread.con = duckdb.connect()
        _thread.pid = os.getpid()
    return con


def open_file(path: Path | str | None = None, read_only: bool = False, **config: Any) -> duckdb.DuckDBPyConnection:
    """A new connection to the database file `path` (in memory when None) with DuckDB `config` settings."""
    return duckdb.connect(":memory:" if path is None else str(path), read_only=read_only, config=config)
