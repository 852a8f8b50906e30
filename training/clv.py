"""Customer lifetime value: RFM features, BG/NBD and Gamma-Gamma baselines, LightGBM purchase and spend models, metrics.

Plain functions on DataFrames; column names are parameters so the same code runs on CDNOW and on our invoices
(customer_id, issued_at, amount).

Time conventions. Transactions are aggregated into periods of `freq_days` days (1 = by day, which reproduces the
published CDNOW fit); a customer's purchases are the distinct periods with a transaction. A cut-off such as
`calibration_end` is exclusive: features use transactions strictly before it, and a forecast window of h weeks is
[cut-off, cut-off + 7h days). Recency and T are counted in whole periods up to the last period before the cut-off
and reported in weeks, as lifetimes does with `observation_period_end` = the last calibration day.

The LightGBM purchase model is trained on a time split of the same customers: features at t0 = cut-off − h and
labels = purchases in [t0, cut-off), so no label reaches into the forecast window; it is then applied to features
at the cut-off. By default the BG/NBD expectation for the horizon (a BG/NBD fitted at the same cut-off as the
features, without labels) is stacked as one more feature.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from lifetimes import BetaGeoFitter, GammaGammaFitter
from lifetimes.utils import ConvergenceError

DAY = pd.Timedelta(days=1)
BINS: tuple[str, ...] = ("0", "1", "2", "3", "4", "5", "6", "7+")

# Small data (tens of thousands of customers, a few purchases each): shallow trees, big leaves, slow learning; the
# number of rounds comes from early stopping on held-out training customers. Set before looking at any CDNOW holdout.
# On CDNOW validation windows inside the 1997 calibration period (cut-offs 07-02, 08-01, 09-01), stacking the BG/NBD
# expectation, leaving it out, using it as an offset (init_score) or dropping T changed the mean Poisson deviance by
# < 0.005, so the simplest, stacking it as a feature, is the default.
COUNT_PARAMS: dict[str, Any] = {
    "objective": "poisson",
    "learning_rate": 0.03,
    "num_leaves": 15,
    "min_data_in_leaf": 100,
    "lambda_l2": 10.0,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "num_threads": 1,  # small data: one thread is faster than OpenMP on a busy 2-core machine
    "seed": 7,
    "deterministic": True,
    "verbosity": -1,
}
VALUE_PARAMS: dict[str, Any] = {**COUNT_PARAMS, "objective": "tweedie", "tweedie_variance_power": 1.3}


# --- features -------------------------------------------------------------------------------------------------


def _times(values: pd.Series) -> pd.Series:
    """Datetimes without time zone (UTC if they had one), so they compare with plain cut-offs."""
    times = pd.to_datetime(values)
    return times.dt.tz_convert(None) if times.dt.tz is not None else times


def _moment(value: pd.Timestamp | str) -> pd.Timestamp:
    moment = pd.Timestamp(value)
    return moment.tz_convert(None) if moment.tz is not None else moment


def _purchases(
    transactions: pd.DataFrame, customer_col: str, time_col: str, value_col: str, freq_days: int
) -> pd.DataFrame:
    """One row per customer and purchase period: columns customer, period (int), value (sum)."""
    days = (_times(transactions[time_col]) - pd.Timestamp(0)) // DAY
    frame = pd.DataFrame({
        "customer": transactions[customer_col].to_numpy(),
        "period": (days // freq_days).to_numpy(),
        "value": transactions[value_col].to_numpy(dtype=float),
    })
    return frame.groupby(["customer", "period"], as_index=False, sort=True)["value"].sum()


def _last_period(cutoff: pd.Timestamp | str, freq_days: int) -> int:
    """Index of the last period that starts strictly before the (exclusive) cut-off."""
    last_day = (_moment(cutoff) - pd.Timestamp(0) - pd.Timedelta(1)) // DAY
    return int(last_day // freq_days)


def _window_counts(periods: pd.DataFrame, last: int, weeks: float, freq_days: int) -> pd.Series:
    age_days = (last - periods["period"]) * freq_days
    return (age_days < weeks * 7).groupby(periods["customer"]).sum().astype(float)


def _interpurchase(periods: pd.DataFrame, freq_days: int) -> pd.DataFrame:
    gaps = periods.groupby("customer")["period"].diff() * freq_days / 7
    stats = gaps.groupby(periods["customer"]).agg(["mean", "std", "last"])
    return stats.rename(columns={"mean": "ipt_mean", "std": "ipt_std", "last": "ipt_last"})


def rfm(
    transactions: pd.DataFrame,
    customer_col: str,
    time_col: str,
    value_col: str,
    calibration_end: pd.Timestamp | str,
    freq_days: int = 1,
) -> pd.DataFrame:
    """Per-customer features from the transactions strictly before `calibration_end`, indexed by customer.

    frequency: repeat purchase periods; recency: weeks from the first to the last purchase; T: weeks from the first
    purchase to the end of calibration; monetary_value: mean value of the repeat purchases (0 without repeats), as
    in lifetimes. Beyond RFM: purchases in the last 4/13/26 weeks, weeks since the last purchase, inter-purchase
    time mean/std/last (weeks), first/mean/max/total value, value in the last 13 weeks and the trend (purchase rate
    in the last 13 weeks minus the rate before them, per week; NaN if the customer is younger than 13 weeks).
    """
    cutoff = _moment(calibration_end)
    before = transactions[_times(transactions[time_col]) < cutoff]
    periods = _purchases(before, customer_col, time_col, value_col, freq_days)
    last = _last_period(cutoff, freq_days)
    by = periods.groupby("customer")
    out = pd.DataFrame({
        "first": by["period"].min(),
        "latest": by["period"].max(),
        "purchases": by["period"].size().astype(float),
        "total_value": by["value"].sum(),
        "first_value": by["value"].first(),
        "mean_value": by["value"].mean(),
        "max_value": by["value"].max(),
    })
    week = 7 / freq_days
    out["frequency"] = out["purchases"] - 1
    out["recency"] = (out["latest"] - out["first"]) / week
    out["T"] = (last - out["first"]) / week
    repeat_value = out["total_value"] - out["first_value"]
    out["monetary_value"] = np.where(out["frequency"] > 0, repeat_value / out["frequency"].clip(lower=1), 0.0)
    out["weeks_since_last"] = out["T"] - out["recency"]
    for weeks in (4, 13, 26):
        out[f"purchases_{weeks}w"] = _window_counts(periods, last, weeks, freq_days)
    recent = periods[(last - periods["period"]) * freq_days < 13 * 7]
    out["value_13w"] = recent.groupby("customer")["value"].sum().reindex(out.index, fill_value=0.0)
    earlier_weeks = out["T"] + 1 / week - 13
    rate_before = (out["purchases"] - out["purchases_13w"]) / earlier_weeks.where(earlier_weeks > 0)
    out["trend"] = out["purchases_13w"] / 13 - rate_before
    out = out.join(_interpurchase(periods, freq_days))
    out.index.name = customer_col
    return out.drop(columns=["first", "latest"])


def purchases_in_window(
    transactions: pd.DataFrame,
    customer_col: str,
    time_col: str,
    value_col: str,
    start: pd.Timestamp | str,
    horizon_weeks: float,
    freq_days: int = 1,
) -> pd.DataFrame:
    """Purchase periods and total value per customer in [start, start + horizon); customers without any are absent."""
    times = _times(transactions[time_col])
    begin = _moment(start)
    inside = transactions[(times >= begin) & (times < begin + pd.Timedelta(weeks=horizon_weeks))]
    periods = _purchases(inside, customer_col, time_col, value_col, freq_days)
    by = periods.groupby("customer")
    out = pd.DataFrame({"purchases": by["period"].size().astype(float), "value": by["value"].sum()})
    out.index.name = customer_col
    return out


# --- BG/NBD and Gamma-Gamma -------------------------------------------------------------------------------------


def fit_bgnbd(rfm: pd.DataFrame, penalizer: float = 0.0) -> BetaGeoFitter:
    model = BetaGeoFitter(penalizer_coef=penalizer)
    # The optimizer probes parameters where log() is undefined and then backs off; the fit itself is fine.
    with np.errstate(invalid="ignore", divide="ignore"):
        model.fit(rfm["frequency"], rfm["recency"], rfm["T"])
    return model


def bgnbd_log_likelihood(fitted: BetaGeoFitter) -> float:
    """Total log-likelihood in weeks, comparable with the published one.

    lifetimes keeps the mean negative log-likelihood of its internally rescaled times, which shifts it by a constant.
    """
    data = fitted.data
    log_params = np.log(fitted.params_[["r", "alpha", "a", "b"]].to_numpy(dtype=float))
    mean_nll = BetaGeoFitter._negative_log_likelihood(
        log_params, data["frequency"].to_numpy(), data["recency"].to_numpy(), data["T"].to_numpy(),
        data["weights"].to_numpy(), 0.0,
    )
    return float(-mean_nll * data["weights"].sum())


def bgnbd_expected(fitted: BetaGeoFitter, rfm: pd.DataFrame, horizon_weeks: float) -> pd.Series:
    """Expected repeat purchases per customer in the next `horizon_weeks`, given each customer's history.

    Where lifetimes' hypergeometric term is numerically undefined (degenerate fits with a, b → 0, i.e. hardly any
    dropout), the no-dropout limit (r + x) / (alpha + T) · t is used instead of NaN.
    """
    x, t_x, age = (rfm[column].to_numpy(dtype=float) for column in ("frequency", "recency", "T"))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        expected = np.asarray(
            fitted.conditional_expected_number_of_purchases_up_to_time(horizon_weeks, x, t_x, age), dtype=float
        )
    r, alpha = float(fitted.params_["r"]), float(fitted.params_["alpha"])
    no_dropout = (r + x) / (alpha + age) * horizon_weeks
    return pd.Series(np.where(np.isfinite(expected), expected, no_dropout), index=rfm.index, name="bgnbd")


def fit_gamma_gamma(rfm: pd.DataFrame, penalizer: float = 0.0) -> GammaGammaFitter:
    """Gamma-Gamma spend model on the repeat customers (it models the mean value of repeat purchases only)."""
    repeat = rfm[(rfm["frequency"] > 0) & (rfm["monetary_value"] > 0)]
    model = GammaGammaFitter(penalizer_coef=penalizer)
    with np.errstate(invalid="ignore", divide="ignore"):
        model.fit(repeat["frequency"], repeat["monetary_value"])
    return model


def gamma_gamma_value(
    bgnbd: BetaGeoFitter, gamma_gamma: GammaGammaFitter, rfm: pd.DataFrame, horizon_weeks: float
) -> pd.Series:
    """Undiscounted value in the horizon: expected purchases × expected value per purchase."""
    spend = gamma_gamma.conditional_expected_average_profit(rfm["frequency"], rfm["monetary_value"])
    return (bgnbd_expected(bgnbd, rfm, horizon_weeks) * np.asarray(spend, dtype=float)).rename("gamma_gamma")


# --- LightGBM purchase and spend models ------------------------------------------------------------------------


@dataclass
class BoostedModel:
    """A LightGBM booster with the feature columns it expects and how it was trained."""

    booster: lgb.Booster
    features: list[str]
    horizon_weeks: float
    stack_bgnbd: bool
    trained_on: dict[str, Any] = field(default_factory=dict)
    offset: str | None = None  # a feature column the prediction multiplies (see fit_boosted)


def model_features(
    transactions: pd.DataFrame,
    customer_col: str,
    time_col: str,
    value_col: str,
    cutoff: pd.Timestamp | str,
    horizon_weeks: float,
    freq_days: int = 1,
    stack_bgnbd: bool = True,
) -> pd.DataFrame:
    """rfm() at the cut-off, plus the BG/NBD expectation for the horizon from a BG/NBD fitted on these customers."""
    features = rfm(transactions, customer_col, time_col, value_col, cutoff, freq_days)
    if stack_bgnbd:
        features["bgnbd"] = bgnbd_expected(_stable_bgnbd(features), features, horizon_weeks)
    return features


def _stable_bgnbd(rfm: pd.DataFrame) -> BetaGeoFitter:
    """BG/NBD for a feature: unpenalised if it converges, else with the small penalty lifetimes recommends.

    Without dropouts in the data (a → 0) the unpenalised fit does not converge.
    """
    for penalizer in (0.0, 0.001, 0.01, 0.1):
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # lifetimes prints the optimizer state before raising
                return fit_bgnbd(rfm, penalizer)
        except ConvergenceError:
            continue
    raise ConvergenceError("BG/NBD did not converge even with penalizer 0.1")


def training_frame(
    transactions: pd.DataFrame,
    customer_col: str,
    time_col: str,
    value_col: str,
    cutoff: pd.Timestamp | str,
    horizon_weeks: float,
    freq_days: int = 1,
    stack_bgnbd: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Features at t0 = cutoff − horizon and labels (purchases, value) in [t0, cutoff): the latest complete window."""
    t0 = _moment(cutoff) - pd.Timedelta(weeks=horizon_weeks)
    columns = (customer_col, time_col, value_col)
    features = model_features(transactions, *columns, t0, horizon_weeks, freq_days, stack_bgnbd)
    labels = purchases_in_window(transactions, *columns, t0, horizon_weeks, freq_days)
    return features, labels.reindex(features.index, fill_value=0.0)


