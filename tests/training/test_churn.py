"""Churn model: a known logistic churn law, calibration on a later period, exact contributions, reasons, CV."""

import io

import numpy as np
import pandas as pd
import pytest
import shap

from c360.training import churn, explain
from c360.training.churn import ChurnModel

FEATURES = ["tenure_days", "active_days_30d", "payment_failures_90d", "plan", "region", "nps_last", "sponsor"]
PLAN_EFFECT = {"Basic": 0.5, "Pro": 0.0, "Enterprise": -0.6}


def log_odds(X: pd.DataFrame) -> np.ndarray:
    """The true churn law (before the period's intercept); region is noise, a missing NPS is itself a signal."""
    nps = X["nps_last"].to_numpy(dtype=float)
    return (
        -0.7 * np.log(X["tenure_days"].to_numpy() / 365)
        - 0.09 * X["active_days_30d"].to_numpy()
        + 0.6 * X["payment_failures_90d"].to_numpy()
        + X["plan"].map(PLAN_EFFECT).fillna(0.2).to_numpy(dtype=float)
        + np.where(np.isnan(nps), 0.3, -0.2 * (np.nan_to_num(nps) - 7))
        - 0.5 * (X["sponsor"] == "Yes").to_numpy()
    )


def period(n: int, seed: int, intercept: float) -> tuple[pd.DataFrame, pd.Series, np.ndarray]:
    """One snapshot of ``n`` customers: features, a Yes/No churn label and the true churn probability."""
    rng = np.random.default_rng(seed)
    plan = rng.choice(["Basic", "Pro", "Enterprise"], n, p=[0.5, 0.35, 0.15]).astype(object)
    plan[rng.random(n) < 0.05] = None
    nps = rng.integers(0, 11, n).astype(float)
    nps[rng.random(n) < 0.3] = np.nan
    X = pd.DataFrame({
        "tenure_days": rng.integers(30, 2000, n),
        "active_days_30d": rng.binomial(30, rng.beta(2, 2, n)),
        "payment_failures_90d": rng.poisson(0.4, n),
        "plan": plan,
        "region": rng.choice(["EMEA", "AMER", "APAC", None], n),
        "nps_last": nps,
        "sponsor": rng.choice(["Yes", "No"], n, p=[0.3, 0.7]),
    })
    p = 1 / (1 + np.exp(-(intercept + log_odds(X))))
    y = pd.Series(np.where(rng.random(n) < p, "Yes", "No"), name="churned")
    return X, y, p


@pytest.fixture(scope="module")
def data():
    # Churn rises between the training period and the later ones: only calibration on a later period sees it.
    return {
        "train": period(20000, seed=1, intercept=-1.6),
        "calib": period(8000, seed=2, intercept=-1.2),
        "test": period(20000, seed=3, intercept=-1.2),
    }


@pytest.fixture(scope="module")
def model(data):
    (X, y, _), (Xc, yc, _) = data["train"], data["calib"]
    return ChurnModel(monotone={"payment_failures_90d": 1}).fit(X, y, Xc, yc)


# ---------------------------------------------------------------- accuracy and calibration


def test_auc_close_to_oracle_and_calibrated_on_later_period(model, data):
    X, y, p_true = data["test"]
    got = churn.metrics(y, model.predict_proba(X))
    oracle = churn.metrics(y, p_true)
    assert got["roc_auc"] > oracle["roc_auc"] - 0.03
    assert got["ece"] <= 0.03
    assert got["lift_at_10"] > 2


def test_calibration_corrects_the_drift(model, data):
    (X, y, _), (Xt, yt, _) = data["train"], data["test"]
    raw = ChurnModel(calibrated=False, monotone={"payment_failures_90d": 1}).fit(X, y)
    assert churn.metrics(yt, raw.predict_proba(Xt))["ece"] > churn.metrics(yt, model.predict_proba(Xt))["ece"] + 0.02
    # Platt scaling is monotone: the ranking, hence AUC, is the uncalibrated model's.
    assert churn.metrics(yt, raw.predict_proba(Xt))["roc_auc"] == pytest.approx(
        churn.metrics(yt, model.predict_proba(Xt))["roc_auc"], abs=1e-9
    )
    with pytest.raises(ValueError, match="later period"):
        ChurnModel().fit(X, y)


