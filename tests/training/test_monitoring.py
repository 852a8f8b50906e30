"""Score drift between two scoring runs and the fairness table by segment."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from c360.training.monitoring import fairness_table, psi, score_drift


def _run(churn: np.ndarray, version: int = 1) -> pd.DataFrame:
    ids = [f"C{i:08d}" for i in range(len(churn))]
    bands = np.where(churn < 0.1, "low", np.where(churn < 0.25, "medium", "high"))
    return pd.concat([
        pd.DataFrame({"customer_id": ids, "model": "churn", "version": version, "score": churn, "label": bands}),
        pd.DataFrame({"customer_id": ids, "model": "clv", "version": 2, "score": 1000 * (1 - churn), "label": None}),
        pd.DataFrame({"customer_id": ids, "model": "nba", "version": 3, "score": churn / 10,
                      "label": np.where(churn > 0.3, "csm_call", "no_action")}),
    ], ignore_index=True)


def test_psi_is_zero_for_the_same_distribution_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    base = rng.beta(2, 8, 5000)
    assert psi(base, base) == pytest.approx(0, abs=1e-9)
    assert psi(base, rng.beta(2, 8, 5000)) < 0.02
    assert 0.25 < psi(base, base + 0.1) < psi(base, base + 0.2)


def test_drift_per_model_compares_the_same_customers() -> None:
    rng = np.random.default_rng(1)
    before = rng.beta(2, 8, 2000)
    drift = score_drift(_run(before), _run(np.clip(before + 0.15, 0, 1), version=2))
    churn = drift.loc["churn"]
    assert churn["versions"] == "v1 → v2" and churn["in both"] == 2000
    assert churn["mean abs change"] == pytest.approx(0.15, abs=0.01)
    assert churn["reading"] == "shifted" and churn["label changed"] > 0.3
    same = score_drift(_run(before), _run(before))
    assert same.loc["clv", "psi"] == pytest.approx(0, abs=1e-9) and same.loc["churn", "label changed"] == 0
    assert np.isnan(same.loc["clv", "label changed"]), "CLV has no label to change"


def test_fairness_table_shows_a_group_singled_out() -> None:
    churn = np.r_[np.full(100, 0.05), np.full(50, 0.5)]
    scores = _run(churn)
    segment = pd.Series(["smb"] * 100 + ["enterprise"] * 50, index=[f"C{i:08d}" for i in range(150)], name="segment")
    table = fairness_table(scores, segment)
    assert table.index.name == "segment"
    assert table.loc["enterprise", "share high risk"] == 1 and table.loc["smb", "share high risk"] == 0
    assert table.loc["enterprise", "action: csm_call"] == 1
    assert table["customers"].sum() == 150
