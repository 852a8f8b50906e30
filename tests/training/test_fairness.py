"""Fairness: figures per group on the company's own data, and the promotion gate that stops a challenger treating
one group worse (the acceptance test of issue 25's fairness part)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from c360.core.settings import Settings
from c360.training import fairness, pipeline, tracking
from c360.training.registry import Limits, promote
from c360.training.specs import CHURN

# Only fairness decides: the test's challengers are the champion's equals (or worse) on AUC, ECE and Brier.
FAIRNESS_ONLY = replace(CHURN.gate, margin=-1.0, guards=())
UNFAIR_TO = ("region", "EMEA")


def test_figures_per_group_and_the_gap_between_the_two_furthest_big_groups() -> None:
    rng = np.random.default_rng(0)
    n = 1200
    frame = pd.DataFrame({"segment": rng.choice(["smb", "enterprise"], n), "region": rng.choice(["NA", "EMEA"], n),
                          "age_band": np.where(np.arange(n) < 40, "60+", None)})
    y = pd.Series(rng.random(n) < 0.2)
    p = np.where(frame["region"] == "EMEA", 0.4, 0.2)  # over-predicts EMEA by about 0.2
    p[:40] = 0.9  # a group too small to gate, however far off
    table = fairness.churn_groups(y, p, frame)
    assert table.loc[("region", "EMEA"), "customers"] + table.loc[("region", "NA"), "customers"] == n
    assert table.loc[("region", "EMEA"), "selection_rate"] == pytest.approx(1.0, abs=0.05)
    assert table.loc[("age_band", "60+"), "customers"] == 40, "shown, though below MIN_GROUP"
    gap = fairness.gap(table, "calibration")
    assert gap is not None and (gap.attribute, gap.high, gap.low) == ("region", "EMEA", "NA"), gap
    assert gap.value == pytest.approx(table.loc[("region", "EMEA"), "calibration"]
                                      - table.loc[("region", "NA"), "calibration"])
    metrics, tags = fairness.logged(table, "churn")
    assert metrics == {"fairness.calibration_gap": gap.value, "fairness.calibration_gap_low": gap.lower_bound}
    assert tags["fairness.calibration_gap"].startswith("region EMEA +")
    small = fairness.churn_groups(y[:150], p[:150], frame[:150])
    assert fairness.logged(small, "churn") == ({}, {"fairness.calibration_gap": "not measured: no attribute has "
                                                                              "two groups of 100 examples"})


def test_a_gaps_noise_is_its_groups_standard_errors() -> None:
    """The gated metric's bootstrap standard error per group matches the binomial one (a constant prediction's
    calibration error moves with the observed rate only), and the gap's lower bound is the gap less 1.645 of their
    combined error."""
    rng = np.random.default_rng(1)
    n = np.array([3000, 300])
    frame = pd.DataFrame({"region": np.repeat(["NA", "EMEA"], n)})
    y = pd.Series(rng.random(n.sum()) < 0.3)
    table = fairness.churn_groups(y, np.full(n.sum(), 0.3), frame)
    rate = table.loc[[("region", "NA"), ("region", "EMEA")], "rate"].to_numpy()
    binomial = np.sqrt(rate * (1 - rate) / n)
    np.testing.assert_allclose(table.loc[[("region", "NA"), ("region", "EMEA")], "calibration_se"], binomial,
                               rtol=0.15)
    gap = fairness.gap(table, "calibration")
    assert gap is not None and gap.noise == pytest.approx(np.hypot(*binomial), rel=0.15)
    assert gap.lower_bound == pytest.approx(max(0.0, gap.value - 1.645 * gap.noise))


def test_the_action_threshold_is_the_high_risk_band_of_serving() -> None:
    from c360.serving.predict import CHURN_BANDS

    assert CHURN_BANDS[-1][0] == fairness.CHURN_ACTION


@pytest.fixture(scope="module")
def home(home_with_snapshots) -> Settings:
    return home_with_snapshots("fair_home", history_days=400)


def corrupted(examples):
    """`churn_examples` with the training period's labels of one group half made up: stayers of the group marked
    as churners, so the trees learn that the group churns far more than it does."""
    def wrapped(*args, **kwargs) -> pd.DataFrame:
        frame = examples(*args, **kwargs)
        dates = sorted(frame["as_of"].unique())
        column, value = UNFAIR_TO
        rows = (frame["as_of"] < dates[-2]) & (frame[column] == value)
        made_up = rows & (np.random.default_rng(0).random(len(frame)) < 0.5)
        return frame.assign(churned=frame["churned"].where(~made_up, True))
    return wrapped


def test_the_gate_refuses_a_challenger_worse_for_one_group_and_passes_the_normal_one(
        home: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    client, limits = tracking.configure(home.home), Limits.of(home)
    normal = pipeline.train_churn(home)
    first = promote(client, CHURN.name, CHURN.gate, limits)
    assert first.promoted and "is within the limit" in first.reasons[-1], first

    card = client.get_model_version(CHURN.name, str(normal.version)).description
    assert "Fairness in the test period" in card and "worst-group gap of `calibration`" in card
    groups = pd.read_csv(client.download_artifacts(normal.run_id, "tables/fairness.csv", str(tmp_path)),
                         keep_default_na=False)
    assert set(groups["attribute"]) == set(fairness.ATTRIBUTES)
    assert set(groups.loc[groups["attribute"] == "age_band", "group"]) == {"18-29", "30-44", "45-59", "60+"}
    by_segment = groups[groups["attribute"] == "segment"]
    assert by_segment["customers"].sum() == normal.rows["test"], "every test customer is in one segment"

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "churn_examples", corrupted(pipeline.churn_examples))
        unfair = pipeline.train_churn(home)
    refused = promote(client, CHURN.name, FAIRNESS_ONLY, limits)
    assert not refused.promoted, refused
    failed = [r for r in refused.reasons if r.endswith("failed")]
    assert len(failed) == 1 and failed[0].startswith("fairness: worst-group gap of calibration"), refused
    assert "region EMEA +" in failed[0], "the refusal names the group treated worse"
    assert unfair.metrics[fairness.gap_metric("calibration")] > normal.metrics[fairness.gap_metric("calibration")]

    pipeline.train_churn(home)
    again = promote(client, CHURN.name, FAIRNESS_ONLY, limits)
    assert again.promoted and again.reasons[-1].endswith("passed"), again
