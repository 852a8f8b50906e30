"""A calibration / holdout split of one transaction log, the classic models fitted on it, and how models are judged.

Shared by `c360 eval cdnow` (training.cdnow) and `c360 train clv --transactions` (training.clv_transactions), so
both fit BG/NBD × Gamma-Gamma the same way and report the same figures:

- the customers are those with a purchase before the (exclusive) cut-off; their actual holdout purchases and value
  are counted in [cut-off, cut-off + horizon), 0 for those who did not come back;
- BG/NBD and Gamma-Gamma are fitted on their calibration RFM (purchases aggregated by day, which reproduces the
  published CDNOW fit) and predict the horizon;
- the figures, per model: the holdout total, the mean absolute bin error (the per-customer mean of actual and
  predicted holdout purchases, per calibration repeat count 0..6 and 7+, as in the published CDNOW table; their
  absolute differences averaged over the 8 bins), the mean Poisson deviance and the RMSE (training.clv
  .holdout_metrics); spend as total, MAE and RMSE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from lifetimes import BetaGeoFitter
from matplotlib.figure import Figure

from c360.training import clv

COLUMNS = ("customer_id", "date", "amount")  # what the frames here call a transaction's columns


@dataclass(frozen=True)
class Holdout:
    """Calibration RFM per customer (training.clv.rfm at the cut-off) and their actual purchases and value in the
    holdout, on the same index."""

    calibration: pd.DataFrame
    actual: pd.DataFrame
    cutoff: pd.Timestamp
    horizon_weeks: float


def split(transactions: pd.DataFrame, columns: tuple[str, str, str], cutoff: pd.Timestamp,
          horizon_weeks: float) -> Holdout:
    """`columns` names the customer, date and amount columns of `transactions`."""
    calibration = clv.rfm(transactions, *columns, cutoff)
    window = clv.purchases_in_window(transactions, *columns, cutoff, horizon_weeks)
    return Holdout(calibration, window.reindex(calibration.index, fill_value=0.0), cutoff, horizon_weeks)


@dataclass(frozen=True)
class Classic:
    """BG/NBD and Gamma-Gamma fitted on the calibration period, and their predictions for the holdout."""

    bgnbd: BetaGeoFitter
    purchases: pd.Series
    value: pd.Series

    def params(self) -> dict[str, float]:
        """r, alpha, a, b and the log-likelihood in weeks, comparable with the published CDNOW fit."""
        params = {name: float(self.bgnbd.params_[name]) for name in ("r", "alpha", "a", "b")}
        return {**params, "log_likelihood": clv.bgnbd_log_likelihood(self.bgnbd)}


def fit_classic(holdout: Holdout) -> Classic:
    rfm, horizon = holdout.calibration, holdout.horizon_weeks
    bgnbd = clv.fit_bgnbd(rfm)
    value = clv.gamma_gamma_value(bgnbd, clv.fit_gamma_gamma(rfm), rfm, horizon)
    return Classic(bgnbd, clv.bgnbd_expected(bgnbd, rfm, horizon), value)


def compare(holdout: Holdout, predictions: dict[str, pd.Series]) -> dict[str, pd.DataFrame]:
    """{"table": rows customers, actual and each model by calibration repeat bin; "metrics": a row per model and
    one for the actual total}."""
    actual, frequency = holdout.actual["purchases"], holdout.calibration["frequency"]
    table = clv.holdout_table(frequency, {"actual": actual, **predictions})
    metrics = pd.DataFrame({name: clv.holdout_metrics(actual, p, frequency) for name, p in predictions.items()}).T
    metrics.loc["actual", "total"] = actual.sum()
    return {"table": table, "metrics": metrics.loc[["actual", *predictions]]}


def value_summary(actual: pd.Series, predictions: dict[str, pd.Series]) -> pd.DataFrame:
    """Spend in the horizon: total, and per-customer MAE and RMSE (in the log's currency)."""
    rows: dict[str, dict[str, Any]] = {"actual": {"total": actual.sum(), "mae": 0.0, "rmse": 0.0}}
    for name, predicted in predictions.items():
        error = predicted.reindex(actual.index).to_numpy() - actual.to_numpy()
        rows[name] = {"total": predicted.sum(), "mae": np.abs(error).mean(), "rmse": np.sqrt((error**2).mean())}
    return pd.DataFrame(rows).T


def holdout_chart(table: pd.DataFrame) -> Figure:
    """Grouped bars: mean holdout repeat purchases per calibration repeat bin for each row of the table."""
    rows = [name for name in table.index if name != "customers" and table.loc[name].notna().any()]
    figure = Figure(figsize=(9, 4.5))
    axes = figure.subplots()
    width = 0.8 / len(rows)
    positions = np.arange(len(table.columns))
    for i, name in enumerate(rows):
        offset = (i - (len(rows) - 1) / 2) * width
        color = "0.25" if name == "actual" else None
        axes.bar(positions + offset, table.loc[name].to_numpy(dtype=float), width, label=name, color=color)
    axes.set_xticks(positions, [str(c) for c in table.columns])
    axes.set_xlabel("repeat purchases in calibration")
    axes.set_ylabel("mean repeat purchases in holdout")
    axes.legend(frameon=False)
    figure.tight_layout()
    return figure
