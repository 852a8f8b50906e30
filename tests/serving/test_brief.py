"""The call brief (`serving.brief`) over the serving tests' home: every number and category it states traces to
the profile it came from, it stays within 80 words, masked roles get one that names no person or company, and
`c360 profile` prints it first. The optional rewrite against a real local HTTP server standing in for the external
OpenAI-compatible endpoint (not one of c360's components): what it is sent, its answer, its failures, and no
connection at all without an endpoint (Python's audit hook `socket.connect` sees every one)."""

from __future__ import annotations

import copy
import json
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core.settings import Settings
from c360.features import store
from c360.serving.brief import MAX_WORDS, compose, of
from tests.serving.conftest import bearer, free_port

NUMBER = re.compile(r"\d+(?:\.\d+)?")


def customers(s: Settings, n: int) -> list[str]:
    """`n` customers spread over the latest snapshot, from the most red flags to none."""
    ids = store.read_snapshot(s, store.snapshot_dates(s)[-1]).sort_values(["red_flags", "customer_id"],
                                                                          ascending=[False, True])["customer_id"]
    return ids.iloc[:: max(1, len(ids) // n)].head(n).tolist()


def field(profile: dict[str, Any], path: str) -> Any:
    value: Any = profile
    for key in path.split("."):
        value = value[int(key)] if isinstance(value, list) else value[key]
    return value


def rendered(path: str, value: Any, text: str) -> bool:
    """Whether `text` words `value` of the field at `path` as the brief should."""
    name = path.split(".")[-1]
    if name == "live_events":
        return text == str(len(value))
    if name in ("probability", "usage_trend"):
        return text == f"{abs(value) * 100:.0f} %"
    if name == "tenure_days":
        number, unit = text.split()
        return abs(float(number) - (value if unit == "days" else value / 365.25)) <= 0.05 and \
            (unit == "days") == (value < 365)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return abs(float(text) - value) <= 0.5
    return text == str(value).replace("_", " ")


def check(profile: dict[str, Any]) -> dict[str, Any]:
    """Asserts the brief of `profile` against it; returns the brief."""
    brief = profile["brief"]
    text = brief["text"]
    assert brief["source"] == "rules" and 0 < len(text.split()) <= MAX_WORDS, text
    covered: set[int] = set()
    for fact in brief["facts"]:
        assert field(profile, fact["field"]) == fact["value"], fact
        assert rendered(fact["field"], field(profile, fact["field"]), fact["text"]), fact
        assert fact["text"] in text, fact
        for found in re.finditer(re.escape(fact["text"]), text):
            covered |= set(range(*found.span()))
    for number in NUMBER.finditer(text):  # every number stated is some fact's wording
        assert set(range(*number.span())) <= covered, (number.group(), text)
    stated = {f["field"] for f in brief["facts"]}
    assert {"future.churn.band", "future.churn.probability", "future.next_best_action.action"} <= stated
    return brief


def test_every_number_and_category_traces_to_the_profile(client: TestClient, served: Settings) -> None:
    briefs = []
    for customer in customers(served, 60):
        response = client.get(f"/customers/{customer}/profile", params={"details": "true"})
        assert response.status_code == 200
        briefs.append(check(response.json()))
    fields = {f["field"].split(".")[-1] for b in briefs for f in b["facts"]}
    assert {"display_name", "health_band", "lifecycle_stage", "code", "description"} <= fields, fields
    assert any("mainly" in b["text"] for b in briefs) and any("Recently:" in b["text"] for b in briefs)


def test_the_check_fails_on_a_wrong_statement(client: TestClient, served: Settings) -> None:
    profile = client.get(f"/customers/{customers(served, 1)[0]}/profile", params={"details": "true"}).json()
    wrong = copy.deepcopy(profile)
    wrong["future"]["churn"]["probability"] = min(1.0, wrong["future"]["churn"]["probability"] + 0.2)
    with pytest.raises(AssertionError):
        check(wrong)  # the brief still states the served probability
    extra = copy.deepcopy(profile)
    extra["brief"]["text"] += " 7 tickets."
    with pytest.raises(AssertionError):
        check(extra)  # a number no fact states


def test_neutral_parts_are_left_out_and_the_news_goes_first_when_too_long(client: TestClient,
                                                                           served: Settings) -> None:
    profile = client.get(f"/customers/{customers(served, 1)[0]}/profile", params={"details": "true"}).json()
    calm = copy.deepcopy(profile)
    calm["present"]["red_flags"], calm["past"]["live_events"] = [], []
    calm["past"]["activity"]["usage_trend"] = 0.1
    calm["future"]["churn"]["band"] = "low"
    text = compose(calm)["text"]
    assert "Recently" not in text and "mainly" not in text and "Churn risk low" in text
    busy = copy.deepcopy(profile)
    busy["identity"]["display_name"] = " ".join(["Name"] * 30)
    busy["past"]["live_events"] = [{"event_id": f"e{i}", "kind": "ticket_opened", "at": "2026-01-01"}
                                   for i in range(3)]
    brief = compose(busy)
    assert len(brief["text"].split()) <= MAX_WORDS and "new events" not in brief["text"]
    assert "Next best action" in brief["text"] and "Churn risk" in brief["text"]


@pytest.mark.parametrize("role", ["analyst", "service"])
def test_roles_without_personal_data_get_a_brief_naming_no_one(client: TestClient, served: Settings,
                                                              api_keys: dict[str, str], role: str) -> None:
    for customer in customers(served, 20):
        full = client.get(f"/customers/{customer}/profile", params={"details": "true"}).json()
        who = full["identity"]
        personal = [v for v in (who["display_name"], who["company"], *who["emails"], *who["phones"]) if v]
        assert all(v in full["brief"]["text"] for v in (who["display_name"], who["company"]) if v)  # counter-test
        seen = client.get(f"/customers/{customer}/profile", params={"details": "true"},
                          headers=bearer(api_keys[role])).json()
        assert not [v for v in personal if v in seen["brief"]["text"]], seen["brief"]["text"]
        assert not {f["field"] for f in seen["brief"]["facts"]} & {"identity.display_name", "identity.company"}
        check(seen)


def test_c360_profile_prints_the_brief_first(served: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("C360_HOME", str(served.home))
    customer = customers(served, 1)[0]
    shown = CliRunner().invoke(app, ["profile", customer, "--json"])
    assert shown.exit_code == 0, shown.output
    brief = json.loads(shown.stdout)["brief"]
    assert brief["source"] == "rules" and len(brief["text"].split()) <= MAX_WORDS
    page = CliRunner().invoke(app, ["profile", customer], env={"COLUMNS": "200"})
    assert page.exit_code == 0 and page.output.index("call brief") < page.output.index("identity")
    assert " ".join(brief["text"].split()[:4]) in " ".join(page.output.split())


# ---------------------------------------------------------------- the optional rewrite

CONNECTS: list[Any] = []
_recording = threading.Event()
sys.addaudithook(lambda event, args: CONNECTS.append(args) if event == "socket.connect" and _recording.is_set()
                 else None)


@contextmanager
def connections() -> Iterator[list[Any]]:
    """The sockets connected meanwhile (by any thread)."""
    CONNECTS.clear()
    _recording.set()
    try:
        yield CONNECTS
    finally:
        _recording.clear()


@contextmanager
def endpoint(answer: str, status: int = 200) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local chat-completions server answering `answer`; yields its base URL and the requests it received."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append({"path": self.path, "auth": self.headers.get("Authorization"),
                             "body": json.loads(self.rfile.read(int(self.headers["Content-Length"])))})
            body = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def full_profile(client: TestClient, served: Settings) -> dict[str, Any]:
    """A business customer's whole profile (name and company set), without its brief."""
    for customer in customers(served, 40):
        out = client.get(f"/customers/{customer}/profile", params={"details": "true"}).json()
        if out["identity"]["company"] and out["identity"]["display_name"]:
            return {k: v for k, v in out.items() if k != "brief"}
    pytest.skip("no customer with a company among the 40 looked at")


def test_without_an_endpoint_no_connection_is_opened(full_profile: dict[str, Any], tmp_path) -> None:
    with connections() as opened:
        brief = of(full_profile, "full", Settings(home=tmp_path))
    assert brief["source"] == "rules" and opened == []
    with endpoint("Short.") as (url, _), connections() as opened:  # counter-test: the hook sees a rewrite's
        of(full_profile, "full", Settings(home=tmp_path, brief_endpoint=url))
    assert opened


def test_the_endpoint_gets_the_masked_brief_unless_the_admin_allows_personal_data(
        full_profile: dict[str, Any], tmp_path) -> None:
    who = full_profile["identity"]
    personal = [who["display_name"], who["company"], *who["emails"], *who["phones"]]
    answer = "A smoother brief."
    with endpoint(answer) as (url, received):
        s = Settings(home=tmp_path, brief_endpoint=url, brief_model="small-model", brief_api_key="k-1")
        brief = of(full_profile, "full", s)
        sent = json.dumps(received[-1]["body"])
        assert received[-1]["path"] == "/v1/chat/completions" and received[-1]["auth"] == "Bearer k-1"
        assert received[-1]["body"]["model"] == "small-model"
        assert not [v for v in personal if v in sent]
        assert brief["source"] == "llm" and brief["text"] == answer
        assert brief["rules_text"] == compose(full_profile)["text"] and who["display_name"] in brief["rules_text"]
        of(full_profile, "full", s.model_copy(update={"brief_send_personal": True}))
        assert who["display_name"] in json.dumps(received[-1]["body"])
        count = len(received)
        of(full_profile, "full", s.model_copy(update={"brief_send_personal": True}))
        assert len(received) == count  # the same text: the answer kept, not asked again


def test_a_failing_endpoint_falls_back_to_the_rules(full_profile: dict[str, Any], tmp_path) -> None:
    rules = compose(full_profile)
    with endpoint("unused", status=500) as (url, _):
        failed = of(full_profile, "full", Settings(home=tmp_path, brief_endpoint=url))
    assert failed["source"] == "rules" and failed["text"] == rules["text"] and "HTTPStatusError" in failed["note"]
    with endpoint("word " * (MAX_WORDS + 1)) as (url, _):
        long = of(full_profile, "full", Settings(home=tmp_path, brief_endpoint=url))
    assert long["source"] == "rules" and "over 80 words" in long["note"]
    gone = of(full_profile, "full", Settings(home=tmp_path, brief_endpoint=f"http://127.0.0.1:{free_port()}/v1"))
    assert gone["source"] == "rules" and "ConnectError" in gone["note"]