def test_isotonic_calibration_also_calibrated(data):
    (X, y, _), (Xc, yc, _), (Xt, yt, _) = data["train"], data["calib"], data["test"]
    model = ChurnModel(method="isotonic").fit(X.iloc[:8000], y.iloc[:8000], Xc, yc)
    assert churn.metrics(yt, model.predict_proba(Xt))["ece"] <= 0.03


def test_logistic_baseline_runs(data):
    (X, y, _), (Xt, yt, p_true) = data["train"], data["test"]
    baseline = churn.fit_baseline(X, y)
    p = baseline.predict_proba(Xt)[:, 1]
    assert p.shape == (len(Xt),)
    assert 0.6 < churn.metrics(yt, p)["roc_auc"] <= churn.metrics(yt, p_true)["roc_auc"] + 0.01


def test_metrics_by_hand():
    y = ["No", "Yes", "No", "Yes"]
    p = np.array([0.05, 0.95, 0.15, 0.55])
    m = churn.metrics(y, p)
    assert m["roc_auc"] == 1.0
    assert m["brier"] == pytest.approx((0.05**2 + 0.05**2 + 0.15**2 + 0.45**2) / 4)
    # bins: 0.05 -> [0, .1), 0.15 -> [.1, .2), 0.55 -> [.5, .6), 0.95 -> [.9, 1]
    assert m["ece"] == pytest.approx((0.05 + 0.15 + 0.45 + 0.05) / 4)
    assert m["lift_at_10"] == 2.0  # top row (0.95) churned; overall rate 0.5


def test_figures_are_figures(model, data):
    from matplotlib.figure import Figure

    X, y, p_true = data["test"]
    p = model.predict_proba(X)
    assert isinstance(churn.calibration_curve_figure(y, {"model": p, "oracle": p_true}), Figure)
    assert isinstance(churn.roc_figure(y, p), Figure)
    head = X.iloc[:500]
    assert isinstance(explain.shap_summary_figure(model.contributions(head), model.feature_values(head)), Figure)


# ---------------------------------------------------------------- contributions


@pytest.mark.filterwarnings("ignore:LightGBM binary classifier")
def test_contributions_are_tree_shap_and_sum_to_raw_score(model, data):
    X = data["test"][0].iloc[:2000]
    contributions = model.contributions(X)
    assert list(contributions.columns) == [*model.spec.names, "base_value"]
    raw = model.booster.predict(model.prepare(X), raw_score=True)
    np.testing.assert_allclose(contributions.sum(axis=1), raw, atol=1e-6)
    np.testing.assert_allclose(raw, model.raw_score(X))
    explainer = shap.TreeExplainer(model.booster)
    shap_values = explainer.shap_values(model.prepare(X))
    np.testing.assert_allclose(shap_values, contributions.drop(columns="base_value"), atol=1e-6)
    np.testing.assert_allclose(explainer.expected_value, contributions["base_value"], atol=1e-6)


def test_contributions_match_shaps_own_tree_shap(data):
    """shap delegates LightGBM boosters to pred_contrib; its own TreeSHAP implementation is an independent check.

    Numeric features only: shap's parser reads LightGBM's categorical splits as thresholds (off by up to 0.6 on
    this data), so for categoricals the check above against pred_contrib is all shap can offer.
    """
    X, y, _ = data["train"]
    numeric = X[["tenure_days", "active_days_30d", "payment_failures_90d", "nps_last"]].iloc[:5000]
    model = ChurnModel(calibrated=False).fit(numeric, y.iloc[:5000])
    explainer = shap.TreeExplainer(model.booster)
    explainer.model.model_type = "internal"  # force shap's C implementation over its parsed trees
    head = model.prepare(numeric.iloc[:300])
    np.testing.assert_allclose(explainer.shap_values(head), model.contributions(head).iloc[:, :-1], atol=1e-6)


# ---------------------------------------------------------------- behaviour


def test_more_failed_payments_never_lowers_churn_risk(model, data):
    """Monotone constraint on payment_failures_90d, checked per customer (ICE), not just on average (PDP)."""
    X = data["test"][0].iloc[:1000]
    curves = np.column_stack([model.predict_proba(X.assign(payment_failures_90d=failures)) for failures in range(7)])
    assert (np.diff(curves, axis=1) >= -1e-12).all()
    assert (curves[:, -1] > curves[:, 0]).mean() > 0.9


# ---------------------------------------------------------------- reasons


