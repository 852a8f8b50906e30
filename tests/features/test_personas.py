"""Personas on small frames: order of the rows does not matter, names are unique, too few features is an error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from c360.features import personas


def frame(n: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    out = pd.DataFrame({"customer_id": [f"C{i:04d}" for i in range(n)]})
    for f in personas.BEHAVIOUR:
        out[f] = rng.poisson(2, n).astype(float)
    out.loc[: n // 4, ["tickets_90d", "payment_failures_12m"]] += 10  # a group with many tickets and failed payments
    out.loc[::5, "nps_last"] = np.nan
    return out


def test_row_order_does_not_change_the_model() -> None:
    data = frame()
    first = personas.fit(data, "2026-01-01")
    again = personas.fit(data.sample(frac=1, random_state=1), "2026-01-01")
    assert first == again
    assert list(personas.assign(first, data)) == list(personas.assign(again, data))


def test_a_distinct_group_is_named_for_what_sets_it_apart() -> None:
    model = personas.fit(frame(), "2026-01-01", k=3)
    group = personas.assign(model, frame())[: 600 // 4]
    assert len(set(group)) == 1, "the group is one persona"
    assert set(group[0].split(", ")) == {"many tickets", "payment trouble"}


def test_names_are_unique_even_when_words_clash() -> None:
    words = [["very active", "broad use", "promoters"], ["very active", "broad use", "detractors"],
             ["very active", "broad use"], ["very active", "broad use"], []]
    named = personas.names(words)
    assert len(set(named)) == len(named)
    assert named[0] == "very active, broad use, promoters" and named[-1] == "typical"


def test_too_few_behaviour_features_is_an_error() -> None:
    data = frame()[["customer_id", "mrr"]]
    with pytest.raises(ValueError, match="at least two"):
        personas.fit(data, "2026-01-01")


def test_a_customer_without_features_still_gets_a_persona() -> None:
    model = personas.fit(frame(), "2026-01-01", k=3)
    assert personas.assign(model, pd.DataFrame([{"customer_id": "X"}]))[0] in model.names
