"""The churn candidates for a customer table, and the inner cross-validation that blends them.

Three candidates, each fitted on a training set only:

- ``logistic``: regularised logistic regression (C=1) on one-hot categories and median-imputed, scaled numbers,
  with missing indicators (``LinearChurn``);
- ``lightgbm``: LightGBM with its library defaults (100 rounds, 31 leaves, leaves of 20 rows), all training rows;
- ``lightgbm_tuned``: LightGBM whose leaf size, depth, L2, column and row sampling and categorical smoothing come
  from a fixed budget of configurations (the first one sized to the data), each early-stopped on a held-out slice
  sized to the data; the winner is refitted on all training rows with its rounds scaled up.

A random search of a few configurations rather than Optuna: at a budget of 5–10 trials, model-based search gains
little over random sampling, and it would be a new dependency.

``choose`` runs ``INNER_FOLDS``-fold cross-validation on the training rows it is given (never a test fold) and
stacks the candidates (a "super learner"): a logistic regression of the label on their out-of-fold log-odds, with
weights of zero or more, is the chosen model, ``blend`` (``BlendChurn``). Picking the single best inner mean AUC,
as this module did first, is noise when two candidates are within a few thousandths: on a table of 1,000 rows the
pick flipped between folds and lost 0.003 to logistic regression, which it contained. The blend needs no pick: a
candidate that adds nothing gets a weight near zero, so it does about as well as the best candidate where one
dominates and better where two err differently, and the fitted weights calibrate it as well. It costs no fit
beyond those the choice made. Its inner AUC is cross-fitted (weights from the other inner folds) and every
candidate is also refitted on all rows and Platt-calibrated on its own out-of-fold scores, so each is reported
beside it on the same folds.

Categorical columns keep only levels with ``MIN_LEVEL_ROWS`` rows (the others are pooled with missing values):
a 51-level state column otherwise lets trees split on a handful of rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import ParameterSampler, StratifiedKFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from c360.training.churn import ChurnModel
from c360.training.uplift import FeatureSpec, fit_features, transform_features

CANDIDATES = ("logistic", "lightgbm", "lightgbm_tuned", "blend")
INNER_FOLDS = 3
TRIALS = 8  # configurations tried by the tuned LightGBM per fit
MIN_LEVEL_ROWS = 20  # a category level with fewer training rows is pooled with missing
MANY_LEVELS = 20  # more levels than this: a high-cardinality column, warned about
LIBRARY_DEFAULTS: dict[str, Any] = {"objective": "binary", "verbosity": -1, "num_threads": 1, "deterministic": True}


def leaf_size(rows: int) -> int:
    """Minimum rows per leaf: a 200th of the training rows, between 10 and 100 (100 starves a table of 3,000)."""
    return int(np.clip(rows // 200, 10, 100))


def holdout_share(rows: int) -> float:
    """Share of training rows held out for early stopping: about 1,000 rows, between 10 % and 25 %."""
    return float(np.clip(1000 / max(rows, 1), 0.1, 0.25))


def table_spec(X: pd.DataFrame) -> FeatureSpec:
    """The feature spec of ``X`` with rare category levels (under ``MIN_LEVEL_ROWS`` rows) pooled with missing."""
    spec = fit_features(X, max_categories=1000)
    counts = {c: X[c].dropna().astype(str).value_counts() for c in spec.categories}
    kept = {c: tuple(level for level in levels if counts[c].get(level, 0) >= MIN_LEVEL_ROWS)
            for c, levels in spec.categories.items()}
    return replace(spec, categories=kept)


def many_levels(X: pd.DataFrame) -> dict[str, int]:
    """{column: distinct values} of the categorical columns with more than ``MANY_LEVELS`` levels."""
    spec = fit_features(X, max_categories=1000)
    return {c: int(X[c].nunique()) for c in spec.categories if X[c].nunique() > MANY_LEVELS}


# ---------------------------------------------------------------- the logistic candidate


class LinearChurn:
    """Regularised logistic regression on a table: the same ``spec`` / ``raw_score`` / ``predict_proba`` /
    ``contributions`` / ``feature_values`` as ``ChurnModel``, so cards, SHAP charts and reasons treat both alike.

    Contributions are exact for a linear model: coefficient × (value − training mean) of each model column, summed
    over the columns one raw column became (its dummies, its missing indicator).
    """

    def __init__(self, C: float = 1.0) -> None:
        self.C = C
        self.spec: FeatureSpec | None = None
        self.design: ColumnTransformer | None = None
        self.model: LogisticRegression | None = None
        self.calibrator: LogisticRegression | None = None
        self.means = np.empty(0)
        self.owner: list[int] = []

    def fit(self, X: pd.DataFrame, y: np.ndarray, spec: FeatureSpec | None = None) -> LinearChurn:
        self.spec = spec or table_spec(X)
        matrix = linear_matrix(X, self.spec)
        self.design = linear_design(self.spec).fit(matrix)
        Z = self.design.transform(matrix)
        self.model = LogisticRegression(C=self.C, max_iter=2000).fit(Z, y)
        self.means = Z.mean(axis=0)
        self.owner = [int(name.partition("__")[0][1:]) for name in self.design.get_feature_names_out()]
        return self

    def _design(self, X: pd.DataFrame) -> np.ndarray:
        assert self.design is not None
        assert self.spec is not None
        return np.asarray(self.design.transform(linear_matrix(X, self.spec)), dtype="float64")

    def raw_score(self, X: pd.DataFrame) -> np.ndarray:
        assert self.model is not None
        return np.asarray(self.model.decision_function(self._design(X)), dtype="float64")

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return calibrated(self.calibrator, self.raw_score(X))

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        assert self.model is not None and self.spec is not None
        coef = self.model.coef_[0]
        terms = (self._design(X) - self.means) * coef
        out = np.zeros((len(X), len(self.spec.names)))
        np.add.at(out.T, self.owner, terms.T)
        frame = pd.DataFrame(out, index=X.index, columns=list(self.spec.names))
        frame["base_value"] = float(self.model.intercept_[0] + self.means @ coef)
        return frame

    def feature_values(self, X: pd.DataFrame) -> pd.DataFrame:
        assert self.spec is not None
        return raw_values(X, self.spec)

    @property
    def n_trees(self) -> int:
        return 0

    @property
    def params(self) -> dict[str, Any]:
        return {"model": "logistic", "C": self.C}


def raw_values(X: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Raw values of the spec's columns under its prepared names, to word reasons."""
    frame = X.set_axis([str(c) for c in X.columns], axis=1)
    return frame[list(spec.columns)].set_axis(list(spec.names), axis=1)


