"""Feature and score drift, the statuses, realized-performance tables, online-offline differences and the fairness
table by segment: the pure functions of `c360.training.monitoring`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from c360.training.monitoring import (
    auc_se,
    by_decile,
    calibration,
    differences,
    fairness_table,
    feature_drift,
    nearest_drift,
    psi,
    psi_categories,
    quarantine_rates,
    score_drift,
    score_status,
    status,
    worst,
)


def _run(churn: np.ndarray, version: int = 1) -> pd.DataFrame:
    ids = [f"C{i:08d}" for i in range(len(churn))]
    bands = np.where(churn < 0.1, "low", np.where(churn < 0.25, "medium", "high"))
    return pd.concat([
        pd.DataFrame({"customer_id": ids, "model": "churn", "version": version, "score": churn, "label": bands}),
        pd.DataFrame({"customer_id": ids, "model": "clv", "version": 2, "score": 1000 * (1 - churn), "label": None}),
        pd.DataFrame({"customer_id": ids, "model": "nba", "version": 3, "score": churn / 10,
                      "label": np.where(churn > 0.3, "csm_call", "no_action")}),
    ], ignore_index=True)


def test_psi_is_zero_for_the_same_distribution_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    base = rng.beta(2, 8, 5000)
    assert psi(base, base) == pytest.approx(0, abs=1e-9)
    assert psi(base, rng.beta(2, 8, 5000)) < 0.02
    assert 0.25 < psi(base, base + 0.1) < psi(base, base + 0.2)


def test_drift_per_model_compares_the_same_customers() -> None:
    rng = np.random.default_rng(1)
    before = rng.beta(2, 8, 2000)
    drift = score_drift(_run(before), _run(np.clip(before + 0.15, 0, 1), version=2))
    churn = drift.loc["churn"]
    assert churn["versions"] == "v1 → v2" and churn["in both"] == 2000
    assert churn["mean abs change"] == pytest.approx(0.15, abs=0.01)
    assert churn["reading"] == "shifted" and churn["label changed"] > 0.3
    same = score_drift(_run(before), _run(before))
    assert same.loc["clv", "psi"] == pytest.approx(0, abs=1e-9) and same.loc["churn", "label changed"] == 0
    assert np.isnan(same.loc["clv", "label changed"]), "CLV has no label to change"


def test_fairness_table_shows_a_group_singled_out() -> None:
    churn = np.r_[np.full(100, 0.05), np.full(50, 0.5)]
    scores = _run(churn)
    segment = pd.Series(["smb"] * 100 + ["enterprise"] * 50, index=[f"C{i:08d}" for i in range(150)], name="segment")
    table = fairness_table(scores, segment)
    assert table.index.name == "segment"
    assert table.loc["enterprise", "share high risk"] == 1 and table.loc["smb", "share high risk"] == 0
    assert table.loc["enterprise", "action: csm_call"] == 1
    assert table["customers"].sum() == 150


def _snapshot(rng: np.random.Generator, n: int = 3000, age_days: int = 0, sessions: float = 12.0) -> pd.DataFrame:
    """Customers with tenure, a total to date growing with it at a steady monthly rate, a 30-day count and a
    category; `age_days` ages everyone, `sessions` moves the 30-day count."""
    tenure = rng.integers(30, 1500, n) + age_days
    monthly = rng.gamma(2, 50, n)
    return pd.DataFrame({"tenure_days": tenure, "revenue_total": monthly * tenure / 30,
                         "sessions_30d": rng.poisson(sessions, n), "plan": rng.choice(["basic", "pro"], n, p=[.7, .3]),
                         "nps_last": np.where(rng.random(n) < 0.3, np.nan, rng.integers(0, 11, n))})


FEATURES = ["tenure_days", "revenue_total", "sessions_30d", "plan", "nps_last"]


def test_an_unshifted_population_is_ok_and_a_growing_total_is_compared_per_tenure_month() -> None:
    rng = np.random.default_rng(2)
    before, after = _snapshot(rng), _snapshot(rng, age_days=120)
    drift = feature_drift(before, after, FEATURES).set_index("feature")
    assert (drift["status"] == "ok").all(), drift
    assert drift.loc["revenue_total", "compared"] == "per tenure month"
    assert drift.loc["tenure_days", "compared"] == "skipped" and "by construction" in drift.loc["tenure_days", "reason"]
    assert psi(before["revenue_total"], after["revenue_total"]) > psi(
        before["revenue_total"] / before["tenure_days"], after["revenue_total"] / after["tenure_days"]), \
        "as is, the total drifts as customers age: the reason for the per-month form"
    assert drift.loc["nps_last", "null_after"] == pytest.approx(0.3, abs=0.03)


def test_a_shifted_feature_and_category_act() -> None:
    rng = np.random.default_rng(3)
    before, after = _snapshot(rng), _snapshot(rng, sessions=5)
    after["plan"] = rng.choice(["basic", "pro"], len(after), p=[.3, .7])
    drift = feature_drift(before, after, [*FEATURES, "absent"]).set_index("feature")
    assert drift.loc["sessions_30d", "status"] == "act" and drift.loc["plan", "status"] == "act"
    assert drift.loc["nps_last", "status"] == "ok"
    assert drift.loc["absent", "compared"] == "skipped"
    assert psi_categories(before["plan"], before["plan"]) == pytest.approx(0, abs=1e-9)


def _teams(rng: np.random.Generator, low: int, n: int = 3000) -> pd.DataFrame:
    """Customers of tenure `low` to 1,600 days whose seats grow with it."""
    tenure = rng.integers(low, 1600, n)
    return pd.DataFrame({"tenure_days": tenure, "seats": rng.poisson(1 + tenure / 200)})


def test_an_aged_base_is_age_matched_and_a_real_shift_still_shows() -> None:
    rng = np.random.default_rng(4)
    window, today = _teams(rng, 30), _teams(rng, 600)  # the young customers have left or grown older since
    assert psi(window["seats"], today["seats"]) > 0.25, "unmatched, the aging base alone reads as a shift"
    drift = feature_drift(window, today, ["seats"], matched=True).set_index("feature")
    assert drift.loc["seats", "status"] == "ok" and drift.loc["seats", "psi"] < 0.1, drift
    halved = today.assign(seats=today["seats"] // 2)
    assert feature_drift(window, halved, ["seats"], matched=True).set_index("feature").loc["seats", "status"] == "act"


def _invoices(rng: np.random.Generator, discounted: float, n: int = 2000, plans: tuple = (.4, .3, .2, .1)
              ) -> pd.DataFrame:
    """Customers on list prices (`plans`: the share on each), a share of them paying 80 % of it (a discount campaign
    running that month)."""
    price = rng.choice([10.0, 25.0, 45.0, 70.0], n, p=list(plans))
    tenure = rng.integers(30, 1500, n)
    return pd.DataFrame({"tenure_days": tenure, "mrr": np.where(rng.random(n) < discounted, 0.8 * price, price)})


def test_a_window_of_months_is_read_against_its_nearest_month() -> None:
    """A window whose months mostly ran a discount campaign, and one that did not: the pool is like no month, so
    a month without the campaign reads as a shift against it; against its nearest month it is ok. A real shift,
    unlike every month, still reads."""
    rng = np.random.default_rng(5)
    months = {"jan": _invoices(rng, 0.0), **{m: _invoices(rng, 0.12) for m in ("feb", "mar", "apr", "may")}}
    latest = _invoices(rng, 0.0)
    pooled = feature_drift(pd.concat(months.values(), ignore_index=True), latest, ["mrr"], matched=True)
    assert pooled.loc[0, "reading"] != "ok", "the pool reads the campaign's end as drift"
    nearest = nearest_drift(months, latest, ["mrr", "tenure_days"]).set_index("feature")
    assert nearest.loc["mrr", "status"] == "ok" and nearest.loc["mrr", "nearest"] == "jan", nearest
    assert list(nearest.index) == ["mrr", "tenure_days"] and nearest.loc["tenure_days", "compared"] == "skipped"
    upgraded = _invoices(rng, 0.0, plans=(.1, .2, .3, .4))
    assert nearest_drift(months, upgraded, ["mrr"]).loc[0, "status"] == "act"


def test_score_drift_reads_the_mean_relative_to_itself() -> None:
    """A narrow score (15 % ± 3 %) whose mean moves 2 %: a sizeable SMD, an ok status; a 25 % rise acts."""
    rng = np.random.default_rng(6)
    before = np.clip(rng.normal(0.15, 0.03, 3000), 0, 1)
    narrow = score_drift(_run(before), _run(before * 1.02)).loc["churn"]
    assert narrow["smd"] > 0.09 and narrow["mean change"] == pytest.approx(0.02, abs=0.002)
    assert score_status(narrow["psi"], narrow["mean change"]) == "ok"
    risen = score_drift(_run(before), _run(before * 1.25)).loc["churn"]
    assert score_status(risen["psi"], risen["mean change"]) == "act"


def test_the_auc_standard_error_is_the_spread_of_redrawn_aucs() -> None:
    """Hanley & McNeil's standard error against the spread of AUCs over re-draws of the same month (80 churners in
    750 customers): the yardstick the realized-churn check reads a gap to the test AUC with."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(7)
    aucs = []
    for _ in range(400):
        y = np.r_[np.ones(80), np.zeros(670)]
        aucs.append(roc_auc_score(y, rng.normal(y * 0.8, 1.0)))
    assert auc_se(float(np.mean(aucs)), 80, 670) == pytest.approx(np.std(aucs), rel=0.15)
    assert auc_se(0.75, 800, 6700) < auc_se(0.75, 80, 670) / 3, "ten times the rows, about a third of the error"


