"""The issues' bars at demo size: one 20,000-customer company, as `make demo` makes it, against its ground truth.

All tests here share one company, built once per worker: `make test` runs a file's tests on one xdist worker
(`--dist loadfile`; pytest-xdist's `xdist_group` no longer groups with pytest 9.2, pytest-xdist issue #1386).
Together they take a few minutes, most of it Feast's historical retrieval for the churn examples.
"""

from __future__ import annotations

import pandas as pd
import pytest

from c360.core import warehouse
from c360.core.settings import Settings
from c360.features import identity
from c360.features.pipeline import build_company

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def company(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        s = Settings(home=tmp_path_factory.mktemp("demo_size"), customers=20_000, seed=42)
        build_company(s, s.customers, seed=s.seed, corrupt_rate=s.corrupt_rate)
        yield s


def test_customers_match_ground_truth(company: Settings) -> None:
    """Identity: pairwise F1 >= 0.97 with precision >= 0.98."""
    with warehouse.connect(company, read_only=True) as con:
        overall, _ = identity.evaluate(con, pd.read_parquet(company.truth / "records.parquet"))
    row = overall.iloc[0]
    assert row["precision"] >= 0.98, row.to_dict()
    assert row["f1"] >= 0.97, row.to_dict()


def test_churn_ranks_within_two_points_of_the_oracle_and_is_calibrated(company: Settings) -> None:
    from c360.training.pipeline import train_churn

    report = train_churn(company)
    ours, oracle = report.baselines["lightgbm_on_oracle_rows"], report.baselines["oracle"]
    measured = f"ROC-AUC {ours['roc_auc']:.4f} vs the oracle's {oracle['roc_auc']:.4f}; ECE {report.metrics['ece']:.4f}"
    print(measured)
    assert ours["roc_auc"] >= oracle["roc_auc"] - 0.02, measured
    assert report.metrics["ece"] <= 0.03, measured
    assert report.metrics["roc_auc"] > report.baselines["logistic"]["roc_auc"], measured


def test_clv_beats_bgnbd_on_total_and_rmse(company: Settings) -> None:
    from c360.training.clv_pipeline import train_clv

    report = train_clv(company)
    ours, baseline = report.metrics, report.baselines["bgnbd_gamma_gamma"]
    print({k: (round(ours[k], 2), round(baseline[k], 2)) for k in ("total_error_pct", "rmse")})
    assert ours["abs_total_error_pct"] < baseline["abs_total_error_pct"]
    assert ours["rmse"] < baseline["rmse"]


@pytest.fixture(scope="module")
def nba(company: Settings):
    from c360.training.nba_pipeline import ACTIONS, train_nba

    ev = train_nba(company).evaluation
    assert ev.exact is not None
    v = ev.exact["value"]
    best = max(v[f"all {a}"] for a in ACTIONS)
    measured = (f"policy {v['policy']:.2f}, best single {best:.2f}, no action {v['all no_action']:.2f}, oracle "
                f"{v['oracle']:.2f}: {ev.shares['oracle_share_vs_no_action']:.1%} of the oracle's uplift")
    print(measured)
    return v, best, ev.shares["oracle_share_vs_no_action"], measured


def test_next_best_action_beats_the_best_single_action(nba) -> None:
    v, best, _, measured = nba
    assert v["policy"] > best, measured


def test_next_best_action_reaches_four_fifths_of_the_oracles_uplift(nba) -> None:
    *_, share, measured = nba
    assert share >= 0.8, measured


@pytest.mark.xfail(reason="issue 26, open: on phone the bar is at the oracle's limit. Seed 42's latest wave: "
                          "ours 0.545, the generator's true click chance 0.574; over outcomes redrawn from it ours "
                          "reaches 0.55 in 63 % of draws, the oracle in 92 %, and the oracle itself misses it on "
                          "seed 1's latest wave (0.541). README, Campaign response propensity", strict=False)
def test_response_on_a_later_wave_meets_the_bar_per_channel(company: Settings) -> None:
    """Campaign response, on each channel's latest wave (later than every wave trained on): for each channel with
    at least 2,000 sends there, ROC-AUC >= 0.55 with its 95 % interval above 0.5, and ECE <= 0.03."""
    from c360.training.response import CHANNELS, train_response

    m = train_response(company).metrics
    big = [c for c in CHANNELS if m.get(f"sends.{c}", 0) >= 2000]
    measured = {c: {k: round(m[f"{k}.{c}"], 4) for k in ("sends", "roc_auc", "auc_low", "ece")} for c in big}
    print(measured)
    assert big, f"no channel has 2,000 sends in the test wave: {m}"
    for c in big:
        assert m[f"roc_auc.{c}"] >= 0.55 and m[f"auc_low.{c}"] > 0.5, measured
        assert m[f"ece.{c}"] <= 0.03, measured
