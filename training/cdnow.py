"""CDNOW reproduction: the published BG/NBD holdout table and our LightGBM purchase model against it, in two splits.

published: the Fader, Hardie & Lee (2005) setup: 39-week calibration (1997-01-01..1997-09-30) and 39-week holdout
    (1997-10-01..1998-06-30) on the 2,357-customer sample. Calibration data alone cannot give a 39-week label
    window for a cohort that joined in Q1 1997, so ours is trained on the *other* 21,213 master customers: features
    at 1997-10-01, labels = their purchases in the same holdout window. It never sees a sample customer's holdout,
    but it does learn that window's purchase rate (seasonality, the cohort's decay), which BG/NBD has to extrapolate.
forward: forward-honest. Ours is trained on all 23,570 master customers (the sample included) with features at
    1997-07-02 and labels = purchases 1997-07-02..1997-09-30, then predicts 1997-10-01..1997-12-30 (13 weeks) for
    the sample from features at 1997-10-01. No label overlaps the forecast window.

Nothing is tuned on either holdout: the LightGBM settings in training.clv were chosen on validation windows inside
the calibration period (forecast cut-offs 1997-07-02, 08-01 and 09-01 with labels before 1997-10-01).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from c360.core.settings import Settings
from c360.training import clv, clv_holdout

COLUMNS = ("customer_id", "date", "dollars")

# Fader, Hardie & Lee (2005); the public data folder's README.md.
PUBLISHED_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426, "log_likelihood": -9582.4}
PUBLISHED_TABLE = pd.DataFrame(
    [
        [1411, 439, 214, 100, 62, 38, 29, 64],
        [0.237, 0.697, 1.393, 1.560, 2.532, 2.947, 3.862, 6.359],
        [0.225, 0.523, 1.044, 1.520, 2.164, 2.654, 3.504, 6.157],
        [0.138, 0.600, 1.196, 1.714, 2.399, 2.907, 3.819, 6.403],
    ],
    index=["customers", "actual", "BG/NBD", "Pareto/NBD"],
    columns=list(clv.BINS),
)
PUBLISHED_TOTALS = {"actual": 1882.0, "BG/NBD": 1653.0}
FORWARD_REFERENCE = {"actual": 726.0, "BG/NBD": 628.0}  # measured in the README, not published


@dataclass(frozen=True)
class Split:
    name: str
    calibration_end: pd.Timestamp  # exclusive
    horizon_weeks: float
    trained_on: str


SPLITS = (
    Split(
        "published", pd.Timestamp("1997-10-01"), 39,
        "the 21,213 master customers outside the sample: features at 1997-10-01, labels = their purchases in the "
        "same 39-week holdout window 1997-10-01..1998-06-30 (learns that window's purchase rate; never sees a "
        "sample customer's holdout)",
    ),
    Split(
        "forward", pd.Timestamp("1997-10-01"), 13,
        "all 23,570 master customers (sample included): features at 1997-07-02, labels = purchases "
        "1997-07-02..1997-09-30; applied to features at 1997-10-01 for 1997-10-01..1997-12-30",
    ),
)


def _read(path: Path, names: list[str], header: int | None) -> pd.DataFrame:
    frame = pd.read_csv(path, sep=r"\s+", header=header, names=names, dtype={"customer_id": str, "date": str})
    frame["date"] = pd.to_datetime(frame["date"], format="%Y%m%d")
    return frame


def default_dir() -> Path:
    """`cdnow/` in the public data folder (the `public_data` setting, `C360_PUBLIC_DATA`)."""
    return Settings().public_data / "cdnow"


def _folder(data_dir: Path | None) -> Path:
    return Path(data_dir) if data_dir is not None else default_dir()


def load_master(data_dir: Path | None = None) -> pd.DataFrame:
    """All 23,570 customers: customer_id, date, cds, dollars."""
    return _read(_folder(data_dir) / "CDNOW_master.txt", ["customer_id", "date", "cds", "dollars"], header=0)


def load_sample(data_dir: Path | None = None) -> pd.DataFrame:
    """The 2,357-customer sample: customer_id (as in the master file), sample_id, date, cds, dollars."""
    return _read(_folder(data_dir) / "CDNOW_sample.txt", ["customer_id", "sample_id", "date", "cds", "dollars"], None)


def available(data_dir: Path | None = None) -> bool:
    return all((_folder(data_dir) / name).is_file() for name in ("CDNOW_master.txt", "CDNOW_sample.txt"))


def _train_ours(
    master: pd.DataFrame, at_cut: pd.DataFrame, in_sample: np.ndarray, split: Split
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training features and labels (purchases, value) for our model in this split."""
    if split.name == "published":
        labels = clv.purchases_in_window(master, *COLUMNS, split.calibration_end, split.horizon_weeks)
        return at_cut[~in_sample], labels.reindex(at_cut.index[~in_sample], fill_value=0.0)
    return clv.training_frame(master, *COLUMNS, split.calibration_end, split.horizon_weeks)


