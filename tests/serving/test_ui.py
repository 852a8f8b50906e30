"""The profile page (`/ui`) and the e-mail lookup behind its search box: the plain function, the routes in process
(ASGI), and the page in headless Chromium against a real `bentoml serve` over the serving tests' home, including its
polling: a figure changed in the online store, or a live event sent, shows and is marked without a reload."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from starlette.testclient import TestClient

from c360.core import warehouse
from c360.core.settings import Settings
from c360.features import store
from c360.features.online_store import C360OnlineStore
from c360.features.profile import keys, label
from c360.serving.errors import NotFound, Unavailable
from c360.serving.lookup import customers_by_email

SVG_NAMESPACE = "http://www.w3.org/2000/svg"


def flagged_customer(s: Settings) -> tuple[str, str]:
    """The latest snapshot's customer with the most red flags (a busy profile), and its first e-mail address."""
    snapshot = store.read_snapshot(s, store.snapshot_dates(s)[-1])
    ranked = snapshot.sort_values(["red_flags", "customer_id"], ascending=[False, True])["customer_id"].tolist()
    with warehouse.connect(s, read_only=True) as con:
        emails = dict(con.execute("SELECT customer_id, emails[1] FROM identity_customers WHERE len(emails) > 0 "
                                  "AND customer_id IN (SELECT unnest(?))", [ranked[:50]]).fetchall())
    customer = next(c for c in ranked if c in emails)
    return customer, emails[customer]


# ---------------------------------------------------------------- the lookup, a plain function


def test_lookup_finds_the_customer_whatever_the_case_and_tag(served: Settings) -> None:
    customer, email = flagged_customer(served)
    local, domain = email.split("@")
    found = customers_by_email(served, f"  {local.upper()}+crm@{domain.upper()} ")
    assert found["email"] == email and customer in found["customer_ids"]
    with pytest.raises(NotFound, match=r"no customer with e-mail nobody@nowhere\.example"):
        customers_by_email(served, "Nobody@nowhere.example")


def test_lookup_without_a_warehouse_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="warehouse"):
        customers_by_email(Settings(home=tmp_path), "jane@example.com")


# ---------------------------------------------------------------- in process (ASGI)


def test_ui_is_one_page_that_fetches_nothing_from_elsewhere(client: TestClient) -> None:
    response = client.get("/ui")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert set(re.findall(r"https?://[^\s\"'<>)`]+", html)) <= {SVG_NAMESPACE}
    assert not re.search(r"<script[^>]+src|<link[^>]+stylesheet|@import|url\(", html)
    # the same API, no second code path
    assert "profile?details=true" in html and "customers?email=" in html
    assert "/ui" not in client.get("/docs.json").json()["paths"]


def test_labels_are_the_schema_titles_and_the_page_shows_them(client: TestClient) -> None:
    schemas = client.get("/docs.json").json()["components"]["schemas"]
    assert schemas["Present"]["properties"]["support"]["title"] == label("support") == "support and sentiment"
    support = schemas["PresentSupport"]["properties"]
    assert support["open_high_severity_tickets"]["title"] == label("open_high_severity_tickets")
    page = client.get("/ui").text
    labels = json.loads(re.search(r"const LABELS = (\{.*\});", page).group(1))
    assert labels == {key: label(key) for key in keys()} and labels["standing"] == "where the customer stands"


def test_email_lookup_route(client: TestClient, served: Settings) -> None:
    customer, email = flagged_customer(served)
    found = client.get("/customers", params={"email": email.upper()})
    assert found.status_code == 200 and found.json()["email"] == email and customer in found.json()["customer_ids"]
    unknown = client.get("/customers", params={"email": "nobody@nowhere.example"})
    assert unknown.status_code == 404 and unknown.json() == {"detail": "no customer with e-mail nobody@nowhere.example"}
    for params in ({"email": "not an address"}, {"email": "a@b"}, {}):
        malformed = client.get("/customers", params=params)
        assert malformed.status_code == 422 and malformed.json()["detail"][0]["loc"] == ["query", "email"]


# ---------------------------------------------------------------- in Chromium, against a real server


