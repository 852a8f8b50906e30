"""One writer of the warehouse at a time: a second one waits for the first, or gives up naming it; and one run of a
job (`job`) at a time: a second one ends at once, naming the first.

A writer holds `C360_HOME/warehouse.lock` (flock) while its connection is open; the file says who holds it
(command line, pid, start). Readers take no lock. DuckDB keeps its own lock on the database file, which a reader
or a process that is not c360 may hold: a writer waits for that one too, and both kinds of wait end in
`WarehouseBusy`, a one-line message naming the holder.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import duckdb

from c360.core.settings import Settings

POLL_SECONDS = 0.1
T = TypeVar("T")


class WarehouseBusy(Exception):
    """Another process holds the warehouse, and waiting for it did not help."""


@contextmanager
def writer(s: Settings) -> Iterator[float]:
    """Hold the writer lock of `s.home`, waiting up to `s.lock_timeout` seconds; yields the wait's deadline."""
    path = s.home / "warehouse.lock"
    deadline = time.monotonic() + s.lock_timeout
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _wait(lambda: _flock(fd), deadline, s, lambda: _holder(path) or "another c360 process")
        _claim(fd)
        yield deadline
    finally:
        os.close(fd)  # closing releases the flock


class JobBusy(Exception):
    """Another run of the same job holds its lock."""


@contextmanager
def job(s: Settings, name: str) -> Iterator[None]:
    """Hold `C360_HOME/<name>.lock` for one run of a job (`c360 refresh`), or raise `JobBusy` at once, naming the
    run that holds it: a job started by cron while the last one still runs should end, not queue behind it."""
    s.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = s.home / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if _flock(fd) is None:
            raise JobBusy(f"another {name} is running: {_holder(path) or 'another c360 process'}; this one did "
                          "nothing")
        _claim(fd)
        yield
    finally:
        os.close(fd)


def _claim(fd: int) -> None:
    """Write who holds the lock into its file, for whoever waits for it."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_me()).encode(), 0)


def busy(s: Settings) -> bool:
    """Whether a writer holds the warehouse now: a look, not a wait."""
    path = s.home / "warehouse.lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        return _flock(fd) is None
    finally:
        os.close(fd)


def when_free(s: Settings, connect: Callable[[], duckdb.DuckDBPyConnection],
              deadline: float | None) -> duckdb.DuckDBPyConnection:
    """`connect()`, tried again until `deadline` (monotonic; None: once) while DuckDB's file lock is held, or
    while another thread of this process has the file open in the other mode (DuckDB refuses a writer beside a
    reader of the same process, and the other way round: the server's erasure thread beside its profile reads)."""
    held: list[str] = []

    def attempt() -> duckdb.DuckDBPyConnection | None:
        try:
            return connect()
        except duckdb.IOException as err:
            if "Could not set lock" not in str(err):
                raise
            held[:] = [str(err)]
            return None
        except duckdb.ConnectionException as err:
            if "different configuration" not in str(err):
                raise
            # in the words of DuckDB's lock error, so that `_holder_of` names this process's writer if it is one
            held[:] = [f"held in another thread (PID {os.getpid()})"]
            return None

    return _wait(attempt, deadline, s, lambda: _holder_of(held[0], s.home / "warehouse.lock"))


def _wait(attempt: Callable[[], T | None], deadline: float | None, s: Settings, holder: Callable[[], str]) -> T:
    told = False
    while (result := attempt()) is None:
        if deadline is None or time.monotonic() >= deadline:
            waited = "" if deadline is None else f"; gave up after {s.lock_timeout:g} s (C360_LOCK_TIMEOUT)"
            raise WarehouseBusy(f"the warehouse {s.warehouse} is in use by {holder()}{waited}; "
                                "try again when it has finished")
        if not told:
            print(f"waiting for {holder()} to finish with the warehouse…", file=sys.stderr, flush=True)
            told = True
        time.sleep(POLL_SECONDS)
    return result


@contextmanager
def flocked(path: Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive flock on `path` (created owner-only) for the block, across processes: yields False at once
    when another process holds it and not `wait`."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if wait:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield wait or _flock(fd) is not None
    finally:
        os.close(fd)  # closing releases the flock


def _flock(fd: int) -> bool | None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return None
    return True


def _me() -> dict[str, object]:
    # the command without its options: their values may be personal (`c360 privacy erase --email ...`)
    words = [Path(sys.argv[0]).name, *itertools.takewhile(lambda a: not a.startswith("-"), sys.argv[1:])]
    return {"command": shlex.join(words), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _holder(lock: Path, pid: int | None = None) -> str | None:
    """The writer recorded in `lock` as "`command` (pid n, started ...)", if any (and if its pid is `pid`)."""
    try:
        record = json.loads(lock.read_text())
    except (OSError, ValueError):  # no writer yet, or one writing its record right now
        return None
    if pid is not None and record["pid"] != pid:
        return None
    return f"`{record['command']}` (pid {record['pid']}, started {record['started']})"


def _holder_of(duckdb_error: str, lock: Path) -> str:
    """Who holds DuckDB's lock, from its error: the c360 writer of that pid, or the process DuckDB names."""
    found = re.search(r"held in (.*) \(PID (\d+)\)", duckdb_error)
    if not found:
        return "another process"
    return _holder(lock, int(found.group(2))) or f"{found.group(1)} (pid {found.group(2)})"