def test_statuses_read_two_thresholds() -> None:
    assert [status(v, 0.1, 0.25) for v in (0.05, 0.1, 0.3, float("nan"))] == ["ok", "watch", "act", "ok"]
    assert worst(["ok", "act", "watch"]) == "act" and worst([]) == "ok"


def test_calibration_and_deciles_follow_the_data() -> None:
    rng = np.random.default_rng(4)
    p = rng.random(20000)
    y = rng.random(20000) < p  # calibrated by construction
    curve = calibration(y, p)
    assert len(curve) == 10 and curve["rows"].sum() == 20000
    assert np.allclose(curve["observed"], curve["predicted"], atol=0.03)
    skewed = calibration(y, p / 2)  # predicts half the true rate
    assert len(skewed) == 5 and np.allclose(skewed["observed"], 2 * skewed["predicted"], atol=0.03)
    value = pd.Series(rng.gamma(2, 100, 1000))
    deciles = by_decile(value, value * 1.1)
    assert list(deciles["decile"]) == list(range(1, 11)) and deciles["predicted"].is_monotonic_increasing
    assert np.allclose(deciles["realized"], deciles["predicted"] * 1.1)


def test_quarantine_rate_per_batch() -> None:
    log = pd.DataFrame({"table_id": ["crm/accounts", "crm/accounts", "billing/invoices"], "file": ["a", "b", "c"],
                        "rows_read": [100, 200, 0], "rows_quarantined": [2, 50, 0],
                        "ingested_at": pd.to_datetime(["2026-01-01", "2026-02-01", "2026-01-01"])})
    rates = quarantine_rates(log).set_index("file")
    assert rates.loc["a", "rate"] == 0.02 and rates.loc["b", "rate"] == 0.25 and rates.loc["c", "rate"] == 0


def test_online_values_differ_only_where_they_do() -> None:
    offline = pd.DataFrame({"customer_id": ["a", "b", "c"], "x": [1.0, np.nan, 3.0], "plan": ["pro", None, "basic"]})
    online = offline.sample(frac=1, random_state=0).reset_index(drop=True)
    assert not differences(online, offline, ["x", "plan"]).to_numpy().any()
    online.loc[online["customer_id"] == "c", "x"] = 3.5
    differ = differences(online, offline, ["x", "plan"])
    assert differ["x"].sum() == 1 and differ.loc["c", "x"] and differ["plan"].sum() == 0
