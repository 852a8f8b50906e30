"""`c360 monitor` over the served home played forward (acceptance of issue 25): an unshifted month is ok, a month
with a usage drop in one region makes the shifted features and the churn scores "act" (exit code 1), and 13 weeks
on, the realized churn AUC and ECE of the predictions made before them match an independent computation from the
generator's ground truth. A campaign simulated and ingested is read out by the monitor with the figures of
`c360 campaign readout`; customers updated by live events since the snapshot are left out of the online check.

Each test plays a copy of the served home (its world copied too: advancing writes into the world) forward the way
`c360 refresh` does: advance, ingest the new batch, build the new snapshot, materialize, score, monitor.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import warehouse
from c360.core.settings import Settings
from c360.features import campaigns, compute, store
from c360.features.advance import advance
from c360.features.ingest import ingest
from c360.features.synth.advance import Shift
from c360.serving import batch
from c360.serving.metrics import exposition
from c360.training import monitor_report, monitoring, readout
from tests.conftest import cli_json as invoke
from tests.conftest import copy_home, widened_to_999

pytestmark = pytest.mark.filterwarnings("ignore::c360.features.ingest.IngestWarning")  # the ground truth's files


def copied(served: Settings, root: Path) -> Settings:
    s = Settings(home=root / "home")
    copy_home(served.home, s.home)  # the world's link becomes a copy of the world
    return s


def played(served: Settings, root: Path, weeks: int, shift: str | None = None) -> Settings:
    """A copy of the served home, its world moved `weeks` forward (with `shift`), loaded, built and scored."""
    s = copied(served, root)
    advance(s.generated, weeks, out=s.generated, shift=Shift.parse(shift) if shift else None)
    with warehouse.connect(s) as con:
        ingest(con, s.generated)
        store.write_snapshot(s, compute.build(con, warehouse.data_end(con)))
    store.materialize(s)
    batch.score(s, chunk_size=1000)
    return s


def monitor(s: Settings, monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict]:
    monkeypatch.setenv("C360_HOME", str(s.home))
    result = CliRunner().invoke(app, ["monitor", "--json"])
    return result.exit_code, json.loads(result.stdout)


def checks(document: dict) -> dict[str, dict]:
    return {c["name"]: c for c in document["checks"]}


def rows(check: dict, key: str) -> pd.DataFrame:
    return pd.DataFrame(check["rows"]).set_index(key)


def test_an_unshifted_month_is_ok(served: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = played(served, tmp_path, 4)
    code, document = monitor(s, monkeypatch)
    found = checks(document)
    assert code == 0, document
    not_ok = {name: c["summary"] for name, c in found.items() if c["status"] != "ok"}
    assert not not_ok, not_ok
    assert {"feature_drift_previous", "feature_drift_training", "score_drift", "data_quality", "realized_churn",
            "realized_clv", "online_offline"} <= set(found)
    drift = rows(found["feature_drift_previous"], "feature")
    assert drift["psi"].notna().sum() > 40 and drift.loc["tenure_days", "compared"] == "skipped"
    assert "days to go" in found["realized_churn"]["summary"]
    latest = s.home / "monitor" / "latest"
    assert json.loads((latest / "report.json").read_text())["created"] == document["created"]
    assert "Feature drift" in (latest / "report.html").read_text()
    assert document["mlflow_run_id"]


def test_a_usage_drop_in_one_region_acts(served: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = played(served, tmp_path, 4, shift="usage-drop:NA")
    code, document = monitor(s, monkeypatch)
    found = checks(document)
    assert code == 1 and document["status"] == "act"
    drift = rows(found["feature_drift_previous"], "feature")
    acting = set(drift.index[drift["status"] == "act"])
    assert acting and acting <= {"sessions_30d", "logins_per_user_30d", "logins_per_user_90d", "active_days_30d",
                                 "active_days_7d", "health_usage", "usage_trend", "days_since_last_activity"}, acting
    assert drift.loc["mrr", "status"] == "ok", "billing did not move"
    scores = rows(found["score_drift"], "model")
    assert scores.loc["churn", "status"] == "act"
    assert scores.loc["churn", "mean_after"] > scores.loc["churn", "mean_before"], "less use, more risk"
    text = exposition(s)[0].decode()
    assert 'c360_monitor_status{check="all"} 2.0' in text and 'c360_monitor_status{check="score_drift"} 2.0' in text
    assert 'c360_monitor_figure{check="score_drift",figure="smd_churn"}' in text


def test_realized_churn_performance_13_weeks_on_matches_the_ground_truth(
        served: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = played(served, tmp_path, 13)
    _, document = monitor(s, monkeypatch)
    realized = checks(document)["realized_churn"]
    first, *_ = monitor_report.scoring_runs(s)
    reported = next(r for r in realized["rows"] if r["run"] == first[0].name)
    outcomes = pd.read_parquet(next((s.generated / "ground_truth").glob("advance_*_outcomes.parquet")))
    with warehouse.connect(s, read_only=True) as con:
        accounts = con.execute("SELECT source_key AS account_id, customer_id FROM identity_crosswalk "
                               "WHERE source = 'crm/accounts'").df()
    scores = monitor_report.read_scores(first[0]).query("model == 'churn'")
    joined = outcomes.merge(accounts, on="account_id").merge(scores, on="customer_id")
    y, p = joined["churned"].astype(int).to_numpy(), joined["score"].to_numpy()
    assert len(joined) > 0.9 * len(outcomes)
    bins = np.minimum((p * 10).astype(int), 9)
    ece = sum(abs(y[bins == b].sum() - p[bins == b].sum()) for b in range(10)) / len(y)
    assert reported["auc"] == pytest.approx(roc_auc_score(y, p), abs=0.02)
    assert reported["ece"] == pytest.approx(ece, abs=0.02)
    curve = pd.DataFrame(reported["calibration"])
    assert curve["rows"].sum() == reported["customers"]


def test_a_campaign_is_judged_by_the_ci_of_its_gain() -> None:
    assert monitor_report.campaign_status({"value": -3.0, "low": -5.0, "high": -1.0}, mismatch=False) == "act"
    assert monitor_report.campaign_status({"value": -1.0, "low": -5.0, "high": 3.0}, mismatch=False) == "watch"
    assert monitor_report.campaign_status({"value": 2.0, "low": -1.0, "high": 5.0}, mismatch=True) == "watch"
    assert monitor_report.campaign_status({"value": 2.0, "low": -1.0, "high": 5.0}, mismatch=False) == "ok"


def test_a_campaign_past_its_window_is_read_out_as_the_readout_does(
        served: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = copied(served, tmp_path)
    monkeypatch.setenv("C360_HOME", str(s.home))
    assert monitor_report.realized_nba(s)[0].summary == "no campaign read out yet"
    invoke("audience", "create", "subscribers", "--where", "subscribed")
    invoke("campaign", "plan", "autumn", "--audience", "subscribers", "--seed", "3")
    invoke("campaign", "simulate", "autumn", "--out", str(tmp_path / "batch"))
    waiting = monitor_report.realized_nba(s)[0]
    assert waiting.status == "ok" and "waiting: autumn (the outcome window" in waiting.summary, waiting.summary
    invoke("ingest", "--source", str(tmp_path / "batch"))
    check = monitor_report.realized_nba(s)[0]
    expected = readout.compute(s, "autumn")["gain_over_holdout"]
    row = check.rows[0]
    assert (row["campaign"], row["members"]) == ("autumn", len(campaigns.assignments(s, "autumn")))
    assert (row["gain_per_member"], row["gain_low"], row["gain_high"]) == pytest.approx(
        (expected["value"], expected["low"], expected["high"]))
    assert row["status"] == monitor_report.campaign_status(expected, False) == check.status
    low, high = widened_to_999(row["gain_per_member"], row["gain_low"], row["gain_high"])
    assert low <= row["truth"] <= high, row


def test_customers_updated_live_are_left_out_of_the_online_check(
        served: Settings, resolved: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = copied(served, tmp_path)
    s.identity_model.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(resolved[0] / "model.json", s.identity_model)  # the live identity places events with it
    monkeypatch.setenv("C360_HOME", str(s.home))
    week = tmp_path / "week.jsonl"
    invoke("advance", "--weeks", "1", "--events", str(week))
    pushed = invoke("events", "push", str(week))
    assert pushed["live"]["updated"] > 0, pushed["live"]
    check = monitor_report.online_offline(s)[0]
    assert check.status == "ok" and check.figures["differing"] == 0, check.summary
    day = store.snapshot_dates(s)[-1]
    recomputed = pd.concat([pd.read_parquet(p, columns=["customer_id", "as_of"])
                            for p in s.snapshots.glob("live-*.parquet")])
    snapshot = store.read_snapshot(s, day)
    left_out = snapshot[snapshot["customer_id"].isin(recomputed.loc[recomputed["as_of"] > day, "customer_id"])]
    assert check.figures["live_excluded"] == len(left_out) > 0
    # the counter-test: those customers' online rows do differ from the snapshot
    online = store.online_features(store.feature_store(s), left_out["customer_id"].tolist())
    differ = monitoring.differences(online, left_out, [f for f in monitor_report.model_inputs() if f in online])
    assert differ.any(axis=1).sum() > 0