def linear_matrix(X: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Prepared features with categories as text, missing as a level of its own."""
    matrix = transform_features(X, spec)
    for name, kind in zip(spec.names, spec.kinds, strict=True):
        if kind == "category":
            matrix[name] = matrix[name].astype(object).where(matrix[name].notna(), "(missing)")
    return matrix


def linear_design(spec: FeatureSpec) -> ColumnTransformer:
    """One-hot categories; median-imputed, scaled numbers with a missing indicator. Output columns are named
    ``c<i>__…`` after the spec's i-th column, so contributions can be summed back per column."""
    numbers = make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler())
    one_hot = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    kinds = zip(spec.names, spec.kinds, strict=True)
    parts = [(f"c{i}", one_hot if kind == "category" else numbers, [name]) for i, (name, kind) in enumerate(kinds)]
    return ColumnTransformer(parts, sparse_threshold=0)


def calibrated(calibrator: LogisticRegression | None, raw: np.ndarray) -> np.ndarray:
    if calibrator is None:
        return 1.0 / (1.0 + np.exp(-raw))
    return np.asarray(calibrator.predict_proba(raw.reshape(-1, 1))[:, 1], dtype="float64")


# ---------------------------------------------------------------- the LightGBM candidates


def _churn_model(spec: FeatureSpec, booster: lgb.Booster, params: dict[str, Any], seed: int) -> ChurnModel:
    """A ``ChurnModel`` around a booster trained here (its own fit has a fixed recipe), calibrated later."""
    model = ChurnModel(calibrated=False, seed=seed)
    model.spec, model.booster, model.params = spec, booster, params
    return model


