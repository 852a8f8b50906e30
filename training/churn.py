"""Churn: a calibrated LightGBM classifier, an honest logistic baseline, metrics and charts.

Works on our feature snapshots and on any customer table: features go through ``training.uplift``'s generic
preparation (numeric, Yes/No, datetime and categorical columns, missing values kept, any column names) and labels
through ``to_outcome`` (0/1, booleans or Yes/No).

Time conventions. ``ChurnModel.fit`` takes a training period and a separate, later calibration period: the trees
(and their early stopping, on a random slice of the training period) see only the first; the calibration map
sees only the second, so it also absorbs a drift in the churn rate between the two. Generic tables have no time:
``cross_validate`` calibrates on a random slice of each fold's training part instead.

Typical use::

    model = ChurnModel().fit(X_train, y_train, X_calib, y_calib)
    p = model.predict_proba(X_new)
    why = explain.reasons(model.contributions(X_new), model.feature_values(X_new), descriptions)
    metrics(y_test, model.predict_proba(X_test))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score, roc_curve
from sklearn.model_selection import GroupShuffleSplit, StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from c360.training.uplift import FeatureSpec, fit_features, lgb_rows, to_outcome, transform_features

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Calibration = Literal["platt", "isotonic"]
Scores: TypeAlias = Iterable[float] | np.ndarray | pd.Series

# Tens of thousands of customers, a churn rate of a few to 30 %: shallow trees, big leaves, L2 and row/column
# subsampling, slow learning; the number of rounds comes from early stopping.
PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 100,
    "lambda_l2": 10.0,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "cat_smooth": 20.0,
    "num_threads": 1,  # small data: one thread is much faster than OpenMP on a busy 2-core machine
    "deterministic": True,
    "verbosity": -1,
}


# ---------------------------------------------------------------- labels


def to_label(y: Iterable[Any]) -> pd.Series:
    """0/1 float label (booleans, 0/1 or Yes/No); missing stays NaN; anything else is an error."""
    label = to_outcome(y)
    if not label.dropna().isin([0.0, 1.0]).all():
        raise ValueError("churn label must be 0/1, boolean or Yes/No")
    return label


def _known(X: pd.DataFrame, y: Iterable[Any]) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows with a known label, and that label as int."""
    label = to_label(pd.Series(list(y), index=X.index))
    keep = label.notna().to_numpy()
    return X.loc[keep], label[keep].to_numpy(dtype=int)


# ---------------------------------------------------------------- model


