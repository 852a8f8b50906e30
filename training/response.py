"""Campaign response propensity: the probability that a campaign message of a given channel and content topic is
clicked or answered within `RESPONSE.horizon_days` of its sending.

Examples are the marketing silo's sends (`labels.response`): each is the customer's features of `response_v1` as of
the latest feature snapshot at or before the send (point-in-time, through Feast as the other models), plus the send's
channel and topic. One calibrated LightGBM (`ChurnModel`) with channel and topic as two categorical inputs, not one
model per pair: most pairs have few sends (a company sends some topics on one channel only), and one model shares
what drives engagement (health, past opens and clicks) across them while the trees still learn each pair's own level
and interactions. Serving scores every channel × topic pair of a customer in one batch (`pairs`).

The split is by campaign launch, never across time: the test period starts at the earliest of each channel's latest
launch, so every channel is tested on a later campaign wave than any it was trained on; calibration is the same rule
on what precedes it, training the rest. The card and MLflow carry, per channel of the test period, the ROC-AUC with
its 95 % bootstrap interval and the ECE, beside a logistic regression on the same inputs.
"""

from __future__ import annotations

from itertools import product

import numpy as np
import pandas as pd
from feast import FeatureStore
from sklearn.metrics import roc_auc_score

from c360.core import warehouse
from c360.core.contract import CONTENT_TOPICS, SEND_CHANNELS
from c360.core.definitions import BY_NAME
from c360.core.settings import Settings
from c360.features import store
from c360.training import cards, fairness, labels, tracking
from c360.training.churn import ChurnModel, fit_baseline, metrics
from c360.training.datasets import NoExamples, retrieve
from c360.training.pipeline import binary_figures
from c360.training.specs import RESPONSE
from c360.training.tracking import TrainReport

TARGET = "responded"
SEND = ("campaign_channel", "campaign_topic")  # the send's own inputs, beside the customer's features
CHANNELS = SEND_CHANNELS
MIN_SENDS = 200  # fewer sends of a channel in the test period give no usable AUC interval
DEFINITION = (
    f"Campaign response: a campaign message to one of the customer's contacts clicked or answered within "
    f"{RESPONSE.horizon_days} days of its sending (`training/labels.py`), per channel and content topic. Population: "
    "the messages sent (holdout rows and the 'none' channel excluded; bounced messages count as misses). Campaign "
    "plans choose a customer's channel by it (`--channel best`).")


# ---------------------------------------------------------------- examples


def examples(s: Settings, con, fs: FeatureStore) -> pd.DataFrame:
    """One row per send: customer_id, sent_at, launched_at, as_of (the snapshot its features come from), the
    send's channel and topic, the customer's `response_v1` features and `responded`."""
    dates = store.snapshot_dates(s)
    if not dates:
        raise ValueError("no feature snapshots: `c360 features build` first")
    sends = labels.response(con, dates[0], warehouse.data_end(con))
    if sends.empty:
        raise NoExamples("no campaign sends after the first feature snapshot: nothing to learn response from")
    sends["as_of"] = pd.Series(pd.to_datetime(dates)).iloc[
        np.searchsorted(pd.to_datetime(dates), pd.to_datetime(sends["sent_at"]), side="right") - 1].to_numpy()
    features = retrieve(fs, RESPONSE.service, sends[["customer_id", "as_of"]].drop_duplicates())
    features = features[["customer_id", "as_of", *(n for n in BY_NAME if n in features.columns)]]
    frame = sends.assign(campaign_channel=sends["channel"], campaign_topic=sends["topic"])
    return frame.merge(features, on=["customer_id", "as_of"], how="left")


def inputs(frame: pd.DataFrame) -> list[str]:
    """The model's columns: the customer's features, then the send's channel and topic."""
    return [c for c in frame.columns if c in BY_NAME] + list(SEND)


