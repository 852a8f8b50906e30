"""Watching models in use: drift of their inputs and scores, what their predictions were worth once the horizon
passed, and who the scores single out, group by group.

Inputs are feature snapshots (one row per customer, the columns of `c360.core.definitions.FEATURES`) and the long
score tables `c360 score` writes (one row per customer and model: customer_id, model, version, score, label, ...):
churn's label is its risk band, next best action's the action. Plain functions, no I/O; `monitor_report` reads the
home and assembles the report.

Every check reads a figure against two thresholds (`status`): below the first "ok", below the second "watch",
beyond it "act". Drift is the population stability index (PSI) with its usual reading (0.1, 0.25). A feature that
grows by construction (a total to date, tenure) drifts as the customer base ages, whatever customers do: totals are
compared per tenure month, tenure itself is skipped (`GROWING`). A feature's drift calls for action only when the
feature matters: when it carries at least `MIN_WEIGHT` of some model's explanations (`explanation_weights`, from the
reasons of a scoring run). A shift in a feature no model leans on keeps its reading (ok, watch, act by PSI alone) and
its reason, but leaves the status ok.

Against a reference long before (the champion's data window, months to years back), the customer base itself has
aged: the customers left have been customers longer, and grew their seats and plans. Such a reference is
**age-matched** (`age_matched`): its rows are weighted so that its mix of tenure bands (the latest snapshot's
tenure deciles) is the latest's, and PSI reads the weighted shares. What drifts then is what changed for customers
of the same age, not the mix of ages. And such a window is a mix of months: pooled, it is like no single month
(discounts that ran for some months of it and not now, seasons). So the latest is compared with each of the
window's months and read against the one it is nearest to (`nearest_drift`): drift is what no month the model
learned from looks like.

Score drift reads a model's scores between two runs by PSI and by the relative change of their mean
(`score_status`), the figure its users plan with (expected churners, value, responses).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np
import pandas as pd

PSI_WATCH, PSI_ACT = 0.1, 0.25  # the usual reading of the population stability index
MEAN_WATCH, MEAN_ACT = 0.10, 0.20  # relative change of a model's mean score (expected churners, value, responses)
STATUSES = ("ok", "watch", "act")
# Features that grow by construction: compared per tenure month (30 days), or skipped (None) with the reason.
GROWING: dict[str, str | None] = {"revenue_total": "tenure_days", "features_used_total": "tenure_days",
                                  "feature_requests_total": "tenure_days", "tenure_days": None}
SKIPPED = "grows with the customer's age by construction; the other features carry its signal"
MIN_ROWS = 50  # fewer values than this on either side: no PSI worth reading
MIN_WEIGHT = 0.05  # a feature below this share of every model's explanations moves no score


def psi(before: Iterable[float], after: Iterable[float], bins: int = 10, weights: Iterable[float] | None = None
        ) -> float:
    """Population stability index of `after` against `before` (its rows weighted by `weights`, if given), on
    `before`'s quantile bins: 0 when the two distributions match; above 0.1 worth a look, above 0.25 a real shift."""
    old, new = np.asarray(list(before), dtype=float), np.asarray(list(after), dtype=float)
    w = None if weights is None else np.asarray(list(weights), dtype=float)
    quantiles = np.linspace(0, 1, bins + 1)
    edges = np.unique(np.quantile(old, quantiles) if w is None else
                      np.quantile(old, quantiles, weights=w, method="inverted_cdf"))
    edges[0], edges[-1] = -np.inf, np.inf
    old_share = np.clip(np.histogram(old, edges, weights=w)[0] / (len(old) if w is None else w.sum()), 1e-6, None)
    new_share = np.clip(np.histogram(new, edges)[0] / len(new), 1e-6, None)
    return float(np.sum((new_share - old_share) * np.log(new_share / old_share)))


def psi_categories(before: pd.Series, after: pd.Series, weights: pd.Series | None = None) -> float:
    """PSI of a categorical (or boolean) feature over the categories either side has (`before`'s rows weighted by
    `weights`, aligned on the index, if given)."""
    counts = before.astype(str).value_counts() if weights is None else \
        weights.reindex(before.index).groupby(before.astype(str)).sum()
    old, new = counts / counts.sum(), after.astype(str).value_counts(normalize=True)
    old, new = (np.clip(x.reindex(old.index.union(new.index), fill_value=0).to_numpy(), 1e-6, None)
                for x in (old, new))
    return float(np.sum((new - old) * np.log(new / old)))


def status(value: float, watch: float, act: float) -> str:
    """"ok" below `watch`, "watch" below `act`, else "act" (a NaN, nothing to judge, is "ok")."""
    if value is None or np.isnan(value) or value < watch:
        return "ok"
    return "watch" if value < act else "act"


def worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=STATUSES.index, default="ok")