def small_png(shot: Path, target: Path) -> None:
    """The screenshot as a 256-colour PNG: a third of its size, the page's flat colours kept."""
    from PIL import Image

    with Image.open(shot) as image:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


def top_to(page, selector: str) -> dict[str, float]:
    """A screenshot's clip: the page's full width from its top to the bottom of the card holding `selector`."""
    bottom = page.locator(selector).evaluate("e => e.closest('.card').getBoundingClientRect().bottom + scrollY")
    return {"x": 0, "y": 0, "width": page.viewport_size["width"], "height": bottom + 16}


def test_profile_page_shows_past_present_future_and_its_error_states(
        server: str, served: Settings, api_keys: dict[str, str], admin: dict[str, str], page, tmp_path: Path,
        docs_images: Path | None) -> None:
    customer, email = flagged_customer(served)
    expected = httpx.get(f"{server}/customers/{customer}/profile", params={"details": "true"}, headers=admin,
                         timeout=60).json()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    page.goto(f"{server}/ui")
    page.get_by_label("API key").fill("c360_not-a-key")  # the page asks for a key first
    page.get_by_role("button", name="Use key").click()
    page.get_by_label("Customer id or e-mail address").fill(email)  # found by e-mail, through the search box
    page.get_by_role("button", name="Find").click()
    page.get_by_role("alert").get_by_text("The service refused the key: unknown API key").wait_for(timeout=30_000)
    page.get_by_label("API key").fill(api_keys["csm"])  # a 401 asks again, then the search runs
    page.get_by_role("button", name="Use key").click()
    choice = page.locator(f"button.choice[data-id='{customer}']")  # an address several customers share: choose
    page.locator("#profile:not([hidden]), button.choice").first.wait_for(timeout=60_000)
    if choice.count():
        choice.click()
    page.locator("#profile:not([hidden])").wait_for(timeout=60_000)

    for section in ("Past", "Present", "Future"):
        assert page.get_by_role("region", name=re.compile(f"^{section} —")).is_visible()
    assert page.locator("#customer-id").inner_text() == customer
    assert page.locator("#brief-text").inner_text() == expected["brief"]["text"]  # first, above the identity
    assert page.locator("#profile > section").first.get_attribute("id") == "brief"
    assert page.locator("#customer-name").inner_text() == expected["identity"]["display_name"]
    health = expected["present"]["health"]
    assert page.locator("#health-score").text_content() == str(round(health["health_score"]))
    assert page.locator("#health-band").inner_text() == health["health_band"]
    details = expected["details"]
    assert page.locator("#red-flags li").count() == len(details["red_flags_since"]) > 0
    assert page.locator("#timeline li").count() == len(details["timeline"])
    future = expected["future"]
    assert page.locator("#churn-probability").inner_text() == f"{100 * future['churn']['probability']:.1f} %"
    assert page.locator("#churn-band").inner_text() == future["churn"]["band"]
    churn_card = page.locator("#future .card").first
    assert churn_card.locator("ul.diverging li").count() == len(future["churn"]["reasons"])
    assert f"{future['churn']['model']['name']} v{future['churn']['model']['version']}" in churn_card.inner_text()
    assert page.locator("#clv-value").inner_text() == f"{future['clv']['value_12m']:,.0f}"
    assert page.locator("#nba-action").inner_text() == future["next_best_action"]["action"].replace("_", " ")
    assert page.locator("#expansion-probability").inner_text() == f"{100 * future['expansion']['probability']:.1f} %"
    response = future["response"]
    assert page.locator("#response-probability").inner_text() == f"{100 * response['probability']:.1f} %"
    assert page.locator("#response-best").inner_text() == \
        f"{response['channel']} · {response['topic']}".replace("_", " ")
    assert page.locator("#response-channels li").count() == len(response["channels"])
    as_of = expected["freshness"]["features_as_of"]
    assert page.locator("#freshness").inner_text().startswith(f"features as of {as_of}")
    assert page.get_by_text(details["red_flags_since"][0]["description"]).is_visible()
    assert page.get_by_role("heading", name="Where the customer stands", exact=True).is_visible()  # labels, not keys
    assert page.locator("#present dt", has_text="open high severity tickets").is_visible()
    assert page.url.endswith(f"/ui?email={email.replace('@', '%40')}") or f"customer={customer}" in page.url

    shot = tmp_path / "profile-page.png"
    page.screenshot(path=str(shot), full_page=True, clip=top_to(page, "#response-best"))  # the brief to response
    assert 50_000 < shot.stat().st_size < 1_000_000
    if docs_images is not None:
        small_png(shot, docs_images / shot.name)

    def alert(url: str, heading: str) -> str:
        page.goto(url)
        box = page.get_by_role("alert")
        box.get_by_role("heading", name=heading).wait_for(timeout=30_000)
        assert page.locator("#profile").is_hidden()
        return str(box.inner_text())

    assert "unknown customer" in alert(f"{server}/ui?customer=C99999999", "No customer with id C99999999")
    alert(f"{server}/ui?customer=not%20an%20id", "“not an id” is not a valid id")
    alert(f"{server}/ui?email=nobody@nowhere.example", "No customer with e-mail nobody@nowhere.example")

    detail = "online store /x/online.db does not exist: run `c360 features materialize` and `c360 score`"
    page.route("**/profile?details=true", lambda route: route.fulfill(
        status=503, content_type="application/json", body=json.dumps({"detail": detail})))
    alert(f"{server}/ui?customer={customer}", "The service cannot answer right now")
    assert page.locator("#error-detail").inner_text() == detail
    assert not errors, errors


