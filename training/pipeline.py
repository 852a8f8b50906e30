"""Training on the company's own data: examples from the feature store, a time split, MLflow, the registry.

Each `train_*` function is the whole stage for one model; the CLI wraps it. Churn and expansion are the same stage
on different labels (`Binary`): a calibrated LightGBM against a logistic regression and, on generated data, the
generator's true probability, with the same card, figures, fairness review and reasons.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from feast import FeatureStore

from c360.core import warehouse
from c360.core.definitions import BY_NAME
from c360.core.settings import Settings
from c360.features import store
from c360.training import cards, datasets, fairness, labels, tracking
from c360.training.churn import ChurnModel, calibration_curve_figure, fit_baseline, metrics, roc_figure
from c360.training.explain import feature_descriptions, shap_summary_figure
from c360.training.specs import CHURN, EXPANSION, ModelSpec
from c360.training.tracking import TrainReport


@dataclass(frozen=True)
class Binary:
    """A yes/no outcome within the spec's horizon: its label column and labeler (`training.labels`), the
    generator's true probability (ground-truth file and column), its definition for the card, monotone
    constraints and LightGBM parameters over `churn.PARAMS`."""

    spec: ModelSpec
    target: str
    label: datasets.Labeler
    truth: tuple[str, str]
    definition: str
    monotone: dict[str, int] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


CHURN_TASK = Binary(
    CHURN, "churned", labels.churn, ("churn_risk", "p_churn_90d"),
    f"Churn: cancellation, or no product activity and no paid invoice, within {CHURN.horizon_days} days of the "
    "as-of date (`training/labels.py`). Population: customers subscribed at the as-of date.",
    {"payment_failures_90d": 1, "flag_payment_failed": 1},  # more failed payments never lower the risk
    # Every customer's score and reasons walk every tree: at 0.1 early stopping keeps 37 trees on the demo company
    # against 98 at 0.05, for the same test ROC-AUC (0.7425 against 0.7432, the oracle 0.7623) and calibration.
    {"learning_rate": 0.1})
EXPANSION_TASK = Binary(
    EXPANSION, "expanded", labels.expansion, ("expansion", "p_expand_90d"),
    f"Expansion: a plan upgrade, a seat increase or an add-on order within {EXPANSION.horizon_days} days of the "
    "as-of date, from billing (`training/labels.py`). Population: customers subscribed at the as-of date. For "
    "account scoring: sales rank accounts by it.")
CHURN_MODEL = CHURN.name
SERVICE = CHURN.service
MONOTONE = CHURN_TASK.monotone


def labelled_dates(s: Settings, con, horizon_days: int) -> list[pd.Timestamp]:
    end = warehouse.data_end(con)
    return [d for d in store.snapshot_dates(s) if labels.labelable(d, end, horizon_days)]


def _examples(task: Binary, s: Settings, con, fs: FeatureStore) -> pd.DataFrame:
    dates = labelled_dates(s, con, task.spec.horizon_days)
    return datasets.examples(con, fs, task.spec.service, dates, task.label)


def churn_examples(s: Settings, con, fs: FeatureStore) -> pd.DataFrame:
    return _examples(CHURN_TASK, s, con, fs)


def expansion_examples(s: Settings, con, fs: FeatureStore) -> pd.DataFrame:
    return _examples(EXPANSION_TASK, s, con, fs)


def _features(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c in BY_NAME]


def by_segment(test: pd.DataFrame, p: np.ndarray, target: str = CHURN_TASK.target) -> pd.DataFrame:
    """Fairness review: size, outcome rate, mean prediction and the model's metrics within each segment."""
    rows = {}
    for segment, part in test.assign(p=p).groupby(test["segment"].fillna("unknown")):
        both = part[target].nunique() == 2  # AUC needs both outcomes
        rows[segment] = {"customers": len(part), "rate": part[target].mean(), "mean_prediction": part["p"].mean(),
                         **(metrics(part[target], part["p"]) if both else {})}
    return pd.DataFrame(rows).T.rename_axis("segment")


def model_card(task: Binary, frame: pd.DataFrame, split: tuple, scores: dict[str, dict[str, float]],
               segments: pd.DataFrame, groups: pd.DataFrame) -> str:
    train, calib, test = split
    return cards.model_card(task.spec.name, task.definition, {
        "Data window": [[
            f"train: {len(train):,} examples, as-of {train['as_of'].min():%Y-%m-%d} to {train['as_of'].max():%Y-%m-%d}",
            f"calibration: {len(calib):,} examples, as-of {calib['as_of'].min():%Y-%m-%d}",
            f"test: {len(test):,} examples, as-of {test['as_of'].min():%Y-%m-%d}; {task.target} rate "
            f"{test[task.target].mean():.3f}",
            f"features: feature service `{task.spec.service}` ({len(_features(frame))} features)",
        ]],
        "Test metrics": [pd.DataFrame(scores).T.rename_axis("model").map(lambda v: f"{v:.4f}")],
        "By segment in the test period (fairness review: calibration and ranking within each group)": [
            segments.round(4)],
        f"Fairness in the test period (action threshold: {fairness.CHURN_ACTION:.2f})":
            fairness.card_section(groups, task.spec.kind),
        "Caveats": [[
            "Scores are calibrated (Platt) on the period just before the test period; a drifting rate needs "
            "recalibration.",
            "Examples of one customer at several as-of dates are not independent; the split is by time, never random.",
        ]],
    })