def boost(
    features: pd.DataFrame, label: pd.Series, params: Mapping[str, Any], max_rounds: int, seed: int,
    init_score: np.ndarray | None = None, valid: np.ndarray | None = None,
) -> lgb.Booster:
    """Choose the number of rounds by early stopping on the `valid` rows (default: a random 20 % of the training
    rows, one per customer), then refit all."""
    if valid is None:
        valid = np.random.default_rng(seed).random(len(features)) < 0.2
    score = np.zeros(len(features)) if init_score is None else init_score
    train_set = lgb.Dataset(features[~valid], label[~valid], init_score=score[~valid], free_raw_data=False)
    valid_set = lgb.Dataset(features[valid], label[valid], init_score=score[valid], reference=train_set)
    probe = lgb.train(
        dict(params), train_set, max_rounds, valid_sets=[valid_set], callbacks=[lgb.early_stopping(50, verbose=False)]
    )
    rounds = max(probe.best_iteration, 20)
    return lgb.train(dict(params), lgb.Dataset(features, label, init_score=score), rounds)


def fit_boosted(
    features: pd.DataFrame,
    label: pd.Series,
    horizon_weeks: float,
    params: Mapping[str, Any] | None = None,
    max_rounds: int = 1000,
    seed: int = 7,
    exclude: Sequence[str] = (),
    trained_on: Mapping[str, Any] | None = None,
    offset: str | None = None,
) -> BoostedModel:
    """LightGBM on the feature frame (Poisson on purchase counts by default; pass VALUE_PARAMS for spend).

    With `offset`, that column (positive, e.g. the BG/NBD expectation for the label window) is no feature but the
    starting point: the trees learn a multiplicative correction of it (log link), and predict_boosted multiplies the
    column's value at prediction time — which may be the expectation for another horizon than the label window's.
    """
    columns = [c for c in features.columns if c not in exclude and c != offset]
    init_score = None if offset is None else np.log(features[offset].to_numpy(dtype=float).clip(1e-6))
    booster = boost(features[columns], label.astype(float), params or COUNT_PARAMS, max_rounds, seed, init_score)
    return BoostedModel(booster, columns, horizon_weeks, "bgnbd" in columns, dict(trained_on or {}), offset)


