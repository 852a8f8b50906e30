"""The churn candidates for a table and the nested protocol that chooses between them: sizes that follow the data,
rare category levels pooled, the logistic candidate's exact contributions, identifier-like columns dropped, and the
acceptance bar (the chosen model at least as good as logistic regression and default LightGBM on the same folds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from c360.training import saved
from c360.training.table_candidates import LinearChurn, choose, holdout_share, leaf_size, many_levels, table_spec
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
    assert set(choice.models) == {"logistic", "lightgbm", "lightgbm_tuned"}
    assert choice.chosen == max(choice.inner_auc, key=lambda m: round(choice.inner_auc[m], 4))
    # a shuffled label leaves no candidate an edge on the inner folds
    shuffled = choose(X, np.random.default_rng(0).permutation(y), seed=0, trials=2)
    assert all(abs(auc - 0.5) < 0.08 for auc in shuffled.inner_auc.values()), shuffled.inner_auc


def test_the_chosen_model_matches_the_best_baseline_on_the_same_folds():
    r = train_churn_table(accounts(3000, 4), "churn", folds=5, trials=3)
    assert "dropped column 'rownames': identifier-like (distinct integers under an id name)" in r.warnings
    assert [w for w in r.warnings if w.startswith("column 'state' has 50 categories")]
    folds = r.tables["folds"].pivot(index="fold", columns="model", values="roc_auc")
    best = folds[["logistic", "lightgbm"]].mean().idxmax()
    gap = folds["chosen"] - folds[best]
    # the bar: the chosen AUC at least the better baseline's, within two standard errors of the paired fold gaps
    tolerance = max(0.005, 2 * gap.std() / np.sqrt(len(gap)))
    assert gap.mean() >= -tolerance, folds
    assert r.metrics["roc_auc"] > 0.75, r.metrics
