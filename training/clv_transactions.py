"""CLV from any transaction log: `c360 train clv --transactions FILE --customer COL --date COL --amount COL`.

The log is one CSV or Parquet file, a row per transaction, with any column names. Reading it (`read_log`):

- amounts may be text: currency signs and spaces are dropped, "1,234.50" and "1.234,50" both read 1234.5 (the last
  separator is the decimal one; a lone comma before exactly three digits groups thousands), "(12.00)" and "12-" are
  negative;
- dates are ISO 8601 (with or without a time or an offset; offsets are converted to UTC) or YYYYMMDD, or follow
  `date_format` (strftime codes);
- a row without a customer, with an unreadable date or amount is dropped and counted by reason; when most rows of a
  column cannot be read the format is wrong, and that is an error naming the column and an example value;
- a negative amount is a return, not a purchase: returns are counted and left out, so both models and the actual
  figures are about gross purchases. Several transactions of a customer on one day are one purchase (their
  amounts summed), as in the published CDNOW fit.

The split is `c360 eval cdnow`'s: calibration up to and including `calibration_end` (by default the middle day of
the log, which for CDNOW's 78 weeks is the published 1997-09-30), holdout from the next day to the log's last day.
The customers judged are those with a purchase in calibration (training.clv_holdout).

The two models, each judged on the same holdout figures:

- BG/NBD × Gamma-Gamma (lifetimes), fitted on the calibration period (training.clv_holdout.fit_classic);
- LightGBM on RFM-style features (training.clv.rfm), trained inside the calibration period only: features at
  t0 = cut-off − w and labels = purchases (Poisson) and spend (Tweedie) in [t0, cut-off), w = the shorter of the
  holdout and half the calibration period. A holdout longer than any label window calibration can give is
  reached through an offset: the trees learn a multiplicative correction of a BG/NBD fitted at t0 (its
  expectation for w weeks; spend: times the customer's mean purchase), which is then applied to a BG/NBD fitted
  at the cut-off for the holdout's length. So it is BG/NBD corrected by what the recent history says, assuming
  the correction carries over from w weeks to the holdout.

Nothing about a single customer leaves this module: the card, tables and MLflow run hold aggregates only (per
repeat-count bin and totals), no model is registered (its input example would be customers' rows) and no dataset is
logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from c360.training import cards, clv, clv_holdout, tracking
from c360.training.clv_holdout import COLUMNS
from c360.training.tables import read_table, require_column

EXPERIMENT = "c360-clv-transactions"
MOST = 0.5  # above this share of unreadable values in a column, the format is wrong rather than some rows
BGNBD, LIGHTGBM = "BG/NBD", "LightGBM"


@dataclass(frozen=True)
class Log:
    """The transactions kept (COLUMNS: customer_id as text, date, amount ≥ 0) and what was left out, by reason."""

    transactions: pd.DataFrame
    rows: int
    dropped: dict[str, int] = field(default_factory=dict)


# --- reading the log ----------------------------------------------------------------------------------------


def read_log(path: Path, customer: str, date: str, amount: str, date_format: str | None = None) -> Log:
    """The log at `path` with the three named columns; a ValueError says what is wrong (module docstring)."""
    frame = read_table(path)
    for column, role in ((customer, "customer"), (date, "date"), (amount, "amount")):
        require_column(frame, column, role)
    if len({customer, date, amount}) < 3:
        raise ValueError(f"--customer, --date and --amount must name three different columns, got "
                         f"{customer!r}, {date!r}, {amount!r}")
    ids = frame[customer].map(_identifier)
    dates = _checked(frame[date], parse_dates(frame[date], date_format), date,
                     f"as dates ({date_format or 'ISO 8601 or YYYYMMDD'}; give --date-format)")
    amounts = _checked(frame[amount], parse_amounts(frame[amount]), amount, "as amounts")
    reasons = {"no customer": ids.isna(), "unreadable date": dates.isna() & ids.notna(),
               "missing or unreadable amount": amounts.isna() & dates.notna() & ids.notna()}
    usable = ~(reasons["no customer"] | reasons["unreadable date"] | reasons["missing or unreadable amount"])
    reasons["returns (negative amounts)"] = usable & (amounts < 0)
    kept = usable & (amounts >= 0)
    if not kept.any():
        raise ValueError(f"{path}: no purchase left to model ({_counts(reasons)})")
    transactions = pd.DataFrame({COLUMNS[0]: ids[kept], COLUMNS[1]: dates[kept], COLUMNS[2]: amounts[kept]})
    return Log(transactions.reset_index(drop=True), len(frame), {k: int(v.sum()) for k, v in reasons.items()})


def _identifier(value: Any) -> str | None:
    """A customer id as text: 17.0 (a float column because of a missing id) reads as 17."""
    if pd.isna(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _checked(raw: pd.Series, parsed: pd.Series, column: str, what: str) -> pd.Series:
    """`parsed`, unless most present values could not be read: then the format is wrong, said with an example."""
    present = raw.notna()
    failed = present & parsed.isna()
    if present.any() and failed.sum() > MOST * present.sum():
        example = raw[failed].iloc[0]
        raise ValueError(f"column {column!r}: {failed.sum():,} of {present.sum():,} values could not be read {what}, "
                         f"e.g. {example!r}")
    return parsed


def _counts(reasons: dict[str, pd.Series]) -> str:
    return ", ".join(f"{reason}: {int(mask.sum()):,}" for reason, mask in reasons.items() if mask.any()) or "no rows"


def parse_dates(values: pd.Series, date_format: str | None = None) -> pd.Series:
    """Timestamps without time zone (UTC where the text had an offset); NaT where unreadable."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return clv._times(values)
    if pd.api.types.is_numeric_dtype(values):  # YYYYMMDD read as a number
        values = values.astype("Int64")
    text = values.astype("string")
    parsed = pd.to_datetime(text, format=date_format or "ISO8601", errors="coerce", utc=True)
    return parsed.dt.tz_convert(None)