def predict_boosted(model: BoostedModel, features: pd.DataFrame) -> pd.Series:
    predicted = model.booster.predict(features[model.features])
    if model.offset is not None:
        predicted = predicted * features[model.offset].to_numpy(dtype=float).clip(1e-6)
    return pd.Series(predicted, index=features.index, name="lightgbm")


def fit_time_split(
    transactions: pd.DataFrame,
    customer_col: str,
    time_col: str,
    value_col: str,
    cutoff: pd.Timestamp | str,
    horizon_weeks: float = 52,
    target: str = "purchases",
    freq_days: int = 1,
    stack_bgnbd: bool = True,
) -> BoostedModel:
    """Purchase (target="purchases", Poisson) or spend (target="value", Tweedie) model for the horizon after `cutoff`.

    Trained on features at cutoff − horizon and the target in [cutoff − horizon, cutoff), so it needs more history
    than one horizon; predict with predict_boosted(model, model_features(..., cutoff, horizon_weeks, ...)).
    """
    columns = (customer_col, time_col, value_col)
    features, labels = training_frame(transactions, *columns, cutoff, horizon_weeks, freq_days, stack_bgnbd)
    params = VALUE_PARAMS if target == "value" else COUNT_PARAMS
    t0 = _moment(cutoff) - pd.Timedelta(weeks=horizon_weeks)
    trained_on = {"features_at": str(t0), "labels": f"{target} in [{t0}, {_moment(cutoff)})", "rows": len(features)}
    return fit_boosted(features, labels[target], horizon_weeks, params=params, trained_on=trained_on)


