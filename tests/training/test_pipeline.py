"""Churn training on the company's own data: examples from Feast, time split, MLflow, promotion gate."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from c360.core import warehouse
from c360.core.settings import Settings
from c360.features import compute, store
from c360.training import datasets, labels, tracking, trainers
from c360.training.clv_pipeline import clv_examples
from c360.training.nba_pipeline import nba_examples
from c360.training.pipeline import churn_examples, train_churn
from c360.training.registry import CHURN_GATE, promote


@pytest.fixture(scope="module")
def home(home_with_snapshots) -> Settings:
    """Snapshots as the features stage builds them: every 4 weeks back far enough that 12-month CLV labels fit
    inside the data, and the experiment waves' dates."""
    return home_with_snapshots("train_home", history_days=609)


def training_sets(s: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    with warehouse.connect(s, read_only=True) as con:
        fs = store.feature_store(s)
        return churn_examples(s, con, fs), clv_examples(s, con, fs)


@pytest.fixture(scope="module")
def sets(home: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The churn and CLV training sets of the home, read once for the module (Feast's historical retrieval takes
    most of a training's time); tests take copies."""
    return training_sets(home)


def stored(s: Settings) -> dict[str, bytes]:
    """Every file of the offline store and the Feast registry, by name."""
    files = [*s.snapshots.glob("*.parquet"), s.feast / "registry.db"]
    return {p.name: p.read_bytes() for p in files}


def test_training_sets_do_not_depend_on_the_order_models_are_trained(
        home: Settings, sets: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """Training reads what the features stage built: the next best action's examples (which once wrote the
    snapshots of the wave dates it lacked) leave the offline store, the registry and the churn and CLV sets as
    they were."""
    before, (churn, clv) = stored(home), sets
    with warehouse.connect(home, read_only=True) as con:
        frame, _ = nba_examples(home, con)
    assert len(frame) and stored(home) == before
    churn_after, clv_after = training_sets(home)
    pd.testing.assert_frame_equal(churn, churn_after)
    pd.testing.assert_frame_equal(clv, clv_after)


def test_next_best_action_refuses_to_train_without_the_wave_snapshots(home_over_resolved) -> None:
    s = home_over_resolved("no_waves")
    with warehouse.connect(s, read_only=True) as con:
        store.write_snapshot(s, compute.build(con, warehouse.data_end(con)))
    store.apply(s)
    with warehouse.connect(s, read_only=True) as con, \
            pytest.raises(FileNotFoundError, match=r"experiment wave\(s\) \d{4}-\d{2}-\d{2}.*c360 features build"):
        nba_examples(s, con)
    assert len(store.snapshot_dates(s)) == 1


def test_examples_have_features_before_and_labels_after_their_date(
        home: Settings, sets: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    frame = sets[0].copy()
    with warehouse.connect(home, read_only=True) as con:
        end = warehouse.data_end(con)
    assert frame["as_of"].max() + pd.Timedelta(days=labels.CHURN_HORIZON_DAYS) <= end
    assert frame.groupby("as_of")["customer_id"].apply(lambda s: s.is_unique).all()
    assert frame["subscribed"].all(), "the population is customers subscribed at the as-of date"
    train, calib, test = datasets.time_split(frame)
    assert train["as_of"].max() < calib["as_of"].min() < test["as_of"].min()


def test_each_example_has_the_features_of_its_own_date(
        home: Settings, sets: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """The examples of every date come from one point-in-time retrieval: each row still holds the snapshot of its
    own as-of date, not a neighbour's (a date shifted by a time zone would read the snapshot four weeks before)."""
    churn = sets[0]
    names = [c for c in churn.columns if c in compute.BY_NAME]
    days = sorted(churn["as_of"].unique())
    for before, day in zip(days[:-1:10], days[1::10], strict=True):
        rows = churn[churn["as_of"] == day].set_index("customer_id")[names]
        own, previous = (store.read_snapshot(home, pd.Timestamp(d)).set_index("customer_id").reindex(rows.index)[names]
                         for d in (day, before))
        pd.testing.assert_frame_equal(rows, own, check_dtype=False, check_categorical=False)
        with pytest.raises(AssertionError):  # the comparison tells one snapshot from the next
            pd.testing.assert_frame_equal(rows, previous, check_dtype=False, check_categorical=False)


def test_examples_in_several_retrievals_are_the_same(
        home: Settings, sets: tuple[pd.DataFrame, pd.DataFrame], monkeypatch: pytest.MonkeyPatch) -> None:
    """A million customers' examples are retrieved in parts (datasets.RETRIEVAL_ROWS); parts cut across a date
    give the frame one retrieval gives."""
    cut = len(sets[0]) // 2 + 1
    assert sets[0]["as_of"].iloc[cut - 1] == sets[0]["as_of"].iloc[cut], "the cut falls inside a date"
    monkeypatch.setitem(datasets.RETRIEVAL_ROWS, home.engine, cut)
    with warehouse.connect(home, read_only=True) as con:
        churn = churn_examples(home, con, store.feature_store(home))
    pd.testing.assert_frame_equal(churn, sets[0])


def test_training_registers_a_challenger_and_the_gate_guards_the_champion(
        home: Settings, sets: tuple[pd.DataFrame, pd.DataFrame], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    first = train_churn(home)
    assert first.metrics["roc_auc"] > 0.6
    assert {"logistic", "oracle"} <= set(first.baselines)
    client = tracking.configure(home.home)
    assert promote(client, "c360-churn", CHURN_GATE).promoted
    again = train_churn(home)  # same data, same test period: it cannot beat the champion by the margin
    decision = promote(client, "c360-churn", CHURN_GATE)
    assert not decision.promoted and again.version == first.version + 1
    assert any("roc_auc" in reason for reason in decision.reasons)
    card = client.get_model_version("c360-churn", str(first.version)).description
    segments = pd.read_csv(client.download_artifacts(first.run_id, "tables/by_segment.csv", str(tmp_path)))
    assert "By segment" in card and set(segments["segment"]) >= {"smb", "enterprise"}
    assert segments["customers"].sum() == first.rows["test"]
    model, version = tracking.load_model("c360-churn", "champion", "pyfunc", home=home.home)
    assert int(version.version) == first.version
    sample = sets[0].head(20)
    p = model.predict(sample[[c for c in sample.columns if c in compute.BY_NAME]])
    assert ((p > 0) & (p < 1)).all()


def test_clv_beats_bgnbd_on_the_truths_next_twelve_months(home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from c360.training.clv_pipeline import train_clv as run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    report = run(home)
    ours, baseline = report.metrics, report.baselines["bgnbd_gamma_gamma"]
    assert abs(ours["total_error_pct"]) < abs(baseline["total_error_pct"])
    assert ours["rmse"] < baseline["rmse"]


def test_a_model_with_no_labelled_period_is_skipped_with_the_reason(home_over_resolved) -> None:
    """Snapshots of the last four weeks only: no churn, expansion or CLV label window has ended after either. The
    retrain skips those models, saying why, instead of failing in a fit on an empty array."""
    s = home_over_resolved("recent_only")
    with warehouse.connect(s, read_only=True) as con:
        end = warehouse.data_end(con)
        for day in (end - pd.Timedelta(days=28), end):
            store.write_snapshot(s, compute.build(con, day))
    store.apply(s)
    expected = {"churn": "complete label window", "expansion": "complete label window", "clv": "12 months of data"}
    for kind, words in expected.items():
        reason = trainers.train(s, kind)
        assert isinstance(reason, str) and words in reason, (kind, reason)


def test_a_test_period_the_ground_truth_does_not_cover_trains_without_the_oracle(home_with_snapshots) -> None:
    """Snapshots on a 4-week grid of the last 8 weeks (and the experiment waves): the latest labelled one, the test
    period, is a date the generator's truth has no risk for, as a refresh's new snapshots are. The oracle is left
    out (it once failed the retrain on an empty array)."""
    s = home_with_snapshots("recent_grid", history_days=56)
    report = train_churn(s)
    truth = pd.read_parquet(s.truth / "churn_risk.parquet", columns=["as_of"])
    if pd.Timestamp(report.test_period) in set(pd.to_datetime(truth["as_of"])):
        pytest.skip(f"the truth covers the test period {report.test_period}: nothing to show here")
    assert "oracle" not in report.baselines and "logistic" in report.baselines


def test_a_part_of_the_split_with_one_outcome_is_named() -> None:
    parts = {"training": pd.DataFrame({"churned": [0, 1]}), "test": pd.DataFrame({"churned": [0, 0]})}
    with pytest.raises(datasets.NoExamples, match="test examples have one outcome only"):
        datasets.require(parts, "churned")
    with pytest.raises(datasets.NoExamples, match="no calibration examples"):
        datasets.require({"calibration": pd.DataFrame({"churned": []})}, "churned")
    datasets.require({"training": parts["training"]}, "churned")