def comparable(snapshot: pd.DataFrame, feature: str) -> pd.Series:
    """The feature's values in the form compared over time: a total to date per tenure month (GROWING)."""
    per = GROWING.get(feature)
    values = snapshot[feature]
    if per is None:
        return values
    months = np.maximum(pd.to_numeric(snapshot[per], errors="coerce"), 30) / 30
    return pd.to_numeric(values, errors="coerce") / months


def age_matched(before: pd.DataFrame, after: pd.DataFrame, column: str = "tenure_days", bands: int = 10
                ) -> pd.Series:
    """Weights of `before`'s rows (by its index) that give it `after`'s mix of `column` bands (`after`'s deciles;
    missing values a band of their own): each row's band's share in `after` over its share in `before`. A band
    `before` lacks leaves `after`'s rows in it unmatched (weights then sum to less than the rows)."""
    if column not in before or column not in after:
        return pd.Series(1.0, index=before.index)
    edges = np.unique(np.nanquantile(after[column].astype(float), np.linspace(0, 1, bands + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    band_of = [pd.cut(frame[column].astype(float), edges, labels=False).fillna(-1) for frame in (before, after)]
    old, new = (band.value_counts(normalize=True) for band in band_of)
    return band_of[0].map(new.reindex(old.index, fill_value=0.0) / old).astype(float)


def explanation_weights(scores: pd.DataFrame) -> pd.Series:
    """Per feature, its largest share of one model's explanations: the sum of |contribution| over the reasons of
    `scores` (a long score table with its `reasons` JSON), over that model's total."""
    rows = [(model, r["feature"], abs(float(r["contribution"])))
            for model, text in zip(scores["model"], scores["reasons"], strict=True) for r in json.loads(text or "[]")]
    if not rows:
        return pd.Series(dtype=float)
    frame = pd.DataFrame(rows, columns=["model", "feature", "weight"])
    per_model = frame.groupby(["model", "feature"])["weight"].sum()
    share = per_model / per_model.groupby(level="model").transform("sum")
    return share.groupby(level="feature").max()


def feature_drift(before: pd.DataFrame, after: pd.DataFrame, features: Iterable[str],
                  weights: pd.Series | None = None, matched: bool = False) -> pd.DataFrame:
    """Per feature: how it is compared, PSI of `after` against `before` (non-missing values; with `matched`,
    `before` age-matched to `after`), the null share of each, its weight in the models' explanations (`weights`;
    None: every feature counts) and the status; a feature that grows by construction or lacks values is skipped
    with the reason."""
    rows_weight = age_matched(before, after) if matched else None
    rows = []
    for name in features:
        weight = 1.0 if weights is None else float(weights.get(name, 0.0))
        row: dict = {"feature": name, "compared": "as is", "psi": np.nan, "reading": "ok", "weight": weight,
                     "status": "ok", "reason": ""}
        if name in before and name in after:
            row |= {"null_before": float(before[name].isna().mean()), "null_after": float(after[name].isna().mean())}
        if name in GROWING:
            row["compared"] = "per tenure month" if GROWING[name] else "skipped"
        if name not in before or name not in after:
            row |= {"compared": "skipped", "reason": "missing from a snapshot"}
        elif row["compared"] == "skipped":
            row["reason"] = SKIPPED
        else:
            old, new = comparable(before, name).dropna(), comparable(after, name).dropna()
            if min(len(old), len(new)) < MIN_ROWS:
                row |= {"compared": "skipped", "reason": f"fewer than {MIN_ROWS} values"}
            else:
                numeric = pd.api.types.is_numeric_dtype(old) and not pd.api.types.is_bool_dtype(old)
                kept = None if rows_weight is None else rows_weight.loc[old.index]
                row["psi"] = psi(old, new, weights=kept) if numeric else psi_categories(old, new, kept)
                row["reading"] = status(row["psi"], PSI_WATCH, PSI_ACT)
                row["status"] = row["reading"] if weight >= MIN_WEIGHT else "ok"
                if row["reading"] != row["status"]:
                    row["reason"] = f"moves no score (weight {weight:.1%} of a model's explanations)"
        rows.append(row)
    return pd.DataFrame(rows)


def nearest_drift(months: dict[str, pd.DataFrame], after: pd.DataFrame, features: Iterable[str],
                  weights: pd.Series | None = None) -> pd.DataFrame:
    """`feature_drift` of `after` against each of `months` (label → snapshot) age-matched, keeping per feature the
    month it drifted least from (`nearest`). A model learned from every month of its window: a latest snapshot like
    one of them is not new to it, whatever the months' mix (a calendar of discounts, a season) makes of the pool."""
    names = list(features)
    tables = [feature_drift(month, after, names, weights, matched=True).assign(nearest=label)
              for label, month in months.items()]
    both = pd.concat(tables, ignore_index=True).sort_values("psi", kind="stable", na_position="last")
    return both.drop_duplicates("feature").set_index("feature").loc[names].reset_index()


def auc_se(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil's (1982) standard error of an AUC measured on this many positives and negatives."""
    q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
    return float(np.sqrt((auc * (1 - auc) + (positives - 1) * (q1 - auc ** 2) + (negatives - 1) * (q2 - auc ** 2))
                         / (positives * negatives)))


def calibration(y: Iterable[float], p: Iterable[float], bins: int = 10) -> pd.DataFrame:
    """Calibration curve on equal-width probability bins (those with rows): mean prediction, observed rate, rows."""
    frame = pd.DataFrame({"y": np.asarray(list(y), dtype=float), "p": np.asarray(list(p), dtype=float)})
    frame["bin"] = np.minimum((frame["p"] * bins).astype(int), bins - 1)
    curve = frame.groupby("bin").agg(predicted=("p", "mean"), observed=("y", "mean"), rows=("y", "size"))
    return curve.reset_index()


def by_decile(predicted: pd.Series, realized: pd.Series) -> pd.DataFrame:
    """Predicted against realized value per decile of the prediction (1 = lowest): means and rows."""
    frame = pd.DataFrame({"predicted": predicted, "realized": realized}).dropna()
    frame["decile"] = pd.qcut(frame["predicted"].rank(method="first"), 10, labels=range(1, 11)).astype(int)
    return frame.groupby("decile").agg(predicted=("predicted", "mean"), realized=("realized", "mean"),
                                       rows=("predicted", "size")).reset_index()


def quarantine_rates(log: pd.DataFrame) -> pd.DataFrame:
    """Per source table and batch (ingest_log rows: table_id, file, rows_read, rows_quarantined, ingested_at):
    the share of rows quarantined, oldest batch first."""
    rate = log["rows_quarantined"] / log["rows_read"].where(log["rows_read"] > 0)
    return log.assign(rate=rate.fillna(0.0)).sort_values(["table_id", "ingested_at"])[
        ["table_id", "file", "ingested_at", "rows_read", "rows_quarantined", "rate"]]


def differences(online: pd.DataFrame, offline: pd.DataFrame, features: Iterable[str]) -> pd.DataFrame:
    """Per customer (rows matched on customer_id) and feature, whether the online value differs from the
    snapshot's: numbers equal to float rounding, missing equal to missing."""
    both = online.set_index("customer_id").join(offline.set_index("customer_id"), lsuffix="_online", how="inner")
    differ = {}
    for name in features:
        a, b = both[f"{name}_online"], both[name]
        if pd.api.types.is_numeric_dtype(b) and not pd.api.types.is_bool_dtype(b):
            a, b = pd.to_numeric(a, errors="coerce").astype(float), b.astype(float)
            same = np.isclose(a, b, rtol=1e-6, atol=1e-9, equal_nan=True)
        else:
            same = (a.astype(str) == b.astype(str)) | (a.isna() & b.isna())
        differ[name] = ~np.asarray(same)
    return pd.DataFrame(differ, index=both.index)


def smd(before: pd.Series, after: pd.Series) -> float:
    """Standardized mean difference: how far the mean moved, in standard deviations of both (pooled)."""
    pooled = np.sqrt((before.var() + after.var()) / 2)
    return float(abs(after.mean() - before.mean()) / pooled) if pooled > 0 else 0.0


def mean_change(before: pd.Series, after: pd.Series) -> float:
    """The mean score's relative change (NaN when the mean before is 0): for a calibrated probability the expected
    count (churners, responses) moved by this share, for a value the expected total."""
    old = float(before.mean())
    return float(after.mean() / old - 1) if old else float("nan")


def score_status(psi_value: float, change: float) -> str:
    """A model's scores drifted when their distribution changed (PSI) or their mean moved (`mean_change`): a
    shift that raises the risk of part of the customers moves the mean before it reshapes the deciles.

    The mean's move is read relative to the mean, not in standard deviations (SMD, kept as a figure): a model
    whose scores are narrow (a campaign response of 15 % ± 3 %) moves by "0.1 sd" when its expected responses
    move by 2 %, as they do month to month with the campaign calendar; what its users plan with (expected churners,
    value, responses) moved by the relative change."""
    return worst([status(psi_value, PSI_WATCH, PSI_ACT), status(abs(change), MEAN_WATCH, MEAN_ACT)])


def _verdict(value: float) -> str:
    return "stable" if value < PSI_WATCH else "watch" if value < PSI_ACT else "shifted"


def score_drift(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Per model, two scoring runs compared: versions, customers in each and in both, mean score before and after,
    PSI (with its reading), the mean's relative change (`mean change`), the standardized mean difference (`smd`),
    the mean absolute change of a customer's score
    and the share whose label (risk band, action) changed — NaN for a model without labels."""
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
            "mean change": mean_change(old["score"], new["score"]), "smd": smd(old["score"], new["score"]),
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
