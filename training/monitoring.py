"""Watching batch scores: drift between two scoring runs, and who the scores single out, group by group.

Inputs are the long score tables `c360 score` writes (one row per customer and model: customer_id, model, version,
score, label, ...): churn's label is its risk band, next best action's the action. Plain functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

PSI_WATCH, PSI_ACT = 0.1, 0.25  # the usual reading of the population stability index


def psi(before: Iterable[float], after: Iterable[float], bins: int = 10) -> float:
    """Population stability index of `after` against `before`, on `before`'s quantile bins: 0 when the two
    distributions match; above 0.1 worth a look, above 0.25 a real shift."""
    old, new = np.asarray(list(before), dtype=float), np.asarray(list(after), dtype=float)
    edges = np.unique(np.quantile(old, np.linspace(0, 1, bins + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    old_share = np.clip(np.histogram(old, edges)[0] / len(old), 1e-6, None)
    new_share = np.clip(np.histogram(new, edges)[0] / len(new), 1e-6, None)
    return float(np.sum((new_share - old_share) * np.log(new_share / old_share)))


def _verdict(value: float) -> str:
    return "stable" if value < PSI_WATCH else "watch" if value < PSI_ACT else "shifted"


def score_drift(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Per model, two scoring runs compared: versions, customers in each and in both, mean score before and after,
    PSI (with its reading), the mean absolute change of a customer's score and the share whose label (risk band,
    action) changed — NaN for a model without labels."""
    rows = []
    for model in sorted(set(before["model"]) & set(after["model"])):
        old, new = (frame[frame["model"] == model].set_index("customer_id") for frame in (before, after))
        both = old.index.intersection(new.index)
        value = psi(old["score"], new["score"])
        labels = pd.DataFrame({"old": old.loc[both, "label"], "new": new.loc[both, "label"]}).dropna()
        rows.append({
            "model": model, "versions": f"v{old['version'].iloc[0]} → v{new['version'].iloc[0]}",
            "customers before": len(old), "customers after": len(new), "in both": len(both),
            "mean before": old["score"].mean(), "mean after": new["score"].mean(), "psi": value,
            "reading": _verdict(value),
            "mean abs change": (new.loc[both, "score"] - old.loc[both, "score"]).abs().mean(),
            "label changed": (labels["old"] != labels["new"]).mean() if len(labels) else np.nan,
        })
    return pd.DataFrame(rows).set_index("model")


def fairness_table(scores: pd.DataFrame, groups: pd.Series, high_risk: str = "high") -> pd.DataFrame:
    """Per group (`groups`: customer_id → group, e.g. segment): customers, mean churn risk, share in the
    `high_risk` band, mean 12-month value, and the share of customers each next best action goes to — where a model
    treats one group differently, it shows here. A model absent from `scores` leaves its columns out."""
    wide = scores.pivot_table(index="customer_id", columns="model", values="score", aggfunc="first")
    labels = scores.pivot_table(index="customer_id", columns="model", values="label", aggfunc="first")
    group = groups.reindex(wide.index).fillna("unknown").rename("group")
    table = pd.DataFrame({"customers": group.value_counts()})
    if "churn" in wide:
        table["mean churn risk"] = wide["churn"].groupby(group).mean()
        table[f"share {high_risk} risk"] = (labels["churn"] == high_risk).groupby(group).mean()
    if "clv" in wide:
        table["mean 12-month value"] = wide["clv"].groupby(group).mean()
    if "nba" in labels:
        actions = pd.crosstab(group, labels["nba"], normalize="index").add_prefix("action: ")
        table = table.join(actions)
    return table.rename_axis(groups.name or "group").sort_index()
