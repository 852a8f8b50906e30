"""The churn candidates for a table and the nested protocol that chooses between them: sizes that follow the data,
rare category levels pooled, the logistic candidate's exact contributions, identifier-like columns dropped, and the
acceptance bar (the chosen model at least as good as logistic regression and default LightGBM on the same folds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from c360.training import saved
from c360.training.table_candidates import (
    BlendChurn,
    LinearChurn,
    choose,
    fit_lightgbm,
    holdout_share,
    leaf_size,
    many_levels,
    stack,
    table_spec,
)
from c360.training.table_churn import train_churn_table
from c360.training.tables import feature_columns

STATES = [f"S{i:02d}" for i in range(50)]


def accounts(n: int, seed: int) -> pd.DataFrame:
    """A telecom export: a 50-level state column with a weak effect in a few states, usage minutes and service
    calls driving churn with a threshold, two plans, and an R-style `rownames` column."""
    rng = np.random.default_rng(seed)
    state = rng.choice(STATES, n)
    day_minutes = rng.normal(180, 50, n).round(1)
    calls = rng.poisson(1.5, n)
    plan = rng.choice(["yes", "no"], n, p=[0.1, 0.9])
    logit = (-2.5 + 0.02 * (day_minutes - 180) + 1.8 * (day_minutes > 260) + 1.2 * (calls >= 4)
             + 1.5 * (plan == "yes") + 0.5 * np.isin(state, STATES[:5]))
    churned = rng.random(n) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame({
        "rownames": np.arange(1, n + 1),
        "state": state,
        "total day minutes": day_minutes,
        "customer service calls": calls,
        "international plan": plan,
        "churn": churned,
    })


def test_leaf_and_holdout_follow_the_data_within_bounds():
    assert leaf_size(1_000) == 10 and leaf_size(6_000) == 30 and leaf_size(1_000_000) == 100
    assert holdout_share(2_000) == 0.25 and holdout_share(5_000) == 0.2 and holdout_share(100_000) == 0.1


def test_rare_levels_are_pooled_and_many_levels_are_named():
    frame = pd.DataFrame({"plan": ["a"] * 30 + ["b"] * 25 + ["c"] * 5, "state": [f"s{i}" for i in range(60)]})
    spec = table_spec(frame)
    assert spec.categories["plan"] == ("a", "b")  # "c" has 5 rows: pooled with missing
    assert spec.categories["state"] == ()
    assert many_levels(frame) == {"state": 60}


def test_logistic_contributions_add_up_and_the_model_saves_without_c360_names(tmp_path: Path):
    X = accounts(600, 1).drop(columns=["churn", "rownames"])
    y = accounts(600, 1)["churn"].to_numpy(dtype=int)
    model = LinearChurn().fit(X, y)
    contributions = model.contributions(X.head(50))
    assert contributions.sum(axis=1).to_numpy() == pytest.approx(model.raw_score(X.head(50)))
    assert list(contributions.columns) == [*model.spec.names, "base_value"]
    back = saved.load(saved.save(model, tmp_path))
    assert back.predict_proba(X) == pytest.approx(model.predict_proba(X))


def test_the_blend_weighs_useful_scores_and_drops_noise():
    rng = np.random.default_rng(5)
    signal = rng.normal(size=4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-(2 * signal - 1)))).astype(int)
    theta = stack(np.column_stack([signal, rng.normal(size=4000)]), y)
    assert theta[1] == pytest.approx(2, abs=0.25) and theta[0] == pytest.approx(-1, abs=0.2), theta
    assert theta[2] == pytest.approx(0, abs=0.05)  # noise: no share of the blend
    # a score that ranks backwards would need a negative weight: it gets none
    assert stack(-signal.reshape(-1, 1), y)[1] == 0.0


def test_blend_contributions_add_up_and_the_blend_saves(tmp_path: Path):
    table = accounts(800, 6)
    X, y = table.drop(columns=["churn", "rownames"]), table["churn"].to_numpy(dtype=int)
    parts = {"logistic": LinearChurn().fit(X, y), "lightgbm": fit_lightgbm(X, y, 0, 0)}
    blend = BlendChurn(parts, np.array([-0.2, 0.7, 0.3]), table_spec(X))
    expected = -0.2 + 0.7 * parts["logistic"].raw_score(X) + 0.3 * parts["lightgbm"].raw_score(X)
    assert blend.raw_score(X) == pytest.approx(expected)
    contributions = blend.contributions(X.head(40))
    assert contributions.sum(axis=1).to_numpy() == pytest.approx(blend.raw_score(X.head(40)))
    assert blend.predict_proba(X) == pytest.approx(1 / (1 + np.exp(-expected)))
    back = saved.load(saved.save(blend, tmp_path))
    assert back.predict_proba(X) == pytest.approx(blend.predict_proba(X))
    assert BlendChurn(parts, np.array([0.1, 0.0, 1.0]), table_spec(X)).params == {
        "model": "blend", "intercept": 0.1, "weight.lightgbm": 1.0}


def test_identifier_like_columns_are_dropped_even_beside_a_named_id():
    frame = accounts(300, 2).assign(
        customer=[f"C-{i}" for i in range(300)],
        amount=np.random.default_rng(0).uniform(0, 100, 300),  # every value distinct, but a measurement
        accountId=np.random.default_rng(1).choice(10**6, 300, replace=False),
        votes=np.random.default_rng(2).choice(10**6, 300, replace=False),  # distinct integers, no id name, no run
        line=np.random.default_rng(3).permutation(300) + 7,  # row numbers of an export, shuffled
    )
    X, dropped = feature_columns(frame, ["churn"], "customer", [])
    named = "identifier-like (distinct integers under an id name)"
    assert dropped == {"customer": "id column", "rownames": named, "accountId": named,
                       "line": "identifier-like (row numbers)"}
    assert {"amount", "votes", "state"} <= set(X.columns)


def test_inner_selection_sees_only_the_rows_it_is_given():
    table = accounts(900, 3)
    X, y = table.drop(columns=["churn", "rownames"]), table["churn"].to_numpy(dtype=int)
    choice = choose(X, y, seed=0, trials=2)
    assert set(choice.models) == set(choice.inner_auc) == {"logistic", "lightgbm", "lightgbm_tuned", "blend"}
    assert choice.chosen == "blend" and set(choice.models["blend"].parts) <= set(choice.models)
    # a shuffled label leaves no candidate an edge on the inner folds
    shuffled = choose(X, np.random.default_rng(0).permutation(y), seed=0, trials=2)
    assert all(abs(auc - 0.5) < 0.08 for auc in shuffled.inner_auc.values()), shuffled.inner_auc


def test_the_chosen_model_matches_the_best_baseline_on_the_same_folds():
    r = train_churn_table(accounts(3000, 4), "churn", folds=5, trials=3)
    assert "dropped column 'rownames': identifier-like (distinct integers under an id name)" in r.warnings
    assert [w for w in r.warnings if w.startswith("column 'state' has 50 categories")]
    gap = gap_to_the_better_baseline(r.tables["folds"])
    # the bar: the chosen AUC at least the better baseline's, within two standard errors of the paired fold gaps
    tolerance = max(0.005, 2 * gap.std() / np.sqrt(len(gap)))
    assert gap.mean() >= -tolerance, gap
    assert r.metrics["roc_auc"] > 0.75, r.metrics


def gap_to_the_better_baseline(per_fold: pd.DataFrame) -> pd.Series:
    """Per outer fold, the chosen model's ROC AUC minus that of the better (on average) of logistic regression
    and default LightGBM."""
    folds = per_fold.pivot(index="fold", columns="model", values="roc_auc")
    best = folds[["logistic", "lightgbm"]].mean().idxmax()
    return folds["chosen"] - folds[best]


def test_on_a_small_public_table_the_chosen_model_is_not_below_the_better_baseline():
    """scikit-learn's bundled breast-cancer table (569 rows, 30 measurements): small, where logistic regression
    and the trees are near each other and a single pick between them is noise. The pick of the best inner AUC,
    the protocol before the blend, ends 0.0007 below logistic regression here and fails this bar."""
    data = load_breast_cancer(as_frame=True).frame
    table = data.assign(malignant=1 - data["target"]).drop(columns="target")
    r = train_churn_table(table, "malignant", folds=5, trials=3)
    gap = gap_to_the_better_baseline(r.tables["folds"])
    assert gap.mean() >= -0.0005, r.tables["folds"].pivot(index="fold", columns="model", values="roc_auc")
    assert r.params["chosen_model"] == "blend" and r.params["model.model"] == "blend"
