"""Consent: the purposes a customer may opt out of, which contact actions need which purpose, and the opt-outs
recorded by c360 itself (`c360 privacy opt-out`).

Two sources say that a customer opted out of a purpose:

* the marketing silo (`marketing/consents`, see the contract): one row per change of a contact's consent. The
  feature `opted_out_<purpose>` (`features.compute`, as of the snapshot's date) is true when every marketing
  contact of the customer withdrew the purpose: c360 proposes contacting the customer, not a named person, and a
  customer with one consenting contact can still be reached through that contact (the marketing platform
  suppresses the addresses that withdrew). A contact without a row for a purpose has not opted out of it.
* c360's own table `consent_overrides` (customer id, purpose, at, source): an opt-out recorded for the whole
  customer from the command line. It is an instruction for every answer from the moment it is recorded, whatever
  the features' as-of date, so it is applied on top of the features where they are read (`with_overrides`): by the
  service (from `OptOuts`, kept in memory), `c360 score` and `c360 profile`.

Where c360 proposes contacting someone — the next best action — an action is never proposed to a customer who
opted out of the purpose it needs (`ACTION_PURPOSE`, the one place of that mapping); `allowed` is the mask
`training.uplift.choose` honours, and `not_proposed` says why in words.

`export` and `erase` cover the overrides table for the privacy registry (the silo's rows belong to the warehouse's
source tables).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import pandas as pd

from c360.core import warehouse
from c360.core.contract import ACTIONS, PURPOSE_WORDS, PURPOSES, SEND_CHANNELS
from c360.core.definitions import BY_NAME
from c360.core.settings import Settings

log = logging.getLogger(__name__)

# The purpose each contact action of the next best action needs: the discount offer and the training invite go out
# by e-mail (the experiment campaigns' channels: e-mail and a webinar invitation), the CSM call by phone. No action
# contacts nobody.
ACTION_PURPOSE: dict[str, str] = {"discount": "marketing_email", "training_invite": "marketing_email",
                                  "csm_call": "other_channels"}
assert set(ACTION_PURPOSE) < set(ACTIONS) and set(ACTION_PURPOSE.values()) <= set(PURPOSES)
# the purpose a campaign channel needs (a campaign plan's `--channel`): e-mail is marketing e-mail, the rest direct
CHANNEL_PURPOSE: dict[str, str] = {c: "marketing_email" if c == "email" else "other_channels" for c in SEND_CHANNELS}

TABLE = "consent_overrides"
DDL = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    customer_id VARCHAR NOT NULL, purpose VARCHAR NOT NULL, "at" TIMESTAMP NOT NULL, source VARCHAR NOT NULL)"""
RETRY_SECONDS = 1.0  # how often the service tries again to read the overrides while the warehouse is busy

Overrides = Mapping[str, Mapping[str, pd.Timestamp]]  # customer id → purpose → when it was recorded


def feature(purpose: str) -> str:
    """The feature (and profile field) saying whether the customer opted out of `purpose`."""
    return f"opted_out_{purpose}"


FEATURES = tuple(feature(p) for p in PURPOSES)
assert all(BY_NAME[f].section == "consent" for f in FEATURES)


def not_proposed(action: str) -> str:
    """Why `action` was not proposed, in words."""
    return f"{action} not proposed: opted out of {PURPOSE_WORDS[ACTION_PURPOSE[action]]}"


def allowed(frame: pd.DataFrame, actions: Iterable[str]) -> pd.DataFrame | None:
    """Per row of `frame` (features, with the opt-out columns) and action: may it be proposed? None when the frame
    holds no opt-out column (rows sent without them: nothing is known of the customer's consent)."""
    if not any(f in frame.columns for f in FEATURES):
        return None
    out = {}
    for action in actions:
        purpose = ACTION_PURPOSE.get(str(action))
        column = feature(purpose) if purpose else None
        opted = frame[column] if column in frame.columns else pd.Series(False, index=frame.index)
        out[action] = ~opted.astype("boolean").fillna(False).to_numpy(dtype=bool)
    return pd.DataFrame(out, index=frame.index)


def with_overrides(features: dict[str, Any], purposes: Mapping[str, Any] | None) -> dict[str, Any]:
    """One customer's features with the recorded opt-outs applied (a new dict when there are any)."""
    if not purposes:
        return features
    return features | {feature(p): True for p in purposes}