# --- metrics --------------------------------------------------------------------------------------------------


def repeat_bins(calibration_frequency: pd.Series, top: int = 7) -> pd.Series:
    """Calibration repeat-count bins 0..top-1 and 'top+' (as strings, ordered as in the published table)."""
    capped = calibration_frequency.clip(upper=top).astype(int).astype(str).replace(str(top), f"{top}+")
    return pd.Series(pd.Categorical(capped, categories=list(BINS)), index=calibration_frequency.index)


def holdout_table(calibration_frequency: pd.Series, series: Mapping[str, pd.Series]) -> pd.DataFrame:
    """Rows: customers, then the mean of each series per calibration repeat bin; columns: the bins."""
    bins = repeat_bins(calibration_frequency)
    rows = {"customers": bins.value_counts().reindex(list(BINS)).astype(float)}
    for name, values in series.items():
        rows[name] = values.reindex(bins.index).groupby(bins, observed=False).mean()
    return pd.DataFrame(rows).T[list(BINS)]


def poisson_deviance(actual: pd.Series, predicted: pd.Series) -> float:
    """Mean Poisson deviance, 2·(y·log(y/μ) − (y − μ)), with y·log(y/μ) = 0 where y = 0."""
    y = actual.to_numpy(dtype=float)
    mu = np.clip(predicted.reindex(actual.index).to_numpy(dtype=float), 1e-9, None)
    ratio = np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0) / mu), 0.0)
    return float(np.mean(2 * (ratio - (y - mu))))


def holdout_metrics(actual: pd.Series, predicted: pd.Series, calibration_frequency: pd.Series) -> dict[str, float]:
    """Holdout total, its error, mean absolute bin error, mean Poisson deviance and RMSE per customer."""
    predicted = predicted.reindex(actual.index)
    table = holdout_table(calibration_frequency.reindex(actual.index), {"actual": actual, "predicted": predicted})
    return {
        "total": float(predicted.sum()),
        "total_error": float(predicted.sum() - actual.sum()),
        "bin_mae": float((table.loc["predicted"] - table.loc["actual"]).abs().mean()),
        "poisson_deviance": poisson_deviance(actual, predicted),
        "rmse": float(np.sqrt(np.mean((predicted.to_numpy() - actual.to_numpy()) ** 2))),
    }
