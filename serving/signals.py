"""The profile's other forward-looking items, each from data by a stated method (plain functions, no models).

* **next product feature** — item-to-item co-occurrence over the product features customers used in the 90 days
  before the as-of date: for a customer using features S, each unused feature f scores the mean over g in S of
  P(uses f | uses g) across all customers ("customers who use reports also use dashboards"); the highest wins.
  A customer who used no feature gets the feature most customers use (popularity).
* **content interest** — campaign engagement per content topic in the 365 days before the as-of date:
  (opens + 2 × clicks + 3 × responses) / messages sent, smoothed towards the topic's population rate with the
  weight of `PRIOR_SENDS` messages (empirical Bayes); topics with a click or response and a smoothed rate at least
  `INTEREST_LIFT` × the population's, highest lift first.
* **retargeting interest** — clicked or responded to a campaign in the last 180 days without an upgrade in the
  last 180 days or an add-on order in the last 12 months: interest shown, not yet converted.
* **advocate candidate** — every one of: latest NPS 9 or 10 (promoter), health 70+, churn risk band low, no open
  high or urgent ticket, a customer for 180 days or more.
* **recommended trainings** — the next feature to adopt (when there is one), a product refresher when usage
  dropped or the usage health is poor (below 40), and the training invite when the next-best-action model
  expects it to pay for itself (net uplift > 0).

The first two need event rows from the warehouse: the batch job computes them for every customer at once
(`usage`, `topics` without a customer filter), the service for one customer on a live request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from c360.serving.predict import json_list

PRIOR_SENDS = 3.0
INTEREST_LIFT = 1.2
TOP_TOPICS = 3
ADVOCATE_NPS, ADVOCATE_HEALTH, ADVOCATE_TENURE_DAYS = 9, 70, 180
REFRESHER_HEALTH = 40

USAGE_SQL = """
SELECT x.customer_id, e.feature, count(*) AS events
FROM product_events e
JOIN identity_crosswalk x ON x.source = 'product/users' AND x.source_key = e.user_id
WHERE e.feature IS NOT NULL AND e.event_time < $as_of AND e.event_time >= $as_of - INTERVAL 90 DAY {only}
GROUP BY ALL
"""
TOPICS_SQL = """
SELECT x.customer_id, c.topic, count(*) AS sent, count(s.opened_at) FILTER (WHERE s.opened_at < $as_of) AS opened,
    count(s.clicked_at) FILTER (WHERE s.clicked_at < $as_of) AS clicked,
    count(s.responded_at) FILTER (WHERE s.responded_at < $as_of) AS responded
FROM marketing_sends s
JOIN marketing_campaigns c USING (campaign_id)
JOIN identity_crosswalk x ON x.source = 'marketing/contacts' AND x.source_key = s.mkt_contact_id
WHERE s.status <> 'holdout' AND c.topic IS NOT NULL AND s.sent_at < $as_of
    AND s.sent_at >= $as_of - INTERVAL 365 DAY {only}
GROUP BY ALL
"""


def _query(con: Any, sql: str, as_of: pd.Timestamp, customers: list[str] | None) -> pd.DataFrame:
    params: dict[str, Any] = {"as_of": as_of.to_pydatetime()}
    only = ""
    if customers is not None:
        only, params["ids"] = "AND x.customer_id IN (SELECT unnest($ids))", list(customers)
    return con.execute(sql.format(only=only), params).df()


def usage(con: Any, as_of: pd.Timestamp, customers: list[str] | None = None) -> pd.DataFrame:
    """Customers × product features used in the 90 days before `as_of` (0/1), all customers or the ones given."""
    rows = _query(con, USAGE_SQL, as_of, customers)
    return (rows.assign(used=1).pivot_table(index="customer_id", columns="feature", values="used", fill_value=0)
            .astype("int8"))


def topics(con: Any, as_of: pd.Timestamp, customers: list[str] | None = None) -> pd.DataFrame:
    """One row per customer and content topic: sent, opened, clicked, responded in the 365 days before `as_of`."""
    return _query(con, TOPICS_SQL, as_of, customers)


# ---------------------------------------------------------------- population statistics


def cooccurrence(used: pd.DataFrame) -> pd.DataFrame:
    """P(uses column | uses row) over all customers; the diagonal is each feature's share of its own users (1)."""
    matrix = used.to_numpy(dtype="float64")
    together = matrix.T @ matrix
    users = np.diag(together)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(users[:, None] > 0, together / users[:, None], 0.0)
    return pd.DataFrame(p, index=used.columns, columns=used.columns)


def topic_rates(engagement: pd.DataFrame) -> pd.Series:
    """Population engagement rate per topic: (opens + 2 clicks + 3 responses) / sent."""
    totals = engagement.groupby("topic")[["sent", "opened", "clicked", "responded"]].sum()
    return (_engaged(totals) / totals["sent"].clip(lower=1)).rename("rate")


def _engaged(frame: pd.DataFrame) -> pd.Series:
    return frame["opened"] + 2 * frame["clicked"] + 3 * frame["responded"]


# ---------------------------------------------------------------- per customer, vectorised


def next_feature(used: pd.DataFrame, p: pd.DataFrame, popularity: pd.Series) -> pd.DataFrame:
    """Per customer of `used` (rows): next_feature, next_feature_score, next_feature_method (see module doc)."""
    features = list(p.columns)
    matrix = used.reindex(columns=features, fill_value=0).to_numpy(dtype="float64")
    count = matrix.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = (matrix @ p.to_numpy()) / count[:, None]
    fallback = np.tile(popularity.reindex(features).fillna(0).to_numpy(), (len(matrix), 1))
    score = np.where(count[:, None] > 0, score, fallback)
    score = np.where(matrix > 0, -np.inf, score)  # only features not used yet
    best = np.argmax(score, axis=1) if features else np.zeros(len(matrix), dtype=int)
    top = np.take_along_axis(score, best[:, None], axis=1)[:, 0] if features else np.full(len(matrix), -np.inf)
    found = np.isfinite(top)
    names = np.asarray(features, dtype=object)[best] if features else np.full(len(matrix), None)
    return pd.DataFrame({
        "next_feature": np.where(found, names, ""),
        "next_feature_score": np.where(found, top, np.nan),
        "next_feature_method": np.where(count > 0, "co-occurrence", "popularity"),
    }, index=used.index)