def apply_overrides(frame: pd.DataFrame, overrides: Overrides) -> pd.DataFrame:
    """A frame of customers' features (`customer_id` and the opt-out columns) with the recorded opt-outs applied."""
    if not overrides:
        return frame
    frame = frame.copy()
    for purpose in PURPOSES:
        who = {c for c, purposes in overrides.items() if purpose in purposes}
        column = feature(purpose)
        opted = frame[column].astype("boolean").fillna(False) if column in frame.columns else False
        frame[column] = frame["customer_id"].isin(who) | opted
    return frame


# ---------------------------------------------------------------- the overrides table


def ensure(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(DDL)


def record(s: Settings, customer_id: str, purpose: str, source: str = "cli") -> dict[str, Any]:
    """Record that the customer opted out of `purpose`, durably (with the warehouse's writer lock). Raises
    LookupError for a customer the warehouse does not know, ValueError for an unknown purpose. Recording the same
    opt-out again keeps the first one."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}; known: {', '.join(PURPOSES)}")
    with warehouse.connect(s) as con:
        if not warehouse.has_table(con, "identity_customers") or warehouse.customer(con, customer_id) is None:
            raise LookupError(f"unknown customer {customer_id!r}: not in the warehouse (run `c360 resolve`)")
        ensure(con)
        found = con.execute(f'SELECT "at", source FROM {TABLE} WHERE customer_id = ? AND purpose = ?',
                            [customer_id, purpose]).fetchone()
        new = found is None
        if found is None:
            found = (datetime.now(UTC).replace(tzinfo=None, microsecond=0), source)
            con.execute(f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?)", [customer_id, purpose, *found])
            con.execute("CHECKPOINT")  # into the database file itself: its change is what readers watch
    return {"customer_id": customer_id, "purpose": purpose, "at": pd.Timestamp(found[0]), "source": found[1],
            "new": new}


def overrides(con: duckdb.DuckDBPyConnection, customer_ids: Iterable[str] | None = None) -> dict[str, dict]:
    """The recorded opt-outs: customer id → purpose → when (empty before the first one)."""
    if not warehouse.has_table(con, TABLE):
        return {}
    rows = con.execute(f'SELECT customer_id, purpose, "at" FROM {TABLE}').fetchall()
    wanted = None if customer_ids is None else set(customer_ids)
    out: dict[str, dict] = {}
    for customer, purpose, at in rows:
        if wanted is None or customer in wanted:
            out.setdefault(customer, {})[purpose] = pd.Timestamp(at)
    return out


def export(con: duckdb.DuckDBPyConnection, customer_ids: Iterable[str]) -> list[dict[str, Any]]:
    """The recorded opt-outs of these customers, one dict per row (the privacy registry's `consent_overrides`)."""
    found = overrides(con, customer_ids) if warehouse.has_table(con, TABLE) else {}
    return [{"customer_id": c, "purpose": p, "at": at.isoformat(), "source": "cli"}
            for c, purposes in sorted(found.items()) for p, at in sorted(purposes.items())]


def erase(con: duckdb.DuckDBPyConnection, customer_ids: Iterable[str]) -> int:
    """Delete these customers' recorded opt-outs (a writer's connection); the number of rows removed."""
    ids = list(customer_ids)
    if not ids or not warehouse.has_table(con, TABLE):
        return 0
    row = con.execute(f"DELETE FROM {TABLE} WHERE customer_id IN (SELECT unnest(?))", [ids]).fetchone()
    return int(row[0]) if row else 0


# ---------------------------------------------------------------- what the service keeps in memory


@dataclass
class OptOuts:
    """The recorded opt-outs, held in memory by the service and read again when the warehouse file changes.

    A request costs one `stat` of the file, no query. The file changes on every write (an ingest too), which
    re-reads the small table; while a writer holds the warehouse the old set is kept and read again a second later.
    """

    settings: Settings
    loaded: dict[str, dict] = field(default_factory=dict)
    _stamp: tuple[int, int] | None = None
    _tried: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def of(self, customer_id: str) -> dict[str, pd.Timestamp]:
        """The customer's recorded opt-outs (purpose → when)."""
        self.refresh()
        return self.loaded.get(customer_id, {})

    def refresh(self) -> None:
        try:
            st = os.stat(self.settings.warehouse)
        except OSError:
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp or (self._tried and time.monotonic() - self._tried < RETRY_SECONDS):
            return
        with self._lock:
            if stamp == self._stamp:
                return
            self._tried = time.monotonic()
            try:
                with warehouse.connect(self.settings, read_only=True) as con:
                    self.loaded = overrides(con)
            except Exception as e:  # busy or unreadable: keep the last set, try again later
                log.warning("opt-outs not re-read from the warehouse: %s", type(e).__name__)
                return
            self._stamp, self._tried = stamp, 0.0
