"""Fairness review: each model's figures per group, and the worst-group gap the promotion gate reads.

Groups are the values of four attributes: segment, region and plan (columns of the training examples) and the age
band of the customers whose CRM contacts give one (`customer_groups`: the contacts' optional `age_band` column, a
sensitive attribute; the generator gives it to consumers). The age band is read here, beside the examples, and is
no feature of any feature service: models never see it, they are only judged by it.

The figures per group come from fairlearn's `MetricFrame`, one per attribute:

* churn — customers, `rate` (of churn), selection rate (share at or above `CHURN_ACTION`, the high-risk band where
  the retention playbook acts), TPR and FPR at that threshold, `mean_prediction`, ECE and `calibration` (mean
  prediction − observed rate); expansion the same, of expanding;
* CLV — customers, mean actual value, MAE, and `relative_error` ((predicted − actual total) / actual total);
* next best action — customers, `action_rate` (share sent any action) and `discount_rate` (share sent a discount).

A gap (`Gap`) is, for one metric, the largest difference between two groups of one attribute, over the groups of
at least `MIN_GROUP` examples (smaller ones are shown, not gated: their figures are mostly noise). The gate reads
the gap of each model's `Gate.fairness` metric (`training.specs`, with the reasons for each choice). `logged` is
what a training run logs of it to MLflow: the gap as a metric, so the gate finds the champion's, and its two groups
as a tag, so a refusal names them; and the gap's lower bound (`gap_low_metric`: one-sided 95 %, from each group's
bootstrap standard error of the metric, the `<metric>_se` column of the table), so that the limit refuses a gap
measurably beyond it, not the noise of a small test set: a CLV's relative error over a few hundred customers moves
by tenths with a few large accounts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, count, false_positive_rate, selection_rate, true_positive_rate

from c360.core import warehouse
from c360.training.cards import Block
from c360.training.churn import expected_calibration_error
from c360.training.specs import MODELS, Kind

ATTRIBUTES = ("segment", "region", "plan", "age_band")
SENSITIVE = "age_band"
NOT_MEASURED = "not measured"
MIN_GROUP = 100  # examples; below it a group's rate has a standard error of 4 points or more
CHURN_ACTION = 0.25  # the lower edge of the high-risk band (serving.predict.CHURN_BANDS)
Metric = Callable[[np.ndarray, np.ndarray], float]
GATED = frozenset(spec.gate.fairness for spec in MODELS.values() if spec.gate.fairness)  # metrics with their noise
BOOTSTRAP = 200  # resamples of a group's rows for its standard error
Z_LOW = 1.645  # one-sided 95 %


@dataclass(frozen=True)
class Gap:
    """The largest difference of `metric` between two groups of one attribute: `high` − `low`."""

    metric: str
    value: float
    attribute: str
    high: str
    high_value: float
    low: str
    low_value: float
    noise: float = 0.0  # the gap's standard error, from the two groups' (0: not measured)

    @property
    def lower_bound(self) -> float:
        """The gap at its one-sided 95 % lower bound, never below 0."""
        return max(0.0, self.value - Z_LOW * self.noise)

    def __str__(self) -> str:
        if self.high == self.low:  # no gap in the worst attribute: none in any
            return f"every group {self.high_value:+.3f}"
        return (f"{self.attribute} {self.high} {self.high_value:+.3f} vs {self.attribute} {self.low} "
                f"{self.low_value:+.3f}")


def customer_groups(con, customers: pd.Series) -> pd.Series:
    """Each customer's age band (index: customer_id), from the CRM contacts linked to it; customers without one,
    and warehouses whose contacts have no `age_band` column, are left out."""
    if not warehouse.has_table(con, "crm_contacts") or SENSITIVE not in _columns(con, "crm_contacts"):
        return pd.Series(dtype=object, name=SENSITIVE)
    bands = con.execute(f"""
        SELECT x.customer_id, mode(c.{SENSITIVE}) AS {SENSITIVE}
        FROM crm_contacts c JOIN identity_crosswalk x ON x.record_id = 'crm/contacts:' || c.contact_id
        WHERE c.{SENSITIVE} IS NOT NULL AND x.customer_id IN (SELECT unnest(?))
        GROUP BY x.customer_id""", [list(customers.unique())]).df()
    return bands.set_index("customer_id")[SENSITIVE]


def _columns(con, table: str) -> set[str]:
    return set(con.execute(f"SELECT * FROM {table} LIMIT 0").df().columns)


def with_groups(frame: pd.DataFrame, bands: pd.Series) -> pd.DataFrame:
    """`frame` (with a customer_id column) with each customer's age band (`customer_groups`) beside it."""
    return frame.assign(**{SENSITIVE: frame["customer_id"].map(bands)})


def _by_group(metrics: Mapping[str, Metric], y_true: pd.Series, y_pred: pd.Series, frame: pd.DataFrame
              ) -> pd.DataFrame:
    """One row per (attribute, group) of the attributes `frame` has, a column per metric."""
    parts = []
    for attribute in (a for a in ATTRIBUTES if a in frame.columns):
        known = frame[attribute].notna().to_numpy()
        if not known.any():
            continue
        groups = frame[attribute][known].astype(str).rename("group")
        t, p = y_true[known].to_numpy(), y_pred[known].to_numpy()
        by = MetricFrame(metrics=dict(metrics), y_true=t, y_pred=p, sensitive_features=groups).by_group
        for name in GATED & metrics.keys():
            by[f"{name}_se"] = _noise(metrics[name], t, p, groups)
        parts.append(by.reset_index().assign(attribute=attribute))
    if not parts:
        return pd.DataFrame()
    return pd.concat(parts, ignore_index=True).set_index(["attribute", "group"])


