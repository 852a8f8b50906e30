"""Privacy rights on a real 300-customer home (`c360 demo --no-serve`: warehouse, snapshots, online store, MLflow,
scores): export matches the generator's records, erased bytes are gone from every file, a later export of the same
people is suppressed, every file holding personal data belongs to a registered store.

The tests of this module share one home and run in order: export, erase, scan, erase again, ingest again.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import personal
from c360.core.settings import Settings

runner = CliRunner()


def texts(path: Path) -> list[str]:
    """The file's bytes as text, and its decoded content (Parquet rows, SQLite and DuckDB tables)."""
    data = path.read_bytes()
    out = [data.decode("latin-1")]
    if path.suffix == ".parquet":
        out.append(pq.read_table(path).to_pandas().to_csv())
    if data.startswith(b"SQLite format 3"):
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        out += [repr(con.execute(f'SELECT * FROM "{t}"').fetchall())
                for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()]
        con.close()
    if path.suffix == ".duckdb":
        with duckdb.connect(str(path), read_only=True) as con:
            out += [con.execute(f'SELECT * FROM "{t}"').df().to_csv()
                    for (t,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
    return out


def hits(home: Path, needles: list[str]) -> dict[str, set[str]]:
    """Per file under `home`, the needles found in it (raw or decoded)."""
    found: dict[str, set[str]] = {}
    for path in sorted(p for p in home.rglob("*") if p.is_file() and not p.name.endswith(".lock")):
        content = texts(path)
        there = {n for n in needles if any(n in text for text in content)}
        if there:
            found[str(path.relative_to(home))] = there
    return found


def unregistered(s: Settings, needles: list[str]) -> list[str]:
    return [f for f in hits(s.home, needles) if personal.owner(s, s.home / f) is None]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("privacy") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        patch.setenv("C360_HOME", str(home))
        result = runner.invoke(app, ["demo", "--customers", "300", "--no-serve", "--json"])
        assert result.exit_code == 0, result.output
    return Settings(home=home)


@pytest.fixture(scope="module")
def person(demo: Settings) -> dict:
    """A consumer (the only person of their account) with records in several silos: e-mail, phones, names, keys
    from the warehouse and the generator's ground truth."""
    with duckdb.connect(str(demo.warehouse), read_only=True) as con:
        row = con.execute("""SELECT customer_id, emails[1], phones FROM identity_customers
            WHERE segment = 'consumer' AND len(emails) = 1 AND len(phones) >= 1 AND records >= 4
            ORDER BY customer_id LIMIT 1""").fetchone()
        if row is None:
            pytest.skip("no consumer with an e-mail and a phone in this demo")
        customer, email, phones = row
        records = con.execute("SELECT source, source_key FROM identity_crosswalk WHERE customer_id = ?",
                              [customer]).fetchall()
        names = con.execute("SELECT DISTINCT first_name || ' ' || last_name FROM crm_contacts WHERE email = ?",
                            [email]).fetchall()
    keys = {k for _, k in records}
    source_rows = {}  # the person's rows in the generated exports, as the source wrote them
    for path in demo.generated.glob("*/*.csv"):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        theirs = frame[frame.isin(keys).any(axis=1)] if path.parent.name != "ground_truth" else frame.iloc[:0]
        if len(theirs):
            source_rows[path.relative_to(demo.generated)] = theirs
    return {"source_rows": source_rows, "customer": customer, "email": email, "phones": [p.lstrip("+") for p in phones],
            "keys": [k for _, k in records], "names": [n for (n,) in names if n], "records": records}


def needles(person: dict) -> list[str]:
    return [person["email"], *person["phones"], *person["names"], *person["keys"]]


def invoke(s: Settings, *args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"], env={"C360_HOME": str(s.home)})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_every_file_with_personal_data_belongs_to_a_registered_store(demo: Settings) -> None:
    emails = pd.read_csv(demo.generated / "crm" / "contacts.csv", usecols=["email"])["email"].dropna()
    known = emails.head(20).tolist()
    assert hits(demo.home, known), "the scan finds nothing: it cannot prove anything"
    assert unregistered(demo, known) == []
    stray = demo.home / "exports" / "audience.csv"
    stray.parent.mkdir()
    stray.write_text(f"email\n{known[0]}\n")
    try:
        assert unregistered(demo, known) == ["exports/audience.csv"]  # the counter-test: a store nobody registered
    finally:
        shutil.rmtree(stray.parent)


@pytest.fixture(scope="module")
def versioned(demo: Settings, person: dict, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A later export changed the person's CRM contact: its old version is in the history. Returns its key."""
    key = next((k for s, k in person["records"] if s == "crm/contacts"), None)
    if key is None:
        pytest.skip("the person has no CRM contact")
    with duckdb.connect(str(demo.warehouse), read_only=True) as con:
        row = con.execute("SELECT * EXCLUDE (_file, _row, _ingest_id, _valid_from) FROM crm_contacts "
                          "WHERE contact_id = ?", [key]).df()
    folder = tmp_path_factory.mktemp("later") / "crm"
    folder.mkdir()
    row.assign(title="Head of Everything").to_csv(folder / "contacts_later.csv", index=False)
    invoke(demo, "ingest", "--source", str(folder.parent), "--mode", "increment", "--exported-at", "2030-01-01")
    return key


@pytest.fixture(scope="module")
def exported(demo: Settings, person: dict, versioned: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The person's export, made before the erasure (`erased` asks for it first)."""
    out = tmp_path_factory.mktemp("export") / "export.json"
    invoke(demo, "privacy", "export", "--email", person["email"], "--out", str(out))
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def erased(demo: Settings, person: dict, exported: dict) -> dict:
    """The erasure of the person by e-mail: its report."""
    assert hits(demo.home, [person["email"]]), "the person is not in the home before erasure"
    return invoke(demo, "privacy", "erase", "--email", person["email"])


def test_export_by_email_holds_the_persons_source_rows(demo: Settings, person: dict, exported: dict) -> None:
    document = exported
    truth = pd.read_parquet(demo.truth / "records.parquet")
    account = truth.loc[truth["key"].astype(str).isin(person["keys"]), "account"].iloc[0]
    expected = set(zip(*truth.loc[truth["account"] == account, ["table_id", "key"]].astype(str).T.values,
                       strict=True))
    exported = {(table, str(row[personal_key(table)])) for table, rows in document["warehouse_sources"].items()
                for row in rows}
    exported |= {(row["table_id"], json.loads(row["raw"])[personal_key(row["table_id"])])
                 for row in document["quarantine"]}
    # the generator's records of the person's account (a consumer: the person) are all in the export
    assert expected <= exported
    assert {(s, k) for s, k in person["records"]} <= exported
    assert document["identity"]["golden_records"][0]["customer_id"] == person["customer"]
    assert document["feature_snapshots"] and document["batch_scores"][0]["reasons"]


def test_export_and_erasure_cover_the_old_versions(demo: Settings, exported: dict, versioned: str,
                                                   erased: dict) -> None:
    rows = [row for row in exported["warehouse_sources"]["crm/contacts"] if row["contact_id"] == versioned]
    assert [row["title"] == "Head of Everything" for row in rows] == [False, True]  # the old version, then now
    assert rows[0]["_valid_to"] == rows[1]["_valid_from"]
    with duckdb.connect(str(demo.warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM crm_contacts__history WHERE contact_id = ?",
                           [versioned]).fetchone()[0] == 0


def personal_key(table_id: str) -> str:
    from c360.core.contract import table

    return table(table_id).key


def test_erase_leaves_no_byte_of_the_person(demo: Settings, person: dict, erased: dict) -> None:
    report = erased
    assert report["whole"] == [person["customer"]]
    assert report["stores"]["warehouse_sources"]["rows"] > 0 and report["recall"]
    left = {f: n for f, n in hits(demo.home, needles(person)).items()}
    assert left == {}


def test_erase_is_idempotent(demo: Settings, person: dict, erased: dict) -> None:
    before = {p: p.stat().st_mtime_ns for p in demo.snapshots.glob("*.parquet")}
    report = invoke(demo, "privacy", "erase", "--email", person["email"])
    assert {name: store["rows"] for name, store in report["stores"].items() if store["rows"]} == {}
    assert before == {p: p.stat().st_mtime_ns for p in demo.snapshots.glob("*.parquet")}


def test_a_later_export_of_the_erased_person_is_suppressed(demo: Settings, person: dict, erased: dict,
                                                          tmp_path: Path) -> None:
    later = tmp_path / "later"
    for path in (demo.generated).glob("*/*.csv"):
        if path.parent.name == "ground_truth":
            continue
        (later / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, later / path.parent.name / path.name)
    # new content, same people: the person's rows come back from the source, with a changed date
    for relative, rows in person["source_rows"].items():
        frame = pd.read_csv(later / relative, dtype=str, keep_default_na=False)
        date = next(c for c in rows.columns if c.endswith("_at") or c.endswith("_time"))
        changed = rows.assign(**{date: "2026-12-01 10:00:00"})
        pd.concat([frame, changed], ignore_index=True).to_csv(later / relative, index=False)
    returning = sum(len(rows) for rows in person["source_rows"].values())
    report = invoke(demo, "ingest", "--source", str(later))
    assert report["suppressed"] >= returning > 0
    assert hits(demo.home, needles(person)) == {}


def test_retention_purges_nothing_young(demo: Settings) -> None:
    removed = invoke(demo, "privacy", "purge-expired")
    assert removed["quarantine_rows"] == 0 and removed["audit_records"] == 0
    assert removed["quarantine_retention_days"] == demo.quarantine_retention_days
