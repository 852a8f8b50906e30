"""The vectorised pieces of scoring and signals, on small hand-made inputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from c360.serving import predict, signals
from c360.training.explain import reasons as explain_reasons


def test_top_reasons_match_the_per_row_explainer() -> None:
    rng = np.random.default_rng(3)
    names = [f"f{j}" for j in range(12)]
    contributions = rng.normal(size=(200, 12))
    contributions[rng.random((200, 12)) < 0.3] = 0.0
    values = pd.DataFrame(rng.integers(0, 9, (200, 12)), columns=names)
    ours = predict.top_reasons(contributions, names, values, k=3)
    reference = explain_reasons(pd.DataFrame(contributions, columns=names), values, k=3)
    for row, expected in enumerate(reference):
        got = [n for n in ours.names[row] if n is not None]
        assert got == [r["feature"] for r in expected]
        assert list(ours.values[row][: len(got)]) == [str(r["value"]) for r in expected]
        assert ours.contributions[row][: len(got)] == pytest.approx([r["contribution"] for r in expected])


def test_reasons_json_is_valid_with_awkward_values() -> None:
    values = pd.DataFrame({"plan": ['pro "plus"', "back\\slash", "line\nbreak\x00"], "mrr": [1.0, np.nan, 2.5],
                           "flag": [True, False, True]})
    contributions = np.array([[0.5, -0.25, 0.0], [0.0, 0.0, 0.0], [1e-9, 2.0, -3.0]])
    texts = predict.top_reasons(contributions, ["plan", "mrr", "flag"], values).json().to_pylist()
    parsed = [json.loads(t) for t in texts]
    assert parsed[0] == [{"feature": "plan", "value": 'pro "plus"', "contribution": 0.5},
                         {"feature": "mrr", "value": "1", "contribution": -0.25}]
    assert parsed[1] == []  # nothing moved the score: no reasons
    assert [r["feature"] for r in parsed[2]] == ["flag", "mrr", "plan"] and parsed[2][0]["value"] == "yes"
    assert parsed[2][2]["value"] == "line\nbreak\x00"  # control characters escaped (found by schemathesis)


def test_churn_bands_and_clv_range() -> None:
    assert list(predict.churn_band(np.array([0.01, 0.1, 0.2, 0.25, 0.9]))) == ["low", "medium", "medium", "high",
                                                                               "high"]
    value = np.array([0.0, 100.0, 10_000.0])
    low, high = predict.clv_range(value, dispersion=50.0)
    assert (low <= value).all() and (value <= high).all() and (low >= 0).all()
    assert (high - low)[2] / value[2] < (high - low)[1] / value[1]  # relative spread shrinks with the value
    assert predict.clv_dispersion(100.0, np.array([50.0, 150.0])) == pytest.approx(
        100.0**2 / np.mean(np.array([50.0, 150.0]) ** predict.TWEEDIE_POWER))


def test_next_feature_by_cooccurrence_and_popularity() -> None:
    used = pd.DataFrame({"reports": [1, 1, 1, 0, 0], "dashboards": [1, 1, 0, 1, 0], "api": [0, 0, 0, 1, 0]},
                        index=["a", "b", "c", "d", "e"])
    p = signals.cooccurrence(used)
    assert p.at["reports", "dashboards"] == pytest.approx(2 / 3) and p.at["api", "dashboards"] == 1.0
    nxt = signals.next_feature(used, p, used.mean())
    assert nxt.at["c", "next_feature"] == "dashboards" and nxt.at["c", "next_feature_method"] == "co-occurrence"
    assert nxt.at["e", "next_feature"] == "reports" and nxt.at["e", "next_feature_method"] == "popularity"
    assert nxt.at["a", "next_feature"] == "api"  # the only feature left
    everything = pd.DataFrame({"reports": [1], "dashboards": [1], "api": [1]}, index=["z"])
    assert signals.next_feature(everything, p, used.mean()).at["z", "next_feature"] == ""


def test_content_interest_needs_engagement_above_the_population() -> None:
    engagement = pd.DataFrame({
        "customer_id": ["a", "a", "b", "c"] + [f"x{i}" for i in range(20)],
        "topic": ["pricing", "events", "pricing", "events"] + ["pricing"] * 20,
        "sent": [4, 4, 4, 4] + [4] * 20, "opened": [4, 0, 1, 4] + [1] * 20,
        "clicked": [3, 0, 0, 0] + [0] * 20, "responded": [1, 0, 0, 0] + [0] * 20,
    })
    interest = signals.content_interest(engagement, signals.topic_rates(engagement))
    topics = {c: [t["topic"] for t in json.loads(v)] for c, v in interest.items()}
    assert topics == {"a": ["pricing"]}  # b engaged like everyone, c opened but never clicked


def test_advocate_needs_every_criterion() -> None:
    good = {"nps_last": 10.0, "health_score": 85.0, "open_high_severity_tickets": 0, "tenure_days": 400}
    assert signals.advocate(good, "low")["candidate"]
    assert not signals.advocate(good, "medium")["candidate"]
    verdict = signals.advocate(good | {"nps_last": None}, "low")
    assert not verdict["candidate"] and any("promoter" in why for why in verdict["not_met"])