class ChurnModel:
    """LightGBM binary classifier on prepared features, with an optional calibration map on a later period.

    Calibration defaults to Platt scaling on the raw score (log-odds): p = sigmoid(a · raw + b). Boosting with a
    log-loss objective is already roughly calibrated on its own period; what breaks between periods is mostly a
    shift of the churn rate (an intercept) and some over- or under-confidence (a slope), exactly the two
    parameters Platt fits. It needs a few hundred calibration rows where isotonic regression needs thousands, it
    keeps the ranking (AUC, lift) unchanged instead of flattening it into steps, and because the calibrated
    log-odds are affine in the raw score the tree contributions stay exact explanations up to the factor a.
    ``method="isotonic"`` is there for large calibration periods with a non-sigmoid distortion.

    ``monotone`` maps raw column names to +1 / -1: predictions then never decrease / increase with that feature,
    for every customer (e.g. ``{"payment_failures_90d": 1}``). Extra keyword arguments override ``PARAMS``.
    """

    def __init__(
        self,
        *,
        calibrated: bool = True,
        method: Calibration = "platt",
        monotone: Mapping[str, int] | None = None,
        validation_fraction: float = 0.2,
        max_rounds: int = 2000,
        early_stopping_rounds: int = 100,
        max_categories: int = 100,
        seed: int = 0,
        **params: Any,
    ) -> None:
        if method not in ("platt", "isotonic"):
            raise ValueError("method must be 'platt' or 'isotonic'")
        self.calibrated = calibrated
        self.method = method
        self.monotone = dict(monotone or {})
        self.validation_fraction = validation_fraction
        self.max_rounds = max_rounds
        self.early_stopping_rounds = early_stopping_rounds
        self.max_categories = max_categories
        self.seed = seed
        self.params = {**PARAMS, "seed": seed, **params}
        self.spec: FeatureSpec | None = None
        self.booster: lgb.Booster | None = None
        self.calibrator: LogisticRegression | IsotonicRegression | None = None

    def fit(
        self,
        X_train: pd.DataFrame,
        y_train: Iterable[Any],
        X_calib: pd.DataFrame | None = None,
        y_calib: Iterable[Any] | None = None,
        groups: Iterable[Any] | None = None,
    ) -> ChurnModel:
        """Trees on the training period (early stopping on a stratified slice of it), calibration on the later one.

        ``groups`` (e.g. the customer of each row, when customers appear at several dates) keeps each group on one
        side of the early-stopping split: otherwise the slice holds rows of customers the trees already saw, and
        boosting never stops."""
        if self.calibrated and (X_calib is None or y_calib is None):
            raise ValueError("calibration needs a later period: pass X_calib and y_calib, or calibrated=False")
        X, y = _known(X_train, y_train)
        group = None if groups is None else pd.Series(list(groups), index=X_train.index).loc[X.index].to_numpy()
        self.spec = fit_features(X, self.max_categories)
        self.booster = self._fit_booster(transform_features(X, self.spec), y, group)
        self.calibrator = None
        if self.calibrated and X_calib is not None and y_calib is not None:
            Xc, yc = _known(X_calib, y_calib)
            self.calibrator = self._fit_calibrator(self.raw_score(Xc), yc)
        return self

    def _fit_booster(self, matrix: pd.DataFrame, y: np.ndarray, groups: np.ndarray | None) -> lgb.Booster:
        rows = np.arange(len(y))
        if groups is None:
            fit_rows, valid_rows = train_test_split(
                rows, test_size=self.validation_fraction, stratify=y, random_state=self.seed)
        else:
            split = GroupShuffleSplit(1, test_size=self.validation_fraction, random_state=self.seed)
            fit_rows, valid_rows = next(split.split(rows, y, groups))
        params = {**self.params, "monotone_constraints": self._monotone_vector()}
        train = lgb.Dataset(matrix.iloc[fit_rows], y[fit_rows])
        valid = lgb.Dataset(matrix.iloc[valid_rows], y[valid_rows], reference=train)
        booster = lgb.train(
            params,
            train,
            num_boost_round=self.max_rounds,
            valid_sets=[valid],
            callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
        )
        # Drop the trees past the best round, so every consumer (SHAP, serving, MLflow) sees the same model.
        return lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))

    def _monotone_vector(self) -> list[int]:
        assert self.spec is not None
        unknown = sorted(set(self.monotone) - set(self.spec.columns))
        if unknown:
            raise KeyError(f"monotone constraints on unknown columns: {unknown}")
        return [int(self.monotone.get(col, 0)) for col in self.spec.columns]

    def _fit_calibrator(self, raw: np.ndarray, y: np.ndarray) -> LogisticRegression | IsotonicRegression:
        if self.method == "isotonic":
            return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, y)
        return LogisticRegression(C=np.inf).fit(raw.reshape(-1, 1), y)

    def _fitted(self) -> tuple[FeatureSpec, lgb.Booster]:
        if self.spec is None or self.booster is None:
            raise RuntimeError("ChurnModel is not fitted")
        return self.spec, self.booster

    # -- prediction

    def prepare(self, X: pd.DataFrame) -> pd.DataFrame:
        """The model matrix: prepared features under LightGBM-safe names (``spec.names``)."""
        return transform_features(X, self._fitted()[0])

    def feature_values(self, X: pd.DataFrame) -> pd.DataFrame:
        """Raw values under the prepared names, to word reasons ("Yes", "Pro") rather than codes."""
        spec = self._fitted()[0]
        frame = X.set_axis([str(c) for c in X.columns], axis=1)
        return frame[list(spec.columns)].set_axis(list(spec.names), axis=1)

    @property
    def columns(self) -> tuple[str, ...]:
        """The raw feature columns the model reads, in the order of its matrix's columns."""
        return self._fitted()[0].columns

    def matrix(self, X: pd.DataFrame) -> np.ndarray:
        """The model matrix as LightGBM reads it (`uplift.lgb_rows`: ``uplift.lgb_matrix`` of ``prepare``)."""
        return lgb_rows(X, self._fitted()[0])

    def raw_score(self, X: pd.DataFrame) -> np.ndarray:
        """Uncalibrated log-odds of churn."""
        return self.raw_score_of(self.matrix(X))

    def raw_score_of(self, matrix: np.ndarray) -> np.ndarray:
        """``raw_score`` of a model matrix (``matrix``)."""
        return np.asarray(self._fitted()[1].predict(matrix, raw_score=True), dtype="float64")

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Probability of churn per row (1-D), calibrated when the model was fitted with a calibration period."""
        return self.probability_of(self.raw_score(X))

    def probability_of(self, raw: np.ndarray) -> np.ndarray:
        """The probability of raw scores (log-odds, e.g. the row sums of ``contributions``)."""
        if isinstance(self.calibrator, LogisticRegression):
            return self.calibrator.predict_proba(raw.reshape(-1, 1))[:, 1]
        if isinstance(self.calibrator, IsotonicRegression):
            return np.asarray(self.calibrator.predict(raw), dtype="float64")
        return 1.0 / (1.0 + np.exp(-raw))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Churn probabilities: what the model's MLflow pyfunc returns (never bare labels)."""
        return self.predict_proba(X)

    def contributions(self, X: pd.DataFrame, threads: int = 1) -> pd.DataFrame:
        """Tree SHAP values in raw-score (log-odds) space: a column per prepared feature, plus ``base_value``.

        Each row sums to ``raw_score``. They explain the uncalibrated score; Platt calibration multiplies
        log-odds by a positive slope, so the ranking and sign of contributions hold for the calibrated risk too.
        """
        spec, booster = self._fitted()
        values = booster.predict(self.matrix(X), pred_contrib=True, num_threads=threads)
        values = np.asarray(values, dtype="float64")
        return pd.DataFrame(values, index=X.index, columns=[*spec.names, "base_value"])

    @property
    def n_trees(self) -> int:
        return self._fitted()[1].num_trees()


