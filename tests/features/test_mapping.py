"""Source mappings: each shipped mapping loads a small export shaped like its tool's into the same warehouse rows as
the equivalent contract files; a mapping that cannot work says why and loads nothing."""

from __future__ import annotations

import csv
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from c360.core.contract import BY_ID
from c360.features.ingest import IngestError, ingest
from c360.features.mapping import MappingError, check, ingest_mapping, load, shipped

LINEAGE = ["_file", "_row", "_ingest_id"]


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_csv(path: Path, rows: list[dict], encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding=encoding) as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def contract_files(folder: Path, tables: dict[str, list[dict]]) -> Path:
    """Contract-shaped CSV files (`<silo>/<table>.csv`), every column of the table, empty when not given."""
    for table_id, rows in tables.items():
        columns = BY_ID[table_id].column_names
        write_csv(folder / f"{table_id}.csv", [{c: r.get(c, "") for c in columns} for r in rows])
    return folder


def rows(con: duckdb.DuckDBPyConnection, table_id: str) -> pd.DataFrame:
    t = BY_ID[table_id]
    return con.execute(f"SELECT * EXCLUDE ({', '.join(LINEAGE)}) FROM {t.sql_name} ORDER BY {t.key}").df()


def assert_same_rows(mapped: Path, contract: Path, tmp_path: Path, name: str) -> duckdb.DuckDBPyConnection:
    """Ingest the export through the shipped mapping and the contract files as they are: the same rows."""
    a = duckdb.connect(str(tmp_path / "mapped.duckdb"))
    reports = ingest_mapping(a, load(shipped()[name], mapped))
    assert sum(r.quarantined for r in reports) == 0, a.execute("SELECT * FROM quarantine").df().to_string()
    with duckdb.connect(str(tmp_path / "contract.duckdb")) as b:
        loaded = {r.table_id for r in ingest(b, contract)}
        assert loaded == {r.table_id for r in reports}
        for table_id in sorted(loaded):
            got, want = rows(a, table_id), rows(b, table_id)
            assert len(want), table_id
            pd.testing.assert_frame_equal(got, want, obj=table_id)
    return a


# --- Stripe ----------------------------------------------------------------------------------------------


def stripe_export(folder: Path) -> Path:
    folder.mkdir()
    write_jsonl(folder / "customers.jsonl", [
        {"id": "cus_A", "object": "customer", "name": "Ada Lovelace", "email": "ada@example.com", "phone": "+15550001",
         "business_name": "Analytical Ltd", "address": {"country": "GB", "city": "London"}, "created": 1700000000,
         "livemode": False},
        {"id": "cus_B", "object": "customer", "name": "Bo Chen", "email": "bo@example.com", "phone": None,
         "business_name": None, "address": None, "created": 1700003600, "livemode": False},
    ])
    write_jsonl(folder / "subscriptions.jsonl", [
        {"id": "sub_1", "customer": "cus_A", "start_date": 1700000100, "ended_at": None, "status": "active",
         "cancellation_details": {"reason": None},
         "items": {"data": [{"quantity": 3, "price": {"nickname": "Pro", "unit_amount": 2500,
                                                      "recurring": {"interval": "month"}}}]}},
        {"id": "sub_2", "customer": "cus_B", "start_date": 1700100000, "ended_at": 1710000000, "status": "canceled",
         "cancellation_details": {"reason": "cancellation_requested"},
         "items": {"data": [{"quantity": 1, "price": {"nickname": "Enterprise", "unit_amount": 120000,
                                                      "recurring": {"interval": "year"}}}]}},
    ])
    write_jsonl(folder / "invoices.jsonl", [
        {"id": "in_1", "customer": "cus_A", "parent": {"subscription_details": {"subscription": "sub_1"}},
         "created": 1700000200, "billing_reason": "subscription_create", "total": 7500, "currency": "usd",
         "status": "paid"},
        {"id": "in_2", "customer": "cus_B", "parent": None, "created": 1700200000, "billing_reason": "manual",
         "total": 1999, "currency": "eur", "status": "uncollectible"},
        {"id": "in_3", "customer": "cus_B", "parent": None, "created": 1700300000, "billing_reason": "manual",
         "total": 500, "currency": "eur", "status": "draft"},
    ])
    write_jsonl(folder / "invoice_payments.jsonl", [
        {"id": "inpay_1", "invoice": "in_1", "created": 1700000300, "amount_requested": 7500, "status": "paid",
         "payment": {"type": "charge", "charge": {"refunded": False, "failure_code": None,
                                                  "payment_method_details": {"type": "card"}}}},
        {"id": "inpay_2", "invoice": "in_2", "created": 1700200100, "amount_requested": 1999, "status": "canceled",
         "payment": {"type": "charge", "charge": {"refunded": False, "failure_code": "insufficient_funds",
                                                  "payment_method_details": {"type": "sepa_debit"}}}},
        {"id": "inpay_3", "invoice": "in_1", "created": 1700400000, "amount_requested": 7500, "status": "paid",
         "payment": {"type": "charge", "charge": {"refunded": True, "failure_code": None,
                                                  "payment_method_details": {"type": "card"}}}},
        {"id": "inpay_4", "invoice": "in_2", "created": 1700500000, "amount_requested": 1999, "status": "open",
         "payment": {"type": "payment_intent"}},
    ])
    return folder