def wave_split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, calibration, test) by campaign launch: test from the earliest of each channel's latest launch,
    calibration from the same point of what is earlier, training before it."""
    test_start = _latest_waves_start(frame)
    earlier = frame[frame["launched_at"] < test_start]
    if earlier.empty:
        raise NoExamples("campaign sends of a single wave: response needs earlier waves to train on")
    calib_start = _latest_waves_start(earlier)
    train = earlier[earlier["launched_at"] < calib_start]
    if train.empty:
        raise NoExamples("campaign sends of two waves only: response needs a third to train on")
    return train, earlier[earlier["launched_at"] >= calib_start], frame[frame["launched_at"] >= test_start]


def _latest_waves_start(frame: pd.DataFrame) -> pd.Timestamp:
    return pd.Timestamp(frame.groupby("channel")["launched_at"].max().min())


# ---------------------------------------------------------------- evaluation


def auc_interval(y: np.ndarray, p: np.ndarray, draws: int = 200, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of the ROC-AUC (resampled sends; a draw with one outcome only is skipped)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        rows = rng.integers(0, len(y), len(y))
        if 0 < y[rows].sum() < len(rows):
            values.append(roc_auc_score(y[rows], p[rows]))
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def by_channel(test: pd.DataFrame, p: np.ndarray) -> pd.DataFrame:
    """Per channel of the test period: sends, response rate, mean prediction, and where it has `MIN_SENDS` sends
    of both outcomes, ROC-AUC with its 95 % interval and ECE."""
    rows = {}
    for channel, part in test.assign(p=p).groupby("channel"):
        y, score = part[TARGET].to_numpy(dtype=int), part["p"].to_numpy()
        row = {"sends": len(part), "rate": y.mean(), "mean_prediction": score.mean()}
        if len(part) >= MIN_SENDS and 0 < y.sum() < len(y):
            low, high = auc_interval(y, score)
            found = metrics(y, score)
            row |= {"roc_auc": found["roc_auc"], "auc_low": low, "auc_high": high, "ece": found["ece"]}
        rows[channel] = row
    return pd.DataFrame(rows).T.rename_axis("channel")


# ---------------------------------------------------------------- serving


def pairs(customers: pd.DataFrame, channels: tuple[str, ...] = CHANNELS,
          topics: tuple[str, ...] = CONTENT_TOPICS) -> pd.DataFrame:
    """Every customer row (features as columns) repeated for each channel × topic, with `campaign_channel` and
    `campaign_topic` set: the one batch serving scores to pick a customer's best pair."""
    return customers.reset_index(drop=True).merge(_sends(channels, topics), how="cross")


def _sends(channels: tuple[str, ...], topics: tuple[str, ...]) -> pd.DataFrame:
    """Every channel × topic, one row each, in the order of a customer's rows of `pairs`."""
    return pd.DataFrame(list(product(channels, topics)), columns=list(SEND))


def pairs_matrix(model: ChurnModel, customers: pd.DataFrame, channels: tuple[str, ...] = CHANNELS,
                 topics: tuple[str, ...] = CONTENT_TOPICS) -> np.ndarray:
    """`model.matrix(pairs(customers, ...))` without preparing a customer's features once per pair (most of a live
    round's response scoring): each customer's row prepared once and repeated, the send's columns prepared once per
    pair and tiled. A column's preparation reads its own value only, so the rows are the same."""
    grid = _sends(channels, topics)
    if customers.empty:
        return np.empty((0, len(model.columns)), dtype="float64")
    rows = model.matrix(customers.assign(**dict.fromkeys(SEND)))
    sends = model.matrix(customers.iloc[[0] * len(grid)].reset_index(drop=True).assign(**grid))
    send_columns = [model.columns.index(c) for c in SEND]
    matrix = np.repeat(rows, len(grid), axis=0)
    matrix[:, send_columns] = np.tile(sends[:, send_columns], (len(customers), 1))
    return matrix


def best(customers: pd.DataFrame, probability: np.ndarray, key: str = "customer_id") -> pd.DataFrame:
    """From `pairs(customers)` and their probabilities: each customer's best channel and topic with its
    probability (`key`, best_channel, best_topic, probability), indexed by its row of `customers`."""
    scored = customers[[key, *SEND]].assign(probability=probability)
    top = scored.loc[scored.groupby(key, sort=False)["probability"].idxmax()]
    return top.rename(columns={"campaign_channel": "best_channel", "campaign_topic": "best_topic"})


def by_channel_best(customers: pd.DataFrame, probability: np.ndarray, key: str = "customer_id") -> pd.DataFrame:
    """Each customer's best topic on every channel (`key`, campaign_channel, campaign_topic, probability), the
    customer's channels from the most to the least likely to get a response."""
    scored = customers[[key, *SEND]].assign(probability=probability)
    top = scored.loc[scored.groupby([key, "campaign_channel"], sort=False)["probability"].idxmax()]
    return top.sort_values([key, "probability"], ascending=[True, False], kind="mergesort")


