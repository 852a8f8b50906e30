"""The audience filter language: each operator and the precedence of and/or/not against pandas' answer on a small
frame (run by DuckDB with bound parameters), unknown fields and constructs refused with a one-line message."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from c360.features.audience_filter import FilterError, parse
from c360.features.audiences import select

rng = np.random.default_rng(3)
N = 400
FRAME = pd.DataFrame({
    "customer_id": [f"C{i:08d}" for i in range(N)],
    "region": rng.choice(["EMEA", "AMER", "APAC", None], N),
    "clv_12m": np.where(rng.random(N) < 0.1, np.nan, rng.gamma(2, 600, N)),
    "churn_band": rng.choice(["low", "medium", "high"], N),
    "subscribed": rng.random(N) < 0.7,
    "persona": rng.choice(["steady", "drifting"], N),  # a field no code here knows: it is in the data
})
FIELDS = {"region": "text", "clv_12m": "number", "churn_band": "text", "subscribed": "bool", "persona": "text"}
R, V, B, S = FRAME["region"], FRAME["clv_12m"], FRAME["churn_band"], FRAME["subscribed"]

CASES = [
    ("region = 'EMEA'", R == "EMEA"),
    ("region != 'EMEA'", R.notna() & (R != "EMEA")),  # SQL: null is neither equal nor different
    ("region <> 'EMEA'", R.notna() & (R != "EMEA")),
    ("clv_12m < 1000", V < 1000),
    ("clv_12m <= 1000.5", V <= 1000.5),
    ("clv_12m > 1000", V > 1000),
    ("clv_12m >= -1", V >= -1),
    ("1000 < clv_12m", V > 1000),
    ("region in ('EMEA', 'APAC')", R.isin(["EMEA", "APAC"])),
    ("region not in ('EMEA', 'APAC')", R.notna() & ~R.isin(["EMEA", "APAC"])),
    ("clv_12m is null", V.isna()),
    ("clv_12m is not null", V.notna()),
    ("subscribed", S),
    ("subscribed = false", ~S),
    ("persona = 'drifting'", FRAME["persona"] == "drifting"),
    # precedence: not binds tighter than and, and tighter than or
    ("churn_band = 'high' or churn_band = 'low' and subscribed", (B == "high") | ((B == "low") & S)),
    ("(churn_band = 'high' or churn_band = 'low') and subscribed", ((B == "high") | (B == "low")) & S),
    ("not subscribed and churn_band = 'high'", ~S & (B == "high")),
    ("not (subscribed and churn_band = 'high')", ~(S & (B == "high"))),
    ("region = 'it''s'", R == "it's"),
]


@pytest.mark.parametrize(("where", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_operator_selects_what_pandas_selects(where: str, expected: pd.Series) -> None:
    chosen = select(FRAME, parse(where, FIELDS))
    assert chosen == sorted(FRAME.loc[expected.fillna(False).astype(bool), "customer_id"])


def test_literals_are_parameters_never_sql_text() -> None:
    condition = parse("region = 'x'' or 1=1 --' and clv_12m > 5", FIELDS)
    assert "1=1" not in condition.sql and "'" not in condition.sql
    assert condition.params == ("x' or 1=1 --", 5)
    assert select(FRAME, condition) == []


@pytest.mark.parametrize(("where", "message"), [
    ("regoin = 'EMEA'", "unknown field 'regoin'; did you mean region?"),
    ("clv = 3", "unknown field 'clv'; did you mean clv_12m?"),
    ("clv_12m > 'high'", "field clv_12m is number"),
    ("region = null", "is null"),
    ("region = churn_band", "only literals"),
    ("clv_12m between 1 and 2", "unsupported construct: between"),
    ("region like 'E%'", "unsupported construct: like"),
    ("clv_12m + 1 > 2", "a field name is expected here"),
    ("subscribed; DROP TABLE profile", "one condition only"),
    ("subscribed -- comment", "comments"),
    ("clv_12m > (SELECT 1)", "only literals"),
    ("region in (SELECT region FROM profile)", "in (...) takes a list of literals only"),
    ("t.region = 'EMEA'", "a field name is expected here"),
    ("region", "field region is text"),
    ("", "the filter is empty"),
    ("region = ", "does not parse"),
])
def test_a_bad_filter_is_one_line_naming_the_problem(where: str, message: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse(where, FIELDS)
    assert message in str(caught.value) and "\n" not in str(caught.value)
