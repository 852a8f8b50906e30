"""`c360 mlflow-ui`: the command line it runs, and the real UI in Chromium comparing @challenger with @champion."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression

from c360.cli.review import server_command, server_env
from c360.training import tracking
from c360.training.churn import metrics, roc_figure
from c360.training.fairness import gap_metric
from c360.training.registry import CHURN_GATE, promote

MODEL = "c360-churn"


def test_the_server_reads_the_projects_store_and_artifacts() -> None:
    command = server_command("sqlite:////h/mlflow.db", "file:///h/mlartifacts", "127.0.0.1", 5001, 1)
    assert command[:4] == [sys.executable, "-m", "mlflow", "server"]
    options = dict(zip(command[4::2], command[5::2], strict=True))
    assert options["--backend-store-uri"] == "sqlite:////h/mlflow.db"
    assert options["--default-artifact-root"] == "file:///h/mlartifacts"
    assert options["--port"] == "5001"
    assert server_env()["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def _log_version(home: Path, regularisation: float, X: pd.DataFrame, y: pd.Series) -> str:
    """One churn-like run on the same test period, registered as the new @challenger; returns its run id."""
    train, test = slice(0, 600), slice(600, None)
    model = LogisticRegression(C=regularisation).fit(X[train], y[train])
    p = model.predict_proba(X[test])[:, 1]
    version = tracking.log_training_run(
        experiment=MODEL, run_name=f"churn 2026-07-13, C={regularisation}", model=model, flavor="sklearn",
        params={"model": "logistic", "C": regularisation, "features": X.shape[1]},
        metrics=metrics(y[test], p) | {gap_metric("calibration"): 0.02}, baselines=None, dataset=None,
        dataset_name="churn_v1",
        input_example=X.head(3), figures={"roc": roc_figure(y[test], {"logistic": p})}, tables={},
        model_card=f"# {MODEL}\n\nlogistic regression, C={regularisation}", registered_name=MODEL,
        tags={"test_period": "2026-07-13", "feature_service": "churn_v1"}, home=home)
    return str(version.run_id)


@pytest.fixture(scope="module")
def review_store(mlflow_home: Path) -> tuple[Path, list[str]]:
    """A tracking store with two versions of c360-churn: v1 @champion, v2 @challenger (refused by the gate)."""
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(1000, 4)), columns=["usage_trend", "tickets_90d", "nps_last", "mrr"])
    y = pd.Series((X["tickets_90d"] - X["usage_trend"] + rng.normal(size=1000) > 1).astype(int))
    champion = _log_version(mlflow_home, 1.0, X, y)
    client = tracking.configure(mlflow_home)
    assert promote(client, MODEL, CHURN_GATE).promoted
    challenger = _log_version(mlflow_home, 0.001, X, y)
    promote(client, MODEL, CHURN_GATE)
    return mlflow_home, [challenger, champion]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_ui(review_store: tuple[Path, list[str]]) -> Iterator[str]:
    """`c360 mlflow-ui` on a free port over the review store; yields its URL, stops the server's process group."""
    home, _ = review_store
    port = _free_port()
    inherited = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env = {**inherited, "C360_HOME": str(home), "COLUMNS": "200"}  # the store under C360_HOME, whatever MLflow set
    process = subprocess.Popen([sys.executable, "-m", "c360.cli", "mlflow-ui", "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://localhost:{port}"
    try:
        deadline = time.time() + 180  # the server starts in 10-40 s on a busy 2-core machine
        while time.time() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        if process.poll() is not None:
            pytest.fail(f"c360 mlflow-ui exited with {process.returncode}:\n{process.stdout.read()}")  # type: ignore[union-attr]
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_mlflow_ui_serves_the_registry_with_both_aliases(mlflow_ui: str) -> None:
    client = MlflowClient(tracking_uri=mlflow_ui, registry_uri=mlflow_ui)
    aliases = client.get_registered_model(MODEL).aliases
    assert aliases == {"champion": "1", "challenger": "2"}
    assert client.get_model_version(MODEL, "2").tags["gate.decision"] == "refused"


def compare_url(base: str, runs: list[str], experiment_id: str) -> str:
    return f"{base}/#/compare-runs?runs={json.dumps(runs)}&experiments={json.dumps([experiment_id])}"


def test_the_run_comparison_view_shows_challenger_against_champion(
        mlflow_ui: str, review_store: tuple[Path, list[str]], page, tmp_path: Path, docs_images: Path | None) -> None:
    _, runs = review_store
    experiment = MlflowClient(tracking_uri=mlflow_ui).get_experiment_by_name(MODEL)
    assert experiment is not None
    page.goto(compare_url(mlflow_ui, runs, experiment.experiment_id))
    page.get_by_text("Comparing 2 Runs").wait_for(timeout=60_000)
    page.get_by_text("roc_auc").first.wait_for()
    for button in ("Close", "Toggle sidebar"):  # the assistant panel and the navigation: room for the table
        if page.get_by_role("button", name=button).count():
            page.get_by_role("button", name=button).first.click()
    page.get_by_text("Visualizations").first.click()  # folds the plots, so run details and metrics come first
    for run in runs:
        assert page.get_by_text(run[:12]).count(), f"run {run} missing from the comparison"
    assert page.get_by_text("C=0.001").count() and page.get_by_text("C=1.0").count()
    shot = tmp_path / "mlflow-compare.png"
    page.screenshot(path=str(shot), clip={"x": 0, "y": 0, "width": 1400, "height": 1080})
    assert shot.stat().st_size > 20_000
    if docs_images is not None:
        (docs_images / shot.name).write_bytes(shot.read_bytes())