# ---------------------------------------------------------------- baseline


class _Prepared(BaseEstimator, TransformerMixin):
    """uplift's generic preparation as a pipeline step; categoricals leave as text with missing as its own level."""

    def __init__(self, max_categories: int = 100) -> None:
        self.max_categories = max_categories

    def fit(self, X: pd.DataFrame, y: Any = None) -> _Prepared:
        self.spec_ = fit_features(X, self.max_categories)
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        matrix = transform_features(X, self.spec_)
        for name, kind in zip(self.spec_.names, self.spec_.kinds, strict=True):
            if kind == "category":
                matrix[name] = matrix[name].astype(object).where(matrix[name].notna(), "(missing)")
        return matrix


def fit_baseline(X: pd.DataFrame, y: Iterable[Any], C: float = 1.0) -> Pipeline:
    """Logistic regression: median-imputed (with missing indicators) and scaled numbers, one-hot categories.

    The honest baseline: a tree model that cannot beat it by a clear margin is not worth its complexity.
    Use ``pipeline.predict_proba(X)[:, 1]``.
    """
    X, label = _known(X, y)
    numbers = make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler())
    columns = ColumnTransformer([
        ("numbers", numbers, make_column_selector(dtype_include="number")),
        ("categories", OneHotEncoder(handle_unknown="ignore"), make_column_selector(dtype_include=object)),
    ])
    pipeline = Pipeline([("prepare", _Prepared()), ("columns", columns), ("model", LogisticRegression(C=C))])
    return pipeline.fit(X, label)


# ---------------------------------------------------------------- metrics


def _arrays(y: Iterable[Any], p: Scores) -> tuple[np.ndarray, np.ndarray]:
    label = to_label(y).to_numpy()
    score = np.asarray(list(p) if not isinstance(p, np.ndarray | pd.Series) else p, dtype="float64")
    if len(label) != len(score):
        raise ValueError("y and p must have the same length")
    if np.isnan(label).any():
        raise ValueError("y has missing labels: evaluate on customers with a known outcome")
    return label, score


