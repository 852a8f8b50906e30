"""CLV core: rfm() by hand, metrics by hand, and the CDNOW reproduction (published BG/NBD, ours beats it)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from c360.training import cdnow, clv, clv_holdout

CUT = pd.Timestamp("2024-02-01")  # exclusive: the last calibration day is 2024-01-31


@pytest.fixture
def tiny() -> pd.DataFrame:
    rows = [
        ("a", "2024-01-01 09:00", 10.0),
        ("a", "2024-01-01 17:00", 5.0),  # same day: one purchase of 15
        ("a", "2024-01-15", 20.0),
        ("a", "2024-01-29", 30.0),
        ("a", "2024-02-08", 99.0),  # 7 days after the cut-off: outside a 1-week window
        ("b", "2024-01-22", 8.0),
        ("c", "2024-02-05", 12.0),  # only after the cut-off
    ]
    frame = pd.DataFrame(rows, columns=["who", "when", "amount"])
    frame["when"] = pd.to_datetime(frame["when"], format="ISO8601")
    return frame


def test_rfm_by_hand(tiny: pd.DataFrame) -> None:
    out = clv.rfm(tiny, "who", "when", "amount", CUT)
    assert list(out.index) == ["a", "b"]
    a, b = out.loc["a"], out.loc["b"]
    # a: purchase days 01-01 (15), 01-15 (20), 01-29 (30); 30 days from the first purchase to 01-31.
    assert (a["frequency"], a["recency"], a["T"]) == (2, 4.0, pytest.approx(30 / 7))
    assert a["monetary_value"] == 25.0 and a["first_value"] == 15.0 and a["total_value"] == 65.0
    assert a["weeks_since_last"] == pytest.approx(2 / 7)
    assert (a["purchases_4w"], a["purchases_13w"]) == (2, 3)  # 01-01 is 30 days before 01-31
    assert (a["ipt_mean"], a["ipt_std"], a["ipt_last"]) == (2.0, 0.0, 2.0)
    assert math.isnan(a["trend"])  # younger than 13 weeks
    assert (b["frequency"], b["recency"], b["T"], b["monetary_value"]) == (0, 0.0, pytest.approx(9 / 7), 0.0)
    assert math.isnan(b["ipt_mean"])
    in_utc = tiny.assign(when=tiny["when"].dt.tz_localize("UTC"))
    pd.testing.assert_frame_equal(clv.rfm(in_utc, "who", "when", "amount", CUT), out)


def test_rfm_weekly_periods(tiny: pd.DataFrame) -> None:
    # 7-day periods counted from 1970-01-01 (a Thursday): 2023-12-28..2024-01-03 holds 01-01 and 01-02,
    # 01-11..01-17 holds 01-15 and 01-25..01-31 (the last calibration period) holds 01-29.
    extra = pd.DataFrame({"who": ["a"], "when": [pd.Timestamp("2024-01-02")], "amount": [1.0]})
    out = clv.rfm(pd.concat([tiny, extra]), "who", "when", "amount", CUT, freq_days=7)
    a = out.loc["a"]
    assert (a["frequency"], a["recency"], a["T"], a["first_value"]) == (2, 4.0, 4.0, 16.0)


def test_window_and_time_split(tiny: pd.DataFrame) -> None:
    window = clv.purchases_in_window(tiny, "who", "when", "amount", CUT, horizon_weeks=1)
    assert window.to_dict("index") == {"c": {"purchases": 1.0, "value": 12.0}}
    features, labels = clv.training_frame(tiny, "who", "when", "amount", CUT, horizon_weeks=2, stack_bgnbd=False)
    # t0 = 01-18: features see a's first two purchases only, labels are a's 01-29 and b's 01-22.
    assert features.loc["a", "purchases"] == 2 and "b" not in features.index
    assert labels.loc["a", "purchases"] == 1 and labels.loc["a", "value"] == 30.0


def test_time_split_model_on_generic_invoices() -> None:
    rng = np.random.default_rng(1)
    start = pd.Timestamp("2023-01-01")
    days = rng.integers(0, 730, 6000)
    invoices = pd.DataFrame({
        "customer_id": rng.integers(0, 800, 6000),
        "issued_at": start + pd.to_timedelta(days, unit="D"),
        "amount": rng.gamma(2.0, 50.0, 6000),
    })
    cutoff = start + pd.Timedelta(days=730)
    for target in ("purchases", "value"):
        model = clv.fit_time_split(invoices, "customer_id", "issued_at", "amount", cutoff, 52, target=target)
        features = clv.model_features(invoices, "customer_id", "issued_at", "amount", cutoff, 52)
        assert (clv.predict_boosted(model, features) > 0).all()
    assert model.trained_on["labels"] == "value in [2024-01-02 00:00:00, 2024-12-31 00:00:00)"


def test_metrics_by_hand() -> None:
    frequency = pd.Series([0, 1, 8], index=list("xyz"))
    actual = pd.Series([0.0, 2.0, 10.0], index=list("xyz"))
    predicted = pd.Series([1.0, 1.0, 10.0], index=list("xyz"))
    metrics = clv.holdout_metrics(actual, predicted, frequency)
    assert metrics["total"] == 12.0 and metrics["total_error"] == 0.0
    assert metrics["bin_mae"] == pytest.approx(2 / 3)  # bins 0, 1 and 7+ are populated
    assert metrics["poisson_deviance"] == pytest.approx((2 + 2 * (2 * math.log(2) - 1)) / 3)
    assert metrics["rmse"] == pytest.approx(math.sqrt(2 / 3))
    table = clv.holdout_table(frequency, {"actual": actual})
    assert table.loc["customers"].tolist() == [1, 1, 0, 0, 0, 0, 0, 1]


def test_boosted_model_learns_a_rate() -> None:
    rng = np.random.default_rng(0)
    features = pd.DataFrame({"rate": rng.uniform(0, 3, 3000), "noise": rng.normal(size=3000)})
    label = pd.Series(rng.poisson(features["rate"]), dtype=float)
    model = clv.fit_boosted(features, label, horizon_weeks=13)
    predicted = clv.predict_boosted(model, features)
    assert predicted.sum() == pytest.approx(label.sum(), rel=0.05)
    assert np.corrcoef(predicted, features["rate"])[0, 1] > 0.95


needs_cdnow = pytest.mark.skipif(
    not cdnow.available(), reason=f"CDNOW files not found in {cdnow.default_dir()} (see shared/data/README.md)"
)


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    if not cdnow.available():
        pytest.skip(f"CDNOW files not found in {cdnow.default_dir()}")
    return cdnow.evaluate_cdnow()


@needs_cdnow
def test_bgnbd_reproduces_published_parameters(result: dict[str, Any]) -> None:
    ours, published = result["published"]["bgnbd_params"], cdnow.PUBLISHED_BGNBD
    for name, tolerance in (("r", 0.01), ("a", 0.01), ("alpha", 0.05), ("b", 0.05), ("log_likelihood", 1.0)):
        assert ours[name] == pytest.approx(published[name], abs=tolerance), name


@needs_cdnow
def test_bgnbd_holdout_totals(result: dict[str, Any]) -> None:
    assert result["published"]["metrics"].loc["actual", "total"] == 1882
    assert result["published"]["metrics"].loc["BG/NBD (ours)", "total"] == pytest.approx(1653, abs=10)
    assert result["forward"]["metrics"].loc["actual", "total"] == 726
    assert result["forward"]["metrics"].loc["BG/NBD (ours)", "total"] == pytest.approx(628, abs=5)
    table = result["published"]["table"]
    assert np.allclose(table.loc["actual"], cdnow.PUBLISHED_TABLE.loc["actual"], atol=0.001)
    assert np.allclose(table.loc["BG/NBD (ours)"], cdnow.PUBLISHED_TABLE.loc["BG/NBD"], atol=0.002)


@needs_cdnow
@pytest.mark.parametrize("split", ["published", "forward"])
def test_ours_beats_bgnbd(result: dict[str, Any], split: str) -> None:
    metrics = result[split]["metrics"]
    ours, bgnbd = metrics.loc["LightGBM (ours)"], metrics.loc["BG/NBD (ours)"]
    assert abs(ours["total_error"]) < abs(bgnbd["total_error"])
    assert ours["bin_mae"] < bgnbd["bin_mae"]
    assert ours["poisson_deviance"] < bgnbd["poisson_deviance"]


@needs_cdnow
def test_gamma_gamma_reproduces_published_parameters() -> None:
    sample_rfm = clv.rfm(cdnow.load_sample(), *cdnow.COLUMNS, "1997-10-01")
    params = clv.fit_gamma_gamma(sample_rfm).params_
    assert (params["p"], params["q"], params["v"]) == pytest.approx((6.25, 3.74, 15.44), abs=0.01)


@needs_cdnow
def test_holdout_chart(result: dict[str, Any]) -> None:
    figure = clv_holdout.holdout_chart(result["forward"]["table"])
    assert isinstance(figure, Figure)
    assert len(figure.axes[0].patches) == 3 * 8  # actual, our BG/NBD, ours; the forward split has no published row
