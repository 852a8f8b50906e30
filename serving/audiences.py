"""The audience endpoints' plain functions (`features.audiences`): list, show, create, and export by role.

Errors become the service's: an unknown audience a 404, a bad filter or name a 422 naming the body's field, a name
taken a 409, no feature snapshot a 503. An export is the CSV of `features.audiences.export_rows`, masked by the
caller's role (`serving.masking.export_rows`), and recorded as a download (who, when, the ids) so an erasure
lists it for recall.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import duckdb
from pydantic import BaseModel, ConfigDict, Field

from c360.core.at_rest import EncryptionError
from c360.core.locks import WarehouseBusy
from c360.core.settings import Settings
from c360.features import audiences
from c360.features.audience_filter import FilterError
from c360.serving import masking
from c360.serving.auth import Principal, touched
from c360.serving.errors import Conflict, Invalid, NotFound, Unavailable


class AudienceAsk(BaseModel):
    """An audience to create: its name and its filter."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=audiences.NAME, description="letters, digits, '_', '.', '-'; at most 64 characters")
    where: str = Field(max_length=4000, description="the filter, e.g. churn_band = 'high' and clv_12m > 1000")


def _members(s: Settings, name: str) -> list[str]:
    try:
        ids = audiences.members(s, name)
    except audiences.UnknownAudience as e:
        raise NotFound(str(e)) from None
    touched(ids)
    return ids


@contextmanager
def _reading() -> Iterator[None]:
    """What the profile table and the export read, unavailable: a 503 naming it."""
    try:
        yield
    except FileNotFoundError as e:
        raise Unavailable("feature snapshots", "none yet: run `c360 features build` and `c360 score`", e) from None
    except (duckdb.Error, WarehouseBusy, EncryptionError) as e:
        raise Unavailable("warehouse", "cannot be read for opt-outs and contacts: see the server log", e) from None


def listed(s: Settings) -> dict[str, Any]:
    return {"audiences": audiences.listed(s)}


def show(s: Settings, name: str) -> dict[str, Any]:
    """The audience's size, overlap, distribution and history (not its member ids)."""
    _members(s, name)
    with _reading():
        shown = audiences.show(s, name)
    shown.pop("members")
    return shown


def create(s: Settings, ask: AudienceAsk, who: Principal) -> dict[str, Any]:
    try:
        with _reading():
            change, ids = audiences.create(s, ask.name, ask.where, f"{who.key} ({who.role})")
    except FilterError as e:
        raise Invalid(str(e), "where") from None
    except audiences.AudienceExists as e:
        raise Conflict(str(e)) from None
    except ValueError as e:
        raise Invalid(str(e), "name") from None
    touched(ids)
    return {"name": ask.name, "filter": ask.where, "size": change.size}


def export_csv(s: Settings, name: str, who: Principal) -> tuple[str, dict[str, int]]:
    """The export as CSV text, masked for the caller's role, and the counts left out by reason."""
    _members(s, name)
    with _reading():
        result = audiences.export_rows(s, name)
    ids = result.rows["customer_id"].tolist()
    audiences.record(s, name, f"download by key {who.key} ({who.role}): GET /audiences/{name}/export", who.key, ids)
    return masking.export_rows(result.rows, who.view).to_csv(index=False), result.left_out
