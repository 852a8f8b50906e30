"""The service class called directly (no HTTP): profile, predictions, errors, champion reload."""

from __future__ import annotations

import gc
import inspect
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import anyio
import pandas as pd
import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import audit
from c360.core.settings import Settings
from c360.features import store
from c360.serving.errors import NotFound
from c360.serving.schemas import ByIds, ChurnPredictions, ChurnRows, NbaPredictions, Profile
from c360.serving.service import C360, LiveUpdater
from c360.training import registry, tracking
from c360.training.response import CHANNELS as RESPONSE_CHANNELS
from c360.training.specs import CHURN, EXPANSION
from c360.training.tracking import CHALLENGER, CHAMPION

runner = CliRunner()


@pytest.fixture(scope="module")
def service(served: Settings) -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("C360_HOME", str(served.home))
        patch.setenv("C360_RELOAD_SECONDS", "0")
        yield C360()


def body(response: Any) -> dict:
    return json.loads(response.body)


def customers(s: Settings, n: int) -> list[str]:
    return store.read_snapshot(s, store.snapshot_dates(s)[-1])["customer_id"].head(n).tolist()


def test_the_live_updater_freezes_its_start_up_objects(served: Settings) -> None:
    """The collector's full passes over the updater's start-up objects (libraries, models: half a million) stopped a
    live round for 0.4 s each: the updater freezes them as it starts, as `C360` does its own."""
    gc.unfreeze()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("C360_HOME", str(served.home))
        LiveUpdater()
    assert gc.get_freeze_count() > 100_000


def test_profile_has_past_present_future_from_the_batch(service: Any, served: Settings) -> None:
    customer = customers(served, 1)[0]
    result = body(anyio.run(lambda: service.customer_profile(customer_id=customer, details=False)))
    Profile.model_validate(result)
    assert result["customer_id"] == customer
    assert {"activity", "billing"} <= set(result["past"])
    assert {"health", "red_flags"} <= set(result["present"])
    future = result["future"]
    for key in ("churn", "clv", "next_best_action", "expansion", "response"):
        model = future[key]["model"]
        assert model["source"] == "batch" and model["features_as_of"] == result["freshness"]["features_as_of"]
        assert model["version"] == service.ctx.champions[{"next_best_action": "nba"}.get(key, key)].version
    churn = future["churn"]
    assert 0 < churn["probability"] < 1 and churn["band"] in {"low", "medium", "high"}
    assert all(r["direction"] in r["text"] for r in churn["reasons"])
    clv = future["clv"]
    assert clv["low"] <= clv["value_12m"] <= clv["high"]
    nba = future["next_best_action"]
    assert nba["action"] not in {a["action"] for a in nba["alternatives"]}
    withheld = {a["action"] for a in nba["not_proposed"]}
    assert all(nba["uplift"] >= a["uplift"] for a in nba["alternatives"] if a["action"] not in withheld)
    assert isinstance(future["advocate"]["candidate"], bool)
    expansion = future["expansion"]
    assert expansion["available"] and 0 < expansion["probability"] < 1 and expansion["horizon_days"] == 90
    assert all(r["text"].endswith(f"{r['direction']} expansion chance") for r in expansion["reasons"])
    response = future["response"]
    channels = response["channels"]
    assert response["available"] and response["horizon_days"] == 14
    assert (channels[0]["channel"], channels[0]["topic"]) == (response["channel"], response["topic"])
    assert channels[0]["probability"] == pytest.approx(response["probability"], abs=1e-6)
    assert sorted(c["channel"] for c in channels) == sorted(RESPONSE_CHANNELS)
    assert [c["probability"] for c in channels] == sorted((c["probability"] for c in channels), reverse=True)
    assert all(r["text"].endswith(f"{r['direction']} response chance") for r in response["reasons"])


def test_profile_with_details_has_identity_and_lists(service: Any, served: Settings) -> None:
    customer = customers(served, 1)[0]
    result = body(anyio.run(lambda: service.customer_profile(customer_id=customer, details=True)))
    Profile.model_validate(result)
    assert result["identity"]["customer_id"] == customer
    assert {"timeline", "contacts", "red_flags_since"} <= set(result["details"])


IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*")


def not_identifiers(value: Any) -> list[str]:
    """Every key in a JSON value, at any depth, that is not a snake_case identifier."""
    if isinstance(value, dict):
        return [k for k in value if not IDENTIFIER.fullmatch(k)] + not_identifiers(list(value.values()))
    if isinstance(value, list):
        return [key for item in value for key in not_identifiers(item)]
    return []


def test_every_key_of_the_profile_is_an_identifier(service: Any, served: Settings) -> None:
    snapshot = store.read_snapshot(served, store.snapshot_dates(served)[-1])
    flagged = snapshot.sort_values(["red_flags", "customer_id"])["customer_id"].iloc[-1]  # every part filled
    result = body(anyio.run(lambda: service.customer_profile(customer_id=flagged, details=True)))
    assert result["present"]["red_flags"] and result["details"]["red_flags_since"] and result["details"]["timeline"]
    assert not_identifiers(result) == []


def test_the_key_check_refuses_labels() -> None:
    labelled = {"present": {"support and sentiment": {"open_tickets": 1}}, "details": {"timeline": [{"When": 1}]}}
    assert not_identifiers(labelled) == ["support and sentiment", "When"]


def test_unknown_customer_is_not_found(service: Any) -> None:
    with pytest.raises(NotFound):
        anyio.run(lambda: service.customer_profile(customer_id="C99999999", details=False))


def test_predict_ids_and_rows_agree(service: Any, served: Settings) -> None:
    ids = customers(served, 3)
    by_id = body(anyio.run(lambda: service.rest_predict_churn(ByIds(customer_ids=ids))))
    ChurnPredictions.model_validate(by_id)
    snapshot = store.read_snapshot(served, store.snapshot_dates(served)[-1]).set_index("customer_id")
    inputs = service.ctx.champions["churn"].inputs
    rows = [{k: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v)
             for k, v in snapshot.loc[c, inputs].items()} for c in ids]
    by_row = body(anyio.run(lambda: service.rest_predict_churn(ChurnRows(rows=rows))))
    for a, b in zip(by_id["predictions"], by_row["predictions"], strict=True):
        assert a["probability"] == pytest.approx(b["probability"], rel=1e-9)
        assert b["model"]["source"] == "live"
    nba = body(anyio.run(lambda: service.rest_predict_nba(ByIds(customer_ids=ids))))
    NbaPredictions.model_validate(nba)


def test_a_new_champion_is_picked_up_without_restart(service: Any, served: Settings) -> None:
    client = tracking.configure(served.home)
    name = "c360-churn"
    current = tracking.version_by_alias(client, name, CHAMPION)
    copy = client.create_model_version(name, current.source, current.run_id)
    customer = customers(served, 1)[0]
    try:
        client.set_registered_model_alias(name, CHAMPION, copy.version)
        reloaded = body(anyio.run(service.reload))
        assert reloaded["reloaded"] == {"churn": [int(current.version), int(copy.version)]}
        result = body(anyio.run(lambda: service.customer_profile(customer_id=customer, details=False)))
        churn = result["future"]["churn"]
        assert churn["model"] == churn["model"] | {"version": int(copy.version), "source": "live"}
        assert body(anyio.run(service.reload))["reloaded"] == {}
    finally:
        client.set_registered_model_alias(name, CHAMPION, current.version)
        anyio.run(service.reload)
    again = body(anyio.run(lambda: service.customer_profile(customer_id=customer, details=False)))["future"]["churn"]
    assert again["model"]["source"] == "batch" and again["probability"] == pytest.approx(churn["probability"])


