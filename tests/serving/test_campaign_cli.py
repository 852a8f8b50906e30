"""`c360 campaign` on the served 3,000-customer home (its NBA champion and scores): the acceptance loop — plan with
10 % holdout and 5 % exploration, export, simulate, `c360 ingest`, readout, and the next NBA training learning from
the campaign — and the one-line errors.

Here rather than under tests/c360: the loop needs the served home's scores (`served`, this folder's session
fixture). The tests work on a copy of it whose generated world is copied too (a simulation advances it), share it
and run in order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import audit
from c360.core.settings import Settings
from c360.features import campaigns
from c360.training import readout, tracking
from c360.training.nba_pipeline import HORIZON_DAYS, NBA_MODEL, train_nba
from tests.conftest import cli_json as invoke
from tests.conftest import widened_to_999
from tests.serving.conftest import home_copy

runner = CliRunner()


@pytest.fixture(scope="module")
def home(served: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with home_copy(served, tmp_path_factory.mktemp("campaigns")) as copy:
        invoke("audience", "create", "subscribers", "--where", "subscribed")
        yield copy


def refused(*args: str) -> str:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    return json.loads(result.stdout)["error"]


def test_plan_follows_the_next_best_action_with_exact_shares(home: Settings) -> None:
    planned = invoke("campaign", "plan", "spring", "--audience", "subscribers", "--holdout", "0.1", "--explore",
                     "0.05", "--seed", "11")
    shares = planned["realized_shares"]
    assert abs(shares["holdout"] - 0.1) <= 0.02 and abs(shares["exploration"] - 0.05) <= 0.02
    logged = campaigns.assignments(home, "spring")
    assert len(logged) == planned["assigned"] == sum(planned["arms"].values())
    policy = logged[logged["arm"] == "policy"]
    assert (policy["action"] == policy["policy_action"]).all()
    assert logged["model_version"].notna().all() and (logged["model"] == "nba").all()
    assert ((logged["propensity"] > 0) & (logged["propensity"] <= 1)).all()
    assert audit.records(home)[-1]["action"] == "c360 campaign plan"
    assert invoke("campaign", "show", "spring")["summary"]["arms"] == planned["arms"]
    assert [c["name"] for c in invoke("campaign", "list")["campaigns"]] == ["spring"]


def test_export_writes_one_file_per_action_without_the_holdout(home: Settings, tmp_path: Path) -> None:
    exported = invoke("campaign", "export", "spring", "--out", str(tmp_path))
    logged = campaigns.assignments(home, "spring")
    held = set(logged.loc[logged["arm"] == "holdout", "customer_id"])
    for action, found in exported["files"].items():
        rows = pd.read_csv(found["file"], dtype=str)
        assert (rows["action"] == action).all() and len(rows) == found["rows"]
        assert set(rows["customer_id"]) <= set(logged.loc[logged["action"] == action, "customer_id"])
        assert not set(rows["customer_id"]) & held
    assert "no_action" not in exported["files"] and exported["files"]
    assert audit.records(home)[-1]["action"] == "c360 campaign export"


def test_the_loop_reads_out_a_gain_within_reach_of_the_truth(home: Settings, tmp_path: Path) -> None:
    invoke("campaign", "plan", "summer", "--audience", "subscribers", "--seed", "5")
    simulated = invoke("campaign", "simulate", "summer", "--out", str(tmp_path))
    assert simulated["weeks"] == 13 and (tmp_path / "ground_truth").is_dir()
    assert "ingest the weeks" in refused("campaign", "readout", "summer")  # the data does not cover the window yet
    invoke("ingest", "--source", str(tmp_path))
    result = invoke("campaign", "readout", "summer")
    gain = result["gain_over_holdout"]
    effects = pd.read_parquet(next((tmp_path / "ground_truth").glob("*_effects.parquet")))
    truth = readout.truth_gain(home, campaigns.assignments(home, "summer"), effects)
    assert gain["truth"] == pytest.approx(truth, rel=1e-6, abs=1e-6)
    low, high = widened_to_999(gain["value"], gain["low"], gain["high"])
    assert low <= truth <= high, (gain, low, high)
    assert not result["sample_ratio"]["mismatch"]
    assert {r["policy"] for r in result["policy_values"]} >= {"policy", "all no_action", "all discount"}
    assert result["mlflow_run"] and audit.records(home)[-1]["action"] == "c360 campaign readout"
    shown = runner.invoke(app, ["campaign", "readout", "summer"])  # for people: the tables
    assert shown.exit_code == 0 and "gain over the holdout" in shown.stdout, shown.output


def test_retraining_on_the_campaign_keeps_the_share_of_the_oracles_uplift(home: Settings) -> None:
    """After the loop above: `c360 features build` builds the launch day's snapshot, and the next NBA training adds
    the campaign's rows without losing more than 2 points of the oracle's uplift against the waves alone."""
    start = pd.Timestamp(campaigns.campaign(home, "summer")["launched_at"])
    built = invoke("features", "build", "--history-days", "0")
    assert f"{start:%Y-%m-%d}" in [str(d) for d in built["as_of_dates"]], "the launch day's snapshot is built"
    known = readout.outcomes(home, campaigns.assignments(home, "summer"), start,
                             start + pd.Timedelta(days=HORIZON_DAYS))
    alone, learned = train_nba(home, with_campaigns=False), train_nba(home)
    assert learned.rows["train.campaign summer"] == len(known) > 0
    assert learned.rows["train"] == alone.rows["train"] + len(known) and "train.campaign spring" not in learned.rows
    before = alone.evaluation.shares["oracle_share_vs_no_action"]
    after = learned.evaluation.shares["oracle_share_vs_no_action"]
    print(f"share of the oracle's uplift over no action: waves alone {before:.1%}, with the campaign {after:.1%}")
    assert after >= before - 0.02, (before, after)
    card = tracking.configure(home.home).get_model_version(NBA_MODEL, str(learned.version)).description
    row = next(line for line in card.splitlines() if line.startswith("| campaign summer "))
    assert [c.strip() for c in row.strip("| ").split("|")][-1] == str(len(known)), row
    assert "campaign spring left out: its outcome window runs to" in card, card


def test_errors_are_one_line(home: Settings) -> None:
    assert "no audience" in refused("campaign", "plan", "x", "--audience", "nobody")
    assert "shares" in refused("campaign", "plan", "x", "--audience", "subscribers", "--holdout", "0.9",
                               "--explore", "0.2")
    assert "no campaign" in refused("campaign", "readout", "nothing")
    assert "already named" in refused("campaign", "plan", "spring", "--audience", "subscribers")


def test_help_on_every_campaign_command() -> None:
    for command in ("plan", "list", "show", "export", "simulate", "readout"):
        shown = runner.invoke(app, ["campaign", command, "--help"])
        assert shown.exit_code == 0 and "--json" in shown.stdout, shown.output


def test_plan_chooses_each_members_best_channel_and_exports_it(home: Settings, tmp_path: Path) -> None:
    """`--channel best`: each contacted member's channel is the response model's most likely of the latest scores
    among the channels whose purpose they did not opt out of (the next one when they opted out of the best), logged
    with the assignment and written in the export."""
    import json

    from c360.core import consent
    from c360.features import audience_profile, audiences

    planned = invoke("campaign", "plan", "autumn", "--audience", "subscribers", "--seed", "3", "--channel", "best")
    logged = campaigns.assignments(home, "autumn").set_index("customer_id")
    contacted = logged[logged["action"] != campaigns.NONE]
    assert logged.loc[logged["action"] == campaigns.NONE, "channel"].isna().all()
    profile = audience_profile.table(home, audiences._overrides(home)).set_index("customer_id").loc[contacted.index]
    listed = audience_profile.latest_scores(home, keep=("response_channels",)).set_index("customer_id")
    fallbacks = 0
    for customer, row in profile.iterrows():
        ranked = sorted(json.loads(listed.at[customer, "response_channels"]), key=lambda c: -c["probability"])
        allowed = [c["channel"] for c in ranked
                   if not bool(row[consent.feature(consent.CHANNEL_PURPOSE[c["channel"]])] or False)]
        assert contacted.at[customer, "channel"] == (allowed[0] if allowed else None), customer
        fallbacks += bool(allowed) and allowed[0] != row["response_channel"]
    assert fallbacks > 0, "no member opted out of their best channel: the fallback is untested here"
    assert sum(planned["channels"].values()) == contacted["channel"].notna().sum() > 0
    exported = invoke("campaign", "export", "autumn", "--out", str(tmp_path))
    for found in exported["files"].values():
        rows = pd.read_csv(found["file"], dtype=str).set_index("customer_id")
        assert rows["channel"].fillna("").equals(contacted.loc[rows.index, "channel"].fillna("").rename("channel"))
    assert "unknown channel" in refused("campaign", "plan", "x", "--audience", "subscribers", "--channel", "fax")
