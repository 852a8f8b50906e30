"""CLV on the company's own data: 12-month net revenue from the `clv_v1` features, against BG/NBD + Gamma-Gamma.

Examples are snapshot dates whose whole 12-month label lies inside the data. The test is forward-honest: the
model predicts from the latest snapshot, and is judged on the 12 months that follow it — on generated data the
generator's realised future value (`customers.parquet: future_value_12m`), beyond anything the warehouse holds.
Without ground truth, the latest labelled snapshot is the test and earlier ones train (their label windows then
overlap the test's: said in the model card).
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from feast import FeatureStore
from matplotlib.figure import Figure

from c360.core import warehouse
from c360.core.definitions import BY_NAME
from c360.core.settings import Settings
from c360.features import store
from c360.training import cards, clv, datasets, fairness, labels, tracking
from c360.training.specs import CLV
from c360.training.tracking import TrainReport
from c360.training.uplift import FeatureSpec, lgb_rows, prepare_features

CLV_MODEL = CLV.name
SERVICE = CLV.service
HORIZON_WEEKS = labels.CLV_HORIZON_DAYS / 7
PAID_SQL = """
SELECT x.customer_id, i.issued_at, i.amount FROM billing_invoices i
JOIN identity_crosswalk x ON x.record_id = 'billing/customers:' || i.billing_account_id
WHERE i.status = 'paid' AND i.issued_at < $before ORDER BY x.customer_id, i.issued_at
"""


@dataclass
class ClvModel:
    """LightGBM (Tweedie) on prepared features: expected net revenue in the next 12 months."""

    booster: lgb.Booster
    spec: FeatureSpec

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.booster.predict(lgb_rows(X, self.spec)))

    def contributions(self, X: pd.DataFrame, threads: int = 1) -> pd.DataFrame:
        """Tree SHAP values (LightGBM ``pred_contrib``) of the log of the expected value (Tweedie's link): a column
        per prepared feature plus ``base_value``; each row sums to log(predict)."""
        values = self.booster.predict(lgb_rows(X, self.spec), pred_contrib=True,
                                      num_threads=threads)
        columns = [*self.spec.names, "base_value"]
        return pd.DataFrame(np.asarray(values, dtype="float64"), index=X.index, columns=columns)

    @staticmethod
    def value_of(contributions: pd.DataFrame) -> np.ndarray:
        """``predict`` from the rows' ``contributions``: Tweedie's log link undone on their sums."""
        return np.exp(contributions.to_numpy().sum(axis=1))


# A company's examples are many customers × many snapshots: CDNOW's slow learning (0.03) took a fixed 300 rounds
# here, and every round is a tree each customer's scores and reasons walk. At 0.1, early stopping on held-out
# customers stopped after 93 rounds on the demo company with the same forward test error (README, Models).
PARAMS: dict = {**clv.VALUE_PARAMS, "learning_rate": 0.1}


def fit(X: pd.DataFrame, y: pd.Series, customers: pd.Series, seed: int = 7) -> ClvModel:
    """LightGBM Tweedie; its rounds by early stopping on a random fifth of the customers (all their snapshots:
    a customer's rows in both parts would make the held-out loss optimistic), then refitted on all."""
    prepared, spec = prepare_features(X)
    ids = pd.unique(customers)
    held = np.random.default_rng(seed).random(len(ids)) < 0.2
    valid = customers.isin(ids[held]).to_numpy()
    return ClvModel(clv.boost(prepared, y.clip(lower=0), PARAMS, 1000, seed, valid=valid), spec)


def bgnbd_gamma_gamma(con, as_of: pd.Timestamp, customers: pd.Series) -> pd.Series:
    """The classic baseline: BG/NBD purchases × Gamma-Gamma spend for 12 months, from paid invoices before as_of."""
    paid = con.execute(PAID_SQL, {"before": as_of.to_pydatetime()}).df()
    history = clv.rfm(paid, "customer_id", "issued_at", "amount", as_of)
    bgnbd = clv.fit_bgnbd(history, penalizer=0.001)
    value = clv.gamma_gamma_value(bgnbd, clv.fit_gamma_gamma(history, penalizer=0.001), history, HORIZON_WEEKS)
    return value.reindex(customers).fillna(0.0).set_axis(customers.index)


def value_metrics(actual: pd.Series, predicted: pd.Series | np.ndarray) -> dict[str, float]:
    predicted = np.asarray(predicted, dtype=float)
    error = predicted - actual.to_numpy(dtype=float)
    return {"total_predicted": float(predicted.sum()), "total_actual": float(actual.sum()),
            "total_error_pct": float(100 * error.sum() / actual.sum()),
            "abs_total_error_pct": float(100 * abs(error.sum()) / actual.sum()),
            "rmse": float(np.sqrt(np.mean(error**2))),
            "poisson_deviance": clv.poisson_deviance(actual, pd.Series(predicted, index=actual.index)),
            "mae": float(np.mean(np.abs(error)))}


def holdout_chart(actual: pd.Series, predictions: dict[str, np.ndarray | pd.Series], title: str) -> Figure:
    """Mean actual against mean predicted 12-month value per decile of each model's prediction."""
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    top = 0.0
    for name, predicted in predictions.items():
        p = pd.Series(np.asarray(predicted, dtype=float), index=actual.index)
        decile = pd.qcut(p.rank(method="first"), 10, labels=False)
        means = pd.DataFrame({"p": p, "y": actual}).groupby(decile).mean()
        ax.plot(means["p"], means["y"], marker="o", label=name)
        top = max(top, means.to_numpy().max())
    ax.plot([0, top], [0, top], linestyle="--", color="grey", linewidth=0.8, label="predicted = actual")
    ax.set_xlabel("mean predicted 12-month value, per decile of the prediction")
    ax.set_ylabel("mean actual 12-month value")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def by_segment(test: pd.DataFrame, predictions: dict[str, np.ndarray | pd.Series]) -> pd.DataFrame:
    """Fairness review: actual and predicted total value per segment, and each model's error on it."""
    frame = test[["segment", "value"]].assign(**{k: np.asarray(v, dtype=float) for k, v in predictions.items()})
    totals = frame.groupby(frame["segment"].fillna("unknown"))[["value", *predictions]].sum()
    errors = {f"{k}_error_pct": 100 * (totals[k] - totals["value"]) / totals["value"] for k in predictions}
    return totals.assign(customers=frame.groupby(frame["segment"].fillna("unknown")).size(), **errors)


def _test_set(s: Settings, con, fs, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(train, test, what the test's actual value is)."""
    truth = s.truth / "customers.parquet"
    if not truth.exists():
        last = frame["as_of"].max()
        return frame[frame["as_of"] < last], frame[frame["as_of"] == last], "net revenue in the 12 months after"
    latest = store.snapshot_dates(s)[-1]
    snapshot = store.read_snapshot(s, latest)
    subscribed = snapshot.loc[snapshot["subscribed"], ["customer_id"]].assign(value=np.nan)
    test = datasets.examples(con, fs, SERVICE, [latest], lambda *_: subscribed)
    account = test["customer_id"].map(datasets.customer_accounts(con, s.truth))
    future = pd.read_parquet(truth, columns=["account", "future_value_12m"]).set_index("account")["future_value_12m"]
    test["value"] = account.map(future)
    return frame, test.dropna(subset=["value"]), "the generator's realised revenue in the 12 months after (truth)"


def clv_examples(s: Settings, con, fs: FeatureStore) -> pd.DataFrame:
    """Every subscribed customer of every snapshot with 12 months of data after it, and its value in them."""
    end = warehouse.data_end(con)
    dates = [d for d in store.snapshot_dates(s) if labels.labelable(d, end, labels.CLV_HORIZON_DAYS)]
    if not dates:
        raise datasets.NoExamples("no snapshot has 12 months of data after it: build older snapshots "
                         "(`c360 features build --history-days 644`)")
    return datasets.examples(con, fs, SERVICE, dates, labels.clv)


def train_clv(s: Settings) -> TrainReport:
    fs = store.offline(s)
    with warehouse.connect(s, read_only=True) as con:
        frame = clv_examples(s, con, fs)
        train, test, actual_is = _test_set(s, con, fs, frame)
        datasets.require({"training": train, "test": test})
        baseline = bgnbd_gamma_gamma(con, pd.Timestamp(test["as_of"].iloc[0]), test["customer_id"])
        bands = fairness.customer_groups(con, test["customer_id"])
    features = [c for c in frame.columns if c in BY_NAME]
    model = fit(train[features], train["value"], train["customer_id"])
    predictions = {"lightgbm": model.predict(test[features]), "bgnbd_gamma_gamma": baseline}
    results = {name: value_metrics(test["value"], p) for name, p in predictions.items()}
    segments = by_segment(test, predictions)
    groups = fairness.clv_groups(test["value"], predictions["lightgbm"], fairness.with_groups(test, bands))
    gap_metrics, gap_tags = fairness.logged(groups, "clv")
    test_period = f"{pd.Timestamp(test['as_of'].iloc[0]):%Y-%m-%d}"
    card = cards.model_card(CLV_MODEL, "Expected net revenue in the 12 months after the as-of date.", {
        "Data": [[
            f"train: {len(train):,} examples, as-of {train['as_of'].min():%Y-%m-%d} to "
            f"{train['as_of'].max():%Y-%m-%d}",
            f"test: {len(test):,} customers at {test_period}; actual = {actual_is}",
            "baseline: BG/NBD × Gamma-Gamma (lifetimes) on paid invoices before the test date",
        ]],
        "Test metrics": [pd.DataFrame(results).T.rename_axis("model").round(2)],
        "By segment in the test period (fairness review)": [segments.round(1)],
        "Fairness in the test period": fairness.card_section(groups, "clv"),
    })
    version = tracking.log_training_run(
        experiment=CLV_MODEL, run_name=f"clv {test_period}", model=model, flavor="pyfunc",
        params={"horizon_weeks": HORIZON_WEEKS, "objective": "tweedie", "features": len(features)},
        metrics={**results["lightgbm"], **gap_metrics}, baselines={"bgnbd_gamma_gamma": results["bgnbd_gamma_gamma"]},
        dataset={"training": train, "test": test}, dataset_name=SERVICE, target="value",
        input_example=test[features].head(5),
        figures={"holdout": holdout_chart(test["value"], predictions, f"12-month value after {test_period}")},
        tables={"test_metrics": pd.DataFrame(results).T, "by_segment": segments, "fairness": groups.reset_index()},
        model_card=card, registered_name=CLV_MODEL,
        tags={"test_period": test_period, "feature_service": SERVICE, **gap_tags},
        home=s.home)
    return TrainReport(CLV_MODEL, int(version.version), str(version.run_id), test_period,
                       {"train": len(train), "test": len(test)}, {**results["lightgbm"], **gap_metrics},
                       {"bgnbd_gamma_gamma": results["bgnbd_gamma_gamma"]})