def test_reasons_pick_the_largest_contributions_and_word_the_direction():
    contributions = pd.DataFrame({
        "active_days_30d": [0.8, -0.1],
        "payment_failures_90d": [-0.2, 0.0],
        "Contract_Type": [0.5, 0.3],
        "base_value": [-2.0, -2.0],
    })
    values = pd.DataFrame({
        "active_days_30d": [2, 25],
        "payment_failures_90d": [0, 0],
        "Contract_Type": ["Monthly", None],
    })
    descriptions = explain.feature_descriptions()
    got = explain.reasons(contributions, values, descriptions, k=2)
    assert [r["feature"] for r in got[0]] == ["active_days_30d", "Contract_Type"]
    assert got[0][0] == {
        "feature": "active_days_30d",
        "value": 2,
        "contribution": 0.8,
        "direction": "raises",
        "text": "days with product activity in the last 30 days: 2 — raises churn risk",
    }
    assert got[0][1]["text"] == "Contract Type: Monthly — raises churn risk"
    assert [r["feature"] for r in got[1]] == ["Contract_Type", "active_days_30d"]
    assert got[1][0]["text"] == "Contract Type: missing — raises churn risk"
    assert got[1][0]["value"] is None
    assert got[1][1]["direction"] == "lowers"
    # zero contributions are never reasons; the verb is the caller's
    three = explain.reasons(contributions, values, descriptions, k=3, outcome="expected value")
    assert len(three[1]) == 2
    assert three[0][2]["text"] == "failed payment attempts in the last 90 days: 0 — lowers expected value"


def test_reasons_on_the_model(model, data):
    X = data["test"][0].iloc[:200]
    contributions = model.contributions(X)
    got = explain.reasons(contributions, model.feature_values(X), {"sponsor": "an executive sponsor"})
    for row, row_reasons in enumerate(got):
        strongest = contributions.drop(columns="base_value").iloc[row].abs().nlargest(3)
        assert [r["feature"] for r in row_reasons] == list(strongest.index)
        for r in row_reasons:
            assert (r["direction"] == "raises") == (r["contribution"] > 0)
            assert r["text"].endswith(f"{r['direction']} churn risk")
    sponsor = [r for rs in got for r in rs if r["feature"] == "sponsor"]
    assert sponsor and all(r["text"].startswith(f"an executive sponsor: {r['value']} — ") for r in sponsor)


def test_format_value():
    assert [explain.format_value(v) for v in [2, 2.0, 0.345, 1234.5, True, np.nan, None, "Pro"]] == [
        "2", "2", "0.34", "1,234.5", "yes", "missing", "missing", "Pro"
    ]


# ---------------------------------------------------------------- generic tables


def test_cross_validate_on_a_csv_like_table():
    rng = np.random.default_rng(4)
    n = 3000
    tenure = rng.integers(1, 72, n)
    contract = rng.choice(["Month-to-month", "One year", "Two year"], n, p=[0.55, 0.25, 0.2])
    charges = rng.uniform(20, 120, n).round(2)
    senior = rng.choice(["Yes", "No"], n, p=[0.2, 0.8])
    z = -1.0 - 0.04 * tenure + 1.2 * (contract == "Month-to-month") + 0.01 * charges + 0.4 * (senior == "Yes")
    churned = np.where(rng.random(n) < 1 / (1 + np.exp(-z)), "Yes", "No")
    total = (charges * tenure).round(2).astype(str)
    total[rng.random(n) < 0.02] = " "  # blanks in a numeric column, as in the Telco export
    table = pd.DataFrame({
        "customerID": [f"C{i:05d}" for i in range(n)],
        "Senior Citizen?": senior,
        "tenure (months)": tenure,
        "Contract": contract,
        "Monthly Charges ($)": charges,
        "TotalCharges": total,
        "Payment.Method": rng.choice(["Electronic check", "Mailed check", "Card", ""], n),
        "Churn": churned,
    })
    table.loc[rng.random(n) < 0.05, "Contract"] = ""
    frame = pd.read_csv(io.StringIO(table.to_csv(index=False)))
    X, y = frame.drop(columns=["customerID", "Churn"]), frame["Churn"]
    assert X.isna().any().any()

    folds = churn.cross_validate(X, y, folds=3, seed=0)
    assert len(folds) == 3
    assert list(folds["fold"]) == [0, 1, 2]
    assert {"roc_auc", "pr_auc", "brier", "ece", "lift_at_10"} <= set(folds.columns)
    assert (folds["roc_auc"] > 0.7).all()
    assert folds["rows"].sum() == n
