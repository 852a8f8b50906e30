"""`c360 monitor` as a command: a clear error without a home, a report of ok checks for a home with nothing in it
yet (each saying what it waits for), `--out`, one JSON document, an audit record and the run log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import audit
from c360.core.settings import Settings


def test_no_home_is_a_one_line_error(home: Path) -> None:
    result = CliRunner().invoke(app, ["monitor"])
    assert result.exit_code == 1 and "no C360_HOME here" in result.output and "Traceback" not in result.output


def test_an_empty_home_reports_what_each_check_waits_for(home: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    home.mkdir()
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["monitor", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["status"] == "ok" and document["folder"] == str(out)
    summaries = {c["name"]: c["summary"] for c in document["checks"]}
    assert "no feature snapshots" in summaries["feature_drift_previous"]
    assert "nothing to compare" in summaries["score_drift"]
    assert "no feature store" in summaries["online_offline"]
    assert json.loads((out / "report.json").read_text())["checks"] == document["checks"]
    assert not (home / "monitor" / "latest").exists(), "--out leaves `latest` alone"
    s = Settings()
    assert json.loads(s.runs.read_text().splitlines()[-1])["command"] == "monitor"
    records = [json.loads(line) for line in audit.path(s).read_text().splitlines()]
    assert records[-1]["action"] == "c360 monitor" and records[-1]["status"] == "ok"


def test_help_says_when_it_exits_non_zero() -> None:
    result = CliRunner().invoke(app, ["monitor", "--help"])
    assert result.exit_code == 0 and "act" in result.output