def parse_amounts(values: pd.Series) -> pd.Series:
    """Floats; NaN where missing or unreadable."""
    if pd.api.types.is_numeric_dtype(values):
        return values.astype(float)
    return values.map(_amount).astype(float)


def _amount(value: Any) -> float:
    if pd.isna(value):
        return np.nan
    text = str(value).strip()
    negative = (text.startswith("(") and text.endswith(")")) or "-" in text
    digits = re.sub(r"[^\d,.]", "", text)
    if not re.search(r"\d", digits):
        return np.nan
    digits = _decimal_point(digits)
    try:
        number = float(digits)
    except ValueError:
        return np.nan
    return -number if negative else number


def _decimal_point(digits: str) -> str:
    """"1,234.50", "1.234,50", "12,50", "1,234" → "1234.50", "1234.50", "12.50", "1234"."""
    if "," in digits and "." in digits:
        decimal = "," if digits.rfind(",") > digits.rfind(".") else "."
        grouping = "." if decimal == "," else ","
        return digits.replace(grouping, "").replace(decimal, ".")
    for separator in (",", "."):
        if separator in digits:
            grouped = re.fullmatch(rf"\d{{1,3}}(\{separator}\d{{3}})+", digits)
            thousands = grouped and (separator == "," or digits.count(".") > 1)  # "1.234" is a decimal
            return digits.replace(separator, "" if thousands else ".")
    return digits


# --- the split ----------------------------------------------------------------------------------------------