def _reference(split: Split) -> tuple[pd.Series, dict[str, float]]:
    """The README's BG/NBD row and metrics: published for the published split, only the measured total otherwise."""
    if split.name != "published":
        total = FORWARD_REFERENCE["BG/NBD"]
        metrics = {"total": total, "total_error": total - FORWARD_REFERENCE["actual"]}
        return pd.Series(np.nan, index=list(clv.BINS)), metrics
    row = PUBLISHED_TABLE.loc["BG/NBD"]
    bin_mae = float((row - PUBLISHED_TABLE.loc["actual"]).abs().mean())
    total = PUBLISHED_TOTALS["BG/NBD"]
    return row, {"total": total, "total_error": total - PUBLISHED_TOTALS["actual"], "bin_mae": bin_mae}


def _compare(split: Split, holdout: clv_holdout.Holdout, predictions: dict[str, pd.Series]) -> dict[str, Any]:
    """Holdout table (rows: customers, actual, BG/NBD (published), ours...) and metrics per model."""
    reference_row, reference_metrics = _reference(split)
    compared = clv_holdout.compare(holdout, predictions)
    table, metrics = compared["table"], compared["metrics"]
    table.loc["BG/NBD (published)"] = reference_row
    metrics.loc["BG/NBD (published)"] = pd.Series(reference_metrics)
    return {"table": table.loc[["customers", "actual", "BG/NBD (published)", *predictions]],
            "metrics": metrics.loc[["actual", "BG/NBD (published)", *predictions]]}


def evaluate_split(master: pd.DataFrame, sample: pd.DataFrame, split: Split) -> dict[str, Any]:
    """Holdout table, metrics, our BG/NBD parameters and the spend comparison for one split.

    Our BG/NBD and Gamma-Gamma are fitted on the sample's calibration data, as published (training.clv_holdout);
    ours (LightGBM) on the rows described by split.trained_on, with the stacked BG/NBD feature fitted on all master
    customers at the cut-off.
    """
    cut, horizon = split.calibration_end, split.horizon_weeks
    holdout = clv_holdout.split(sample, COLUMNS, cut, horizon)
    at_cut = clv.model_features(master, *COLUMNS, cut, horizon)
    in_sample = at_cut.index.isin(holdout.calibration.index)
    train_x, train_y = _train_ours(master, at_cut, in_sample, split)
    apply_x = at_cut[in_sample].reindex(holdout.calibration.index)
    counts = clv.fit_boosted(train_x, train_y["purchases"], horizon, trained_on={"description": split.trained_on})
    spend = clv.fit_boosted(train_x, train_y["value"], horizon, params=clv.VALUE_PARAMS)
    classic = clv_holdout.fit_classic(holdout)
    predictions = {"BG/NBD (ours)": classic.purchases, "LightGBM (ours)": clv.predict_boosted(counts, apply_x)}
    value = clv_holdout.value_summary(holdout.actual["value"], {
        "BG/NBD × Gamma-Gamma (ours)": classic.value, "LightGBM Tweedie (ours)": clv.predict_boosted(spend, apply_x)})
    return {**_compare(split, holdout, predictions), "bgnbd_params": classic.params(), "value": value,
            "trained_on": split.trained_on, "training_rows": len(train_x),
            "boosting_rounds": counts.booster.num_trees()}


def evaluate_cdnow(data_dir: Path | None = None) -> dict[str, Any]:
    """Both splits: {"published": {...}, "forward": {...}, "seconds": run time}; see evaluate_split."""
    started = time.perf_counter()
    master, sample = load_master(data_dir), load_sample(data_dir)
    result: dict[str, Any] = {split.name: evaluate_split(master, sample, split) for split in SPLITS}
    result["seconds"] = time.perf_counter() - started
    return result
