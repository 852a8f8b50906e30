"""`c360 privacy`: export and erase a person, carry out the service's erasure requests, apply retention.

A person is `--email ADDRESS` (that contact: the records carrying the address and what identity links to them) or
`--customer-id ID` (the whole account). Every command appends an audit record (ids only) and a run-log line
(counts only): no personal value is written to either.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from c360.cli.consent import opt_out
from c360.cli.ui import Json, audit_command, emit, fail, plain, progress, record_run, stderr
from c360.core import warehouse
from c360.core.personal import STORES, Person
from c360.core.settings import Settings

privacy_app = typer.Typer(help="Privacy rights: export or erase a person, erasure requests, retention.",
                          no_args_is_help=True)
privacy_app.command("opt-out")(opt_out)
Email = Annotated[str | None, typer.Option("--email", help="a person, by e-mail address (that contact only)")]
CustomerId = Annotated[str | None, typer.Option("--customer-id", help="a whole account, by c360 customer id")]


def _audit(s: Settings, command: str, customers: list[str] | tuple[str, ...], status: str = "ok") -> None:
    audit_command(s, f"c360 privacy {command}", customers, status)


def _person(s: Settings, email: str | None, customer_id: str | None) -> Person:
    from c360.features.privacy import UnknownPerson, resolve

    if (email is None) == (customer_id is None):
        raise fail("give either --email or --customer-id")
    if not s.warehouse.exists():
        raise fail(f"no warehouse in {s.home}: run `c360 ingest` and `c360 resolve` first")
    with warehouse.connect(s, read_only=True) as con:
        try:
            return resolve(s, con, email=email, customer_id=customer_id)
        except UnknownPerson as e:
            raise fail(str(e)) from None


@privacy_app.command()
def export(
    out: Annotated[Path, typer.Option(help="JSON file to write")],
    email: Email = None, customer_id: CustomerId = None, as_json: Json = False,
) -> dict:
    """Write everything c360 holds on a person as one JSON document: source rows per table, identity and golden
    record, features, predictions with reasons, and the audit entries about them."""
    from c360.features.privacy import export as run

    s, started = Settings(), time.time()
    person = _person(s, email, customer_id)
    if not person.found:
        raise fail("c360 holds no record of this person")
    with stderr.status("reading every store that holds personal data"):
        document = run(s, person)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(plain(document), indent=2))
    out.chmod(0o600)
    _audit(s, "export", person.customers)
    record_run(s, "privacy export", started, customers=len(person.customers), records=len(person.record_ids))
    return emit({"out": out, "customers": person.customers, "records": len(person.record_ids)}, as_json,
                f"{len(person.record_ids)} records of {len(person.customers)} customer(s) written to {out}")


@privacy_app.command()
def erase(email: Email = None, customer_id: CustomerId = None, as_json: Json = False) -> dict:
    """Remove a person from every store that holds personal data, and keep them out of later imports (a salted hash
    of their identifiers). Idempotent. Lists the score exports that held them, to recall their copies."""
    from c360.features.privacy import erase as run

    s, started = Settings(), time.time()
    person = _person(s, email, customer_id)
    with progress("erasing from each store", len(STORES)) as advance:
        report = run(s, person, on_store=lambda _: advance(1))
    _audit(s, "erase", person.customers)
    removed = {name: erased.rows for name, erased in report.items()}
    record_run(s, "privacy erase", started, customers=len(person.customers), rows=sum(removed.values()))
    recall = sorted({f for erased in report.values() for f in erased.recall})
    lines = [f"{name}: {erased.rows:,} removed" + (f" (kept: {erased.kept})" if erased.kept else "")
             for name, erased in report.items()]
    lines += [f"recall the copies of {f}" for f in recall]
    return emit({"customers": person.customers, "whole": person.whole, "stores": report, "recall": recall},
                as_json, *lines)


@privacy_app.command("run")
def run_requests(as_json: Json = False) -> dict:
    """Carry out the pending erasure requests the service recorded (POST /admin/privacy/erase)."""
    from c360.features.privacy_requests import run

    s, started = Settings(), time.time()
    done = run(s, on_request=lambda r: _audit(s, "run", r["customers"], r["state"]))
    record_run(s, "privacy run", started, requests=len(done))
    return emit({"requests": [_summary(r) for r in done]}, as_json,
                *(f"{r['id']}: {r['state']}" for r in done), f"{len(done)} request(s) carried out")


def _summary(request: dict[str, Any]) -> dict[str, Any]:
    return {k: request[k] for k in ("id", "state", "customers", "finished", "error")}


@privacy_app.command("purge-expired")
def purge_expired(as_json: Json = False) -> dict:
    """Drop quarantined rows older than C360_QUARANTINE_RETENTION_DAYS and audit records older than
    C360_AUDIT_RETENTION_DAYS (the refresh job calls this too)."""
    from c360.features.privacy import purge_expired as run

    s, started = Settings(), time.time()
    with stderr.status("dropping expired quarantine rows and audit records"):
        removed = run(s)
    _audit(s, "purge-expired", [])
    record_run(s, "privacy purge-expired", started, **removed)
    return emit({**removed, "quarantine_retention_days": s.quarantine_retention_days,
                 "audit_retention_days": s.audit_retention_days}, as_json,
                f"{removed['quarantine_rows']:,} quarantined rows and {removed['audit_records']:,} audit records "
                "past their retention dropped")
