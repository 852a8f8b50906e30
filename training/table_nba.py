"""Next best action on a data scientist's own experiment table: `c360 train nba --table FILE.csv`.

Cross-fitted ``MultiArmUplift`` (any number of arms) on ``folds`` folds, Qini AUC per arm vs the control with its
spread over the folds, beside a regularised T-learner (one logistic or ridge regression per arm,
``LinearTLearner``) on the same folds; the inverse-propensity value of the learned policy against every single arm
and random, with paired bootstrap CIs; then a final model on all rows, with figures, a model card and an input
example in a ``TableResult``. Post-treatment columns (imbalanced between arms), likely leaks and what the policy
does without costs go to the result's ``warnings`` for the console.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from c360.training import tables
from c360.training.cards import model_card
from c360.training.table_candidates import linear_design, linear_matrix, table_spec
from c360.training.table_models import TableNbaModel, TableResult
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
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MIN_ARM_ROWS = 50  # below this an arm's model and its IPS value are noise
FEW_ARM_ROWS = 1000  # below this the regularised learners can hardly split, expect "best arm for all"
N_BOOT = 300


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


class LinearTLearner:
    """The regularised T-learner baseline: per arm, a logistic regression (C=1) for a 0/1 outcome or a ridge
    regression for an amount, on one-hot categories and scaled numbers; ``cross_fit`` fits it like
    ``MultiArmUplift``."""

    def fit(self, X: pd.DataFrame, treatment: pd.Series, outcome: pd.Series, control: Hashable,
            sample_weight: Any = None) -> LinearTLearner:
        from sklearn.linear_model import LogisticRegression, Ridge

        self.spec = table_spec(X)
        matrix = linear_matrix(X, self.spec)
        self.design = linear_design(self.spec).fit(matrix)
        Z, y = self.design.transform(matrix), outcome.to_numpy(dtype=float)
        self.binary = bool(np.isin(y, [0.0, 1.0]).all())
        self.models = {}
        for arm in sorted(set(treatment), key=str):
            rows = (treatment == arm).to_numpy()
            model = LogisticRegression(max_iter=2000) if self.binary else Ridge(alpha=1.0)
            self.models[arm] = model.fit(Z[rows], y[rows]) if np.unique(y[rows]).size > 1 else float(y[rows].mean())
        return self

    def predict_outcomes(self, X: pd.DataFrame) -> pd.DataFrame:
        Z = self.design.transform(linear_matrix(X, self.spec))
        out = {}
        for arm, model in self.models.items():
            if isinstance(model, float):
                out[arm] = np.full(len(X), model)
            else:
                out[arm] = model.predict_proba(Z)[:, 1] if self.binary else model.predict(Z)
        return pd.DataFrame(out, index=X.index)


def _qini_summary(qini_folds: pd.DataFrame) -> tuple[float, float]:
    """Mean over the folds of the Qini AUC averaged over the arms, and its sd over the folds."""
    per_fold = qini_folds.groupby("fold")["qini_auc"].mean()
    return float(per_fold.mean()), float(per_fold.std(ddof=1))


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


def _min_leaf(smallest_arm: int, folds: int) -> int:
    """LightGBM's min_child_samples: ``MultiArmUplift``'s 200 (made for tens of thousands of rows per arm) down to
    a 10th of the rows of the smallest arm its trees see, at least 20. With k-fold cross-fitting and the 2-fold
    uplift calibration inside, an arm's trees see (k-1)/2k of its rows: at 200 a table of a few thousand rows
    could not split at all. The calibration still shrinks whatever the smaller leaves learn from noise."""
    return int(np.clip(smallest_arm * (folds - 1) / folds / 2 // 10, 20, 200))


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
    folds: int = 5,
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
    tables.check_folds(folds)
    tables.check_columns(df, {"treatment": treatment, "outcome": outcome, "id": id_column}, exclude)
    frame = tables.tidy(df)
    t_all = tables.arm_labels(frame[treatment])
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
    y_all = tables.outcome_values(frame, outcome)
    known = (t_all.notna() & y_all.notna()).to_numpy()
    left_out = int((~known).sum())
    frame = frame.loc[known].reset_index(drop=True)
    t, y = t_all[known].reset_index(drop=True), y_all[known].reset_index(drop=True)
    counts = t.value_counts()
    small = {arm: int(n) for arm, n in counts.items() if n < MIN_ARM_ROWS}
    if small:
        raise ValueError(f"every arm needs at least {MIN_ARM_ROWS} rows with an outcome; too few: {small}")
    arms = [control, *[a for a in arms_seen if a != control]]
    X, dropped = tables.feature_columns(frame, [treatment, outcome], id_column, exclude)

    leaf = _min_leaf(int(counts.min()), folds)

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
    ids = fold_ids(t, folds, seed)
    qini_folds, curves = _qini(oof, t, y, control, ids)
    qini = qini_folds.groupby("arm", sort=False)["qini_auc"].agg(["mean", "std"]).rename_axis("arm")
    linear = cast("Callable[[], MultiArmUplift]", LinearTLearner)  # duck-typed: fit and predict_outcomes
    linear_oof = cross_fit(linear, X, t, y, folds=folds, seed=seed, control=control)[arms]
    linear_folds, _ = _qini(linear_oof, t, y, control, ids)
    balance = _balance(X, t, control)
    single = tables.single_column_auc(X, y)
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
    metrics["qini"], metrics["qini_sd"] = _qini_summary(qini_folds)
    metrics = {k: v for k, v in metrics.items() if np.isfinite(v)}
    linear_qini, linear_sd = _qini_summary(linear_folds)
    candidates = {
        "t_learner_lightgbm": {"qini": metrics.get("qini", np.nan), "qini_sd": metrics.get("qini_sd", np.nan)},
        "t_learner_linear": {"qini": linear_qini, "qini_sd": linear_sd},
    }

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
        "chosen_model": "t_learner_lightgbm",
        "table_digest": tables.digest(df),
        **{f"lgbm.{k}": v for k, v in final.options.items()},
    }
    leaks = single[single >= tables.LEAK_AUC]
    warnings = _warnings(dropped, balance, leaks, control, outcome, bool(any(cost_map.values())))
    card = _nba_card(
        X, t, outcome, control, dropped, arm_table, values, balance, leaks, final, folds, net_note, left_out,
        candidates,
    )
    return TableResult.of(
        TableNbaModel(final, cost_map), X, [t.rename(treatment), y.rename(outcome)], single,
        tables={
            "arms": arm_table.reset_index(),
            "policy_values": values.rename_axis("policy").reset_index(),
            "qini_folds": qini_folds,
            "baseline_qini_folds": linear_folds,
            "balance": balance,
        },
        metrics=metrics, figures=figures, model_card=card, params=params, baselines=candidates, warnings=warnings,
    )


def _warnings(dropped: Mapping[str, str], balance: pd.DataFrame, leaks: pd.Series, control: str, outcome: str,
              costed: bool) -> list[str]:
    lines = [f"dropped column {column!r}: {reason}" for column, reason in dropped.items()
             if reason.startswith("identifier")]
    moved = balance[balance["smd"].abs() > balance["limit"]].groupby("column", sort=False)["smd"]
    lines += [f"possible post-treatment column {column!r}: it differs between arms by up to {smd.abs().max():.2f} "
              "sd, more than random assignment explains; if it was recorded after the assignment, pass --exclude"
              for column, smd in moved]
    lines += [f"possible leakage: {column!r} alone predicts {outcome!r} with AUC {auc:.3f}; if it was recorded "
              "after the assignment, pass --exclude" for column, auc in leaks.items()]
    if not costed:
        lines.append(f"no --cost given: every action counts as free, so the policy sends each customer the arm with "
                     f"the highest expected {outcome!r}, and {control!r} only where no arm is expected to do better")
    return lines


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
    candidates: Mapping[str, Mapping[str, float]],
) -> str:
    arm_table = pd.DataFrame({
        "rows": [f"{int(n):,}" for n in arms["rows"]],
        "share": [f"{s:.1%}" for s in arms["assignment_share"]],
        f"mean {outcome}": [f"{m:.4g}" for m in arms["mean_outcome"]],
        "cost": [f"{c:g}" for c in arms["cost"]],
        "Qini AUC vs control": ["—" if arm == control else f"{q:.3f}" for arm, q in arms["qini_auc"].items()],
        "policy sends": [f"{s:.1%}" for s in arms["policy_share"]],
    }, index=arms.index.astype(str).rename("arm"))
    others = values.index != "policy"
    value_table = pd.DataFrame({
        "value [CI]": [f"{r.value:.4g} [{r.value_low:.4g}, {r.value_high:.4g}]" for r in values.itertuples()],
        "gain [CI]": np.where(others, [f"{r.diff:+.4g} [{r.diff_low:+.4g}, {r.diff_high:+.4g}]"
                                       for r in values.itertuples()], ""),
        "significant": np.where(others, np.where(values["significant"], "yes", "no"), ""),
    }, index=values.index.astype(str).rename("policy"))
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
    return model_card("Next best action on a customer table", (
        "The best arm for each customer, net of its cost, from a randomized test in one customer table (`c360 train "
        "nba --table`), valued by inverse propensity against every single arm and random."), {
        "Data": [[
            f"{len(t):,} rows with an arm and an outcome" + (f" ({left_out:,} left out)" if left_out else ""),
            f"outcome `{outcome}` ({'0/1' if model.binary_ else 'amount'}); control arm `{control}`",
            tables.features_line(X, dropped),
        ], arm_table],
        "Model": [
            f"LightGBM {model.learner.upper()}-learner, one outcome model per arm, uplift shrunk towards each arm's "
            "average effect by how well it ranks on held-out rows; recommends the arm with the highest expected "
            "outcome net of its cost (the control when nothing pays). Leaves of at least "
            f"{model.options['min_child_samples']} rows (scaled to the smallest arm); the final model was fitted on "
            "all rows.",
            "Qini AUC averaged over the arms, mean ± sd over the folds: " + "; ".join(
                f"{name.replace('_', ' ')} {c['qini']:.3f} ± {c['qini_sd']:.3f}" for name, c in candidates.items())
            + " (t learner linear: one logistic or ridge regression per arm, on the same folds)."],
        f"Policy value ({outcome} per customer{net_note}, inverse propensity, {folds}-fold cross-fitted)": [
            "95 % paired-bootstrap CIs; *gain* = learned policy − row.", value_table],
        "Caveats": [caveats],
    })
