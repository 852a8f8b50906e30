"""Churn on a data scientist's own table: `c360 train churn --table FILE.csv --label COLUMN`.

Nested cross-validation, so no model is judged on rows that chose it: on each of ``folds`` stratified outer
folds, ``table_candidates.choose`` runs an inner cross-validation on the training part only and blends a
regularised logistic regression, a default LightGBM and a tuned LightGBM, with weights fitted on their inner
out-of-fold scores; every candidate and the chosen blend are then scored on the outer test fold. The figures of
the chosen column are those of the whole procedure; the final model is the same procedure on all rows. Warnings
(identifier-like columns dropped, many-level categories, likely leaks) go to the result's ``warnings`` for the
console and to the model card.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from c360.training import churn, explain, tables
from c360.training.cards import model_card
from c360.training.table_candidates import (
    CANDIDATES,
    INNER_FOLDS,
    MIN_LEVEL_ROWS,
    TRIALS,
    Candidate,
    choose,
    many_levels,
)
from c360.training.table_models import TableChurnModel, TableResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MIN_CLASS_ROWS_PER_FOLD = 5  # each label value needs this many rows per fold
SHAP_SAMPLE = 2000
TITLES = {"chosen": "chosen", "logistic": "logistic regression", "lightgbm": "LightGBM (defaults)",
          "lightgbm_tuned": "LightGBM (tuned)", "blend": "blend"}


def _outer(X: pd.DataFrame, y: np.ndarray, folds: int, seed: int, trials: int
           ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Per outer fold and model (each candidate and ``chosen``): test metrics and the inner-CV AUC; and each
    model's out-of-fold probabilities."""
    rows, oof = [], {name: np.empty(len(y)) for name in ("chosen", *CANDIDATES)}
    for fold, (train, test) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y)):
        choice = choose(X.iloc[train], y[train], seed + fold, trials)
        for name, model in choice.models.items():
            oof[name][test] = model.predict_proba(X.iloc[test])
        oof["chosen"][test] = oof[choice.chosen][test]
        for name in ("chosen", *CANDIDATES):
            inner = choice.inner_auc[choice.chosen if name == "chosen" else name]
            rows.append({"fold": fold, "model": name, "candidate": choice.chosen if name == "chosen" else name,
                         "rows": len(test), "inner_roc_auc": inner, **churn.metrics(y[test], oof[name][test])})
    return pd.DataFrame(rows), oof


