"""Churn on a data scientist's own table: `c360 train churn --table FILE.csv --label COLUMN`.

``churn.cross_validate`` (stratified k-fold, calibrated ``ChurnModel``) against the logistic baseline on the same
folds, then a final model on all rows (trees on 75 %, Platt calibration on a held-out 25 %), with figures, a model
card and an input example in a ``TableResult``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from c360.training import churn, explain, tables
from c360.training.cards import model_card
from c360.training.churn import ChurnModel
from c360.training.table_models import TableChurnModel, TableResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CALIBRATION_SHARE = 0.25  # as churn.cross_validate: the final model is calibrated the way it was evaluated
MIN_CLASS_ROWS_PER_FOLD = 5  # each label value needs this many rows per fold
SHAP_SAMPLE = 2000


def _oof_predictions(X: pd.DataFrame, y: np.ndarray, folds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities of the calibrated model and of the logistic baseline, for the charts.

    Same folds as ``churn.cross_validate`` (stratified, shuffled with ``seed``); the model's part refits what
    cross_validate fitted, since it reports metrics only.
    """
    model_p, base_p = np.empty(len(y)), np.empty(len(y))
    for fold, (train, test) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y)):
        fit_rows, calib_rows = train_test_split(
            train, test_size=CALIBRATION_SHARE, stratify=y[train], random_state=seed + fold
        )
        model = ChurnModel(seed=seed).fit(X.iloc[fit_rows], y[fit_rows], X.iloc[calib_rows], y[calib_rows])
        model_p[test] = model.predict_proba(X.iloc[test])
        base_p[test] = churn.fit_baseline(X.iloc[train], y[train]).predict_proba(X.iloc[test])[:, 1]
    return model_p, base_p


def _per_fold_baseline(y: np.ndarray, p: np.ndarray, folds: int, seed: int) -> pd.DataFrame:
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    return pd.DataFrame([churn.metrics(y[test], p[test]) for _, test in splits])



def _importance(model: ChurnModel, X: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, Figure]:
    """Mean |SHAP| per column and the beeswarm, both on a sample of up to ``SHAP_SAMPLE`` rows."""
    sample = X.sample(SHAP_SAMPLE, random_state=seed) if len(X) > SHAP_SAMPLE else X
    contributions = model.contributions(sample)
    values = model.feature_values(sample)
    spec = model.spec
    assert spec is not None
    raw_names = dict(zip(spec.names, spec.columns, strict=True))
    mean_abs = contributions.drop(columns=explain.BASE).abs().mean()
    table = pd.DataFrame({
        "feature": [raw_names[name] for name in mean_abs.index],
        "mean_abs_contribution": mean_abs.to_numpy(),
        "share": (mean_abs / mean_abs.sum()).to_numpy() if mean_abs.sum() > 0 else 0.0,
    }).sort_values("mean_abs_contribution", ascending=False, ignore_index=True)
    figure = explain.shap_summary_figure(
        contributions, values, descriptions=raw_names, title="What drives the churn score (sample)", seed=seed
    )
    return table, figure


def train_churn_table(
    df: pd.DataFrame,
    label: str,
    id_column: str | None = None,
    folds: int = 5,
    seed: int = 0,
    *,
    exclude: Sequence[str] = (),
) -> TableResult:
    """Churn model on a table with a binary ``label`` column: k-fold metrics vs a logistic baseline, then a final
    calibrated model on all rows, with figures, a model card and an input example.

    Rows without a label are left out. Neither ``id_column`` nor the ``exclude`` columns (e.g. a churn date or
    reason, known only after the fact) are features; constant columns are dropped, and so are identifier-like
    ones (every value distinct) when no id column is named.
    """
    tables.check_folds(folds)
    tables.check_columns(df, {"label": label, "id": id_column}, exclude)
    frame = tables.tidy(df)
    y_all = tables.binary_label(frame, label)
    known = y_all.notna().to_numpy()
    frame, y = frame.loc[known].reset_index(drop=True), y_all[known].to_numpy(dtype=int)
    smallest = int(min(y.sum(), len(y) - y.sum()))
    if smallest < MIN_CLASS_ROWS_PER_FOLD * folds:
        raise ValueError(
            f"label column {label!r}: only {smallest} rows of its rarer value; {folds}-fold validation needs at "
            f"least {MIN_CLASS_ROWS_PER_FOLD * folds} ({MIN_CLASS_ROWS_PER_FOLD} per fold)"
        )
    X, dropped = tables.feature_columns(frame, [label], id_column, exclude)

    per_fold = churn.cross_validate(X, y, folds=folds, seed=seed, calibration_share=CALIBRATION_SHARE)
    model_p, base_p = _oof_predictions(X, y, folds, seed)
    base_folds = _per_fold_baseline(y, base_p, folds, seed)
    per_fold["baseline_roc_auc"] = base_folds["roc_auc"].to_numpy()

    names = list(churn.metrics(y, model_p))
    summary = pd.DataFrame(
        {
            "model_mean": per_fold[names].mean(),
            "model_sd": per_fold[names].std(ddof=1),
            "baseline_mean": base_folds[names].mean(),
            "baseline_sd": base_folds[names].std(ddof=1),
        }
    ).rename_axis("metric")
    metrics = {m: float(summary.at[m, "model_mean"]) for m in names}
    metrics |= {f"{m}_sd": float(summary.at[m, "model_sd"]) for m in names}
    metrics["roc_auc_gain_vs_baseline"] = metrics["roc_auc"] - float(summary.at["roc_auc", "baseline_mean"])
    metrics["n_trees_mean"] = float(per_fold["n_trees"].mean())
    baselines = {"logistic": {m: float(summary.at[m, "baseline_mean"]) for m in names}}

    fit_rows, calib_rows = train_test_split(
        np.arange(len(y)), test_size=CALIBRATION_SHARE, stratify=y, random_state=seed
    )
    final = ChurnModel(seed=seed).fit(X.iloc[fit_rows], y[fit_rows], X.iloc[calib_rows], y[calib_rows])
    importance, shap_figure = _importance(final, X, seed)
    single = tables.single_column_auc(X, y)
    leaks = single[single >= tables.LEAK_AUC]

    scores = {f"LightGBM, calibrated ({folds}-fold)": model_p, f"logistic baseline ({folds}-fold)": base_p}
    figures = {
        "roc": churn.roc_figure(y, scores, title=f"ROC, out-of-fold ({len(y):,} rows)"),
        "calibration": churn.calibration_curve_figure(y, scores, title="Calibration, out-of-fold"),
        "shap_summary": shap_figure,
    }
    ids = frame[id_column] if id_column is not None else None
    params: dict[str, Any] = {
        "kind": "churn",
        "label": label,
        "id_column": id_column or "",
        "folds": folds,
        "seed": seed,
        "rows": len(y),
        "rows_without_label": int((~known).sum()),
        "label_rate": round(float(y.mean()), 6),
        "n_features": X.shape[1],
        "dropped_columns": ", ".join(dropped) or "none",
        "calibration": f"platt on a random {CALIBRATION_SHARE:.0%} of rows",
        "table_digest": tables.digest(df),
        **{f"lgbm.{k}": v for k, v in final.params.items()},
    }
    card = _churn_card(
        frame, X, y, label, dropped, summary, per_fold, importance, leaks, ids, final, folds, int((~known).sum())
    )
    return TableResult.of(
        TableChurnModel(final, id_column), X, [pd.Series(y, name=label)], single,
        tables={"folds": per_fold, "summary": summary.reset_index(), "importance": importance},
        metrics=metrics, figures=figures, model_card=card, params=params, baselines=baselines,
    )


