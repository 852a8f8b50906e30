"""Training on the company's own data: examples from the feature store, a time split, MLflow, the registry.

Each `train_*` function is the whole stage for one model; the CLI wraps it.
"""

from __future__ import annotations

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
from c360.training.specs import CHURN
from c360.training.tracking import TrainReport

CHURN_MODEL = CHURN.name
SERVICE = CHURN.service
MONOTONE = {"payment_failures_90d": 1, "flag_payment_failed": 1}  # more failed payments never lower the risk


def _labelled_dates(s: Settings, con, horizon_days: int) -> list[pd.Timestamp]:
    end = warehouse.data_end(con)
    return [d for d in store.snapshot_dates(s) if labels.labelable(d, end, horizon_days)]


def churn_examples(s: Settings, con, fs: FeatureStore) -> pd.DataFrame:
    dates = _labelled_dates(s, con, labels.CHURN_HORIZON_DAYS)
    return datasets.examples(con, fs, SERVICE, dates, labels.churn)


def _features(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c in BY_NAME]


def by_segment(test: pd.DataFrame, p: np.ndarray) -> pd.DataFrame:
    """Fairness review: size, churn rate, mean predicted risk and the model's metrics within each segment."""
    rows = {}
    for segment, part in test.assign(p=p).groupby(test["segment"].fillna("unknown")):
        both = part["churned"].nunique() == 2  # AUC needs churners and stayers
        rows[segment] = {"customers": len(part), "churn_rate": part["churned"].mean(), "mean_risk": part["p"].mean(),
                         **(metrics(part["churned"], part["p"]) if both else {})}
    return pd.DataFrame(rows).T.rename_axis("segment")


def model_card(name: str, frame: pd.DataFrame, split: tuple, scores: dict[str, dict[str, float]],
               segments: pd.DataFrame, groups: pd.DataFrame) -> str:
    train, calib, test = split
    return cards.model_card(name, (
        f"Churn: cancellation, or no product activity and no paid invoice, within {labels.CHURN_HORIZON_DAYS} days "
        "of the as-of date (`training/labels.py`). Population: customers subscribed at the as-of date."), {
        "Data window": [[
            f"train: {len(train):,} examples, as-of {train['as_of'].min():%Y-%m-%d} to {train['as_of'].max():%Y-%m-%d}",
            f"calibration: {len(calib):,} examples, as-of {calib['as_of'].min():%Y-%m-%d}",
            f"test: {len(test):,} examples, as-of {test['as_of'].min():%Y-%m-%d}; churn rate "
            f"{test['churned'].mean():.3f}",
            f"features: feature service `churn_v1` ({len(_features(frame))} features)",
        ]],
        "Test metrics": [pd.DataFrame(scores).T.rename_axis("model").map(lambda v: f"{v:.4f}")],
        "By segment in the test period (fairness review: calibration and ranking within each group)": [
            segments.round(4)],
        f"Fairness in the test period (action threshold: risk {fairness.CHURN_ACTION:.2f})":
            fairness.card_section(groups, "churn"),
        "Caveats": [[
            "Scores are calibrated (Platt) on the period just before the test period; a drifting churn rate needs "
            "recalibration.",
            "Examples of one customer at several as-of dates are not independent; the split is by time, never random.",
        ]],
    })


def train_churn(s: Settings) -> TrainReport:
    """Train, evaluate on the latest labelled period, log to MLflow and register as @challenger."""
    fs = store.feature_store(s)
    with warehouse.connect(s, read_only=True) as con:
        frame = churn_examples(s, con, fs)
        oracle = datasets.oracle_churn(con, s.truth, frame) if (s.truth / "churn_risk.parquet").exists() else None
        bands = fairness.customer_groups(con, frame["customer_id"])
    train, calib, test = split = datasets.time_split(frame)
    features = _features(frame)
    model = ChurnModel(monotone=MONOTONE).fit(train[features], train["churned"], calib[features], calib["churned"],
                                              groups=train["customer_id"])
    baseline = fit_baseline(train[features], train["churned"])
    scores = {"lightgbm": model.predict_proba(test[features]),
              "logistic": baseline.predict_proba(test[features])[:, 1]}
    results = {name: metrics(test["churned"], p) for name, p in scores.items()}
    if oracle is not None:  # generated data: the true probability, on the test customers the truth covers
        known = oracle.loc[test.index].notna().to_numpy()
        results["oracle"] = metrics(test["churned"][known], oracle.loc[test.index][known])
        results["lightgbm_on_oracle_rows"] = metrics(test["churned"][known], scores["lightgbm"][known])
    segments = by_segment(test, scores["lightgbm"])
    groups = fairness.churn_groups(test["churned"], scores["lightgbm"], fairness.with_groups(test, bands))
    gap_metrics, gap_tags = fairness.logged(groups, "churn")
    sample = test[features].sample(min(len(test), 3000), random_state=0)
    figures = {
        "roc": roc_figure(test["churned"], scores, title="ROC, test period"),
        "calibration": calibration_curve_figure(test["churned"], scores, title="Calibration, test period"),
        "shap_summary": shap_summary_figure(model.contributions(sample), model.feature_values(sample),
                                            descriptions=feature_descriptions()),
    }
    test_period = f"{test['as_of'].min():%Y-%m-%d}"
    version = tracking.log_training_run(
        experiment=CHURN_MODEL, run_name=f"churn {test_period}", model=model, flavor="pyfunc",
        params={"horizon_days": labels.CHURN_HORIZON_DAYS, "features": len(features), "trees": model.n_trees,
                "calibration": "platt", "monotone": ",".join(MONOTONE)},
        metrics={**results["lightgbm"], **gap_metrics},
        baselines={k: v for k, v in results.items() if k != "lightgbm"},
        dataset={"training": train, "test": test}, dataset_name=SERVICE, target="churned",
        input_example=test[features].head(5), figures=figures,
        tables={"test_metrics": pd.DataFrame(results).T, "by_segment": segments, "fairness": groups.reset_index()},
        model_card=model_card(CHURN_MODEL, frame, split, results, segments, groups), registered_name=CHURN_MODEL,
        tags={"test_period": test_period, "feature_service": SERVICE, **gap_tags}, home=s.home)
    return TrainReport(CHURN_MODEL, int(version.version), str(version.run_id), test_period,
                       {"train": len(train), "calibration": len(calib), "test": len(test)},
                       {**results["lightgbm"], **gap_metrics}, {k: v for k, v in results.items() if k != "lightgbm"})