def expected_calibration_error(y: Iterable[Any], p: Scores, bins: int = 10) -> float:
    """ECE: sum over equal-width probability bins of (share of rows) · |observed churn rate − mean prediction|.

    Bins are [0, 0.1), [0.1, 0.2), …, [0.9, 1.0] for 10 bins; empty bins count zero.
    """
    label, score = _arrays(y, p)
    which = np.minimum((score * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, label, bins) - np.bincount(which, score, bins))
    return float(gap.sum() / max(count.sum(), 1))


def lift_at(y: Iterable[Any], p: Scores, share: float = 0.1) -> float:
    """Churn rate among the top ``share`` of rows by score (at least one row) over the overall churn rate."""
    label, score = _arrays(y, p)
    top = max(1, int(np.ceil(share * len(label))))
    order = np.argsort(-score, kind="mergesort")
    return float(label[order[:top]].mean() / label.mean())


def metrics(y: Iterable[Any], p: Scores) -> dict[str, float]:
    """roc_auc, pr_auc (average precision), brier, ece (10 equal-width bins) and lift_at_10 (top 10 %)."""
    label, score = _arrays(y, p)
    return {
        "roc_auc": float(roc_auc_score(label, score)),
        "pr_auc": float(average_precision_score(label, score)),
        "brier": float(brier_score_loss(label, score)),
        "ece": expected_calibration_error(label, score),
        "lift_at_10": lift_at(label, score, 0.1),
    }


# ---------------------------------------------------------------- generic tables


def cross_validate(
    X: pd.DataFrame,
    y: Iterable[Any],
    folds: int = 5,
    seed: int = 0,
    calibration_share: float = 0.25,
    **model_params: Any,
) -> pd.DataFrame:
    """Per-fold test metrics of a calibrated ``ChurnModel`` on a table without time (stratified k-fold).

    Within each fold the training part is split (stratified, at random) into trees and a calibration slice of
    ``calibration_share``. Columns: fold, rows, churn_rate, n_trees and the ``metrics`` keys; one row per fold.
    """
    X, label = _known(X, y)
    rows = []
    for fold, (train, test) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, label)):
        fit_rows, calib_rows = train_test_split(
            train, test_size=calibration_share, stratify=label[train], random_state=seed + fold
        )
        model = ChurnModel(seed=seed, **model_params).fit(
            X.iloc[fit_rows], label[fit_rows], X.iloc[calib_rows], label[calib_rows]
        )
        p = model.predict_proba(X.iloc[test])
        summary = {"fold": fold, "rows": len(test), "churn_rate": float(label[test].mean()), "n_trees": model.n_trees}
        rows.append({**summary, **metrics(label[test], p)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- charts


def _curves(p: Scores | Mapping[str, Scores]) -> dict[str, Scores]:
    return dict(p) if isinstance(p, Mapping) else {"model": p}


def calibration_curve_figure(
    y: Iterable[Any], p: Scores | Mapping[str, Scores], bins: int = 10, title: str = "Calibration"
) -> Figure:
    """Observed churn rate against mean prediction per equal-width bin; ``p`` is one score or {label: score}."""
    from matplotlib.figure import Figure

    label = to_label(y).to_numpy()
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="perfectly calibrated")
    for name, scores in _curves(p).items():
        _, score = _arrays(label, scores)
        which = np.minimum((score * bins).astype(int), bins - 1)
        count = np.bincount(which, minlength=bins)
        used = count > 0
        mean_p = np.bincount(which, score, bins)[used] / count[used]
        rate = np.bincount(which, label, bins)[used] / count[used]
        ece = expected_calibration_error(label, score, bins)
        ax.plot(mean_p, rate, marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted churn probability")
    ax.set_ylabel("observed churn rate")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def roc_figure(y: Iterable[Any], p: Scores | Mapping[str, Scores], title: str = "ROC") -> Figure:
    """ROC curve per score; ``p`` is one score or {label: score}."""
    from matplotlib.figure import Figure

    label = to_label(y).to_numpy()
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="random")
    for name, scores in _curves(p).items():
        _, score = _arrays(label, scores)
        fpr, tpr, _ = roc_curve(label, score)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(label, score):.3f})")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
