"""Churn and next best action on a data scientist's own table: `c360 train churn|nba --table FILE.csv`.

No feature store, no snapshots: one CSV or Parquet file, one row per customer (or per customer and date), any
column names and types (``training.uplift``'s generic preparation). Everything here is validation, evaluation
and reporting around the project's models:

* churn: ``churn.cross_validate`` (stratified k-fold, calibrated ``ChurnModel``) against the logistic baseline on
  the same folds, then a final model on all rows (trees on 75 %, Platt calibration on a held-out 25 %);
* next best action: cross-fitted ``MultiArmUplift`` (any number of arms), Qini AUC per arm vs the control and
  the inverse-propensity value of the learned policy against every single arm and random, with paired
  bootstrap CIs; then a final model on all rows.

Both return a ``TableResult`` (model, metrics, tables, figures, markdown model card, input example), and
``log_table_result`` records it in MLflow as a registered ``@challenger`` version. The models are logged as
pyfunc objects (``TableChurnModel`` / ``TableNbaModel``): a bare LightGBM booster would lose the calibration.

Typical use::

    frame = read_table("telco.csv")
    result = train_churn_table(frame, label="Churn", id_column="customerID")
    version = log_table_result(result, kind="churn", table_name="telco.csv", home=home)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from c360.training import churn, explain, tracking
from c360.training.churn import ChurnModel
from c360.training.uplift import (
    MultiArmUplift,
    assignment_propensity,
    cross_fit,
    fold_ids,
    paired_bootstrap,
    prepare_features,
    qini_auc,
    qini_chart,
    qini_curve,
    recommend_from_outcomes,
    to_outcome,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.entities.model_registry import ModelVersion

Kind = Literal["churn", "nba"]
NAMES: dict[str, str] = {"churn": "c360-table-churn", "nba": "c360-table-nba"}  # experiment = registered model
CALIBRATION_SHARE = 0.25  # as churn.cross_validate: the final model is calibrated the way it was evaluated
MIN_CLASS_ROWS_PER_FOLD = 5  # churn: each label value needs this many rows per fold
MIN_ARM_ROWS = 50  # nba: below this an arm's model and its IPS value are noise
FEW_ARM_ROWS = 1000  # nba: below this the regularised learners can hardly split, expect "best arm for all"
SHAP_SAMPLE = 2000
LEAK_AUC = 0.95  # a single column separating the label this well is more often a leak than a discovery
N_BOOT = 300


@dataclass
class TableResult:
    """What a training on a table produced; ``metrics`` are the floats MLflow logs (the gate reads them)."""

    model: Any
    metrics: dict[str, float]
    tables: dict[str, pd.DataFrame]
    figures: dict[str, Figure]
    model_card: str
    input_example: pd.DataFrame
    params: dict[str, Any]
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)  # logged as baseline.<name>.<metric>
    data: pd.DataFrame | None = field(default=None, repr=False)  # the rows used, logged as the MLflow dataset


# ---------------------------------------------------------------- the deployable models


class TableChurnModel:
    """A calibrated ``ChurnModel`` with ``predict``, as MLflow's pyfunc needs: one churn probability per row.

    Extra columns in the input (the id, the label) are ignored; the id is echoed when present.
    """

    def __init__(self, model: ChurnModel, id_column: str | None = None) -> None:
        self.churn = model
        self.id_column = id_column

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame({"churn_probability": self.churn.predict_proba(X)}, index=X.index)
        if self.id_column is not None and self.id_column in X.columns:
            out.insert(0, self.id_column, X[self.id_column])
        return out


class TableNbaModel:
    """A fitted ``MultiArmUplift`` with ``predict``: the recommended arm (net of costs) and each arm's outcome."""

    def __init__(self, model: MultiArmUplift, costs: Mapping[Hashable, float] | None = None) -> None:
        self.uplift = model
        self.costs = dict(costs or {})

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        outcomes = self.uplift.predict_outcomes(X)
        best = recommend_from_outcomes(outcomes, self.uplift.control_, self.costs)
        expected = outcomes.set_axis([f"expected: {arm}" for arm in outcomes.columns], axis=1)
        return pd.concat([best.rename("recommended"), expected], axis=1)