def test_a_home_without_an_expansion_champion_still_answers(service: Any, served: Settings) -> None:
    """Homes trained before expansion existed: the profile answers, its expansion says why there is none, the
    service stays ready; a promotion brings it back without a restart."""
    client = tracking.configure(served.home)
    current = tracking.version_by_alias(client, EXPANSION.name, CHAMPION)
    customer = customers(served, 1)[0]
    try:
        client.delete_registered_model_alias(EXPANSION.name, CHAMPION)
        anyio.run(service.reload)
        result = body(anyio.run(lambda: service.customer_profile(customer_id=customer, details=False)))
        Profile.model_validate(result)
        expansion = result["future"]["expansion"]
        assert not expansion["available"] and expansion["probability"] is None and expansion["model"] is None
        assert "c360-expansion" in expansion["unavailable"] and "c360 promote expansion" in expansion["unavailable"]
        assert 0 < result["future"]["churn"]["probability"] < 1
        assert service.ctx.champions.ready
    finally:
        client.set_registered_model_alias(EXPANSION.name, CHAMPION, current.version)
        anyio.run(service.reload)
    again = body(anyio.run(lambda: service.customer_profile(customer_id=customer, details=False)))
    assert again["future"]["expansion"]["available"]


def test_a_rollback_is_followed_by_the_service(service: Any, served: Settings) -> None:
    """`c360 promote churn --rollback` after a promotion: the service's next poll (`reload`) serves the previous
    champion again; the reason is in MLflow, the audit trail and the run log."""
    client, name = tracking.configure(served.home), "c360-churn"
    current, challenger = (tracking.version_by_alias(client, name, a) for a in (CHAMPION, CHALLENGER))
    copy = client.create_model_version(name, current.source, current.run_id)
    customer = customers(served, 1)[0]
    try:
        client.set_registered_model_alias(name, CHALLENGER, copy.version)
        assert registry.promote(client, name, replace(CHURN.gate, margin=-1.0, guards=())).promoted
        assert body(anyio.run(service.reload))["reloaded"] == {"churn": [int(current.version), int(copy.version)]}
        reason = "calibration drifted after the price change"
        result = runner.invoke(app, ["promote", "churn", "--rollback", "--reason", reason, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"model": name, "rolled_back": int(copy.version),
                                             "champion": int(current.version), "reason": reason}
        assert body(anyio.run(service.reload))["reloaded"] == {"churn": [int(copy.version), int(current.version)]}
        churn = body(anyio.run(lambda: service.customer_profile(customer_id=customer, details=False)))["future"]
        assert churn["churn"]["model"]["version"] == int(current.version)
        assert client.get_model_version(name, copy.version).tags["rollback.reason"] == reason
        assert reason in audit.path(served).read_text().splitlines()[-1]
        assert json.loads(served.runs.read_text().splitlines()[-1])["reason"] == reason
        refused = runner.invoke(app, ["promote", "churn", "--rollback", "--reason", "again"])
        assert refused.exit_code == 1 and "no previous champion" in refused.output
        assert tracking.version_by_alias(client, name, CHAMPION).version == current.version
    finally:
        client.set_registered_model_alias(name, CHAMPION, current.version)
        client.set_registered_model_alias(name, CHALLENGER, challenger.version)
        anyio.run(service.reload)


@pytest.mark.parametrize("arguments", [["--rollback"], ["--rollback", "--reason", "  "], ["--reason", "why"],
                                       ["--rollback", "--reason", "asked by ann@example.com"]])
def test_a_rollback_needs_a_plain_reason(arguments: list[str]) -> None:
    result = runner.invoke(app, ["promote", "churn", *arguments])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "reason" in result.output, result.output


def test_routes_get_the_service_on_the_event_loop() -> None:
    """BentoML's dependency handing the routes their service is a plain function, which FastAPI runs in its thread
    pool (a thread hop per request): the service swaps in a coroutine."""
    methods = [m for m in vars(C360.inner).values() if getattr(m, "__signature__", None) is not None]
    firsts = [next(iter(m.__signature__.parameters.values()), None) for m in methods]
    dependencies = [p.default.dependency for p in firsts if p is not None and hasattr(p.default, "dependency")]
    assert len(dependencies) >= 10
    assert all(inspect.iscoroutinefunction(d) for d in dependencies)
