"""Next best action on the company's own experiments: outcomes per assignment, features as of the wave date,
a time split by wave, MLflow registration, and the learned policy against the generator's ground truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from c360.core import warehouse
from c360.core.settings import Settings
from c360.features import compute, store
from c360.features.synth import world
from c360.training import datasets, nba_pipeline, tracking
from c360.training.nba_pipeline import (
    ACTION_COSTS,
    ACTIONS,
    HORIZON_DAYS,
    NBA_MODEL,
    experiment_outcomes,
    nba_examples,
    train_nba,
    wave_split,
)


@pytest.fixture(scope="module")
def home(home_over_resolved, resolved_snapshot) -> Settings:
    """A C360_HOME over the 3,000-customer company with a snapshot at the data's end and one at each experiment
    wave's date (what the features stage builds)."""
    s = home_over_resolved("nba_home")
    with warehouse.connect(s, read_only=True) as con:
        days = [warehouse.data_end(con), *compute.experiment_dates(con)]
    for day in days:
        store.write_snapshot(s, resolved_snapshot(day))
    store.apply(s)
    return s


def test_costs_are_the_companys(home: Settings) -> None:
    assert ACTION_COSTS == world.ACTION_COST and set(ACTIONS) == set(world.ACTION_COST)


def test_outcomes_give_one_row_per_assignment_with_its_waves_action(home: Settings) -> None:
    with warehouse.connect(home, read_only=True) as con:
        outcomes = experiment_outcomes(con)
        sends = con.execute("""
            SELECT x.customer_id, c.wave::INTEGER AS wave, c.action AS sent_action, c.launched_at
            FROM marketing_sends s JOIN marketing_campaigns c USING (campaign_id)
            JOIN identity_crosswalk x ON x.record_id = 'marketing/contacts:' || s.mkt_contact_id
            WHERE c.action IS NOT NULL""").df()
        end = warehouse.data_end(con)
        accounts = datasets.customer_accounts(con, home.truth)
    assert not outcomes.duplicated(["customer_id", "wave"]).any()
    assert sorted(outcomes["wave"].unique()) == list(range(len(world.WAVES)))
    assert len(outcomes) == len(sends.drop_duplicates(["customer_id", "wave"]))  # no arm conflicts at 3k
    joined = outcomes.merge(sends, on=["customer_id", "wave"], validate="one_to_one")
    assert (joined["action"] == joined["sent_action"]).all()
    assert (joined["as_of"] == pd.to_datetime(joined["launched_at"])).all()  # as_of is the wave date
    assert (outcomes["as_of"] + pd.Timedelta(days=HORIZON_DAYS) <= end).all()
    assert outcomes["retained"].dtype == bool and 0.8 < outcomes["retained"].mean() < 0.98

    # The generator's truth: the same arm for the customer's account, and revenue over the same 13 weeks.
    truth = pd.read_parquet(home.truth / "treatment_effects.parquet")
    assigned = truth[truth["assigned"]].rename(columns={"action": "true_action"})
    keyed = outcomes.assign(account=outcomes["customer_id"].map(accounts))
    both = keyed.merge(assigned, on=["account", "as_of"], how="left")
    assert (both["action"] == both["true_action"]).mean() > 0.99
    # 0.9, not 1: the truth is an expectation, and an expansion order (a month of MRR, or nothing) is one draw.
    assert np.corrcoef(both["outcome"], both["revenue_90d"].fillna(0))[0, 1] > 0.9
    # The discount's cost is in the outcome: discounted customers pay a fifth less than they would have.
    untreated = truth[truth["action"] == "no_action"][["account", "as_of", "revenue_90d"]]
    paid = keyed.merge(untreated, on=["account", "as_of"]).groupby("action")[["outcome", "revenue_90d"]].sum()
    kept = paid["outcome"] / paid["revenue_90d"]
    assert kept["discount"] < (1 - world.DISCOUNT / 2) * kept["no_action"]


def test_wave_split_is_by_time_and_features_are_as_of_the_wave_date(home: Settings) -> None:
    with warehouse.connect(home, read_only=True) as con:
        frame, features = nba_examples(home, con)
        waves = sorted(frame["as_of"].unique())
        exact = compute.build(con, pd.Timestamp(waves[-1])).set_index("customer_id")
    assert set(waves) <= set(store.snapshot_dates(home)), "every wave date has its own snapshot"
    train, test = wave_split(frame)
    last = len(world.WAVES) - 1
    assert set(train["wave"]) == set(range(last)) and set(test["wave"]) == {last}
    assert train["as_of"].max() < test["as_of"].min()
    assert "segment" in features and "health_score" not in features  # the nba_v1 service
    last = test.set_index("customer_id")
    for name in ("tenure_days", "revenue_90d", "campaigns_sent_180d"):
        # to float rounding: DuckDB sums a customer's amounts in parallel, in no fixed order
        pd.testing.assert_series_equal(last[name], exact.loc[last.index, name].astype(last[name].dtype),
                                       check_names=False, rtol=1e-12, atol=0)

    toy = pd.DataFrame({"wave": [0, 0, 1, 2, 2], "as_of": pd.to_datetime(["2025-01-01"] * 2 + ["2025-07-01"]
                                                                        + ["2026-01-01"] * 2)})
    early, late = wave_split(toy)
    assert list(early["wave"]) == [0, 0, 1] and list(late["wave"]) == [2, 2]
    with pytest.raises(ValueError, match="at least 2"):
        wave_split(toy[toy["wave"] == 2])


