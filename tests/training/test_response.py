"""Campaign response propensity on the generated company: labels from the sends, point-in-time features, the
split by campaign wave, the acceptance figures per channel on the later wave, the serving pairs and the gate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from c360.core import warehouse
from c360.core.settings import Settings
from c360.features import store
from c360.training import labels, response
from c360.training.registry import promote
from c360.training.specs import RESPONSE

# the bars, per channel of the test wave
AUC, ECE = 0.55, 0.03


@pytest.fixture(scope="module")
def home(home_with_snapshots) -> Settings:
    return home_with_snapshots("response_home", history_days=365)


@pytest.fixture(scope="module")
def examples(home: Settings) -> pd.DataFrame:
    with warehouse.connect(home, read_only=True) as con:
        return response.examples(home, con, store.feature_store(home))


@pytest.fixture(scope="module")
def trained(home: Settings, mlflow_home):
    return response.train_response(home)


def test_examples_are_sends_with_features_from_before_them(home: Settings, examples: pd.DataFrame) -> None:
    assert (examples["as_of"] <= examples["sent_at"]).all()
    dates = pd.Series(pd.to_datetime(store.snapshot_dates(home)))
    later = examples["as_of"].map(lambda day: dates[dates > day].min())
    assert not (later <= examples["sent_at"]).any(), "the latest snapshot before the send is used"
    assert examples["tenure_days"].notna().mean() > 0.9, "features found for nearly every send"
    assert set(examples["channel"]) <= set(response.CHANNELS) and "none" not in set(examples["channel"])
    assert 0.02 < examples[response.TARGET].mean() < 0.5


def test_a_counter_label_from_a_shorter_horizon_is_never_more(home: Settings, examples: pd.DataFrame) -> None:
    """The label reads the horizon it is given: zero days after the send nothing is clicked yet."""
    start = examples["sent_at"].min()
    with warehouse.connect(home, read_only=True) as con:
        none = labels.response(con, start, warehouse.data_end(con), 0)
    assert len(none) >= len(examples) and not none["responded"].any()


def test_the_test_wave_is_later_than_every_training_and_calibration_send(examples: pd.DataFrame) -> None:
    train, calib, test = response.wave_split(examples)
    assert train["launched_at"].max() < calib["launched_at"].min() <= calib["launched_at"].max() < \
        test["launched_at"].min()
    assert set(test["channel"]) == set(examples["channel"]), "every channel is tested on its latest wave"


def test_a_single_wave_cannot_be_split(examples: pd.DataFrame) -> None:
    latest = examples[examples["launched_at"] == examples["launched_at"].max()]
    with pytest.raises(ValueError, match="single wave"):
        response.wave_split(latest)


def test_each_channel_of_the_later_wave_meets_the_bar(trained, home: Settings) -> None:
    """ROC-AUC ≥ 0.55 with its 95 % interval above 0.5 and ECE ≤ 0.03, per channel with enough sends (the issue
    asks 2,000 at demo size; tests/test_demo_size.py checks that); a channel with fewer is skipped, saying so."""
    from mlflow import MlflowClient

    client = MlflowClient()
    run = client.get_run(trained.run_id)
    table = pd.read_csv(client.download_artifacts(run.info.run_id, "tables/by_channel.csv",
                                                  str(home.home / "dl"))).set_index("channel")
    checked = table[table["sends"] >= 1000]
    if checked.empty:
        pytest.skip(f"no channel has 1,000 sends in the test wave: {table['sends'].to_dict()}")
    assert (checked["roc_auc"] >= AUC).all() and (checked["auc_low"] > 0.5).all(), checked
    assert (checked["ece"] <= ECE).all(), checked
    assert trained.metrics["roc_auc"] > trained.baselines["logistic"]["roc_auc"] - 0.01


def test_pairs_score_every_channel_and_topic_and_best_is_the_highest() -> None:
    customers = pd.DataFrame({"customer_id": ["a", "b"], "tenure_days": [10, 20]})
    grid = response.pairs(customers)
    assert len(grid) == 2 * len(response.CHANNELS) * len(response.CONTENT_TOPICS)
    p = np.linspace(0, 1, len(grid))
    top = response.best(grid, p)
    assert list(top["customer_id"]) == ["a", "b"]
    assert top["probability"].tolist() == [p[: len(grid) // 2].max(), p.max()]
    assert (top["best_channel"] == response.CHANNELS[-1]).all()


def test_registered_and_promoted_through_the_gate(trained) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    assert trained.model == RESPONSE.name
    decision = promote(client, RESPONSE.name, RESPONSE.gate)
    assert decision.promoted, decision
    card = client.get_model_version(RESPONSE.name, str(trained.version)).description
    assert "By channel in the test period" in card and "email" in card
