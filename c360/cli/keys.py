"""`c360 keys create | list | revoke`: the service's API keys (`core.keys`)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated

import pandas as pd
import typer

from c360.cli.ui import Json, emit, fail, table
from c360.core import keys
from c360.core.settings import Settings

keys_app = typer.Typer(help="API keys of the service: create (shown once), list, revoke.", no_args_is_help=True)


def _expiry(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"--expires {value!r} is not a date (YYYY-MM-DD) or an ISO time") from None


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="the key's name, as the audit trail shows it (e.g. crm-sync)")],
    role: Annotated[str, typer.Option(help=f"one of {', '.join(keys.ROLES)}")],
    expires: Annotated[str | None, typer.Option(help="the key stops working then: YYYY-MM-DD (00:00 UTC) or an "
                                                     "ISO time [default: never]")] = None,
    as_json: Json = False,
) -> dict:
    """Create an API key and print it, once: only its SHA-256 is kept. A running service accepts it at once.

    Requests carry it as `Authorization: Bearer KEY`. With --json: {"name", "role", "key"}."""
    try:
        token = keys.create(Settings(), name, role, _expiry(expires))
    except keys.KeyProblem as e:
        raise fail(str(e)) from None
    return emit({"name": name, "role": role, "key": token}, as_json,
                f"key {name} ({role}), shown this once — keep it secret:", token)


@keys_app.command("list")
def list_keys(as_json: Json = False) -> dict:
    """List the keys: name, role, created, expires, revoked (never the keys themselves)."""
    found = [{k: v for k, v in asdict(key).items() if k != "sha256"} for key in keys.listed(Settings())]
    frame = pd.DataFrame(found, columns=["name", "role", "created", "expires", "revoked"]).fillna("")
    return emit({"keys": found}, as_json, table("API keys", frame) if found else "no keys yet: `c360 keys create`")


@keys_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="the active key's name")],
    as_json: Json = False,
) -> dict:
    """Revoke a key: a running service refuses it (401) from its next request."""
    try:
        key = keys.revoke(Settings(), name)
    except keys.KeyProblem as e:
        raise fail(str(e)) from None
    return emit({"name": key.name, "role": key.role, "revoked": key.revoked}, as_json,
                f"key {key.name} ({key.role}) revoked at {key.revoked}")
