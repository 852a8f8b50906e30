"""`c360 train churn|nba --table` as a user runs them: one JSON document whose top level carries the chosen model's
cross-validated figures beside the candidates', warnings on stderr one line each, and the help's units."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from c360.cli.main import app

runner = CliRunner()


@pytest.fixture
def home(mlflow_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("C360_HOME", str(mlflow_home))
    return mlflow_home


def run(*args: str) -> tuple[dict, str]:
    result = runner.invoke(app, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def test_churn_json_and_console_warnings(home: Path, tmp_path: Path):
    rng = np.random.default_rng(0)
    n = 600
    charges = rng.uniform(20, 120, n)
    churn = rng.random(n) < 1 / (1 + np.exp(-(charges - 70) / 15))
    pd.DataFrame({"rownames": np.arange(1, n + 1), "charges": charges.round(2), "plan": rng.choice(["a", "b"], n),
                  "closed_reason": np.where(churn, "moved", None), "churn": churn.astype(int)}
                 ).to_csv(tmp_path / "t.csv", index=False)
    out, err = run("train", "churn", "--table", str(tmp_path / "t.csv"), "--label", "churn", "--folds", "2")
    assert set(out["candidates"]) == {"logistic", "lightgbm", "lightgbm_tuned", "blend"}
    assert out["chosen"] in out["candidates"]
    assert out["roc_auc"] == out["metrics"]["roc_auc"] and out["roc_auc_sd"] == out["metrics"]["roc_auc_sd"]
    assert all({"roc_auc", "roc_auc_sd"} <= set(c) for c in out["candidates"].values())
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert any("'rownames'" in line and "identifier-like" in line for line in lines), err
    assert any("possible leakage: 'closed_reason'" in line for line in lines), err


def test_nba_json_warns_without_a_cost(home: Path, tmp_path: Path):
    rng = np.random.default_rng(1)
    n = 1200
    charges = rng.uniform(20, 120, n)
    arm = rng.choice(["none", "call"], n)
    renewed = rng.random(n) < 0.3 + 0.2 * ((arm == "call") & (charges > 70))
    pd.DataFrame({"charges": charges, "offer": arm, "renewed": renewed.astype(int)}).to_csv(tmp_path / "e.csv",
                                                                                          index=False)
    args = ("train", "nba", "--table", str(tmp_path / "e.csv"), "--treatment", "offer", "--control", "none",
            "--outcome", "renewed", "--folds", "3")
    out, err = run(*args)
    assert out["qini"] == out["metrics"]["qini"] and out["qini_sd"] > 0
    assert set(out["candidates"]) == {"t_learner_lightgbm", "t_learner_linear"}
    assert "no --cost given" in err
    costed, err = run(*args, "--cost", "call=4", "--value", "40")  # 4 currency units for a renewal worth 40
    assert "no --cost given" not in err
    arms = {row["arm"]: row for row in costed["arms"]}
    assert arms["call"]["cost"] == pytest.approx(0.1)  # in outcome units: 4 / 40


def test_a_value_that_is_not_positive_is_refused(home: Path, tmp_path: Path):
    result = runner.invoke(app, ["train", "nba", "--table", str(tmp_path / "e.csv"), "--treatment", "offer",
                                 "--control", "none", "--outcome", "renewed", "--value", "0"])
    assert result.exit_code == 1 and "--value must be positive" in result.output


def test_the_help_gives_the_units():
    boxed = runner.invoke(app, ["train", "nba", "--help"]).stdout
    text = " ".join(re.sub("[│╭╮╰╯─]", " ", boxed).split())  # the words, whatever the terminal's width
    assert "ARM=VALUE: what sending ARM to one customer costs, in the same money as --value" in text
    assert "what one unit of --outcome is worth, in the currency of --cost" in text