def train_churn(s: Settings) -> TrainReport:
    """Train churn, evaluate on the latest labelled period, log to MLflow and register as @challenger."""
    return _train(s, CHURN_TASK, churn_examples)


def train_expansion(s: Settings) -> TrainReport:
    """Train expansion (account scoring), evaluate on the latest labelled period, log to MLflow and register as
    @challenger."""
    return _train(s, EXPANSION_TASK, expansion_examples)


def _train(s: Settings, task: Binary, examples: Callable[[Settings, object, FeatureStore], pd.DataFrame]
           ) -> TrainReport:
    spec, y = task.spec, task.target
    fs = store.offline(s)
    with warehouse.connect(s, read_only=True) as con:
        frame = examples(s, con, fs)
        file, column = task.truth
        known_truth = (s.truth / f"{file}.parquet").exists()
        oracle = datasets.oracle(con, s.truth, frame, file, column) if known_truth else None
        bands = fairness.customer_groups(con, frame["customer_id"])
    train, calib, test = split = datasets.time_split(frame)
    datasets.require({"training": train, "calibration": calib, "test": test}, y)
    features = _features(frame)
    model = ChurnModel(monotone=task.monotone, **task.params).fit(
        train[features], train[y], calib[features], calib[y], groups=train["customer_id"])
    baseline = fit_baseline(train[features], train[y])
    scores = {"lightgbm": model.predict_proba(test[features]),
              "logistic": baseline.predict_proba(test[features])[:, 1]}
    results = {name: metrics(test[y], p) for name, p in scores.items()}
    known = np.zeros(len(test), dtype=bool) if oracle is None else oracle.loc[test.index].notna().to_numpy()
    if oracle is not None and test[y][known].nunique() == 2:  # the truth covers the test date (a refresh's may not)
        results["oracle"] = metrics(test[y][known], oracle.loc[test.index][known])
        results["lightgbm_on_oracle_rows"] = metrics(test[y][known], scores["lightgbm"][known])
    segments = by_segment(test, scores["lightgbm"], y)
    groups = fairness.churn_groups(test[y], scores["lightgbm"], fairness.with_groups(test, bands))
    gap_metrics, gap_tags = fairness.logged(groups, spec.kind)
    figures = binary_figures(test[y], scores, model, test[features], "test period")
    test_period = f"{test['as_of'].min():%Y-%m-%d}"
    version = tracking.log_training_run(
        experiment=spec.name, run_name=f"{spec.kind} {test_period}", model=model, flavor="pyfunc",
        params={"horizon_days": spec.horizon_days, "features": len(features), "trees": model.n_trees,
                "learning_rate": model.params["learning_rate"], "calibration": "platt",
                "monotone": ",".join(task.monotone)},
        metrics={**results["lightgbm"], **gap_metrics},
        baselines={k: v for k, v in results.items() if k != "lightgbm"},
        dataset={"training": train, "test": test}, dataset_name=spec.service, target=y,
        input_example=test[features].head(5), figures=figures,
        tables={"test_metrics": pd.DataFrame(results).T, "by_segment": segments, "fairness": groups.reset_index()},
        model_card=model_card(task, frame, split, results, segments, groups), registered_name=spec.name,
        tags={"test_period": test_period, "feature_service": spec.service, **gap_tags}, home=s.home)
    return TrainReport(spec.name, int(version.version), str(version.run_id), test_period,
                       {"train": len(train), "calibration": len(calib), "test": len(test)},
                       {**results["lightgbm"], **gap_metrics}, {k: v for k, v in results.items() if k != "lightgbm"})


def binary_figures(y: pd.Series, scores: dict[str, np.ndarray], model: ChurnModel, test: pd.DataFrame,
                   period: str) -> dict[str, Any]:
    """A probability model's card figures: ROC and calibration of every scorer, SHAP summary on up to 3,000 rows."""
    sample = test.sample(min(len(test), 3000), random_state=0)
    return {
        "roc": roc_figure(y, scores, title=f"ROC, {period}"),
        "calibration": calibration_curve_figure(y, scores, title=f"Calibration, {period}"),
        "shap_summary": shap_summary_figure(model.contributions(sample), model.feature_values(sample),
                                            descriptions=feature_descriptions()),
    }
