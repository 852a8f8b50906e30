"""DuckDB connections: the one place c360 gets them.

A DuckDB connection must not be shared across threads, and DuckDB's module-level functions (`duckdb.sql`,
`duckdb.query`, `duckdb.execute`, ...) all use one default connection per process: the service reads from several
threads at once, and 8 concurrent profile pages got 500s from it. So c360 never calls those functions (ruff's
banned-api rule in pyproject.toml enforces it) and takes connections from here:

* `local()` — an in-memory connection of the calling thread, for queries over files (Parquet snapshots). Opening
  one costs about 9 ms, so each thread keeps its own and reuses it; `local(purpose)` is another one of the thread's,
  for a use that keeps tables or prepared statements in it (the live features).
* `open_file(path, ...)` — a new connection to a database file (the warehouse: `c360.core.warehouse.connect`), closed
  by the caller; one per use, since a connection held open would lock out writers (a served process keeps one open
  while it uses the warehouse and no writer waits for it: `serving.online.keep_open`).

With a key (`C360_ENCRYPTION_KEY`), `open_file` attaches the file as an encrypted database instead (see
`c360.core.at_rest`): an in-memory database loads the crypto extension, attaches the file with the key under the
name DuckDB would give it (the file's stem) and makes it the default (`USE`), so queries read the same either way.
That in-memory database is named after the file and the mode, so the threads of one process share it as they share
a plain file's (DuckDB caches databases by name): two readers do not attach the same file twice, which DuckDB
refuses, and the extension's signature check (about 60 ms) is paid by the first of the connections open at once
(an open, query and close alone took 103 ms against 19 ms for a plaintext file of 2,000 customers). Temporary
files (spills) are encrypted too. `attach` adds another file with the same key, e.g. a copy being written by
`COPY FROM DATABASE`.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
from pydantic import SecretStr

from c360.core.at_rest import EncryptionError, load_crypto, quote

_thread = threading.local()


def local(purpose: str = "") -> duckdb.DuckDBPyConnection:
    """The calling thread's in-memory connection for `purpose` (new ones after a fork)."""
    if getattr(_thread, "pid", None) != os.getpid():
        _thread.cons, _thread.pid = {}, os.getpid()
    con: duckdb.DuckDBPyConnection | None = _thread.cons.get(purpose)
    if con is None:
        con = _thread.cons[purpose] = duckdb.connect()
    return con


def open_file(path: Path | str | None = None, read_only: bool = False, key: SecretStr | None = None,
              **config: Any) -> duckdb.DuckDBPyConnection:
    """A new connection to the database file `path` (in memory when None) with DuckDB `config` settings; with `key`,
    `path` is an encrypted database (and an in-memory one spills to encrypted temporary files)."""
    if key is None:
        return _opening(path, lambda: duckdb.connect(":memory:" if path is None else str(path), read_only=read_only,
                                                     config=config))
    if path is None:
        return _encrypting(duckdb.connect(":memory:", config=config), lambda _: None)

    def use(con: duckdb.DuckDBPyConnection) -> None:
        attach(con, path, Path(path).stem, key, read_only=read_only)
        con.execute(f"USE {_name(Path(path).stem)}")

    # A plain file's database spills beside it (path.tmp); an in-memory one would spill into the working folder.
    shared = duckdb.connect(_shared(path, read_only), config={"temp_directory": f"{path}.tmp", **config})
    return _encrypting(shared, use)


def attach(con: duckdb.DuckDBPyConnection, path: Path | str, alias: str, key: SecretStr | None,
           read_only: bool = False) -> None:
    """Attach the database file `path` to `con` as `alias` (unless attached already), encrypted with `key` when
    there is one: a database c360 writes beside the warehouse is encrypted as the warehouse is."""
    options = [] if key is None else [f"ENCRYPTION_KEY {quote(key.get_secret_value())}"]
    if key is not None:
        load_crypto(con)
    if read_only:
        options.append("READ_ONLY")
    with_options = f" ({', '.join(options)})" if options else ""
    _opening(path, lambda: con.execute(f"ATTACH IF NOT EXISTS {quote(str(path))} AS {_name(alias)}{with_options}"))


def _encrypting(con: duckdb.DuckDBPyConnection,
                use: Callable[[duckdb.DuckDBPyConnection], None]) -> duckdb.DuckDBPyConnection:
    try:
        load_crypto(con)
        con.execute("SET temp_file_encryption = true")
        use(con)
    except BaseException:
        con.close()
        raise
    return con


def _shared(path: Path | str, read_only: bool) -> str:
    """The name of the in-memory database the connections to `path` in this mode share."""
    digest = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]
    return f":memory:c360-{'ro' if read_only else 'rw'}-{digest}"


def _opening(path: Path | str | None, open_: Callable[[], Any]) -> Any:
    """`open_()`, with DuckDB's errors about keys turned into an `EncryptionError` saying what to do."""
    try:
        return open_()
    except duckdb.Error as err:
        mismatch = EncryptionError.of(err, path or ":memory:")
        if mismatch is None:
            raise
        raise mismatch from None


def _name(alias: str) -> str:
    return '"' + alias.replace('"', '""') + '"'
