"""`c360 mapping check | list` and `c360 ingest --mapping`, through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from tests.features.test_mapping import hubspot_export

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    from c360.cli.ui import console

    monkeypatch.setattr(console, "width", 200)


def test_check_then_ingest_a_shipped_mapping(home: Path, tmp_path: Path) -> None:
    export = hubspot_export(tmp_path / "hubspot")
    checked = runner.invoke(app, ["mapping", "check", "hubspot", "--source", str(export)])
    assert checked.exit_code == 0, checked.output
    assert "crm/accounts <- companies" in checked.stdout and "ignored fields: domain" in checked.stdout
    result = runner.invoke(app, ["ingest", "--mapping", "hubspot", "--source", str(export), "--json"])
    assert result.exit_code == 0, result.output
    loaded = json.loads(result.stdout)
    assert (loaded["accepted"], loaded["quarantined"], loaded["mapping"]) == (4, 0, "hubspot")
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM crm_contacts").fetchone() == (2,)
    runs = (home / "runs.jsonl").read_text()
    assert "ann@acme.example" not in runs and "Ann" not in runs


def test_check_names_missing_and_unknown_and_ingest_loads_nothing(home: Path, tmp_path: Path) -> None:
    export = hubspot_export(tmp_path / "hubspot")
    companies = pd.read_csv(export / "companies.csv", dtype=str).drop(columns="name")
    companies.assign(favourite_colour="blue").to_csv(export / "companies.csv", index=False)
    result = runner.invoke(app, ["mapping", "check", "hubspot", "--source", str(export), "--json"])
    assert result.exit_code == 1
    checked = json.loads(result.stdout)
    assert not checked["ok"] and "account_name" in checked["error"] and "'name'" in checked["error"]
    accounts = next(t for t in checked["tables"] if t["table_id"] == "crm/accounts")
    assert accounts["missing_required"] == ["account_name"] and "favourite_colour" in accounts["ignored_fields"]
    human = runner.invoke(app, ["mapping", "check", "hubspot", "--source", str(export)])
    assert human.exit_code == 1 and "missing (required)" in human.stdout and "favourite_colour" in human.stdout
    refused = runner.invoke(app, ["ingest", "--mapping", "hubspot", "--source", str(export)])
    assert refused.exit_code == 1 and "account_name" in refused.stderr
    assert next(line for line in refused.stderr.splitlines() if "account_name" in line).startswith("error: ")
    if (home / "warehouse.duckdb").exists():
        with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
            tables = con.execute("SELECT table_name FROM information_schema.tables").fetchall()
            assert ("crm_contacts",) not in tables


def test_a_bad_mapping_file_is_one_line(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("name: x\ninputs: {}\ntables:\n  crm/accounts: {from: nowhere, columns: {}}\n")
    result = runner.invoke(app, ["mapping", "check", str(path)])
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0 and "line 4" in result.stderr and "nowhere" in result.stderr


def test_list_shows_the_shipped_mappings(home: Path) -> None:
    result = runner.invoke(app, ["mapping", "list", "--json"])
    assert result.exit_code == 0, result.output
    names = {m["name"]: m["tables"] for m in json.loads(result.stdout)["mappings"]}
    assert names["stripe"] == ["billing/customers", "billing/subscriptions", "billing/invoices", "billing/payments"]
    assert names["hubspot"] == ["crm/accounts", "crm/contacts"]
