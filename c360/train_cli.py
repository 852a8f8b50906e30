"""`c360 train churn` and `c360 promote MODEL`: models trained, tracked in MLflow and promoted through a gate."""

from __future__ import annotations

import time
from typing import Annotated, Literal

import pandas as pd
import typer

from c360.settings import Settings
from c360.ui import console, fail, record_run, table

train_app = typer.Typer(help="Train models on the feature store (or on your own table) and register them in MLflow.",
                        no_args_is_help=True)
MODELS = {"churn": "c360-churn"}


@train_app.command("churn")
def train_churn() -> None:
    """Churn within 90 days: LightGBM (calibrated) vs logistic regression, time split over the feature snapshots,
    logged to MLflow and registered as c360-churn@challenger."""
    from training.pipeline import train_churn as run

    s, started = Settings(), time.time()
    if not s.snapshots.exists():
        raise fail("no feature snapshots: run `c360 features build` and `c360 features apply` first")
    with console.status("training churn: examples from Feast, LightGBM, baseline, MLflow"):
        try:
            report = run(s)
        except ValueError as e:
            raise fail(str(e)) from None
    scores = pd.DataFrame({"lightgbm": report.metrics, **report.baselines}).T.reset_index(names="model")
    console.print(table(f"churn, test period {report.test_period} ({report.rows['test']:,} customers)", scores))
    console.print(f"registered {report.model} v{report.version} @challenger (run {report.run_id}); "
                  f"`c360 promote churn` moves @champion if it passes the gate")
    record_run(s, "train churn", started, version=report.version, run_id=report.run_id, **report.metrics)


def promote(model: Annotated[Literal["churn"], typer.Argument(help="which model")]) -> None:
    """Move @champion to @challenger when it beats the champion on the same test period by the gate's margin and
    regresses no guard metric; print why otherwise."""
    from training import tracking
    from training.registry import CHURN_GATE
    from training.registry import promote as run

    s = Settings()
    try:
        decision = run(tracking.configure(s.home), MODELS[model], CHURN_GATE)
    except LookupError as e:
        raise fail(str(e)) from None
    console.print(str(decision))