# ---------------------------------------------------------------- reading and checking a table


def read_table(path: Path | str) -> pd.DataFrame:
    """The table at ``path``: Parquet by suffix (.parquet, .pq), tab-separated for .tsv, else CSV.

    Text cells are stripped, blank cells become missing (exports write " " for an unknown total) and a text
    column whose every value is a number becomes numeric (unless some have leading zeros, like zip codes). A
    clear ``ValueError`` names the file when it is missing, unreadable or has no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", low_memory=False)
    except pd.errors.EmptyDataError as error:
        raise ValueError(f"{path}: the file is empty") from error
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
        kind = "Parquet" if suffix in (".parquet", ".pq") else "CSV"
        raise ValueError(f"{path}: could not be read as {kind}: {error}") from error
    if frame.empty:
        raise ValueError(f"{path}: the table has no rows" if len(frame.columns) else f"{path}: the file is empty")
    return _tidy(frame)


def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """Stripped text, blank text as missing, text columns of numbers as numbers; other columns untouched."""
    frame = frame.copy()
    for col in frame.columns:
        s = frame[col]
        if pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s):
            text = s.where(s.isna(), s.astype(str).str.strip())
            text = text.mask(s.isna() | text.eq(""))  # one kind of missing (NaN), whatever the reader used
            numbers = pd.to_numeric(text, errors="coerce")
            present = text.notna()
            coded = text[present].astype(str).str.match(r"0\d").any()  # "02134", "007": codes, keep the zeros
            frame[col] = numbers if present.any() and numbers[present].notna().all() and not coded else text
    return frame


def _require_column(frame: pd.DataFrame, column: str, role: str) -> None:
    if column in frame.columns:
        return
    names = [str(c) for c in frame.columns]
    close = difflib.get_close_matches(column, names, n=3, cutoff=0.6)
    close += [c for c in names if c.lower() == column.lower() and c not in close]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"{role} column {column!r} is not in the table.{hint} Columns: {names}")


def _values(s: pd.Series, limit: int = 10) -> str:
    counts = s.value_counts(dropna=False)
    shown = ", ".join(f"{value!r} ({count})" for value, count in counts.head(limit).items())
    return shown + (f", … {len(counts) - limit} more" if len(counts) > limit else "")


def _looks_like_id(name: str, s: pd.Series) -> bool:
    """Every value distinct, and text (e.g. "7590-VHVEG") or integers under an id-like name."""
    present = s.dropna()
    if len(present) < 20 or present.nunique() != len(s):
        return False
    if pd.api.types.is_integer_dtype(s):
        return bool(re.search(r"^id|id$|number$", name, flags=re.IGNORECASE))
    textual = pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s)
    return textual and bool(pd.to_numeric(present, errors="coerce").isna().any())


def _features(
    frame: pd.DataFrame, targets: Sequence[str], id_column: str | None, exclude: Sequence[str]
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Feature columns: all but the ``targets``, the id and ``exclude``; constant and (without an id column)
    identifier-like columns are dropped too. Returns the features and {dropped column: why}."""
    dropped: dict[str, str] = {}
    if id_column is not None:
        dropped[id_column] = "id column"
    dropped |= {str(c): "excluded" for c in exclude if c not in targets and c != id_column}
    keep = []
    for col in frame.columns:
        name = str(col)
        if name in targets or name in dropped:
            continue
        s = frame[col]
        if s.nunique(dropna=False) <= 1:
            dropped[name] = "constant"
        elif id_column is None and _looks_like_id(name, s):
            dropped[name] = "identifier-like (every value distinct)"
        else:
            keep.append(col)
    if not keep:
        raise ValueError(f"no feature columns left (dropped: {dropped or 'none'}); the table needs predictors")
    return frame[keep], dropped


def _digest(frame: pd.DataFrame) -> str:
    return f"{int(pd.util.hash_pandas_object(frame, index=False).sum()) & (2**64 - 1):016x}"


