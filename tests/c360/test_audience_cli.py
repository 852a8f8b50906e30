"""`c360 audience` on the resolved 3,000-customer company with one feature snapshot (no models: the profile table
is the snapshot's fields then): create, list, show, fields, export and their one-line errors.

The tests of this module share one home and run in order (audiences created early are listed and exported later)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import audit, consent, warehouse
from c360.core.settings import Settings
from c360.features import audiences, store
from tests.conftest import cli_json as invoke

runner = CliRunner()


@pytest.fixture(scope="module")
def home(home_over_resolved, resolved_snapshot) -> Iterator[Settings]:
    s = home_over_resolved("audience-cli")
    with warehouse.connect(s, read_only=True) as con:
        store.write_snapshot(s, resolved_snapshot(warehouse.data_end(con)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("C360_HOME", str(s.home))
        yield s


def refused(*args: str) -> str:
    """The one-line error of a command that must fail (no traceback)."""
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a `fail`, not an exception's traceback
    return json.loads(result.stdout)["error"]


def snapshot(s: Settings) -> pd.DataFrame:
    return store.read_snapshot(s, store.snapshot_dates(s)[-1])


def test_fields_are_the_profile_tables_columns(home: Settings) -> None:
    fields = invoke("audience", "fields")["fields"]
    columns = set(snapshot(home).columns) - {"customer_id", "as_of"}
    assert set(fields) == columns
    assert fields["region"] == "text" and fields["mrr"] == "number" and fields["subscribed"] == "bool"


def test_create_counts_what_the_filter_selects(home: Settings) -> None:
    frame = snapshot(home)
    region = frame["region"].value_counts().index[0]
    expected = frame[(frame["region"] == region) & (frame["mrr"] > 100)]
    created = invoke("audience", "create", "big_in_region", "--where", f"region = '{region}' and mrr > 100")
    assert created["size"] == len(expected) > 0
    assert audiences.members(home, "big_in_region") == sorted(expected["customer_id"])
    record = audit.records(home)[-1]
    assert record["action"] == "c360 audience create" and set(record["customers"]) == set(expected["customer_id"])


def test_show_gives_size_overlap_and_distribution(home: Settings) -> None:
    frame = snapshot(home)
    invoke("audience", "create", "subscribed", "--where", "subscribed")
    shown = invoke("audience", "show", "big_in_region")
    assert shown["size"] == len(audiences.members(home, "big_in_region"))
    inside = frame[frame["customer_id"].isin(audiences.members(home, "big_in_region"))]
    assert shown["distribution"]["counts"]["plan"] == inside["plan"].value_counts(dropna=False).to_dict()
    assert shown["distribution"]["quartiles"]["mrr"]["median"] == pytest.approx(inside["mrr"].median(), abs=1e-3)
    shared = len(inside[inside["subscribed"]])
    share = pytest.approx(shared / len(inside))
    assert shown["overlap"] == [{"audience": "subscribed", "shared": shared, "share": share}]
    assert shown["history"][0]["entered"] == shown["size"]
    listed = {a["name"]: a["size"] for a in invoke("audience", "list")["audiences"]}
    assert listed == {"big_in_region": shown["size"], "subscribed": frame["subscribed"].sum()}


def test_bad_filters_are_one_line_errors(home: Settings) -> None:
    assert "unknown field 'regoin'; did you mean region" in refused("audience", "create", "x", "--where",
                                                                    "regoin = 'EMEA'")
    assert "field mrr is number" in refused("audience", "create", "x", "--where", "mrr > 'a lot'")
    assert "unsupported construct: between" in refused("audience", "create", "x", "--where", "mrr between 1 and 2")
    assert "already named 'subscribed'" in refused("audience", "create", "subscribed", "--where", "subscribed")
    assert "no audience named 'nope'" in refused("audience", "show", "nope")
    assert [a["name"] for a in audiences.listed(home)] == ["big_in_region", "subscribed"]


INJECTIONS = ["subscribed; DROP TABLE identity_customers", "mrr > 1 -- and the rest",
              "mrr > (SELECT max(mrr) FROM identity_customers)", "region in (SELECT region FROM crm_accounts)",
              "lower(region) = 'emea'", "mrr > 1 /* hidden */", "read_csv('/etc/passwd') is null"]


@pytest.mark.parametrize("where", INJECTIONS)
def test_an_injection_is_refused_before_any_query(home: Settings, where: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """On a home whose warehouse is not a database at all: any query would fail on it, yet the filter's error
    comes first, and nothing is stored."""
    s = Settings(home=tmp_path / "home")
    s.snapshots.mkdir(parents=True)
    store.write_snapshot(s, snapshot(home))
    s.warehouse.write_bytes(b"not a database")
    monkeypatch.setenv("C360_HOME", str(s.home))
    error = refused("audience", "create", "x", "--where", where)
    assert error.startswith(("one condition only", "comments", "only literals", "in (...) takes", "a field name"))
    assert s.warehouse.read_bytes() == b"not a database" and audiences.listed(s) == []
    # the counter-test: a good filter does reach the (broken) warehouse, so the one above was stopped before it
    assert "not a valid DuckDB database" in refused("audience", "create", "x", "--where", "subscribed")
    assert audiences.listed(s) == []


def test_export_leaves_out_opted_out_customers_and_says_so(home: Settings, tmp_path: Path) -> None:
    members = audiences.members(home, "big_in_region")
    frame = snapshot(home).set_index("customer_id").loc[members]
    fresh = frame.index[~frame["opted_out_marketing_email"].astype(bool)][0]
    consent.record(home, fresh, "marketing_email")  # an opt-out recorded by c360 counts as the silo's do
    out = tmp_path / "crm.csv"
    result = invoke("audience", "export", "big_in_region", "--out", str(out))
    with duckdb.connect(str(home.warehouse), read_only=True) as con:  # counted apart from c360's code
        overridden = {c for (c,) in con.execute("SELECT customer_id FROM consent_overrides "
                                                "WHERE purpose = 'marketing_email'").fetchall()}
    opted = set(frame.index[frame["opted_out_marketing_email"].astype(bool)]) | (overridden & set(members))
    written = pd.read_csv(out, dtype=str)
    assert result["left_out"] == {"opted out of marketing e-mail": len(opted), "erased or asked to be": 0}
    assert result["rows"] == len(written) == len(members) - len(opted)
    assert not set(written["customer_id"]) & opted and fresh in opted
    assert list(written.columns) == list(audiences.EXPORT)
    assert written["email"].str.contains("@").mean() > 0.9
    assert audit.records(home)[-1]["action"] == "c360 audience export"
    logs = home.runs.read_text() + "".join(p.read_text() for p in (home.home / "audit").glob("*.jsonl"))
    assert not [e for e in written["email"].dropna() if e in logs], "an e-mail in the run log or the audit trail"


def test_export_refuses_an_unknown_format(home: Settings, tmp_path: Path) -> None:
    assert ".csv or .parquet" in refused("audience", "export", "big_in_region", "--out", str(tmp_path / "x.xlsx"))
    out = tmp_path / "crm.parquet"
    assert invoke("audience", "export", "big_in_region", "--out", str(out))["rows"] == len(pd.read_parquet(out))


def test_an_export_without_out_goes_under_the_home_and_belongs_to_a_store(home: Settings) -> None:
    from c360.core import personal

    written = Path(invoke("audience", "export", "subscribed")["out"])
    assert written.parent == home.home / "audiences" / "exports" and written.is_file()
    assert personal.owner(home, written).name == "audiences"
    assert personal.owner(home, audiences.path(home)).name == "audiences"


def test_a_refresh_keeps_the_members_of_a_filter_whose_field_is_gone(home: Settings) -> None:
    frame = snapshot(home)
    later = frame.drop(columns=["mrr"]).assign(as_of=frame["as_of"] + pd.Timedelta(days=1))
    path = store.write_snapshot(home, later)
    try:
        changes = {c.audience: c for c in audiences.refresh(home)}
    finally:
        path.unlink()
    kept = changes["big_in_region"]
    assert "unknown field 'mrr'" in (kept.problem or "")
    assert kept.size == len(audiences.members(home, "big_in_region")) > 0 and (kept.entered, kept.left) == (0, 0)
    assert changes["subscribed"].problem is None
