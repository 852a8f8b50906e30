"""Opt-outs in the profile and in the next best action: from the marketing silo, and recorded by `c360 opt-out`.

Recording an opt-out changes the home, so these tests work on a copy of the served one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import consent, warehouse
from c360.core.settings import Settings
from c360.features import store
from c360.serving import batch, online, predictions
from c360.serving.champions import Champions
from c360.serving.profile import profile
from c360.serving.schemas import NbaPrediction, Profile
from tests.serving.conftest import home_copy

EMAIL_ACTIONS = {a for a, p in consent.ACTION_PURPOSE.items() if p == "marketing_email"}


@pytest.fixture(scope="module")
def home(served: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with home_copy(served, tmp_path_factory.mktemp("consent")) as copy:
        yield copy


def context(s: Settings) -> online.Context:
    return online.Context(s, store.feature_store(s), Champions.load(s.home))


def unrestricted(ctx: online.Context, frame: pd.DataFrame) -> pd.Series:
    """What the champion would propose if nobody had opted out."""
    return pd.Series(ctx.champions["nba"].model.choose(frame).best, index=frame.index)


def test_a_silo_opt_out_shows_in_the_profile_and_withholds_email_actions(home: Settings) -> None:
    snapshot = store.read_snapshot(home, store.snapshot_dates(home)[-1]).set_index("customer_id")
    opted = snapshot[snapshot["opted_out_marketing_email"]]
    assert 0.02 < len(opted) / len(snapshot) < 0.5, "the generated silo opts some customers out, not most"
    ctx = context(home)
    would = unrestricted(ctx, opted[ctx.champions["nba"].inputs])
    held = would[would.isin(EMAIL_ACTIONS)].index[:3]
    if not len(held):
        pytest.skip("no opted-out customer whose best action is an e-mail one in this small company")
    for customer in held:
        result = profile(ctx, customer)
        Profile.model_validate(result)
        assert result["present"]["consent"]["opted_out_marketing_email"] is True
        nba = result["future"]["next_best_action"]
        assert nba["action"] not in EMAIL_ACTIONS
        assert {"action": would[customer], "purpose": "marketing_email",
                "reason": f"{would[customer]} not proposed: opted out of marketing e-mail"} in nba["not_proposed"]
        assert nba["model"]["source"] == "batch", "the batch run honoured the silo's opt-out already"
    # every scoring run of the home (other tests score a few customers into it too)
    wide = pd.concat([pd.read_parquet(p) for p in home.scores.glob("as_of=*/run=*/wide")])
    stored = wide[wide["customer_id"].isin(opted.index)]
    assert set(stored["customer_id"]) == set(opted.index)
    assert not stored["nba_action"].isin(EMAIL_ACTIONS).any()


def test_a_cli_opt_out_shows_at_once_and_is_honoured_by_profile_predict_and_batch(home: Settings) -> None:
    ctx = context(home)
    snapshot = store.read_snapshot(home, store.snapshot_dates(home)[-1]).set_index("customer_id")
    free = snapshot[~snapshot["opted_out_other_channels"]]
    would = unrestricted(ctx, free[ctx.champions["nba"].inputs])
    calls = would[would == "csm_call"].index
    if not len(calls):
        pytest.skip("no customer whose best action is a CSM call in this small company")
    customer = calls[0]
    before = profile(ctx, customer)
    assert before["present"]["consent"]["opted_out_other_channels"] is False
    assert before["future"]["next_best_action"]["action"] == "csm_call"

    runner = CliRunner()
    ask = ["privacy", "opt-out", "--customer-id", customer, "--purpose", "other_channels", "--json"]
    done = runner.invoke(app, ask)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["new"] is True
    again = runner.invoke(app, ask)
    assert json.loads(again.stdout)["new"] is False

    after = profile(ctx, customer)  # the same context: its in-memory opt-outs are read again
    assert after["present"]["consent"]["opted_out_other_channels"] is True
    nba = after["future"]["next_best_action"]
    assert nba["action"] != "csm_call" and nba["model"]["source"] == "live"
    assert nba["not_proposed"][0]["reason"] == "csm_call not proposed: opted out of contact by phone and other channels"
    by_id = predictions.predict_customers(ctx, "nba", [customer])[0]
    NbaPrediction.model_validate(by_id)
    assert by_id["action"] == nba["action"] and by_id["not_proposed"] == nba["not_proposed"]

    shown = runner.invoke(app, ["profile", customer, "--json"])
    assert json.loads(shown.stdout)["features"]["opted_out_other_channels"] is True

    report = batch.score(home, chunk_size=1000)
    assert ".optouts-" in report.folder.name, "a new opt-out makes a new run"
    wide = pd.read_parquet(report.folder / "wide").set_index("customer_id")
    assert wide.at[customer, "nba_action"] != "csm_call"
    assert json.loads(wide.at[customer, "nba_withheld"]) == ["csm_call"]
    served = profile(context(home), customer)["future"]["next_best_action"]
    assert served["model"]["source"] == "batch" and served["action"] == nba["action"]


def test_opt_out_of_an_unknown_customer_or_purpose_fails_in_one_line(home: Settings) -> None:
    runner = CliRunner()
    unknown = runner.invoke(app, ["privacy", "opt-out", "--customer-id", "C99999999", "--purpose", "analytics",
                                  "--json"])
    assert unknown.exit_code == 1 and json.loads(unknown.stdout) == {
        "error": "unknown customer 'C99999999': not in the warehouse (run `c360 resolve`)"}
    bad = runner.invoke(app, ["privacy", "opt-out", "--customer-id", "C00000001", "--purpose", "newsletter"])
    assert bad.exit_code == 2 and "newsletter" in bad.output


def test_export_and_erase_cover_the_recorded_opt_outs(home: Settings, tmp_path: Path) -> None:
    customer = store.read_snapshot(home, store.snapshot_dates(home)[-1])["customer_id"].iloc[-1]
    consent.record(home, customer, "analytics")
    with warehouse.connect(home) as con:
        rows = consent.export(con, [customer])
        assert [(r["customer_id"], r["purpose"], r["source"]) for r in rows] == [(customer, "analytics", "cli")]
        assert consent.erase(con, [customer]) == 1
        assert consent.export(con, [customer]) == [] and consent.erase(con, [customer]) == 0