def _check_folds(folds: int) -> None:
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")


def _check_columns(df: pd.DataFrame, roles: Mapping[str, str | None], exclude: Sequence[str]) -> None:
    """Each named column exists, and no column plays two roles."""
    named = {role: column for role, column in roles.items() if column is not None}
    for role, column in named.items():
        _require_column(df, column, role)
    for column in exclude:
        _require_column(df, column, "excluded")
    columns = list(named.values())
    if len(set(columns)) != len(columns):
        raise ValueError(f"the {', '.join(named)} columns must all differ, got {named}")


# ---------------------------------------------------------------- churn


def _binary_label(frame: pd.DataFrame, label: str) -> pd.Series:
    raw = frame[label]
    problem = f"label column {label!r} must be binary: Yes/No, True/False or 1/0"
    try:
        y = to_outcome(raw)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{problem}; found values {_values(raw)}. Recode it to one of these first.") from error
    present = y.dropna()
    if present.empty:
        raise ValueError(f"label column {label!r} has no values")
    if not present.isin([0.0, 1.0]).all():
        raise ValueError(f"{problem}; found values {_values(raw)}")
    if present.nunique() < 2:
        raise ValueError(f"label column {label!r} has a single value ({_values(raw)}): nothing to predict")
    return y


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


def _single_column_auc(X: pd.DataFrame, y: np.ndarray | pd.Series) -> pd.Series:
    """How well each column alone separates the label (0.5–1, either direction); missing is a value of its own.

    An amount is split at its median (above vs not): a column that predicts it that well is as suspicious.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=float)
    if not np.isin(y, [0.0, 1.0]).all():
        y = (y > np.median(y)).astype(float)
    if np.unique(y).size < 2:
        return pd.Series(dtype=float)
    matrix, spec = prepare_features(X)
    out = {}
    for col, name, kind in zip(spec.columns, spec.names, spec.kinds, strict=True):
        s = matrix[name]
        if kind == "category":
            key = s.astype(object).where(s.notna(), "(missing)")
            score = key.map(pd.Series(y, index=s.index).groupby(key).mean()).to_numpy(dtype=float)
            aucs = [roc_auc_score(y, score)]
        else:
            v = s.to_numpy(dtype=float)
            if np.isnan(v).all():
                continue
            low, high = np.nanmin(v) - 1, np.nanmax(v) + 1
            aucs = [roc_auc_score(y, np.where(np.isnan(v), fill, v)) for fill in (low, high)]
        out[col] = max(max(a, 1 - a) for a in aucs)
    return pd.Series(out, dtype=float).sort_values(ascending=False)


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
    _check_folds(folds)
    _check_columns(df, {"label": label, "id": id_column}, exclude)
    frame = _tidy(df)
    y_all = _binary_label(frame, label)
    known = y_all.notna().to_numpy()
    frame, y = frame.loc[known].reset_index(drop=True), y_all[known].to_numpy(dtype=int)
    smallest = int(min(y.sum(), len(y) - y.sum()))
    if smallest < MIN_CLASS_ROWS_PER_FOLD * folds:
        raise ValueError(
            f"label column {label!r}: only {smallest} rows of its rarer value; {folds}-fold validation needs at "
            f"least {MIN_CLASS_ROWS_PER_FOLD * folds} ({MIN_CLASS_ROWS_PER_FOLD} per fold)"
        )
    X, dropped = _features(frame, [label], id_column, exclude)

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
    single = _single_column_auc(X, y)
    leaks = single[single >= LEAK_AUC]

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
        "table_digest": _digest(df),
        **{f"lgbm.{k}": v for k, v in final.params.items()},
    }
    card = _churn_card(
        frame, X, y, label, dropped, summary, per_fold, importance, leaks, ids, final, folds, int((~known).sum())
    )
    return TableResult(
        model=TableChurnModel(final, id_column),
        metrics=metrics,
        tables={
            "folds": per_fold,
            "summary": summary.reset_index(),
            "importance": importance,
            "single_column_auc": single.rename_axis("column").reset_index(name="auc"),
        },
        figures=figures,
        model_card=card,
        input_example=X.head(5).reset_index(drop=True),
        params=params,
        baselines=baselines,
        data=pd.concat([X, pd.Series(y, name=label)], axis=1),
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
    metric_rows = [
        [m, f"{summary.at[m, 'model_mean']:.3f} ± {summary.at[m, 'model_sd']:.3f}",
         f"{summary.at[m, 'baseline_mean']:.3f} ± {summary.at[m, 'baseline_sd']:.3f}"]
        for m in summary.index
    ]
    kinds = dict(zip(spec.columns, spec.kinds, strict=True))
    feature_rows = [
        [row.feature, kinds[row.feature], f"{X[row.feature].isna().mean():.1%}", f"{row.share:.1%}"]
        for row in importance.itertuples()
    ]
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
    lines = [
        "# Churn model on a customer table",
        "",
        "## Data",
        f"- {len(frame) + unlabelled:,} rows, {frame.shape[1]} columns; {len(y):,} with a label"
        + (f" ({unlabelled:,} without, left out)" if unlabelled else ""),
        f"- label `{label}`: churn rate {y.mean():.1%} ({int(y.sum()):,} churned)",
        f"- {X.shape[1]} features; dropped: "
        + (", ".join(f"`{c}` ({why})" for c, why in dropped.items()) if dropped else "none"),
        "",
        "## Model",
        "LightGBM (shallow trees, early stopping) on the raw columns — numbers, Yes/No, dates and categories, "
        f"missing values kept — with Platt calibration on a held-out {CALIBRATION_SHARE:.0%}; the final model "
        f"has {model.n_trees} trees and was fitted on all {len(y):,} rows.",
        "",
        f"## Metrics ({folds}-fold, mean ± sd over folds)",
        _markdown(["metric", "LightGBM", "logistic baseline"], metric_rows),
        "",
        f"Mean trees per fold: {per_fold['n_trees'].mean():.0f}.",
        "",
        "## Features (by mean |SHAP| on a sample)",
        _markdown(["column", "kind", "missing", "share of importance"], feature_rows),
        "",
        "## Caveats",
        *[f"- {c}" for c in caveats],
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- next best action


def _arms(s: pd.Series) -> pd.Series:
    """Arm labels as text (CSV arms 1, 2 and a CLI's "--control 1" must meet); missing stays missing."""
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        present = s.dropna()
        if (present == present.round()).all():
            return s.map(lambda v: None if pd.isna(v) else str(int(v))).astype(object)
    return s.map(lambda v: None if pd.isna(v) else str(v)).astype(object)


def _outcome(frame: pd.DataFrame, outcome: str) -> pd.Series:
    raw = frame[outcome]
    try:
        y = to_outcome(raw)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"outcome column {outcome!r} must be numeric, 1/0, True/False or Yes/No; found values {_values(raw)}"
        ) from error
    if y.dropna().nunique() < 2:
        raise ValueError(f"outcome column {outcome!r} never varies ({_values(raw)}): nothing to learn")
    return y