def fit_logistic(X: pd.DataFrame, y: np.ndarray, seed: int, trials: int) -> LinearChurn:
    return LinearChurn().fit(X, y)


def fit_lightgbm(X: pd.DataFrame, y: np.ndarray, seed: int, trials: int) -> ChurnModel:
    spec = table_spec(X)
    params = {**LIBRARY_DEFAULTS, "seed": seed}
    booster = lgb.train(params, lgb.Dataset(transform_features(X, spec), y), num_boost_round=100)
    return _churn_model(spec, booster, params, seed)


def _configurations(rows: int, trials: int, seed: int) -> list[dict[str, Any]]:
    """The sized default first, then ``trials - 1`` draws from a fixed grid around it."""
    leaf = leaf_size(rows)
    first = {"num_leaves": 15, "min_data_in_leaf": leaf, "lambda_l2": 1.0, "feature_fraction": 0.8,
             "bagging_fraction": 1.0, "cat_smooth": 10.0, "min_data_per_group": 50}
    grid = {
        "num_leaves": [4, 8, 15, 31],
        "min_data_in_leaf": [max(5, leaf // 2), leaf, 2 * leaf],
        "lambda_l2": [0.0, 1.0, 10.0],
        "feature_fraction": [0.6, 0.8, 1.0],
        "bagging_fraction": [0.8, 1.0],
        "cat_smooth": [10.0, 50.0],
        "min_data_per_group": [20, 100],
    }
    return [first, *ParameterSampler(grid, max(trials - 1, 0), random_state=seed)]


def fit_lightgbm_tuned(X: pd.DataFrame, y: np.ndarray, seed: int, trials: int) -> ChurnModel:
    spec = table_spec(X)
    matrix = transform_features(X, spec)
    share = holdout_share(len(y))
    fit_rows, valid_rows = train_test_split(np.arange(len(y)), test_size=share, stratify=y, random_state=seed)
    best: tuple[float, dict[str, Any], int] = (-np.inf, {}, 1)
    for config in _configurations(len(fit_rows), trials, seed):
        params = {**LIBRARY_DEFAULTS, "seed": seed, "learning_rate": 0.05, "bagging_freq": 1, **config}
        train = lgb.Dataset(matrix.iloc[fit_rows], y[fit_rows])
        valid = lgb.Dataset(matrix.iloc[valid_rows], y[valid_rows], reference=train)
        booster = lgb.train(params, train, num_boost_round=2000, valid_sets=[valid],
                            callbacks=[lgb.early_stopping(50, verbose=False)])
        scores = booster.predict(matrix.iloc[valid_rows], num_iteration=booster.best_iteration)
        auc = roc_auc_score(y[valid_rows], scores)
        if auc > best[0]:
            best = (auc, params, max(booster.best_iteration, 1))
    _, params, rounds = best
    params = {**params, "min_data_in_leaf": int(np.ceil(params["min_data_in_leaf"] / (1 - share)))}
    booster = lgb.train(params, lgb.Dataset(matrix, y), num_boost_round=int(np.ceil(rounds / (1 - share))))
    return _churn_model(spec, booster, params, seed)


Fitted = LinearChurn | ChurnModel
FITTERS: dict[str, Callable[[pd.DataFrame, np.ndarray, int, int], Fitted]] = {
    "logistic": fit_logistic,
    "lightgbm": fit_lightgbm,
    "lightgbm_tuned": fit_lightgbm_tuned,
}


# ---------------------------------------------------------------- the blend


def stack(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[intercept, weight per column] of the logistic regression of ``y`` on out-of-fold ``scores`` (log-odds,
    one column per candidate), weights held at zero or above: a weight is a candidate's share of the blend."""
    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = theta[0] + scores @ theta[1:]
        residual = expit(z) - y
        value = float(np.mean(np.logaddexp(0.0, z) - y * z))
        return value, np.concatenate([[residual.mean()], scores.T @ residual / len(y)])

    bounds = [(None, None)] + [(0.0, None)] * scores.shape[1]
    return np.asarray(minimize(loss, np.zeros(scores.shape[1] + 1), jac=True, method="L-BFGS-B",
                               bounds=bounds).x, dtype="float64")


class BlendChurn:
    """A weighted sum of the candidates' log-odds plus an intercept: ``stack`` fitted on their inner out-of-fold
    scores, so it is calibrated as it is (``calibrator`` stays None). Candidates weighted zero are left out.

    Contributions are the same weighted sum of the parts' contributions (each adds up to its part's log-odds), so
    they add up to the blend's log-odds as exactly as the parts' do.
    """

    def __init__(self, parts: dict[str, Fitted], theta: np.ndarray, spec: FeatureSpec) -> None:
        self.weights = {name: float(w) for name, w in zip(parts, theta[1:], strict=True) if w > 0}
        self.parts = {name: parts[name] for name in self.weights}
        self.intercept = float(theta[0])
        self.spec = spec
        self.calibrator: LogisticRegression | None = None

    def raw_score(self, X: pd.DataFrame) -> np.ndarray:
        terms = [w * self.parts[name].raw_score(X) for name, w in self.weights.items()]
        return self.intercept + np.sum(terms, axis=0) if terms else np.full(len(X), self.intercept)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return calibrated(self.calibrator, self.raw_score(X))

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        total = np.zeros((len(X), len(self.spec.names) + 1))
        for name, w in self.weights.items():
            total += w * self.parts[name].contributions(X).to_numpy()
        total[:, -1] += self.intercept  # the last column is base_value
        return pd.DataFrame(total, index=X.index, columns=[*self.spec.names, "base_value"])

    def feature_values(self, X: pd.DataFrame) -> pd.DataFrame:
        return raw_values(X, self.spec)

    @property
    def n_trees(self) -> int:
        return sum(part.n_trees for part in self.parts.values())

    @property
    def params(self) -> dict[str, Any]:
        return {"model": "blend", "intercept": round(self.intercept, 6),
                **{f"weight.{name}": round(w, 6) for name, w in self.weights.items()}}


Candidate = Fitted | BlendChurn


# ---------------------------------------------------------------- the choice


@dataclass
class Choice:
    """Every candidate fitted on the training rows (and calibrated), their inner-CV ROC AUC, and the one chosen."""

    chosen: str
    models: dict[str, Candidate]
    inner_auc: dict[str, float]


def _inner_blend(oof: np.ndarray, y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]]) -> list[float]:
    """The blend's inner-CV ROC AUC per fold, its weights fitted on the other folds' out-of-fold scores only."""
    aucs = []
    for train, test in splits:
        theta = stack(oof[train], y[train])
        aucs.append(float(roc_auc_score(y[test], theta[0] + oof[test] @ theta[1:])))
    return aucs


def choose(X: pd.DataFrame, y: np.ndarray, seed: int = 0, trials: int = TRIALS) -> Choice:
    """Inner ``INNER_FOLDS``-fold cross-validation on these rows only: each candidate's out-of-fold log-odds, its
    mean ROC AUC, and the blend stacked on them; every candidate refitted on all rows and Platt-calibrated on its
    own out-of-fold scores. The blend is always the one chosen (see the module)."""
    splits = list(StratifiedKFold(INNER_FOLDS, shuffle=True, random_state=seed).split(X, y))
    oof = np.empty((len(y), len(FITTERS)))
    aucs: dict[str, list[float]] = {name: [] for name in FITTERS}
    for fold, (train, test) in enumerate(splits):
        for column, (name, fit) in enumerate(FITTERS.items()):
            model = fit(X.iloc[train], y[train], seed + fold, trials)
            oof[test, column] = model.raw_score(X.iloc[test])
            aucs[name].append(float(roc_auc_score(y[test], oof[test, column])))
    aucs["blend"] = _inner_blend(oof, y, splits)
    fitted: dict[str, Fitted] = {}
    for column, (name, fit) in enumerate(FITTERS.items()):
        fitted[name] = fit(X, y, seed, trials)
        fitted[name].calibrator = LogisticRegression(C=np.inf).fit(oof[:, [column]], y)
    models: dict[str, Candidate] = {**fitted, "blend": BlendChurn(fitted, stack(oof, y), table_spec(X))}
    return Choice("blend", models, {name: float(np.mean(values)) for name, values in aucs.items()})