def content_interest(engagement: pd.DataFrame, rates: pd.Series) -> pd.Series:
    """Per customer, a JSON list of the topics of interest: `[{"topic", "lift", "engaged"}, ...]`, best first."""
    frame = engagement.join(rates, on="topic")
    smoothed = (_engaged(frame) + PRIOR_SENDS * frame["rate"]) / (frame["sent"] + PRIOR_SENDS)
    frame = frame.assign(lift=(smoothed / frame["rate"].where(frame["rate"] > 0)).round(2),
                         engaged=frame["clicked"] + frame["responded"])
    keep = frame[(frame["engaged"] > 0) & (frame["lift"] >= INTEREST_LIFT)]
    keep = keep.sort_values(["customer_id", "lift"], ascending=[True, False]).groupby("customer_id").head(TOP_TOPICS)
    if keep.empty:
        return pd.Series(dtype=object, name="content_topics")
    text = ('{"topic":"' + keep["topic"].astype(str) + '","lift":' + keep["lift"].astype(str) + ',"engaged":'
            + keep["engaged"].astype(int).astype(str) + "}")
    slots = (pd.DataFrame({"customer_id": keep["customer_id"], "slot": keep.groupby("customer_id").cumcount(),
                           "text": text}).pivot(index="customer_id", columns="slot", values="text"))
    joined = json_list([pa.array(slots[c], type=pa.string(), from_pandas=True) for c in slots.columns])
    return pd.Series(joined.to_numpy(zero_copy_only=False), index=slots.index, name="content_topics")


def batch_signals(used: pd.DataFrame, engagement: pd.DataFrame, customers: pd.Index) -> pd.DataFrame:
    """next feature and content topics for `customers` from their event rows (population statistics from the
    same rows: call with every customer)."""
    p = cooccurrence(used)
    popularity = used.mean() if len(used) else pd.Series(dtype="float64")
    nxt = next_feature(used.reindex(customers, fill_value=0), p, popularity)
    content = content_interest(engagement, topic_rates(engagement)).reindex(customers).fillna("[]")
    return nxt.assign(content_topics=content.to_numpy())


# ---------------------------------------------------------------- one customer, from features and predictions


def _number(features: Mapping[str, Any], name: str) -> float:
    value = features.get(name)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")
    return number


def retargeting(features: Mapping[str, Any]) -> dict[str, Any]:
    clicked = _number(features, "campaigns_clicked_180d")
    responded = _number(features, "campaigns_responded_180d")
    upgraded = _number(features, "upgrades_180d")
    ordered = _number(features, "orders_12m")
    engaged = (clicked > 0) or (responded > 0)
    converted = (upgraded > 0) or (ordered > 0)
    why = (f"{_count(clicked)} campaign clicks and {_count(responded)} responses in 180 days; "
           f"{_count(upgraded)} upgrades in 180 days, {_count(ordered)} add-on orders in 12 months")
    return {"interested": bool(engaged and not converted), "why": why}


def _count(value: float) -> str:
    return "no" if not np.isfinite(value) or value == 0 else f"{int(value)}"


def advocate(features: Mapping[str, Any], churn_band: str | None) -> dict[str, Any]:
    nps, health, tenure = (_number(features, n) for n in ("nps_last", "health_score", "tenure_days"))
    checks = {
        f"promoter (latest NPS {'—' if not np.isfinite(nps) else int(nps)}, needs {ADVOCATE_NPS}+)":
            np.isfinite(nps) and nps >= ADVOCATE_NPS,
        f"health {'—' if not np.isfinite(health) else round(health)} (needs {ADVOCATE_HEALTH}+)":
            np.isfinite(health) and health >= ADVOCATE_HEALTH,
        f"churn risk {churn_band or 'unknown'} (needs low)": churn_band == "low",
        "no open high or urgent ticket": _number(features, "open_high_severity_tickets") == 0,
        f"customer for {'—' if not np.isfinite(tenure) else int(tenure)} days (needs {ADVOCATE_TENURE_DAYS}+)":
            np.isfinite(tenure) and tenure >= ADVOCATE_TENURE_DAYS,
    }
    return {"candidate": all(checks.values()), "met": [k for k, ok in checks.items() if ok],
            "not_met": [k for k, ok in checks.items() if not ok]}


def trainings(features: Mapping[str, Any], next_feature_name: str | None,
              training_uplift: float | None) -> list[dict[str, str]]:
    out = []
    if next_feature_name:
        out.append({"training": f"{next_feature_name} feature training",
                    "why": f"{next_feature_name} is the feature this customer is most likely to adopt next"})
    usage_health = _number(features, "health_usage")
    if bool(features.get("flag_usage_drop")) or (np.isfinite(usage_health) and usage_health < REFRESHER_HEALTH):
        out.append({"training": "product refresher",
                    "why": f"usage dropped or usage health is poor ({_count(usage_health)} of 100)"})
    if training_uplift is not None and np.isfinite(training_uplift) and training_uplift > 0:
        out.append({"training": "training invite (campaign)",
                    "why": f"the next-best-action model expects +{training_uplift:,.2f} net revenue in 91 days"})
    return out