def test_train_nba_registers_a_challenger_and_beats_simple_rules(
        home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    seen: list[set[int]] = []
    fit = nba_pipeline.fit_nba

    def spy(train: pd.DataFrame, *args, **kwargs):
        seen.append(set(train["wave"]))
        return fit(train, *args, **kwargs)

    monkeypatch.setattr(nba_pipeline, "fit_nba", spy)
    report = train_nba(home)
    assert seen == [set(range(len(world.WAVES) - 1))], "the model never sees the test wave"
    assert report.test_period == f"{world.START + pd.Timedelta(weeks=world.WAVES[-1]):%Y-%m-%d}"

    ev = report.evaluation
    assert {"policy", "all no_action", "all discount", "all training_invite", "all csm_call", "random",
            "oracle"} <= set(ev.values.index)
    assert set(ev.qini) == {"discount", "training_invite", "csm_call"}
    assert abs(sum(ev.policy_share.values()) - 1) < 1e-9

    # Exact values from the ground truth: the honest yardstick on generated data.
    assert ev.exact is not None and report.rows["test_with_truth"] >= 0.98 * report.rows["test"]
    v = ev.exact["value"]
    best = max(v[f"all {a}"] for a in ACTIONS)
    share = ev.shares["oracle_share_vs_best_single"]
    measured = (f"policy {v['policy']:.2f}, best single {best:.2f}, no action {v['all no_action']:.2f}, "
                f"random {v['random']:.2f}, oracle {v['oracle']:.2f}; share of the oracle's uplift "
                f"{share:.1%} over the best single action, {ev.shares['oracle_share_vs_no_action']:.1%} over no action")
    print(measured)
    assert v["policy"] >= best - 0.25 * (v["oracle"] - best), measured
    assert v["policy"] > v["all no_action"], measured
    assert v["policy"] - v["random"] >= 0.75 * (v["oracle"] - v["random"]), measured

    model, version = tracking.load_model(NBA_MODEL, "challenger", "pyfunc", home=home.home)
    assert int(version.version) == report.version and version.tags["test_period"] == report.test_period
    assert "By segment on the test wave" in version.description
    with warehouse.connect(home, read_only=True) as con:
        sample = experiment_outcomes(con).tail(50)
        sample = nba_pipeline.wave_features(store.feature_store(home), sample)
    out = model.predict(sample)
    net = out[[f"expected_net.{a}" for a in ACTIONS]].set_axis(list(ACTIONS), axis=1)
    assert out["recommended"].isin(ACTIONS).all()
    assert (out["recommended"] == net.idxmax(axis=1)).all()
    client = tracking.configure(home.home)
    artifacts = {a.path for a in client.list_artifacts(report.run_id)}
    assert {"model_card.md", "plots", "tables"} <= artifacts
    tables = {a.path for a in client.list_artifacts(report.run_id, "tables")}
    assert {"tables/policy_values_ips.csv", "tables/policy_values_exact.csv"} <= tables
    assert "plots/qini_curves.png" in {a.path for a in client.list_artifacts(report.run_id, "plots")}


def test_inverse_propensity_weights_are_stabilized_per_source_and_arm() -> None:
    toy = pd.DataFrame({
        "source": ["wave 0"] * 4 + ["campaign c"] * 4,
        "action": ["no_action", "no_action", "discount", "csm_call", "csm_call", "csm_call", "csm_call", "discount"],
        "propensity": [0.5, 0.5, 0.25, 0.25, 0.8, 0.8, 0.0125, 0.0125],
    })
    weight = nba_pipeline.inverse_propensity(toy)
    assert (weight[:4] == 1).all(), "a uniform wave's rows all weigh 1"
    arm = weight[4:7]
    assert arm.mean() == pytest.approx(1) and weight[7] == pytest.approx(1), "mean 1 per source and arm"
    # the explored csm_call row stands for the members the policy did not send it: 1 / 0.0125 = 80, truncated at 20
    assert weight[6] / weight[4] == pytest.approx(nba_pipeline.MAX_INVERSE_PROPENSITY * 0.8)
