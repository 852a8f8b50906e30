"""`c360 resolve link`, `unlink` and `review` through the command line: JSON, one-line errors, audit records."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import audit
from c360.core.settings import Settings

runner = CliRunner()


@pytest.fixture
def steward_home(home: Path, resolved: tuple[Path, Path]) -> Settings:
    home.mkdir(parents=True)
    (home / "warehouse.duckdb").write_bytes((resolved[0] / "warehouse.duckdb").read_bytes())
    (home / "identity").mkdir()
    (home / "identity" / "splink_model.json").write_bytes((resolved[0] / "model.json").read_bytes())
    return Settings()


def run_json(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_review_then_unlink_then_explain(steward_home: Settings) -> None:
    reviewed = run_json("resolve", "review", "--limit", "3")
    assert len(reviewed["pairs"]) == 3 and reviewed["threshold"] == steward_home.match_threshold
    with duckdb.connect(str(steward_home.warehouse), read_only=True) as con:
        a, b = con.execute("""SELECT l.record_id_l, l.record_id_r FROM identity_links l
            JOIN identity_crosswalk x ON x.record_id = l.record_id_l JOIN identity_crosswalk y
              ON y.record_id = l.record_id_r
            WHERE l.method = 'model' AND x.customer_id = y.customer_id ORDER BY 1, 2 LIMIT 1""").fetchone()
    done = run_json("resolve", "unlink", *a.split(":", 1), *b.split(":", 1), "--why", "two people")
    assert done["recorded"] and done["splits"] >= 1
    assert done["customers_after"][0] != done["customers_after"][1]
    again = run_json("resolve", "unlink", *b.split(":", 1), *a.split(":", 1), "--why", "two people")
    assert not again["recorded"]
    explained = run_json("resolve", "explain", *a.split(":", 1))
    assert [d["decision"] for d in explained["decisions"]] == ["unlink"]
    assert explained["decisions"][0]["who"].startswith("cli:")
    assert "steward" in {e["cause"] for e in explained["events"]}
    actions = {r["action"]: r for r in audit.records(steward_home)}
    assert set(done["customers_after"]) <= set(actions["c360 resolve unlink"]["customers"])
    assert {"c360 resolve review", "c360 resolve explain"} <= set(actions)
    runs = steward_home.runs.read_text()
    assert a.split(":", 1)[1] not in runs and "two people" not in runs, "no keys or reasons in the run log"


def test_an_unknown_record_is_one_line_and_records_nothing(steward_home: Settings) -> None:
    result = runner.invoke(app, ["resolve", "link", "support/tickets", "NOPE", "crm/contacts", "NOPE2",
                                 "--why", "x", "--json"])
    assert result.exit_code == 1
    assert "not in the crosswalk" in json.loads(result.stdout)["error"]
    with duckdb.connect(str(steward_home.warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM identity_decisions").fetchone() == (0,)
    assert [r["status"] for r in audit.records(steward_home) if r["action"] == "c360 resolve link"] == ["failed"]
