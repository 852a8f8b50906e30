"""`c360 events push` and the fold by `c360 ingest`: the same handler as `POST /events`, line numbers in the answer,
an audit record with the customers named, and a second ingest that adds nothing."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import audit, warehouse
from c360.core.settings import Settings

runner = CliRunner()


def test_push_then_ingest_folds_once(home: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    good = {"event_id": "p1", "kind": "payment_failed", "at": "2025-05-01T12:00:00Z", "payment_id": "P-1",
            "invoice_id": "I-1", "amount": 49.0, "method": "card", "customer_id": "C00000007"}
    events.write_text("\n".join([json.dumps(good), "{not json", json.dumps({**good, "event_id": "p2", "amount": -1})]))
    pushed = runner.invoke(app, ["events", "push", str(events), "--json"])
    assert pushed.exit_code == 0, pushed.output
    answer = json.loads(pushed.stdout)
    assert (answer["accepted"], answer["duplicates"]) == (1, 0)
    assert [(r["line"], r["reason"]) for r in answer["rejected"]] == [
        (2, "event: not valid JSON"), (3, "amount: below minimum 0")]
    again = json.loads(runner.invoke(app, ["events", "push", str(events), "--json"]).stdout)
    assert (again["accepted"], again["duplicates"]) == (0, 1)
    s = Settings(home=home)
    assert [r["customers"] for r in audit.records(s) if r["action"] == "c360 events push"] == [["C00000007"]] * 2

    first = json.loads(runner.invoke(app, ["ingest", "--json"]).stdout)
    second = json.loads(runner.invoke(app, ["ingest", "--json"]).stdout)
    assert (first["events"]["accepted"], first["events"]["quarantined"]) == (1, 4)
    assert second["events"] == {"read": 0, "accepted": 0, "replaced": 0, "superseded": 0,
                                 "quarantined": 0}
    with warehouse.connect(s, read_only=True) as con:
        assert con.execute("SELECT payment_id, status FROM billing_payments").fetchall() == [("P-1", "failed")]
        assert con.execute("SELECT count(DISTINCT row_number) FROM quarantine").fetchone() == (4,)


def test_push_of_a_missing_file_fails_in_one_line(home: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["events", "push", str(tmp_path / "none.jsonl"), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"error": f"{tmp_path / 'none.jsonl'}: file not found"}
