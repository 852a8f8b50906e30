"""`c360 audit`: who looked at a customer, and when; `c360 audit verify`: is the trail intact (`c360.core.audit`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import pandas as pd
import typer

from c360.cli.ui import Json, emit, fail, table
from c360.core import audit
from c360.core.settings import Settings

audit_app = typer.Typer(help="The audit trail: who read or changed which customer's data, and when (admin: "
                             "whoever can read C360_HOME).", invoke_without_command=True)


@audit_app.callback()
def show(
    ctx: typer.Context,
    customer: Annotated[str | None, typer.Option(help="only the records about this customer id")] = None,
    key: Annotated[str | None, typer.Option(help="only the records of this key name (commands: cli:USER)")] = None,
    since: Annotated[datetime | None, typer.Option(help="only the records at or after this date or time (UTC)")] = None,
    as_json: Json = False,
) -> None:
    """List audit records, oldest first: time, key and role, route or command, customer ids, status.

    A batch command that reads every customer (`c360 score`) is listed for every customer (customers `*`)."""
    if ctx.invoked_subcommand is not None:
        return
    s = Settings()
    start = since.replace(tzinfo=UTC) if since is not None and since.tzinfo is None else since
    found = audit.records(s, customer=customer, key=key, since=start)
    shown = pd.DataFrame(found, columns=["at", "key", "role", "action", "customers", "status"])
    shown["customers"] = shown["customers"].map(lambda ids: ", ".join(ids[:5]) + (" …" if len(ids) > 5 else ""))
    emit({"records": found}, as_json, table(f"audit trail ({len(found):,} records)", shown))


@audit_app.command()
def verify(as_json: Json = False) -> dict:
    """Check the trail's hash chain: an edited, inserted or removed record fails (exit code 1), naming the line."""
    verdict = audit.verify(Settings())
    if not verdict.ok:
        raise fail(f"audit trail broken after {verdict.records:,} good records: {verdict.problem}")
    return emit({"ok": True, "records": verdict.records}, as_json,
                f"audit trail intact: {verdict.records:,} records chained")
