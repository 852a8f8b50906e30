"""Expansion propensity (account scoring) on the generated company: labels from billing against the generator's
truth, the acceptance figures on the test period, reasons equal to TreeExplainer's, and the gate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import shap

from c360.core import warehouse
from c360.core.settings import Settings
from c360.features import store
from c360.serving.predict import score_churn
from c360.training import datasets, labels, tracking
from c360.training.pipeline import EXPANSION_TASK, expansion_examples, train_expansion
from c360.training.registry import promote
from c360.training.specs import EXPANSION


@pytest.fixture(scope="module")
def home(home_with_snapshots) -> Settings:
    return home_with_snapshots("expansion_home", history_days=365)


@pytest.fixture(scope="module")
def examples(home: Settings) -> pd.DataFrame:
    with warehouse.connect(home, read_only=True) as con:
        return expansion_examples(home, con, store.feature_store(home))


@pytest.fixture(scope="module")
def trained(home: Settings, mlflow_home):
    return train_expansion(home)


def test_labels_come_after_the_date_and_follow_the_truth(home: Settings, examples: pd.DataFrame) -> None:
    with warehouse.connect(home, read_only=True) as con:
        end = warehouse.data_end(con)
        truth = datasets.oracle(con, home.truth, examples, *EXPANSION_TASK.truth)
    assert examples["as_of"].max() + pd.Timedelta(days=labels.EXPANSION_HORIZON_DAYS) <= end
    assert examples["subscribed"].all() and examples.groupby("as_of")["customer_id"].apply(lambda s: s.is_unique).all()
    known = truth.notna()
    assert known.mean() > 0.95, "the truth covers nearly every example: the 4-week grid and the waves"
    rate, expected = examples["expanded"][known].mean(), truth[known].mean()
    assert 0.05 < rate < 0.6 and abs(rate - expected) < 0.03, (rate, expected)


def test_a_counter_label_from_another_horizon_differs(home: Settings, examples: pd.DataFrame) -> None:
    """The label reads the horizon it is given: a 30-day window flags fewer customers on the same date."""
    day = examples["as_of"].max()
    with warehouse.connect(home, read_only=True) as con:
        short = labels.expansion(con, day, 30)
    full = examples[examples["as_of"] == day]
    assert short["expanded"].sum() < full["expanded"].sum()
    assert not (short.set_index("customer_id")["expanded"]
                & ~full.set_index("customer_id")["expanded"].reindex(short["customer_id"]).fillna(False)).any()


def test_expansion_close_to_the_truth_above_logistic_and_calibrated(trained) -> None:
    """The acceptance on the test period: ROC-AUC within 0.03 of the truth oracle's (on the rows the truth
    covers), above logistic regression, ECE ≤ 0.03."""
    lightgbm, oracle = trained.baselines["lightgbm_on_oracle_rows"], trained.baselines["oracle"]
    assert lightgbm["roc_auc"] >= oracle["roc_auc"] - 0.03, (lightgbm, oracle)
    assert trained.metrics["roc_auc"] > trained.baselines["logistic"]["roc_auc"]
    assert trained.metrics["ece"] <= 0.03


def test_reasons_are_tree_explainers(home: Settings, trained, examples: pd.DataFrame) -> None:
    model, version = tracking.load_model(EXPANSION.name, tracking.CHALLENGER, "pyfunc", home=home.home)
    assert int(version.version) == trained.version
    X = examples[examples["as_of"] == examples["as_of"].max()].head(300)[list(model.spec.columns)]
    shap_values = shap.TreeExplainer(model.booster).shap_values(model.prepare(X))
    np.testing.assert_allclose(shap_values, model.contributions(X).drop(columns="base_value"), atol=1e-6)
    scores = score_churn(model, int(version.version), X.reset_index(drop=True))
    top = -np.sort(-np.abs(shap_values), axis=1)[:, :3]  # the three largest |SHAP| of each row, strongest first
    np.testing.assert_allclose(np.abs(scores.reasons.contributions), top, atol=1e-6)
    names = list(model.spec.names)
    for row, slot in zip(*np.nonzero(scores.reasons.names != None), strict=True):  # noqa: E711 (elementwise)
        feature = names.index(scores.reasons.names[row, slot])
        assert shap_values[row, feature] == pytest.approx(scores.reasons.contributions[row, slot], abs=1e-6)


def test_the_gate_promotes_once_and_guards_the_champion(home: Settings, trained) -> None:
    client = tracking.configure(home.home)
    assert promote(client, EXPANSION.name, EXPANSION.gate).promoted
    again = train_expansion(home)  # same data and test period: it cannot beat the champion by the margin
    decision = promote(client, EXPANSION.name, EXPANSION.gate)
    assert not decision.promoted and again.version == trained.version + 1
    card = client.get_model_version(EXPANSION.name, str(trained.version)).description
    assert "Expansion: a plan upgrade" in card and "expansion_v1" in card
