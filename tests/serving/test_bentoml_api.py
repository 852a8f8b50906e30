"""The BentoML APIs (`POST /profile`, `/predict_churn`, `/predict_clv`, `/predict_nba`) through BentoML's own
client against a real `bentoml serve`: the REST routes' answers, and errors as 4xx, never a 5xx."""

from __future__ import annotations

from typing import Any

import bentoml
import httpx
import pytest
import schemathesis
from bentoml.exceptions import InvalidArgument, NotFound, UnprocessableEntity
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from c360.core.settings import Settings
from c360.features import store
from c360.serving.schemas import ClvPredictions, NbaPredictions, Profile

APIS = ["profile", "predict_churn", "predict_clv", "predict_nba"]


def stamped_off(value: Any) -> Any:
    """`value` without the times of the answer (`scored_at` of live scores, `served_at`) and without empty fields
    (the HTTP answer leaves them out; the client's models hold them as None)."""
    if isinstance(value, dict):
        return {k: stamped_off(v) for k, v in value.items() if k not in ("scored_at", "served_at") and v is not None}
    if isinstance(value, list):
        return [stamped_off(v) for v in value]
    return value


@pytest.fixture(scope="module")
def client(server: str, api_keys: dict[str, str]) -> Any:
    with bentoml.SyncHTTPClient(server, timeout=60, token=api_keys["admin"]) as bento:
        yield bento


def test_bentoml_client_sees_the_apis_and_gets_the_rest_answers(client: Any, server: str, served: Settings,
                                                                 admin: dict) -> None:
    ids = store.read_snapshot(served, store.snapshot_dates(served)[-1])["customer_id"].head(3).tolist()
    assert set(APIS) <= set(client.endpoints)
    churn = client.predict_churn(customer_ids=ids)
    rest = httpx.post(f"{server}/predict/churn", json={"customer_ids": ids}, headers=admin, timeout=60).json()
    assert stamped_off(churn) == stamped_off(rest) and [p["customer_id"] for p in churn["predictions"]] == ids
    ClvPredictions.model_validate(client.predict_clv(customer_ids=ids))
    NbaPredictions.model_validate(client.predict_nba(customer_ids=ids))
    profile = client.profile(customer_id=ids[0])
    rest = httpx.get(f"{server}/customers/{ids[0]}/profile", headers=admin, timeout=60).json()
    Profile.model_validate(profile)
    assert stamped_off(profile) == stamped_off(rest)  # no details
    assert client.profile(customer_id=ids[0], details=True)["identity"]["customer_id"] == ids[0]


def test_bentoml_api_errors_are_4xx(client: Any, server: str, admin: dict) -> None:
    with pytest.raises(NotFound, match="unknown customer"):
        client.profile(customer_id="C99999999")
    with pytest.raises(NotFound, match="C99999999"):
        client.predict_clv(customer_ids=["C99999999"])
    with pytest.raises(InvalidArgument):  # BentoML's own validation of the arguments: 400
        client.predict_churn(rows=[{"seats": "many"}])
    with pytest.raises(InvalidArgument):
        client.profile(customer_id="not an id")
    with pytest.raises(UnprocessableEntity, match="either customer_ids or rows"):
        client.predict_nba()
    assert httpx.post(f"{server}/predict_clv", content=b"{not json", headers=admin, timeout=60).status_code == 400


def test_bentoml_apis_answer_no_5xx(server: str, admin: dict) -> None:
    """Generated valid and invalid requests to each API: never a 5xx. (BentoML documents its error bodies as
    objects but sends a list: the bodies are not checked against its document.)"""
    api = schemathesis.openapi.from_url(f"{server}/docs.json").include(path_regex=f"^/({'|'.join(APIS)})$")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) == len(APIS)
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:
            case.call_and_validate(checks=[not_a_server_error], headers=admin, timeout=60)

        check()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_bentoml_apis_refuse_a_body_over_the_limit(server: str, chunked: bool, admin: dict) -> None:
    """The body limit bounds BentoML's APIs as it bounds the REST routes: a 413 before the body is read whole."""
    big = b'{"customer_ids": ["' + b"C" * 2_000_000 + b'"]}'
    content = iter([big[:600_000], big[600_000:]]) if chunked else big
    response = httpx.post(f"{server}/predict_churn", content=content, timeout=60,
                          headers={"content-type": "application/json", **admin})
    assert response.status_code == 413 and "C360_MAX_BODY_BYTES" in response.json()["detail"]