# ---------------------------------------------------------------- the stage


def model_card(split: tuple, results: dict[str, dict[str, float]], channels: pd.DataFrame,
               groups: pd.DataFrame, features: list[str]) -> str:
    train, calib, test = split
    return cards.model_card(RESPONSE.name, DEFINITION, {
        "Data window": [[
            f"train: {len(train):,} sends, campaigns launched {train['launched_at'].min():%Y-%m-%d} to "
            f"{train['launched_at'].max():%Y-%m-%d}",
            f"calibration: {len(calib):,} sends, launched from {calib['launched_at'].min():%Y-%m-%d}",
            f"test: {len(test):,} sends, launched from {test['launched_at'].min():%Y-%m-%d} (each channel's latest "
            f"wave); response rate {test[TARGET].mean():.3f}",
            f"features: feature service `{RESPONSE.service}` as of the send, plus its channel and topic "
            f"({len(features)} inputs)",
        ]],
        "Test metrics": [pd.DataFrame(results).T.rename_axis("model").map(lambda v: f"{v:.4f}")],
        "By channel in the test period (ROC-AUC with its 95 % bootstrap interval)": [channels.round(4)],
        f"Fairness in the test period (action threshold: {fairness.CHURN_ACTION:.2f})":
            fairness.card_section(groups, RESPONSE.kind),
        "Caveats": [[
            "A pair a company never sent (a topic on a channel it does not use) is scored from the trees' shared "
            "structure only: the probability of an untried pair is an extrapolation.",
            "Sends of one customer are not independent; the split is by campaign launch, never random.",
        ]],
    })


def train_response(s: Settings) -> TrainReport:
    """Train response propensity on the sends, evaluate on each channel's latest wave, log to MLflow and register
    as @challenger."""
    fs = store.offline(s)
    with warehouse.connect(s, read_only=True) as con:
        frame = examples(s, con, fs)
        bands = fairness.customer_groups(con, frame["customer_id"])
    train, calib, test = split = wave_split(frame)
    features, y = inputs(frame), TARGET
    model = ChurnModel().fit(train[features], train[y], calib[features], calib[y], groups=train["customer_id"])
    baseline = fit_baseline(train[features], train[y])
    scores = {"lightgbm": model.predict_proba(test[features]),
              "logistic": baseline.predict_proba(test[features])[:, 1]}
    results = {name: metrics(test[y], p) for name, p in scores.items()}
    channels = by_channel(test, scores["lightgbm"])
    groups = fairness.churn_groups(test[y], scores["lightgbm"], fairness.with_groups(test, bands))
    gap_metrics, gap_tags = fairness.logged(groups, RESPONSE.kind)
    per_channel = {f"{metric}.{channel}": float(value) for channel, row in channels.iterrows()
                   for metric, value in row.items() if metric in ("sends", "roc_auc", "auc_low", "ece")
                   and pd.notna(value)}
    figures = binary_figures(test[y], scores, model, test[features], "test waves")
    test_period = f"{test['launched_at'].min():%Y-%m-%d}"
    logged = {**results["lightgbm"], **gap_metrics, **per_channel}
    version = tracking.log_training_run(
        experiment=RESPONSE.name, run_name=f"response {test_period}", model=model, flavor="pyfunc",
        params={"horizon_days": RESPONSE.horizon_days, "features": len(features), "trees": model.n_trees,
                "calibration": "platt", "split": "campaign launch"},
        metrics=logged, baselines={"logistic": results["logistic"]},
        dataset={"training": train, "test": test}, dataset_name=RESPONSE.service, target=y,
        input_example=test[features].head(5), figures=figures,
        tables={"test_metrics": pd.DataFrame(results).T, "by_channel": channels, "fairness": groups.reset_index()},
        model_card=model_card(split, results, channels, groups, features), registered_name=RESPONSE.name,
        tags={"test_period": test_period, "feature_service": RESPONSE.service, **gap_tags}, home=s.home)
    return TrainReport(RESPONSE.name, int(version.version), str(version.run_id), test_period,
                       {"train": len(train), "calibration": len(calib), "test": len(test)}, logged,
                       {"logistic": results["logistic"]})