def _noise(metric: Metric, y_true: np.ndarray, y_pred: np.ndarray, groups: pd.Series) -> pd.Series:
    """Each group's bootstrap standard error of `metric`: `BOOTSTRAP` resamples of its rows, seeded."""
    rng = np.random.default_rng(0)
    errors = {}
    for group, rows in groups.groupby(groups.to_numpy()).indices.items():
        t, p = y_true[rows], y_pred[rows]
        draws = [metric(t[d], p[d]) for d in rng.integers(0, len(rows), (BOOTSTRAP, len(rows)))]
        errors[group] = float(np.std(draws, ddof=1))
    return pd.Series(errors)


def churn_groups(y: pd.Series, p: np.ndarray, frame: pd.DataFrame) -> pd.DataFrame:
    """Churn (or another probability's, e.g. expansion's) figures per group (module docstring), at the action
    threshold `CHURN_ACTION`."""
    def at(metric: Callable[..., float]) -> Metric:
        return lambda t, s: float(metric(t, s >= CHURN_ACTION))

    metrics: dict[str, Metric] = {
        "customers": count, "rate": lambda t, s: float(np.mean(t)),
        "selection_rate": at(selection_rate), "tpr": at(true_positive_rate), "fpr": at(false_positive_rate),
        "mean_prediction": lambda t, s: float(np.mean(s)), "ece": expected_calibration_error,
        "calibration": lambda t, s: float(np.mean(s) - np.mean(t)),
    }
    return _by_group(metrics, y.astype(int).reset_index(drop=True), pd.Series(np.asarray(p, dtype=float)),
                     frame.reset_index(drop=True))


def clv_groups(actual: pd.Series, predicted: np.ndarray, frame: pd.DataFrame) -> pd.DataFrame:
    """CLV figures per group (module docstring)."""
    metrics: dict[str, Metric] = {
        "customers": count, "mean_actual": lambda t, s: float(np.mean(t)),
        "mae": lambda t, s: float(np.mean(np.abs(s - t))),
        "relative_error": lambda t, s: float((np.sum(s) - np.sum(t)) / max(abs(np.sum(t)), 1e-9)),
    }
    return _by_group(metrics, actual.astype(float).reset_index(drop=True),
                     pd.Series(np.asarray(predicted, dtype=float)), frame.reset_index(drop=True))


def nba_groups(policy: pd.Series, control: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Next best action figures per group (module docstring): who the learned policy sends an action, a discount."""
    sent = policy.reset_index(drop=True)
    metrics: dict[str, Metric] = {
        "customers": count, "action_rate": lambda t, s: float(np.mean(s != control)),
        "discount_rate": lambda t, s: float(np.mean(s == "discount")),
    }
    return _by_group(metrics, sent, sent, frame.reset_index(drop=True))


def gap(table: pd.DataFrame, metric: str) -> Gap | None:
    """The worst-group gap of `metric` in a `*_groups` table; None when no attribute has two groups of
    `MIN_GROUP` examples."""
    if table.empty:
        return None
    big = table[table["customers"] >= MIN_GROUP]
    values_of, noise_of = big[metric].dropna(), big.get(f"{metric}_se")
    worst: Gap | None = None
    for attribute, values in values_of.groupby(level="attribute"):
        if len(values) < 2:
            continue
        by = values.droplevel("attribute")
        high, low = by.idxmax(), by.idxmin()
        noise = 0.0 if noise_of is None else float(np.hypot(noise_of[(attribute, high)], noise_of[(attribute, low)]))
        found = Gap(metric, float(by[high] - by[low]), str(attribute), str(high), float(by[high]), str(low),
                    float(by[low]), 0.0 if high == low or np.isnan(noise) else noise)
        if worst is None or found.value > worst.value:
            worst = found
    return worst


def gap_metric(metric: str) -> str:
    """The MLflow metric (and tag) name of a gap."""
    return f"fairness.{metric}_gap"


def gap_low_metric(metric: str) -> str:
    """The MLflow metric name of a gap's lower bound (`Gap.lower_bound`)."""
    return f"{gap_metric(metric)}_low"


def _gated(kind: Kind) -> str:
    metric = MODELS[kind].gate.fairness
    assert metric is not None, f"{kind}: no fairness metric in its gate"
    return metric


def logged(table: pd.DataFrame, kind: Kind) -> tuple[dict[str, float], dict[str, str]]:
    """What a training run logs of its fairness review: the gated gap and its lower bound as metrics and its two
    groups as a tag, or only a tag saying why it could not be measured."""
    metric = _gated(kind)
    name, found = gap_metric(metric), gap(table, metric)
    if found is None:
        return {}, {name: f"{NOT_MEASURED}: no attribute has two groups of {MIN_GROUP} examples"}
    return {name: found.value, gap_low_metric(metric): found.lower_bound}, {name: str(found)}


def card_section(table: pd.DataFrame, kind: Kind) -> list[Block]:
    """The model card's fairness section: what is gated, then the table of figures per group."""
    metric = _gated(kind)
    found = gap(table, metric)
    where = f"{found.value:.3f} ({found})" if found else f"not measured (no two groups of {MIN_GROUP} examples)"
    return [f"Groups: {', '.join(ATTRIBUTES)} (the age band of consumer accounts is a sensitive attribute, never a "
            f"model input). The promotion gate reads the worst-group gap of `{metric}`, the largest difference "
            f"between two groups of one attribute with at least {MIN_GROUP} examples: {where}.",
            table.round(4).reset_index() if not table.empty else None]