def stripe_as_contract(folder: Path) -> Path:
    return contract_files(folder, {
        "billing/customers": [
            {"billing_account_id": "cus_A", "name": "Ada Lovelace", "email": "ada@example.com", "phone": "+15550001",
             "company": "Analytical Ltd", "country": "GB", "created_at": iso(1700000000)},
            {"billing_account_id": "cus_B", "name": "Bo Chen", "email": "bo@example.com",
             "created_at": iso(1700003600)},
        ],
        "billing/subscriptions": [
            {"subscription_id": "sub_1", "billing_account_id": "cus_A", "plan": "pro", "seats": "3", "mrr": "75",
             "started_at": iso(1700000100)},
            {"subscription_id": "sub_2", "billing_account_id": "cus_B", "plan": "enterprise", "seats": "1",
             "mrr": "100", "started_at": iso(1700100000), "ended_at": iso(1710000000),
             "cancel_reason": "cancellation_requested"},
        ],
        "billing/invoices": [
            {"invoice_id": "in_1", "billing_account_id": "cus_A", "subscription_id": "sub_1",
             "issued_at": iso(1700000200), "kind": "subscription", "amount": "75", "currency": "USD", "status": "paid"},
            {"invoice_id": "in_2", "billing_account_id": "cus_B", "issued_at": iso(1700200000), "kind": "addon",
             "amount": "19.99", "currency": "EUR", "status": "failed"},
        ],
        "billing/payments": [
            {"payment_id": "inpay_1", "invoice_id": "in_1", "attempted_at": iso(1700000300), "amount": "75",
             "status": "succeeded", "method": "card"},
            {"payment_id": "inpay_2", "invoice_id": "in_2", "attempted_at": iso(1700200100), "amount": "19.99",
             "status": "failed", "method": "bank_transfer", "failure_code": "insufficient_funds"},
            {"payment_id": "inpay_3", "invoice_id": "in_1", "attempted_at": iso(1700400000), "amount": "75",
             "status": "refunded", "method": "card"},
        ],
    })


def test_stripe_export_loads_as_the_contract_files(tmp_path: Path) -> None:
    export = stripe_export(tmp_path / "stripe")
    con = assert_same_rows(export, stripe_as_contract(tmp_path / "contract"), tmp_path, "stripe")
    lineage = con.execute("SELECT _file, _row FROM billing_payments WHERE payment_id = 'inpay_3'").fetchone()
    assert lineage == (str(export / "invoice_payments.jsonl"), 3)  # the row in the input, before the filter
    again = ingest_mapping(con, load(shipped()["stripe"], export))
    assert again and all(r.skipped for r in again)
    con.close()