def _qini(
    outcomes: pd.DataFrame, t: pd.Series, y: pd.Series, control: str, folds: np.ndarray
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Qini AUC of each arm vs the control per fold, each fold ranked by the model that scored it, and the curves."""
    rows, curves = [], {}
    for arm in outcomes.columns.drop(control):
        for fold in np.unique(folds):
            keep = (t.isin([arm, control]) & (folds == fold)).to_numpy()
            uplift, flag, target = (outcomes[arm] - outcomes[control])[keep], t[keep] == arm, y[keep]
            with np.errstate(divide="ignore", invalid="ignore"):
                auc = qini_auc(uplift, flag, target)
            rows.append({"arm": arm, "fold": int(fold), "rows": int(keep.sum()), "qini_auc": auc})
            curves[f"{arm} vs {control}, fold {fold + 1}"] = qini_curve(uplift, flag, target)
    return pd.DataFrame(rows), curves


def _policy_figure(table: pd.DataFrame, measure: str) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 0.5 * len(table) + 1.5))
    ax = fig.subplots()
    order = table.iloc[::-1]
    err = np.vstack([order["value"] - order["value_low"], order["value_high"] - order["value"]])
    colours = ["#d62728" if name == "policy" else "#1f77b4" for name in order.index]
    ax.barh(range(len(order)), order["value"], xerr=err, color=colours, alpha=0.8, capsize=3)
    ax.set_yticks(range(len(order)), [str(name) for name in order.index])
    ax.set_xlabel(f"{measure} (inverse propensity, 95 % bootstrap CI)")
    ax.set_title("Learned policy vs simple rules (out-of-fold)")
    fig.tight_layout()
    return fig


def _balance(X: pd.DataFrame, t: pd.Series, control: str) -> pd.DataFrame:
    """Standardised mean difference of each numeric column between each arm and the control, with the level that
    random assignment would rarely exceed (4 standard errors, at least 0.1)."""
    matrix, spec = prepare_features(X)
    rows = []
    in_control = (t == control).to_numpy()
    for arm in sorted(set(t.dropna()) - {control}):
        in_arm = (t == arm).to_numpy()
        limit = max(0.1, 4 * np.sqrt(1 / in_arm.sum() + 1 / in_control.sum()))
        for col, name, kind in zip(spec.columns, spec.names, spec.kinds, strict=True):
            if kind == "category":
                continue
            a, c = matrix.loc[in_arm, name], matrix.loc[in_control, name]
            sd = np.sqrt((a.var() + c.var()) / 2)
            if not sd > 0:
                continue
            rows.append({"arm": arm, "column": col, "smd": float((a.mean() - c.mean()) / sd), "limit": limit})
    return pd.DataFrame(rows, columns=["arm", "column", "smd", "limit"])


def _min_leaf(smallest_arm: int) -> int:
    """LightGBM's min_child_samples: ``MultiArmUplift``'s 200 (made for tens of thousands of rows per arm) down to
    a 20th of the smallest arm, at least 20. With 2-fold cross-fitting and the 2-fold uplift calibration inside,
    an arm's trees see a quarter of its rows: at 200 a table of a few thousand rows could not split at all. The
    calibration still shrinks whatever the smaller leaves learn from noise."""
    return int(np.clip(smallest_arm // 20, 20, 200))


def _metric_key(name: Any) -> str:
    """MLflow metric names allow letters, digits, _ - . / and spaces: "10% discount" -> "10pct_discount"."""
    text = str(name).replace("%", "pct")
    return re.sub(r"[^\w\-./]+", "_", text).strip("_") or "_"


def train_nba_table(
    df: pd.DataFrame,
    treatment: str,
    control: str,
    outcome: str,
    id_column: str | None = None,
    costs: dict[str, float] | None = None,
    folds: int = 2,
    seed: int = 0,
    *,
    exclude: Sequence[str] = (),
) -> TableResult:
    """Next best action from a randomized test in a table: which arm each customer got (``treatment``; ``control``
    is the "do nothing" arm) and what followed (``outcome``: 0/1 or an amount).

    Cross-fitted ``MultiArmUplift`` (T-learner) gives every row out-of-fold expected outcomes per arm; from them
    the Qini AUC of each arm vs the control, and the learned policy (best arm net of ``costs``, in outcome units
    per customer) valued by inverse propensity against all-control, each single arm and random, with paired
    bootstrap CIs (values are net of costs when costs are given). A final model is then fitted on all rows.
    Rows without an arm or an outcome are left out. Features are all other columns but ``id_column`` and
    ``exclude``: exclude everything recorded after the assignment (other outcomes such as spend when the outcome is
    a conversion), or the model learns from the future.
    """
    _check_folds(folds)
    _check_columns(df, {"treatment": treatment, "outcome": outcome, "id": id_column}, exclude)
    frame = _tidy(df)
    t_all = _arms(frame[treatment])
    control = str(control)
    arms_seen = sorted(t_all.dropna().unique(), key=str)
    if control not in arms_seen:
        raise ValueError(f"control {control!r} is not a value of {treatment!r}; its values are {arms_seen}")
    if len(arms_seen) < 2:
        raise ValueError(f"treatment column {treatment!r} has a single arm ({control!r}): nothing to compare")
    cost_map: dict[Hashable, float] = {arm: float(c) for arm, c in (costs or {}).items()}
    unknown = sorted(set(cost_map) - set(arms_seen), key=str)
    if unknown:
        raise ValueError(f"costs given for {unknown}, which are not arms of {treatment!r}: {arms_seen}")
    y_all = _outcome(frame, outcome)
    known = (t_all.notna() & y_all.notna()).to_numpy()
    left_out = int((~known).sum())
    frame = frame.loc[known].reset_index(drop=True)
    t, y = t_all[known].reset_index(drop=True), y_all[known].reset_index(drop=True)
    counts = t.value_counts()
    small = {arm: int(n) for arm, n in counts.items() if n < MIN_ARM_ROWS}
    if small:
        raise ValueError(f"every arm needs at least {MIN_ARM_ROWS} rows with an outcome; too few: {small}")
    arms = [control, *[a for a in arms_seen if a != control]]
    X, dropped = _features(frame, [treatment, outcome], id_column, exclude)

    leaf = _min_leaf(int(counts.min()))

    def factory() -> MultiArmUplift:
        return MultiArmUplift(min_child_samples=leaf, seed=seed)

    oof = cross_fit(factory, X, t, y, folds=folds, seed=seed, control=control)[arms]
    policy = recommend_from_outcomes(oof, control, cost_map)
    cost_of = pd.Series({a: cost_map.get(a, 0.0) for a in arms})
    net = y - t.map(cost_of).astype(float)  # IPS only counts rows whose arm matches: the cost is that arm's
    propensity = assignment_propensity(t)
    values = paired_bootstrap(net, t, policy, propensity, arms=arms, n_boot=N_BOOT, seed=seed)
    values = values.rename(index={f"all {control}": f"all {control} (no action)"})
    values[["diff", "diff_low", "diff_high"]] = values[["diff", "diff_low", "diff_high"]].mask(
        values[["diff", "diff_low", "diff_high"]].abs() < 1e-9, 0.0
    )  # identical policies: floating-point dust, not a difference
    qini_folds, curves = _qini(oof, t, y, control, fold_ids(t, folds, seed))
    qini = qini_folds.groupby("arm", sort=False)["qini_auc"].agg(["mean", "std"]).rename_axis("arm")
    balance = _balance(X, t, control)
    single = _single_column_auc(X, y)
    final = factory().fit(X, t, y, control=control)

    share = policy.value_counts(normalize=True).reindex(arms, fill_value=0.0)
    arm_table = pd.DataFrame(
        {
            "rows": counts.reindex(arms),
            "assignment_share": pd.Series(propensity).reindex(arms),
            "mean_outcome": y.groupby(t).mean().reindex(arms),
            "cost": cost_of.reindex(arms),
            "policy_share": share,
            "qini_auc": qini["mean"].reindex(arms),
        }
    ).rename_axis("arm")

    metrics: dict[str, float] = {
        "policy_value": float(values.at["policy", "value"]),
        "policy_value_low": float(values.at["policy", "value_low"]),
        "policy_value_high": float(values.at["policy", "value_high"]),
    }
    keys = {f"all {control} (no action)": "no_action", "random": "random"}
    keys |= {f"all {arm}": f"all.{_metric_key(arm)}" for arm in arms[1:]}
    for name, row in values.drop(index="policy").iterrows():
        key = keys[str(name)]
        metrics |= {
            f"value.{key}": float(row["value"]),
            f"gain_vs.{key}": float(row["diff"]),
            f"gain_vs.{key}.low": float(row["diff_low"]),
            f"gain_vs.{key}.high": float(row["diff_high"]),
        }
    metrics |= {f"qini_auc.{_metric_key(arm)}": float(v) for arm, v in qini["mean"].items()}
    metrics |= {f"policy_share.{_metric_key(arm)}": float(v) for arm, v in share.items()}
    if len(qini):
        metrics["qini_auc_mean"] = float(qini["mean"].mean())
    metrics = {k: v for k, v in metrics.items() if np.isfinite(v)}

    net_note = " net of costs" if any(cost_map.values()) else ""
    figures = {
        "qini_curves": qini_chart(curves, title=f"Qini curves per arm vs {control} (out-of-fold, {outcome})"),
        "policy_values": _policy_figure(values, f"{outcome} per customer{net_note}"),
    }
    params: dict[str, Any] = {
        "kind": "nba",
        "treatment": treatment,
        "control": control,
        "outcome": outcome,
        "id_column": id_column or "",
        "arms": ", ".join(arms),
        "costs": ", ".join(f"{a}={c:g}" for a, c in cost_of.items() if c) or "none",
        "folds": folds,
        "seed": seed,
        "bootstrap_resamples": N_BOOT,
        "rows": len(y),
        "rows_left_out": left_out,
        "binary_outcome": bool(final.binary_),
        "n_features": X.shape[1],
        "dropped_columns": ", ".join(dropped) or "none",
        "learner": final.learner,
        "table_digest": _digest(df),
        **{f"lgbm.{k}": v for k, v in final.options.items()},
    }
    card = _nba_card(
        X, t, outcome, control, dropped, arm_table, values, balance, single[single >= LEAK_AUC], final, folds,
        net_note, left_out,
    )
    return TableResult(
        model=TableNbaModel(final, cost_map),
        metrics=metrics,
        tables={
            "arms": arm_table.reset_index(),
            "policy_values": values.rename_axis("policy").reset_index(),
            "qini_folds": qini_folds,
            "balance": balance,
            "single_column_auc": single.rename_axis("column").reset_index(name="auc"),
        },
        figures=figures,
        model_card=card,
        input_example=X.head(5).reset_index(drop=True),
        params=params,
        data=pd.concat([X, t.rename(treatment), y.rename(outcome)], axis=1),
    )


def _nba_card(
    X: pd.DataFrame,
    t: pd.Series,
    outcome: str,
    control: str,
    dropped: Mapping[str, str],
    arms: pd.DataFrame,
    values: pd.DataFrame,
    balance: pd.DataFrame,
    leaks: pd.Series,
    model: MultiArmUplift,
    folds: int,
    net_note: str,
    left_out: int,
) -> str:
    arm_rows = [
        [str(arm), f"{int(r['rows']):,}", f"{r['assignment_share']:.1%}", f"{r['mean_outcome']:.4g}",
         f"{r['cost']:g}", "—" if arm == control else f"{r['qini_auc']:.3f}", f"{r['policy_share']:.1%}"]
        for arm, r in arms.iterrows()
    ]
    value_rows = [
        [str(name), f"{r['value']:.4g} [{r['value_low']:.4g}, {r['value_high']:.4g}]",
         "" if name == "policy" else f"{r['diff']:+.4g} [{r['diff_low']:+.4g}, {r['diff_high']:+.4g}]",
         "" if name == "policy" else ("yes" if r["significant"] else "no")]
        for name, r in values.iterrows()
    ]
    singles = values.drop(index=["policy", "random"])
    best = singles["value"].idxmax()
    caveats = [
        "The evaluation assumes the arms were assigned at random (an experiment), with propensities equal to the "
        "observed shares. On observational data (who got an offer depended on who they are) every value here "
        "is biased.",
        f"{folds}-fold cross-fitting on one table, no time split: effects measured in this test may not hold for "
        "later customers or other seasons.",
    ]
    if not values.at[best, "diff_low"] > 0:
        caveats.append(
            f"The learned policy is not significantly better than the best single rule ({best}): unless the "
            "targeting is worth it, send that arm to everyone and collect more data."
        )
    few = [str(a) for a, n in arms["rows"].items() if n < FEW_ARM_ROWS]
    if few:
        caveats.append(
            f"Arms with under {FEW_ARM_ROWS:,} rows ({', '.join(few)}): the regularised learners can barely tell "
            "customers apart, so the policy leans towards the best arm on average."
        )
    imbalanced = balance[balance["smd"].abs() > balance["limit"]]
    for r in imbalanced.itertuples():
        caveats.append(
            f"Imbalance: `{r.column}` differs between {r.arm} and {control} by {r.smd:+.2f} sd, more than random "
            "assignment would explain: either the arms were not randomized, or the column was recorded after the "
            "assignment (an outcome) and must be excluded."
        )
    for column, auc in leaks.items():
        caveats.append(
            f"Possible leakage: {column!r} alone predicts `{outcome}` with AUC {auc:.3f}. If it was recorded after "
            "the assignment, exclude it."
        )
    lines = [
        "# Next best action on a customer table",
        "",
        "## Data",
        f"- {len(t):,} rows with an arm and an outcome" + (f" ({left_out:,} left out)" if left_out else ""),
        f"- outcome `{outcome}` ({'0/1' if model.binary_ else 'amount'}); control arm `{control}`",
        f"- {X.shape[1]} features; dropped: "
        + (", ".join(f"`{c}` ({why})" for c, why in dropped.items()) if dropped else "none"),
        "",
        _markdown(["arm", "rows", "share", f"mean {outcome}", "cost", "Qini AUC vs control", "policy sends"],
                  arm_rows),
        "",
        "## Model",
        f"LightGBM {model.learner.upper()}-learner, one outcome model per arm, uplift shrunk towards each arm's "
        "average effect by how well it ranks on held-out rows; recommends the arm with the highest expected "
        "outcome net of its cost (the control when nothing pays). Leaves of at least "
        f"{model.options['min_child_samples']} rows (scaled to the smallest arm); the final model was fitted on all "
        "rows.",
        "",
        f"## Policy value ({outcome} per customer{net_note}, inverse propensity, {folds}-fold cross-fitted)",
        "95 % paired-bootstrap CIs; *gain* = learned policy − row.",
        "",
        _markdown(["policy", "value [CI]", "gain [CI]", "significant"], value_rows),
        "",
        "## Caveats",
        *[f"- {c}" for c in caveats],
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- MLflow


def _markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(map(cell, row)) + " |" for row in rows)])


def log_table_result(result: TableResult, *, kind: Kind, table_name: str, home: Path) -> ModelVersion:
    """Logs ``result`` as one MLflow run in experiment ``c360-table-<kind>`` and registers the model as the new
    ``@challenger`` of ``c360-table-<kind>`` (pyfunc: ``tracking.load_model(name, alias, "pyfunc")`` gives back the
    ``TableChurnModel`` / ``TableNbaModel``).

    The ``test_period`` tag (compared by the promotion gate) names the table's content and the folds, so only
    versions evaluated on the same data the same way are compared.
    """
    expected = {"churn": TableChurnModel, "nba": TableNbaModel}
    if kind not in expected:
        raise ValueError(f"kind must be 'churn' or 'nba', got {kind!r}")
    if not isinstance(result.model, expected[kind]):
        raise ValueError(f"a {kind} result must hold a {expected[kind].__name__}, got {type(result.model).__name__}")
    name = NAMES[kind]
    params = result.params
    target = str(params.get("label" if kind == "churn" else "outcome") or "") or None
    evaluation = (
        f"{params.get('folds')}-fold on {table_name} (digest {params.get('table_digest')}, seed {params.get('seed')})"
    )
    title, _, body = result.model_card.partition("\n")
    card = f"{title}\n\nSource table: `{table_name}`\n{body}"
    return tracking.log_training_run(
        experiment=name,
        run_name=f"{kind} on {Path(table_name).name}",
        model=result.model,
        flavor="pyfunc",
        params=params,
        metrics=result.metrics,
        baselines=result.baselines or None,
        dataset=result.data,
        dataset_name=Path(table_name).stem or "table",
        input_example=result.input_example,
        figures=result.figures,
        tables=result.tables,
        model_card=card,
        registered_name=name,
        tags={"kind": f"table-{kind}", "source_table": table_name, "test_period": evaluation},
        target=target,
        home=home,
    )