def write_online(s: Settings, customer: str, changes: dict[str, float]) -> dict[str, float]:
    """Write `changes` over the customer's row of the latest snapshot into the online store, the way `c360 features
    materialize` does (our store, one transaction, the snapshot's as_of: the later write of a tie wins); returns
    the values replaced, to write them back."""
    fs = store.feature_store(s)
    row = store.read_snapshot(s, store.snapshot_dates(s)[-1]).query("customer_id == @customer")
    original = {k: row[k].iloc[0].item() for k in changes}
    row = row.assign(**changes)
    online = C360OnlineStore()
    with online.transaction(fs.config):
        for view in fs.list_feature_views():
            names = [f.name for f in view.features]
            if set(changes) & set(names):
                online.write_arrow(fs.config, view, pa.Table.from_pandas(row[["customer_id", "as_of", *names]],
                                                                         preserve_index=False))
    return original


def test_the_page_marks_what_changed_since_it_opened_without_a_reload(
        server: str, served: Settings, api_keys: dict[str, str], page) -> None:
    customer = store.read_snapshot(served, store.snapshot_dates(served)[-1])["customer_id"].sort_values().iloc[1]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server}/ui?customer={customer}")
    page.get_by_label("API key").fill(api_keys["csm"])
    page.get_by_role("button", name="Use key").click()
    page.locator("#profile:not([hidden])").wait_for(timeout=60_000)
    figure = page.locator("[data-figure='present.support.open_high_severity_tickets']")
    before = figure.inner_text()
    assert page.locator("#live:not([hidden]) [aria-live]").count() == 1 and page.locator(".changed").count() == 0
    assert page.locator("[data-figure='future.churn.source']").inner_text() in ("batch", "live")
    page.evaluate("window.opened = true")  # gone if the page reloads

    original = write_online(served, customer, {"open_high_severity_tickets": float(before) + 3})
    try:
        changed = page.locator("[data-figure='present.support.open_high_severity_tickets'].changed")
        changed.wait_for(timeout=15_000)
        assert changed.inner_text() == str(int(before) + 3)
        assert changed.get_attribute("title") == f"when the page opened: {before}"
        assert page.locator("#changes li").filter(has_text=f"open high severity tickets: {before} → ").count() == 1
        assert page.evaluate("window.opened")
    finally:
        write_online(served, customer, original)
    changed.wait_for(state="detached", timeout=15_000)  # back to the opening value: no longer marked
    assert page.locator("#changes li").count() == 0 and page.evaluate("window.opened")
    assert not errors, errors
