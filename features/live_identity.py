"""Live identity, MINIMAL placeholder of the live-update branch: the identity part of issue 21 replaces this file.

* `place(s, con, events)` — the customer of each accepted event: here only the event's own `customer_id`.
* `pending(s)` — what the live identity decided and the batch crosswalk does not hold yet: here a crosswalk record
  for each logged event that carries a `customer_id` and an identity-bearing row (a ticket, an NPS answer, a feature
  request: `record_id` '<table id>:<key>'), so that such a row reaches its customer before `c360 resolve` runs; no
  provisional customer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from c360.core import contract
from c360.core.contract import EVENTS_BY_KIND
from c360.core.settings import Settings
from c360.features import event_log
from c360.features.identity import SOURCE_PRIORITY

CUSTOMER_COLUMNS = ["customer_id", "display_name", "company", "segment", "region", "emails", "phones", "sources",
                    "records", "first_seen", "unlinked"]


def place(s: Settings, con: Any, events: Sequence[dict[str, Any]]) -> list[str | None]:
    return [e.get("customer_id") for e in events]


def pending(s: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = []
    for _, record in event_log.read_log(event_log.log_path(s)):
        event = record["event"]
        table = contract.table(EVENTS_BY_KIND[event["kind"]].table)
        if event.get("customer_id") and table.id in SOURCE_PRIORITY and event.get(table.key) is not None:
            rows.append((f"{table.id}:{event[table.key]}", event["customer_id"]))
    return (pd.DataFrame(rows, columns=["record_id", "customer_id"]).drop_duplicates("record_id", keep="last"),
            pd.DataFrame(columns=CUSTOMER_COLUMNS))