def _summary(per_fold: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over the outer folds of each metric, one row per model."""
    names = ["roc_auc", "pr_auc", "brier", "ece", "lift_at_10"]
    grouped = per_fold.groupby("model", sort=False)[names]
    summary = grouped.mean().join(grouped.std(ddof=1).add_suffix("_sd"))
    picks = per_fold.query("model == 'chosen'")["candidate"]
    summary["chosen_in_folds"] = [len(picks) if m == "chosen" else int((picks == m).sum()) for m in summary.index]
    return summary[[c for name in names for c in (name, f"{name}_sd")] + ["chosen_in_folds"]]


def _warnings(X: pd.DataFrame, dropped: Mapping[str, str], leaks: pd.Series) -> list[str]:
    lines = [f"dropped column {column!r}: {reason}" for column, reason in dropped.items()
             if reason.startswith("identifier")]
    lines += [f"column {column!r} has {n} categories: levels with fewer than {MIN_LEVEL_ROWS} rows are pooled with "
              "missing values" for column, n in many_levels(X).items()]
    lines += [f"possible leakage: {column!r} alone separates the label with ROC AUC {auc:.3f}; if it is known only "
              "after the churn, pass --exclude" for column, auc in leaks.items()]
    return lines


def _importance(model: Candidate, X: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, Figure]:
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
    trials: int = TRIALS,
) -> TableResult:
    """Churn model on a table with a binary ``label`` column: nested cross-validation of the candidates (see the
    module), then the chosen candidate on all rows, with figures, a model card and an input example.

    Rows without a label are left out. Neither ``id_column`` nor the ``exclude`` columns (e.g. a churn date or
    reason, known only after the fact) are features; constant and identifier-like columns (``tables.id_like``) are
    dropped. ``trials`` is the tuned LightGBM's budget per fit.
    """
    tables.check_folds(folds)
    tables.check_columns(df, {"label": label, "id": id_column}, exclude)
    frame = tables.tidy(df)
    y_all = tables.binary_label(frame, label)
    known = y_all.notna().to_numpy()
    frame, y = frame.loc[known].reset_index(drop=True), y_all[known].to_numpy(dtype=int)
    smallest = int(min(y.sum(), len(y) - y.sum()))
    # every outer test fold and every inner test fold (a third of an outer training part) needs its share
    needed = MIN_CLASS_ROWS_PER_FOLD * max(folds, -(-INNER_FOLDS * folds // (folds - 1)))
    if smallest < needed:
        raise ValueError(
            f"label column {label!r}: only {smallest} rows of its rarer value; {folds}-fold validation, with "
            f"{INNER_FOLDS}-fold model selection inside, needs at least {needed}"
        )
    X, dropped = tables.feature_columns(frame, [label], id_column, exclude)

    per_fold, oof = _outer(X, y, folds, seed, trials)
    summary = _summary(per_fold)
    chosen = summary.loc["chosen"]
    metrics = {name: float(value) for name, value in chosen.drop("chosen_in_folds").items()}
    candidates = {m: {k: float(v) for k, v in summary.loc[m].items()} for m in CANDIDATES}
    metrics["roc_auc_gain_vs_baseline"] = metrics["roc_auc"] - candidates["logistic"]["roc_auc"]
    metrics["roc_auc_gain_vs_lightgbm"] = metrics["roc_auc"] - candidates["lightgbm"]["roc_auc"]

    final = choose(X, y, seed, trials)
    model = final.models[final.chosen]
    importance, shap_figure = _importance(model, X, seed)
    single = tables.single_column_auc(X, y)
    leaks = single[single >= tables.LEAK_AUC]
    warnings = _warnings(X, dropped, leaks)

    scores = {f"{TITLES[m]} ({folds}-fold)": oof[m] for m in ("chosen", "logistic", "lightgbm")}
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
        "inner_folds": INNER_FOLDS,
        "tuning_trials": trials,
        "seed": seed,
        "rows": len(y),
        "rows_without_label": int((~known).sum()),
        "label_rate": round(float(y.mean()), 6),
        "n_features": X.shape[1],
        "dropped_columns": ", ".join(dropped) or "none",
        "chosen_model": final.chosen,
        "calibration": "the blend's weights, fitted on the candidates' inner out-of-fold log-odds",
        "table_digest": tables.digest(df),
        **{f"model.{k}": v for k, v in model.params.items()},
    }
    card = _churn_card(frame, X, y, label, dropped, summary, importance, ids, final.chosen, model,
                       folds, int((~known).sum()), warnings)
    return TableResult.of(
        TableChurnModel(model, id_column), X, [pd.Series(y, name=label)], single,
        tables={"folds": per_fold, "summary": summary.reset_index(), "importance": importance},
        metrics=metrics, figures=figures, model_card=card, params=params, baselines=candidates, warnings=warnings,
    )


def _churn_card(
    frame: pd.DataFrame,
    X: pd.DataFrame,
    y: np.ndarray,
    label: str,
    dropped: Mapping[str, str],
    summary: pd.DataFrame,
    importance: pd.DataFrame,
    ids: pd.Series | None,
    chosen: str,
    model: Candidate,
    folds: int,
    unlabelled: int,
    warnings: Sequence[str],
) -> str:
    spec = model.spec
    assert spec is not None
    metric_table = pd.DataFrame(
        {TITLES[m]: [f"{summary.at[m, k]:.3f} ± {summary.at[m, f'{k}_sd']:.3f}"
                     for k in ("roc_auc", "pr_auc", "brier", "ece", "lift_at_10")] for m in summary.index},
        index=pd.Index(["roc_auc", "pr_auc", "brier", "ece", "lift_at_10"], name="metric"),
    )
    weights = ", ".join(f"{TITLES[name.removeprefix('weight.')]} {value:.2f}"
                        for name, value in model.params.items() if name.startswith("weight."))
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
        "Calibration (the blend's logistic weights) was fitted on out-of-fold scores of the same table; a shift "
        "in the churn rate later will bias the probabilities, not the ranking.",
        *warnings,
    ]
    if ids is not None and ids.duplicated().any():
        caveats.append(
            f"{int(ids.duplicated().sum())} rows repeat an id already seen: the same customer can sit in a training "
            "and a test fold, which inflates the metrics."
        )
    if len(y) < 1000:
        caveats.append(f"Only {len(y):,} labelled rows: the fold metrics are noisy (see the ± spread).")
    return model_card("Churn model on a customer table", (
        "Churn probability for each row of one customer table (`c360 train churn --table`): nested cross-validation "
        "judges a blend of a logistic regression, a default LightGBM and a tuned LightGBM, then the blend is fitted "
        "on all rows."), {
        "Data": [[
            f"{len(frame) + unlabelled:,} rows, {frame.shape[1]} columns; {len(y):,} with a label"
            + (f" ({unlabelled:,} without, left out)" if unlabelled else ""),
            f"label `{label}`: churn rate {y.mean():.1%} ({int(y.sum()):,} churned)",
            tables.features_line(X, dropped),
        ]],
        "Model": [
            f"Chosen: {TITLES[chosen]}, the candidates' log-odds weighted by a logistic regression on their "
            f"{INNER_FOLDS}-fold out-of-fold scores on all {len(y):,} rows (weights of zero or more, which also "
            f"calibrate it): {weights or 'every weight zero, a constant'}. Category levels with fewer than "
            f"{MIN_LEVEL_ROWS} rows are pooled with missing."],
        f"Metrics ({folds}-fold, mean ± sd over the outer folds; each model chosen or fitted on training folds only)": [
            metric_table],
        "Features (by mean |contribution| on a sample)": [feature_table],
        "Caveats": [caveats],
    })