def _churn_card(
    frame: pd.DataFrame,
    X: pd.DataFrame,
    y: np.ndarray,
    label: str,
    dropped: Mapping[str, str],
    summary: pd.DataFrame,
    per_fold: pd.DataFrame,
    importance: pd.DataFrame,
    leaks: pd.Series,
    ids: pd.Series | None,
    model: ChurnModel,
    folds: int,
    unlabelled: int,
) -> str:
    spec = model.spec
    assert spec is not None
    gain = summary.at["roc_auc", "model_mean"] - summary.at["roc_auc", "baseline_mean"]
    noise = float(np.hypot(summary.at["roc_auc", "model_sd"], summary.at["roc_auc", "baseline_sd"]) / np.sqrt(folds))
    metric_table = pd.DataFrame({
        "LightGBM": [f"{r.model_mean:.3f} ± {r.model_sd:.3f}" for r in summary.itertuples()],
        "logistic baseline": [f"{r.baseline_mean:.3f} ± {r.baseline_sd:.3f}" for r in summary.itertuples()],
    }, index=summary.index.rename("metric"))
    kinds = dict(zip(spec.columns, spec.kinds, strict=True))
    feature_table = pd.DataFrame({
        "column": importance["feature"],
        "kind": importance["feature"].map(kinds),
        "missing": [f"{X[column].isna().mean():.1%}" for column in importance["feature"]],
        "share of importance": [f"{share:.1%}" for share in importance["share"]],
    })
    caveats = [
        f"{folds}-fold cross-validation on one table, no time split: metrics may be optimistic if rows are not "
        "independent (several rows per customer, rows from different dates) or if the future differs from "
        "the past. Validate on a later period before relying on the probabilities.",
        "Calibration (Platt) was fitted on a random slice of the same table; a shift in the churn rate "
        "later will bias the probabilities, not the ranking.",
    ]
    if ids is not None and ids.duplicated().any():
        caveats.append(
            f"{int(ids.duplicated().sum())} rows repeat an id already seen: the same customer can sit in a training "
            "and a test fold, which inflates the metrics."
        )
    if gain < max(0.005, 2 * noise):
        caveats.append(
            f"The LightGBM model does not clearly beat the logistic baseline (ROC AUC {gain:+.3f}): prefer the "
            "simpler model, or add features."
        )
    for column, auc in leaks.items():
        caveats.append(
            f"Possible leakage: {column!r} alone separates the label with AUC {auc:.3f}. Check it is known "
            "before the churn happens (e.g. not a churn reason, score or date)."
        )
    if len(y) < 1000:
        caveats.append(f"Only {len(y):,} labelled rows: the fold metrics are noisy (see the ± spread).")
    return model_card("Churn model on a customer table", (
        "Churn probability for each row of one customer table (`c360 train churn --table`): k-fold cross-validation "
        "against a logistic baseline on the same folds, then a final model on all rows."), {
        "Data": [[
            f"{len(frame) + unlabelled:,} rows, {frame.shape[1]} columns; {len(y):,} with a label"
            + (f" ({unlabelled:,} without, left out)" if unlabelled else ""),
            f"label `{label}`: churn rate {y.mean():.1%} ({int(y.sum()):,} churned)",
            tables.features_line(X, dropped),
        ]],
        "Model": [
            "LightGBM (shallow trees, early stopping) on the raw columns — numbers, Yes/No, dates and categories, "
            f"missing values kept — with Platt calibration on a held-out {CALIBRATION_SHARE:.0%}; the final model "
            f"has {model.n_trees} trees and was fitted on all {len(y):,} rows."],
        f"Metrics ({folds}-fold, mean ± sd over folds)": [
            metric_table, f"Mean trees per fold: {per_fold['n_trees'].mean():.0f}."],
        "Features (by mean |SHAP| on a sample)": [feature_table],
        "Caveats": [caveats],
    })