def cutoff(transactions: pd.DataFrame, calibration_end: str | None) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(first holdout day, the day after the log's last): calibration ends on `calibration_end` (inclusive), by
    default on the log's middle day."""
    first = transactions[COLUMNS[1]].min().normalize()
    end = transactions[COLUMNS[1]].max().normalize() + clv.DAY
    if calibration_end is None:
        return first + (end - first) // 2 // clv.DAY * clv.DAY, end
    try:
        cut = pd.Timestamp(calibration_end).normalize() + clv.DAY
    except ValueError:
        raise ValueError(f"--calibration-end {calibration_end!r} is not a date (use YYYY-MM-DD)") from None
    if not first < cut < end:
        raise ValueError(f"--calibration-end {calibration_end} must fall inside the log, which runs from "
                         f"{first:%Y-%m-%d} to {end - clv.DAY:%Y-%m-%d}, with at least a day on each side")
    return cut, end


# --- the models ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Boosted:
    purchases: pd.Series
    value: pd.Series
    trained_on: str


def fit_lightgbm(transactions: pd.DataFrame, holdout: clv_holdout.Holdout) -> Boosted:
    """LightGBM purchases and spend for the holdout, trained inside the calibration period (module docstring)."""
    cut, horizon = holdout.cutoff, holdout.horizon_weeks
    calibration_weeks = (cut - transactions[COLUMNS[1]].min().normalize()) / pd.Timedelta(weeks=1)
    window = min(horizon, calibration_weeks / 2)
    train_x, train_y = clv.training_frame(transactions, *COLUMNS, cut, window)
    if len(train_x) < 2:
        raise ValueError(f"too little history before the calibration end for LightGBM: {len(train_x)} customer(s) "
                         f"bought before {cut - pd.Timedelta(weeks=window):%Y-%m-%d}; choose a later --calibration-end")
    apply_x = clv.model_features(transactions, *COLUMNS, cut, horizon).reindex(holdout.calibration.index)
    counts = clv.fit_boosted(_with_value_offset(train_x), train_y["purchases"], window, offset="bgnbd",
                             exclude=["value_offset"])
    spend = clv.fit_boosted(_with_value_offset(train_x), train_y["value"], window, params=clv.VALUE_PARAMS,
                            offset="value_offset", exclude=["bgnbd"])
    t0 = cut - pd.Timedelta(weeks=window)
    trained_on = (f"{len(train_x):,} customers: features at {t0:%Y-%m-%d}, labels = purchases and spend in the "
                  f"{window:.1f} weeks to the calibration end, offset by BG/NBD")
    apply_x = _with_value_offset(apply_x)
    return Boosted(clv.predict_boosted(counts, apply_x), clv.predict_boosted(spend, apply_x), trained_on)


def _with_value_offset(features: pd.DataFrame) -> pd.DataFrame:
    """The spend model's starting point: BG/NBD's expected purchases × the customer's mean purchase."""
    return features.assign(value_offset=features["bgnbd"] * features["mean_value"].clip(lower=0.01))


# --- the whole run ------------------------------------------------------------------------------------------


def evaluate_log(log: Log, calibration_end: str | None = None) -> dict[str, Any]:
    """Both models on the log's holdout: the figures `c360 train clv --transactions --json` prints."""
    cut, end = cutoff(log.transactions, calibration_end)
    horizon = (end - cut) / pd.Timedelta(weeks=1)
    holdout = clv_holdout.split(log.transactions, COLUMNS, cut, horizon)
    classic = clv_holdout.fit_classic(holdout)
    boosted = fit_lightgbm(log.transactions, holdout)
    compared = clv_holdout.compare(holdout, {BGNBD: classic.purchases, LIGHTGBM: boosted.purchases})
    metrics = compared["metrics"]
    value = clv_holdout.value_summary(holdout.actual["value"], {"BG/NBD × Gamma-Gamma": classic.value,
                                                                "LightGBM Tweedie": boosted.value})
    return {
        "calibration_end": f"{cut - clv.DAY:%Y-%m-%d}", "holdout_end": f"{end - clv.DAY:%Y-%m-%d}",
        "horizon_weeks": horizon, "customers": len(holdout.calibration),
        "new_in_holdout": _newcomers(log.transactions, holdout),
        "rows": log.rows, "dropped": log.dropped,
        "actual_total": float(metrics.loc["actual", "total"]),
        **{f"{key}_{name}": float(metrics.loc[model, column])
           for key, model in (("bgnbd", BGNBD), ("lightgbm", LIGHTGBM))
           for name, column in (("total", "total"), ("bin_error", "bin_mae"), ("deviance", "poisson_deviance"))},
        "table": compared["table"], "metrics": metrics, "value": value, "bgnbd_params": classic.params(),
        "lightgbm_trained_on": boosted.trained_on,
    }


def _newcomers(transactions: pd.DataFrame, holdout: clv_holdout.Holdout) -> int:
    """Customers whose first purchase falls in the holdout: neither model can know them, so none is judged."""
    later = transactions.loc[transactions[COLUMNS[1]] >= holdout.cutoff, COLUMNS[0]]
    return int((~pd.Index(later.unique()).isin(holdout.calibration.index)).sum())


def model_card(result: dict[str, Any], source: str) -> str:
    """Both models' figures on the holdout: aggregates only (totals, per repeat-count bin)."""
    dropped = ", ".join(f"{reason} {count:,}" for reason, count in result["dropped"].items() if count) or "none"
    params = ", ".join(f"{name} {value:.3f}" for name, value in result["bgnbd_params"].items())
    return cards.model_card(f"CLV from transactions: {source}", (
        "Repeat purchases and spend of each customer from the calibration end to the log's end: BG/NBD × Gamma-Gamma "
        "(lifetimes) beside LightGBM on RFM-style features. Nothing is registered: this compares the two on your log."
    ), {
        "Data": [[
            f"source: `{source}`, {result['rows']:,} rows; left out: {dropped}",
            f"calibration to {result['calibration_end']}, holdout to {result['holdout_end']} "
            f"({result['horizon_weeks']:.1f} weeks)",
            f"{result['customers']:,} customers bought in calibration and are judged; {result['new_in_holdout']:,} "
            "first bought in the holdout and are not",
        ]],
        "Holdout repeat purchases": [
            _rounded(result["metrics"]),
            "bin_mae: the mean absolute difference, over the calibration repeat-count bins 0–6 and 7+, between the "
            "mean actual and the mean predicted holdout purchases per customer; poisson_deviance: mean per customer.",
        ],
        "Mean holdout purchases by calibration repeats": [_rounded(result["table"])],
        "Holdout spend": [_rounded(result["value"])],
        "Models": [[f"BG/NBD fit: {params}", f"LightGBM: {result['lightgbm_trained_on']}"]],
    })


def _rounded(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype(float).round(3).rename_axis(frame.index.name or "")


def log_result(result: dict[str, Any], source: str, home: Path) -> str:
    """One MLflow run in experiment c360-clv-transactions (card, holdout chart, aggregate tables); its id."""
    metrics = {key: result[key] for key in result if key.endswith(("_total", "_bin_error", "_deviance"))}
    return tracking.log_evaluation_run(
        experiment=EXPERIMENT, run_name=f"clv on {source}", home=home,
        params={"source": source, "calibration_end": result["calibration_end"],
                "holdout_end": result["holdout_end"], "horizon_weeks": round(result["horizon_weeks"], 3),
                "rows": result["rows"], "customers": result["customers"]},
        metrics=metrics, figures={"holdout": clv_holdout.holdout_chart(result["table"])},
        tables={"holdout_metrics": result["metrics"], "holdout_by_bin": result["table"], "spend": result["value"]},
        model_card=model_card(result, source), tags={"kind": "clv-transactions", "source": source})