# --- HubSpot ---------------------------------------------------------------------------------------------


def hubspot_export(folder: Path) -> Path:
    write_csv(folder / "companies.csv", [
        {"hs_object_id": "5001", "name": "Acme Corp", "domain": "acme.example", "numberofemployees": "2500",
         "industry": "COMPUTER_SOFTWARE", "country": "Germany", "hubspot_owner_id": "71", "createdate":
         "2024-01-15T09:30:00.000Z"},
        {"hs_object_id": "5002", "name": "Tiny Shop", "domain": "", "numberofemployees": "12", "industry": "",
         "country": "Japan", "hubspot_owner_id": "", "createdate": "2024-02-01T00:00:00Z"},
    ])
    write_csv(folder / "contacts.csv", [
        {"hs_object_id": "901", "firstname": "Ann", "lastname": "Lee", "email": "ann@acme.example",
         "phone": "+49 30 1234", "hs_buying_role": "EXECUTIVE_SPONSOR", "jobtitle": "CTO",
         "associatedcompanyid": "5001", "lifecyclestage": "customer", "createdate": "2024-01-16T10:00:00Z"},
        {"hs_object_id": "902", "firstname": "Ken", "lastname": "", "email": "ken@tiny.example", "phone": "",
         "hs_buying_role": "END_USER", "jobtitle": "", "associatedcompanyid": "5002", "lifecyclestage": "lead",
         "createdate": "2024-02-02T08:00:00Z"},
    ])
    return folder


def test_hubspot_export_loads_as_the_contract_files(tmp_path: Path) -> None:
    contract = contract_files(tmp_path / "contract", {
        "crm/accounts": [
            {"account_id": "5001", "account_name": "Acme Corp", "segment": "enterprise",
             "industry": "COMPUTER_SOFTWARE", "region": "EMEA", "owner": "71", "created_at": "2024-01-15T09:30:00Z"},
            {"account_id": "5002", "account_name": "Tiny Shop", "segment": "smb", "region": "APAC",
             "created_at": "2024-02-01T00:00:00Z"},
        ],
        "crm/contacts": [
            {"contact_id": "901", "account_id": "5001", "first_name": "Ann", "last_name": "Lee",
             "email": "ann@acme.example", "phone": "+49 30 1234", "role": "executive_sponsor", "title": "CTO",
             "created_at": "2024-01-16T10:00:00Z"},
            {"contact_id": "902", "account_id": "5002", "first_name": "Ken", "email": "ken@tiny.example",
             "role": "end_user", "created_at": "2024-02-02T08:00:00Z"},
        ],
    })
    assert_same_rows(hubspot_export(tmp_path / "hubspot"), contract, tmp_path, "hubspot").close()


# --- check: what maps, what is missing, what is ignored --------------------------------------------------


def test_check_names_a_missing_required_column_and_an_unknown_one_and_nothing_loads(tmp_path: Path) -> None:
    export = hubspot_export(tmp_path / "hubspot")
    companies = pd.read_csv(export / "companies.csv", dtype=str).drop(columns="name")
    companies.assign(favourite_colour="blue").to_csv(export / "companies.csv", index=False)
    mapping = load(shipped()["hubspot"], export)
    accounts = next(c for c in check(mapping) if c.table_id == "crm/accounts")
    assert accounts.missing_required == ["account_name"]
    assert accounts.unknown_fields == ["name"]
    assert "favourite_colour" in accounts.ignored_fields and "domain" in accounts.ignored_fields
    assert accounts.mapped["created_at"] == "createdate"
    assert any("account_name" in p for p in accounts.problems) and any("'name'" in p for p in accounts.problems)
    contacts = next(c for c in check(mapping) if c.table_id == "crm/contacts")
    assert not contacts.problems and contacts.ignored_fields == ["lifecyclestage"]
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        with pytest.raises(IngestError, match="account_name"):
            ingest_mapping(con, mapping)
        assert con.execute("SELECT count(*) FROM information_schema.tables").fetchone() == (0,)


