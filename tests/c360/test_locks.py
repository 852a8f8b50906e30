"""One writer of the warehouse at a time, between real processes: a second one waits, or says who holds it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from c360.cli.main import app

C360 = str(Path(sys.executable).parent / "c360")
runner = CliRunner()
# Holds the warehouse until its stdin closes: as a c360 writer, or with a DuckDB connection of a process that is not
# c360. (Not warehouse.connect: its imports would double the start-up time of the tests.)
HOLD = """import sys
import duckdb
from c360.core import locks
from c360.core.settings import Settings
s = Settings()
with locks.writer(s) if sys.argv[1] == "c360" else duckdb.connect(str(s.warehouse)):
    print("held", flush=True)
    sys.stdin.read()
"""
ACCOUNTS = """account_id,account_name,segment,industry,region,owner,billing_account_id,created_at
A1,Acme,smb,,NA,,,2025-03-01T10:00:00Z
A2,Beta,enterprise,,EMEA,,,2025-03-01T10:00:00Z
"""


@pytest.fixture
def source(tmp_path: Path) -> Path:
    (tmp_path / "src" / "crm").mkdir(parents=True)
    (tmp_path / "src" / "crm" / "accounts.csv").write_text(ACCOUNTS)
    return tmp_path / "src"


@pytest.fixture
def holder(home: Path, tmp_path: Path) -> Iterator:
    """Starts a process holding the warehouse ("c360" or "duckdb"); returns it once it holds it."""
    home.mkdir(parents=True)
    script = tmp_path / "hold.py"
    script.write_text(HOLD)
    started = []

    def start(kind: str) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, str(script), kind], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout is not None and process.stdout.readline() == "held\n"
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.communicate()


def c360(*args: str, timeout: float) -> subprocess.Popen:
    env = {**os.environ, "C360_LOCK_TIMEOUT": str(timeout)}
    return subprocess.Popen([C360, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def one_line_error(*args: str) -> str:
    """The error of `c360 ARGS`, run here, which must fail with one line on stderr (after a note that it waits)."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output  # not a traceback
    assert not result.stdout
    return result.stderr.splitlines()[-1]


def test_a_second_writer_gives_up_after_the_timeout_naming_the_first(holder, home: Path, source: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    first = holder("c360")
    monkeypatch.setenv("C360_LOCK_TIMEOUT", "0.5")
    line = one_line_error("ingest", "--source", str(source))
    assert line.startswith(f"error: the warehouse {home / 'warehouse.duckdb'} is in use by `hold.py c360` "
                           f"(pid {first.pid}, started ")
    assert line.endswith("gave up after 0.5 s (C360_LOCK_TIMEOUT); try again when it has finished")


def test_a_second_writer_waits_for_the_first_and_loads_everything(holder, home: Path, source: Path) -> None:
    first = holder("c360")
    second = c360("ingest", "--source", str(source), timeout=60)
    assert second.stderr is not None
    assert second.stderr.readline().startswith(f"waiting for `hold.py c360` (pid {first.pid}, started ")
    first.communicate()  # the first writer is done
    out, err = second.communicate()
    assert second.returncode == 0, out + err
    assert "total: read 2, accepted 2, quarantined 0" in out
    assert accounts(home) == 2


def test_a_process_holding_the_duckdb_file_is_named_to_writers_and_readers(holder, home: Path, source: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    other = holder("duckdb")
    monkeypatch.setenv("C360_LOCK_TIMEOUT", "0.5")
    held = f"{os.path.realpath(sys.executable)} (pid {other.pid})"
    assert f"{held}; gave up after 0.5 s (C360_LOCK_TIMEOUT)" in one_line_error("ingest", "--source", str(source))
    assert one_line_error("status").endswith(f"{held}; try again when it has finished")


def accounts(home: Path) -> int:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        return con.execute("SELECT count(*) FROM crm_accounts").fetchone()[0]


def test_a_writer_waits_for_a_reader_of_its_own_process_and_a_reader_is_told_of_it(home: Path) -> None:
    """DuckDB refuses a writer beside a reader of the same process (and the other way round) at once: the writer
    waits for the reader's thread to finish, as for another process; a reader that does not wait names the holder."""
    import threading
    import time

    from c360.core import locks, warehouse
    from c360.core.settings import Settings

    s = Settings(home=home)
    s.home.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(s.warehouse)) as con:
        con.execute("CREATE TABLE t (x INTEGER)")
    reading, done = threading.Event(), threading.Event()

    def read_a_while() -> None:
        with warehouse.connect(s, read_only=True):
            reading.set()
            time.sleep(0.5)
        done.set()

    reader = threading.Thread(target=read_a_while)
    reader.start()
    assert reading.wait(30)
    with warehouse.connect(s) as con:  # C360_LOCK_TIMEOUT's default wait
        assert done.is_set()
        con.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(locks.WarehouseBusy, match=f"in use by .*\\(pid {os.getpid()}, started"):
            warehouse.connect(s, read_only=True).__enter__()
    reader.join()
