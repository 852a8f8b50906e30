"""Encryption at rest and owner-only files, through the `c360` command line on a small generated company.

With C360_ENCRYPTION_KEY set, the warehouse's bytes hold none of the company's e-mails (and the same scan finds them
in a plaintext warehouse: the counter-test), it does not open without the key, and ingest → resolve → features
build → materialize works on it. `c360 encrypt` converts a plaintext warehouse keeping every row. Every file and
folder the commands create under C360_HOME is owner-only.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import at_rest, warehouse
from c360.core.contract import TABLES
from c360.core.settings import Settings
from c360.serving import online
from c360.serving.errors import Unavailable

pytestmark = pytest.mark.skipif(
    at_rest.httpfs_extension() is None,
    reason=f"DuckDB's httpfs extension for duckdb {duckdb.__version__} is not installed "
           f"(`pip install {at_rest.WHEEL}=={duckdb.__version__}`): DuckDB cannot write encrypted databases without it")

KEY = "a key with a quote ' in it"
runner = CliRunner()


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, so files come out owner-only only if c360 made them so (an earlier command of this test
    process may have set 0o077 already)."""
    before = os.umask(0o022)
    yield
    os.umask(before)


@pytest.fixture(scope="module")
def company(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("company")
    ok(runner.invoke(app, ["generate", "--customers", "300", "--seed", "3", "--out", str(out)]))
    return out


def ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def c360(*args: str) -> str:
    return ok(runner.invoke(app, list(args)))


def emails(company: Path) -> list[bytes]:
    """Every e-mail address of the generated exports, as bytes."""
    found: set[str] = set()
    for table in TABLES:
        frame = pd.read_csv(company / table.silo / f"{table.name}.csv", dtype=str)
        for column in (c for c in table.pii if "email" in c):
            found |= set(frame[column].dropna())
    return sorted(address.encode() for address in found)


def held(path: Path, needles: list[bytes]) -> list[bytes]:
    data = path.read_bytes()
    return [n for n in needles if n in data]


def row_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    names = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = "
                                       "current_database() ORDER BY 1").fetchall()]
    return {name: con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names}  # type: ignore[index]


def one_line_error(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr.strip()


def test_encrypted_warehouse_holds_no_email_and_needs_its_key(home: Path, company: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    wanted = emails(company)
    assert len(wanted) > 300
    monkeypatch.setenv("C360_ENCRYPTION_KEY", KEY)
    c360("ingest", "--source", str(company))
    with warehouse.connect(Settings(), rewrite_after=True) as con:  # as an erasure does: the copy stays encrypted
        before = row_counts(con)
    found = [p for p in home.rglob("*") if p.is_file() and held(p, wanted)]
    assert not found, f"e-mails in {found}"
    with warehouse.connect(Settings(), read_only=True) as con:
        assert row_counts(con) == before and before["crm_contacts"] > 0

    monkeypatch.delenv("C360_ENCRYPTION_KEY")
    assert one_line_error("status").endswith("is encrypted: set C360_ENCRYPTION_KEY to its key")
    with pytest.raises(duckdb.Error, match="encrypted"):
        duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    monkeypatch.setenv("C360_ENCRYPTION_KEY", "another key")
    assert one_line_error("status").endswith("it was encrypted with another key")
    with pytest.raises(Unavailable, match="does not open with the server's C360_ENCRYPTION_KEY"), \
            online.warehouse(Settings()):
        pass


def test_a_plaintext_warehouse_holds_the_emails(home: Path, company: Path) -> None:
    """The counter-test: the same scan finds the e-mails in a warehouse written without a key."""
    c360("ingest", "--source", str(company))
    assert len(held(home / "warehouse.duckdb", emails(company))) > 100


def test_ingest_without_a_key_warns_in_one_line(home: Path, company: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.invoke(app, ["ingest", "--source", str(company), "--json"])
    warning = [line for line in result.stderr.splitlines() if "unencrypted" in line]
    assert len(warning) == 1 and "C360_ENCRYPTION_KEY" in warning[0]
    assert any("unencrypted" in note for note in json.loads(result.stdout)["notes"])
    monkeypatch.setenv("C360_ENCRYPTION_KEY", KEY)
    (home / "warehouse.duckdb").unlink()
    assert "unencrypted" not in ok(runner.invoke(app, ["ingest", "--source", str(company)]))


def test_encrypt_converts_a_plaintext_warehouse_keeping_every_row(home: Path, company: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    c360("ingest", "--source", str(company))
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        before = row_counts(con)
    assert one_line_error("encrypt").endswith("set C360_ENCRYPTION_KEY to the key to encrypt the warehouse with")

    monkeypatch.setenv("C360_ENCRYPTION_KEY", KEY)
    assert "is not encrypted while C360_ENCRYPTION_KEY is set: run `c360 encrypt`" in one_line_error("status")
    done = json.loads(c360("encrypt", "--json"))
    assert not done["already_encrypted"]
    assert {name.removeprefix("main."): rows for name, rows in done["tables"].items()} == before
    assert not held(home / "warehouse.duckdb", emails(company))
    assert sorted(p.name for p in home.iterdir()) == ["runs.jsonl", "warehouse.duckdb", "warehouse.lock"]
    with warehouse.connect(Settings(), read_only=True) as con:
        assert row_counts(con) == before
    assert json.loads(c360("encrypt", "--json"))["already_encrypted"]


def test_pipeline_on_an_encrypted_warehouse_makes_owner_only_files(home: Path, company: Path, umask_022: None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("C360_ENCRYPTION_KEY", KEY)
    c360("ingest", "--source", str(company))
    c360("resolve")
    c360("features", "build", "--history-days", "28", "--every-days", "28")
    c360("features", "apply")
    c360("features", "materialize")
    s = Settings()
    with warehouse.connect(s, read_only=True) as con:
        customers = con.execute("SELECT customer_id FROM identity_customers ORDER BY 1").df()["customer_id"]
    assert len(customers) > 250
    assert "identity" in c360("profile", customers.iloc[0])

    loose = [f"{p.relative_to(home)} {stat.filemode(p.stat().st_mode)}" for p in [home, *home.rglob("*")]
             if not p.is_symlink() and p.stat().st_mode & 0o077]
    assert not loose, f"group- or world-accessible under C360_HOME: {loose}"


def test_threads_read_an_encrypted_warehouse_at_once(home: Path, company: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The service's threads each open a read connection: DuckDB refuses to attach one file twice, so they share."""
    monkeypatch.setenv("C360_ENCRYPTION_KEY", KEY)
    c360("ingest", "--source", str(company))
    s, errors, counts = Settings(), [], []
    start = threading.Barrier(4)

    def read() -> None:
        try:
            with warehouse.connect(s, read_only=True) as con:
                start.wait()
                counts.append(con.execute("SELECT count(*) FROM crm_contacts").fetchone()[0])  # type: ignore[index]
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(counts)) == 1 and counts[0] > 0
