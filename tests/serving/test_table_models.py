"""A table model's lifecycle: `c360 train churn --table` → `c360 promote NAME` → `c360 score --model` → served at
`POST /models/{name}/predict` by a real `bentoml serve` → `mlflow.pyfunc.load_model` on the raw CSV, with the same
probabilities everywhere; and what each step refuses (another table under the name, a feature-store model's name,
rows that do not fit the training schema)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import audit, keys
from c360.core.settings import Settings
from c360.training import tracking
from tests.serving.conftest import bearer, running

runner = CliRunner()
ROWS = 1200


def telco(n: int, seed: int) -> pd.DataFrame:
    """A churn table as exports come: a text id, a known signal (contract, charges, tenure), categoricals with
    missing values, blank cells, a Yes/No column and a Yes/No label."""
    rng = np.random.default_rng(seed)
    contract = rng.choice(["Month-to-month", "One year", "Two year"], n, p=[0.5, 0.3, 0.2])
    tenure = rng.integers(0, 72, n)
    charges = rng.uniform(20, 120, n).round(2)
    logit = -1.2 + 1.8 * (contract == "Month-to-month") + 0.025 * (charges - 70) - 0.035 * tenure
    churn = rng.random(n) < 1 / (1 + np.exp(-logit))
    frame = pd.DataFrame({
        "customer_ref": [f"CU-{i:05d}" for i in range(n)],
        "Contract": np.where(rng.random(n) < 0.05, None, contract),
        "tenure": tenure,
        "Monthly Charges": np.where(rng.random(n) < 0.04, np.nan, charges),
        "region": rng.choice(["north", "south", "east", "west", "centre"], n),
        "Paperless": rng.choice(["Yes", "No"], n),
        "Churn": np.where(churn, "Yes", "No"),
    })
    return frame


def ok(*args: str) -> Any:
    result = runner.invoke(app, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def refused(*args: str) -> str:
    """The one-line error of a command that must fail cleanly."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    return " ".join(result.stderr.split())


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A home with the table model `telco` trained and promoted (no feature store at all)."""
    root = tmp_path_factory.mktemp("table-model")
    s = Settings(home=root / "home")
    s.home.mkdir()
    table = root / "telco.csv"
    telco(ROWS, 0).to_csv(table, index=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        patch.setenv("C360_HOME", str(s.home))
        trained = ok("train", "churn", "--table", str(table), "--label", "Churn", "--id", "customer_ref",
                     "--folds", "3", "--name", "telco")
        promoted = ok("promote", "telco")
        yield {"settings": s, "root": root, "table": table, "trained": trained, "promoted": promoted}


@pytest.fixture(scope="module")
def server(lifecycle: dict[str, Any]) -> Iterator[tuple[str, dict[str, str]]]:
    """A real `bentoml serve` over the home, polling the registry every second; a key of each role."""
    s: Settings = lifecycle["settings"]
    keyring = {role: keys.create(s, f"test-{role}", role, replace_active=True) for role in keys.ROLES}
    with running(s, 1, 1, lifecycle["root"], ready="/healthz") as url:
        deadline = time.time() + 60
        while time.time() < deadline:  # /healthz answers before the service has read the registry
            answer = httpx.post(f"{url}/models/telco/predict", json={"rows": [{}]}, headers=bearer(keyring["admin"]))
            if answer.status_code != 404:
                break
            time.sleep(0.5)
        yield url, keyring


def rows_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON rows as a client sends them: missing values as null."""
    return [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def test_train_registers_the_name_and_promote_gates_it(lifecycle: dict[str, Any]) -> None:
    trained, promoted = lifecycle["trained"], lifecycle["promoted"]
    assert (trained["model"], trained["version"]) == ("c360-telco", 1)
    assert trained["metrics"]["roc_auc"] > 0.7  # the signal is there; a shuffled label would sit near 0.5
    assert promoted["model"] == "c360-telco" and promoted["promoted"] and promoted["challenger"] == 1
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("C360_HOME", str(lifecycle["settings"].home))
        listed = ok("champions")["models"]
    assert {"model": "c360-telco", "alias": "@champion", "version": 1, "run_id": trained["run_id"]} in listed


def test_the_probabilities_are_the_same_everywhere(lifecycle: dict[str, Any],
                                                   server: tuple[str, dict[str, str]]) -> None:
    import mlflow

    s: Settings = lifecycle["settings"]
    table, out = lifecycle["table"], lifecycle["root"] / "scores.parquet"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("C360_HOME", str(s.home))
        scored = ok("score", "--model", "telco", "--table", str(table), "--out", str(out))
        records = list(audit.records(s))
    assert (scored["model"], scored["version"], scored["rows"]) == ("c360-telco", 1, ROWS)
    assert records[-1]["action"] == "c360 score --model" and records[-1]["status"] == "ok"
    batch = pd.read_parquet(out)
    assert list(batch.columns[:2]) == ["customer_ref", "churn_probability"]
    assert batch["reason_1"].isin(["Contract", "tenure", "Monthly Charges", "region", "Paperless"]).all()

    raw = pd.read_csv(table)  # MLflow's standard loader on the CSV as pandas reads it, label and id included
    tracking.configure(s.home)
    loaded = mlflow.pyfunc.load_model("models:/c360-telco@champion").predict(raw)

    url, keyring = server
    sample = raw.sample(200, random_state=1)
    answer = httpx.post(f"{url}/models/telco/predict", json={"rows": rows_of(sample)},
                        headers=bearer(keyring["service"]), timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model"], body["version"]) == ("c360-telco", 1)
    served = pd.DataFrame(body["predictions"])
    np.testing.assert_allclose(loaded["churn_probability"], batch["churn_probability"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(served["churn_probability"], batch["churn_probability"].iloc[sample.index],
                               rtol=0, atol=1e-9)
    assert served["customer_ref"].tolist() == sample["customer_ref"].tolist()
    status = httpx.get(f"{url}/status", headers=bearer(keyring["service"]), timeout=30).json()
    assert status["table_models"] == {"telco": 1}
    first = body["predictions"][0]["reasons"]
    assert 1 <= len(first) <= 3 and first[0]["feature"] == batch["reason_1"].iloc[sample.index[0]]
    assert abs(first[0]["contribution"]) >= abs(first[-1]["contribution"])


def test_rows_that_do_not_fit_the_schema_are_422_naming_the_column(lifecycle: dict[str, Any],
                                                                    server: tuple[str, dict[str, str]]) -> None:
    url, keyring = server
    row = rows_of(pd.read_csv(lifecycle["table"]).head(1))[0]

    def post(rows: list[dict[str, Any]], name: str = "telco", role: str = "service") -> httpx.Response:
        return httpx.post(f"{url}/models/{name}/predict", json={"rows": rows}, headers=bearer(keyring[role]),
                          timeout=30)

    cases = {
        "tenure": [{k: v for k, v in row.items() if k != "tenure"}],  # missing
        "favourite colour": [row | {"favourite colour": "blue"}],  # not in the table
        "Monthly Charges": [row | {"Monthly Charges": "a lot"}],  # text in a number column
        "Contract": [row | {"Contract": 12}],  # a number in a text column
    }
    for column, rows in cases.items():
        answer = post(rows)
        assert answer.status_code == 422, (column, answer.text)
        assert column in answer.json()["detail"][0]["msg"], answer.text
    assert post([row] * 1001).status_code == 413
    assert post([row], name="nosuch").status_code == 404
    assert post([row], role="analyst").status_code == 403
    assert post([row | {"Monthly Charges": None, "Contract": None}]).status_code == 200  # missing values are fine


def test_eight_concurrent_clients(lifecycle: dict[str, Any], server: tuple[str, dict[str, str]]) -> None:
    url, keyring = server
    rows = rows_of(pd.read_csv(lifecycle["table"]).head(50))

    def call(_: int) -> list[float]:
        answer = httpx.post(f"{url}/models/telco/predict", json={"rows": rows}, headers=bearer(keyring["service"]),
                            timeout=60)
        assert answer.status_code == 200, answer.text
        return [p["churn_probability"] for p in answer.json()["predictions"]]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(32)))
    assert all(a == answers[0] for a in answers)


def test_another_table_under_the_name_is_refused(lifecycle: dict[str, Any]) -> None:
    other = lifecycle["root"] / "other.csv"
    telco(300, 1).drop(columns=["region"]).assign(tenure=lambda f: f["tenure"].astype(str) + " months").to_csv(
        other, index=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("C360_HOME", str(lifecycle["settings"].home))
        error = refused("train", "churn", "--table", str(other), "--label", "Churn", "--name", "telco")
        assert "c360-telco was trained on a table with other columns" in error
        assert "missing: 'region'" in error and "'tenure' (number → text)" in error
        assert "feature-store model" in refused("train", "churn", "--table", str(other), "--label", "Churn",
                                                "--name", "churn")
        assert "lowercase letters" in refused("train", "churn", "--table", str(other), "--label", "Churn",
                                              "--name", "Telco!")
        client = tracking.configure(lifecycle["settings"].home)
    assert [int(v.version) for v in client.search_model_versions("name = 'c360-telco'")] == [1]


def test_the_same_table_again_is_a_new_version_that_the_gate_judges(lifecycle: dict[str, Any]) -> None:
    """Trained again on the same rows and folds, v2 scores what v1 scored: not measurably better, refused."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("C360_HOME", str(lifecycle["settings"].home))
        again = ok("train", "churn", "--table", str(lifecycle["table"]), "--label", "Churn", "--id", "customer_ref",
                   "--folds", "3", "--name", "telco")
        decision = ok("promote", "telco")
    assert again["model"] == "c360-telco" and again["version"] == 2
    assert not decision["promoted"] and (decision["challenger"], decision["champion"]) == (2, 1)
    assert decision["reasons"][0].startswith("roc_auc (higher is better)")


def test_an_nba_table_model_scores_the_same_in_batch_and_as_rows(lifecycle: dict[str, Any]) -> None:
    """An experiment table: `c360 score --alias challenger` and the route's answers (in process) agree."""
    from c360.serving.table_models import Loaded
    from c360.training.table_models import load

    rng = np.random.default_rng(3)
    n = 1600
    spend = rng.uniform(10, 120, n).round(2)
    offer = rng.choice(["No offer", "Free month"], n)
    renewed = rng.random(n) < 0.2 + 0.25 * ((offer == "Free month") & (spend > 60))
    table = lifecycle["root"] / "Offers 2024.csv"
    pd.DataFrame({"spend": spend, "plan": rng.choice(["Basic", "Pro", None], n), "offer": offer,
                  "renewed": renewed.astype(int)}).to_csv(table, index=False)
    s: Settings = lifecycle["settings"]
    out = lifecycle["root"] / "offers.csv"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("C360_HOME", str(s.home))
        trained = ok("train", "nba", "--table", str(table), "--treatment", "offer", "--control", "No offer",
                     "--outcome", "renewed", "--cost", "Free month=0.05")
        assert trained["model"] == "c360-offers-2024"  # from the file's name
        ok("score", "--model", "offers-2024", "--table", str(table), "--out", str(out), "--alias", "challenger")
        model, version = load(s.home, "c360-offers-2024", "challenger")
    batch = pd.read_csv(out)
    assert list(batch.columns[:2]) == ["recommended", "expected_gain"]
    rows = rows_of(pd.read_csv(table).head(40))
    answers = Loaded("c360-offers-2024", "nba", int(version.version), model).predict(rows)
    assert [a["recommended"] for a in answers] == batch["recommended"].head(40).tolist()
    np.testing.assert_allclose([a["expected_gain"] for a in answers], batch["expected_gain"].head(40), atol=1e-9)
    assert set(answers[0]["expected"]) == {"No offer", "Free month"}