def test_a_shipped_mapping_checks_clean_on_its_sample(tmp_path: Path) -> None:
    checks = check(load(shipped()["stripe"], stripe_export(tmp_path / "stripe")))
    assert {c.table_id for c in checks} == {"billing/customers", "billing/subscriptions", "billing/invoices",
                                            "billing/payments"}
    assert not [p for c in checks for p in c.problems]
    assert {c.table_id: c.mode for c in checks}["billing/customers"] == "snapshot"


# --- bad mapping files -----------------------------------------------------------------------------------


MINIMAL = """\
name: t
inputs:
  people: {path: people.csv}
tables:
  crm/accounts:
    from: people
    columns:
      account_id: id
      acount_name: name
"""


@pytest.mark.parametrize(("text", "wanted"), [
    (MINIMAL, r"line 9 tables\.crm/accounts\.columns\.acount_name: not a column of crm/accounts"),
    (MINIMAL.replace("from: people", "from: persons"),
     r"line 6 tables\.crm/accounts\.from: 'persons' is not an input"),
    (MINIMAL.replace("crm/accounts:", "crm/acounts:"), r"line 5 tables\.crm/acounts: not a contract table"),
    (MINIMAL.replace("      account_id: id", "      account_id: {field: id, value: x}"),
     r"line 8 tables\.crm/accounts\.columns\.account_id.*exactly one of field, sql, value"),
    (MINIMAL.replace("    from: people", "    from: people\n    mode: full"),
     r"line 7 tables\.crm/accounts\.mode: Input should be .snapshot. or .increment."),
    (MINIMAL.replace("{path: people.csv}", "{path: [people.csv"), r"line \d+ not valid YAML"),
])
def test_a_bad_mapping_is_one_line_naming_where(tmp_path: Path, text: str, wanted: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(MappingError, match=wanted) as caught:
        load(path)
    assert "\n" not in str(caught.value)


def test_an_input_not_there_is_named(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(MINIMAL.replace("acount_name", "account_name"))
    with pytest.raises(MappingError, match=r"input people: no file matches .*people\.csv"):
        load(path)


# --- odd exports: BOM, odd names, day formats, split, merge, a database ----------------------------------


ODD = """\
name: odd
inputs:
  people: {path: "people*.csv"}
  desk: {url: "sqlite:///desk.db", table: Tickets}
tables:
  crm/accounts:
    from: people
    where: '"is primary" = ''yes'''
    columns:
      account_id: company id
      account_name: Company
      segment: {value: smb}
      region: {value: EMEA}
      created_at: {field: Signed Up, format: "%m/%d/%Y"}
  crm/contacts:
    from: people
    columns:
      contact_id: contact id
      account_id: company id
      email: e-mail
      role: {value: end_user}
      created_at: {field: signed up, format: "%m/%d/%Y"}
  support/tickets:
    from: desk
    columns:
      ticket_id: id
      requester_email: email
      channel: {value: email}
      topic: {value: how_to}
      severity: {value: normal}
      status: {field: state, map: {1: open, 2: pending, 3: solved, 4: closed}}
      opened_at: {field: opened, format: epoch_ms}
"""


def test_odd_exports_load_through_a_mapping(tmp_path: Path) -> None:
    header = [" Contact ID ", "Company ID", "COMPANY", "E-Mail", "Signed Up", "Is Primary"]
    write_csv(tmp_path / "people1.csv", [dict(zip(header, r, strict=True)) for r in [
        ["c1", "a1", "Acme", "ann@example.com", "03/04/2025", "yes"],
        ["c2", "a1", "Acme", "", "13/45/2025", "no"],
    ]], encoding="utf-8-sig")
    write_csv(tmp_path / "people2.csv", [dict(zip(header, ["c3", "a2", "Beta", "cy@example.com", "12/31/2024",
                                                           "yes"], strict=True))])
    with sqlite3.connect(tmp_path / "desk.db") as db:
        db.execute("CREATE TABLE Tickets (id INTEGER, email TEXT, state INTEGER, opened INTEGER)")
        db.executemany("INSERT INTO Tickets VALUES (?, ?, ?, ?)",
                       [(7, "ann@example.com", 3, 1735689600000), (8, None, 9, 1735776000000)])
    (tmp_path / "odd.yaml").write_text(ODD)
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        reports = ingest_mapping(con, load(tmp_path / "odd.yaml"))
        assert [(r.table_id, r.file.name, r.read, r.accepted, r.quarantined) for r in reports] == [
            ("crm/accounts", "people1.csv", 1, 1, 0), ("crm/accounts", "people2.csv", 1, 1, 0),
            ("crm/contacts", "people1.csv", 2, 1, 1), ("crm/contacts", "people2.csv", 1, 1, 0),
            ("support/tickets", "desk.db", 2, 1, 1)]
        accounts = con.execute("SELECT account_id, account_name, created_at, _file, _row FROM crm_accounts "
                               "ORDER BY account_id").fetchall()
        assert accounts == [("a1", "Acme", datetime(2025, 3, 4), str(tmp_path / "people1.csv"), 1),
                            ("a2", "Beta", datetime(2024, 12, 31), str(tmp_path / "people2.csv"), 1)]
        assert con.execute("SELECT contact_id, email FROM crm_contacts ORDER BY 1").fetchall() == [
            ("c1", "ann@example.com"), ("c3", "cy@example.com")]
        quarantined = con.execute('SELECT table_id, row_number, "column", value, reason, file FROM quarantine '
                                  "ORDER BY table_id").fetchall()
        assert quarantined == [
            ("crm/contacts", 2, "created_at", "13/45/2025", "not a valid datetime", str(tmp_path / "people1.csv")),
            ("support/tickets", 2, "status", "9", "not one of open, pending, solved, closed",
             f"sqlite:///{tmp_path / 'desk.db'}?table=Tickets")]
        assert con.execute("SELECT ticket_id, status, opened_at FROM support_tickets").fetchall() == [
            ("7", "solved", datetime(2025, 1, 1))]


def test_a_snapshot_merged_from_several_files_is_one_snapshot(tmp_path: Path) -> None:
    """Accounts come from two files: each lacks the other's keys, and neither ends them; a key that no file of the
    next export holds is deleted at the source."""
    header = [" Contact ID ", "Company ID", "COMPANY", "E-Mail", "Signed Up", "Is Primary"]
    people = {"people1.csv": [["c1", "a1", "Acme", "ann@example.com", "03/04/2025", "yes"]],
              "people2.csv": [["c3", "a2", "Beta", "cy@example.com", "12/31/2024", "yes"]]}
    with sqlite3.connect(tmp_path / "desk.db") as db:
        db.execute("CREATE TABLE Tickets (id INTEGER, email TEXT, state INTEGER, opened INTEGER)")
    (tmp_path / "odd.yaml").write_text(ODD)

    def export(day: int) -> list[str]:
        for name, rows in people.items():
            write_csv(tmp_path / name, [dict(zip(header, r, strict=True)) for r in rows])
        with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
            ingest_mapping(con, load(tmp_path / "odd.yaml"), exported_at=datetime(2025, 6, day))
            return [r[0] for r in con.execute("SELECT account_id FROM crm_accounts ORDER BY 1").fetchall()]

    assert export(1) == ["a1", "a2"]
    people["people2.csv"] = [["c4", "a1", "Acme", "dee@example.com", "01/02/2025", "no"]]
    assert export(2) == ["a1"]
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        assert con.execute("SELECT account_id, _valid_to FROM crm_accounts__history").fetchall() == [
            ("a2", datetime(2025, 6, 2))]
