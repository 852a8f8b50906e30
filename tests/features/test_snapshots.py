"""Snapshots and updates: the generated company exported at two dates, the second after a step of the world with
tickets closed, plans changed and contacts archived (`advance`: snapshot tables whole, the others' new rows).
Ingested both, the warehouse's current rows are the second export, its history holds the first, nothing is
quarantined, and the features of each date see what was true then."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest

from c360.core import contract
from c360.core.contract import TABLES
from c360.features import compute, identity, versions
from c360.features.advance import advance, label
from c360.features.generate import generate
from c360.features.ingest import SQL_TYPES, q
from c360.features.ingest import ingest as load
from c360.features.synth.world import END, OBSERVED

CUSTOMERS, SEED, WEEKS = 800, 4, 8  # enough customers for a few tickets open at the first export
SNAPSHOTS = [t for t in TABLES if t.arrives == "snapshot"]
pytestmark = pytest.mark.filterwarnings("ignore::c360.features.ingest.IngestWarning")  # the ground truth's files


@pytest.fixture(scope="module")
def company(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The warehouse after the first export (resolved, features built), then after the second (resolved)."""
    root = tmp_path_factory.mktemp("snapshots")
    world = root / "world"
    generate(world, CUSTOMERS, seed=SEED)
    first_files = {t.id: world / t.silo / f"{t.name}.csv" for t in TABLES}
    con = duckdb.connect(str(root / "warehouse.duckdb"))
    load(con, world, exported_at=END)
    identity.resolve(con, root / "model.json")
    before = compute.build(con, END)
    report = advance(world, WEEKS, out=world)
    second = pd.Timestamp(report.end)
    batch = f"_{label(OBSERVED)}"
    second_files = {t.id: world / t.silo / f"{t.name}{batch}.csv" for t in TABLES}
    load(con, world, exported_at=second)
    identity.resolve(con, root / "model.json")  # as a refresh would: the deleted contacts keep their customers
    return {"con": con, "first": first_files, "second": second_files, "at": second, "before": before}


def export(con: duckdb.DuckDBPyConnection, path: Path, table: contract.Table) -> str:
    """The rows of an export file, typed as the warehouse holds them, as SQL."""
    columns = ", ".join(f"TRY_CAST(nullif({q(c.name)}, '') AS {SQL_TYPES[c.kind]}) AS {q(c.name)}"
                        for c in table.columns)
    return f"SELECT {columns} FROM read_csv('{path}', all_varchar = true, header = true)"


def differ(con: duckdb.DuckDBPyConnection, a: str, b: str) -> int:
    """Rows of `a` not in `b` and of `b` not in `a`."""
    return con.execute(f"SELECT count(*) FROM ((({a}) EXCEPT ALL ({b})) UNION ALL (({b}) EXCEPT ALL ({a})))"
                       ).fetchone()[0]


def columns(table: contract.Table, name: str) -> str:
    return f"SELECT {', '.join(q(c) for c in table.column_names)} FROM {q(name)}"


def test_nothing_is_quarantined(company: dict) -> None:
    assert company["con"].execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0


@pytest.mark.parametrize("table", SNAPSHOTS, ids=[t.id for t in SNAPSHOTS])
def test_current_rows_are_the_second_export_and_the_history_the_first_less_it(
        company: dict, table: contract.Table) -> None:
    con = company["con"]
    second, first = export(con, company["second"][table.id], table), export(con, company["first"][table.id], table)
    assert differ(con, columns(table, table.sql_name), second) == 0
    assert differ(con, columns(table, versions.history(table)), f"({first}) EXCEPT ALL ({second})") == 0


def test_the_step_closed_tickets_changed_plans_and_archived_contacts(company: dict) -> None:
    con = company["con"]
    changed = {t.id: con.execute(f"SELECT count(*) FROM {versions.history(t)}").fetchone()[0] for t in SNAPSHOTS}
    assert all(changed[t] for t in ("support/tickets", "billing/subscriptions", "crm/contacts")), changed
    gone = con.execute("SELECT count(*) FROM crm_contacts__history WHERE contact_id NOT IN "
                       "(SELECT contact_id FROM crm_contacts)").fetchone()[0]
    assert gone > 0


def test_features_as_of_the_first_export_are_unchanged(company: dict) -> None:
    pd.testing.assert_frame_equal(compute.build(company["con"], END), company["before"])


def test_features_as_of_the_second_export_see_the_changes(company: dict) -> None:
    con, at = company["con"], company["at"]
    after = compute.build(con, at).set_index("customer_id")
    before = company["before"].set_index("customer_id")
    # customers whose contacts were archived count only the contacts still at the source
    people = con.execute("""
        SELECT DISTINCT x.customer_id
        FROM crm_contacts__history h JOIN identity_crosswalk x ON x.record_id = 'crm/contacts:' || h.contact_id
        WHERE h.contact_id NOT IN (SELECT contact_id FROM crm_contacts)""").df()
    assert len(people)
    archived = after.loc[people["customer_id"], "contacts"]
    assert (archived < before.loc[people["customer_id"], "contacts"]).all()
    # a ticket open at the first export and closed since is not open at the second
    closed = con.execute("""
        SELECT DISTINCT x.customer_id FROM support_tickets__history h
        JOIN identity_crosswalk x ON x.record_id = 'support/tickets:' || h.ticket_id
        WHERE h.closed_at IS NULL""").df()["customer_id"]
    assert len(closed)
    open_now = con.execute("""
        SELECT x.customer_id, count(*) AS n FROM support_tickets t
        JOIN identity_crosswalk x ON x.record_id = 'support/tickets:' || t.ticket_id
        WHERE t.opened_at < $at AND (t.closed_at IS NULL OR t.closed_at >= $at) GROUP BY ALL""",
                           {"at": at.to_pydatetime()}).df().set_index("customer_id")["n"]
    expected = open_now.reindex(closed, fill_value=0).to_numpy()
    assert (after.loc[closed, "open_tickets"].to_numpy() == expected).all()
    # a customer whose one subscription was cancelled since is subscribed no more
    cancelled = con.execute("""
        SELECT x.customer_id FROM billing_subscriptions s JOIN billing_subscriptions__history h USING (subscription_id)
        JOIN identity_crosswalk x ON x.record_id = 'billing/customers:' || s.billing_account_id
        WHERE h.ended_at IS NULL AND s.ended_at < $at
          AND s.billing_account_id NOT IN (SELECT billing_account_id FROM billing_subscriptions
                                           GROUP BY ALL HAVING count(*) > 1)""",
                            {"at": at.to_pydatetime()}).df()["customer_id"]
    assert len(cancelled)
    assert before.loc[cancelled, "subscribed"].all() and not after.loc[cancelled, "subscribed"].any()
