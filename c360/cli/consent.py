"""`c360 privacy opt-out`: record that a customer opted out of a purpose (c360.core.consent), from the command line.

The opt-out is kept in the warehouse (`consent_overrides`, written with the writer lock), shown in the profile at
once (the service re-reads the small table when the warehouse changes) and honoured by the next best action: an
action needing the purpose is no longer proposed, and the answer says why.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Annotated

import typer

from c360.cli.ui import Json, audit_command, emit, fail, record_run
from c360.core import consent
from c360.core.contract import PURPOSE_WORDS
from c360.core.settings import Settings

ACTION = "c360 privacy opt-out"
Purpose = Enum("Purpose", {p: p for p in PURPOSE_WORDS}, type=str)  # type: ignore[misc]


def opt_out(
    customer_id: Annotated[str, typer.Option("--customer-id", help="c360 customer id, e.g. C00000002")],
    purpose: Annotated[Purpose, typer.Option(help="what the customer no longer consents to: "
                                                  + "; ".join(f"{p}: {w}" for p, w in PURPOSE_WORDS.items()))],
    as_json: Json = False,
) -> dict:
    """Record that a customer opted out of a purpose: shown in the profile, honoured by the next best action.

    The whole customer (account) is opted out, from now on, whatever the features' date. Recording it again
    changes nothing."""
    s, started = Settings(), time.time()
    try:
        done = consent.record(s, customer_id, purpose.value)
    except LookupError as e:
        audit_command(s, ACTION, [customer_id], "not found")
        raise fail(str(e.args[0])) from None
    audit_command(s, ACTION, [customer_id], "ok")
    record_run(s, "privacy opt-out", started, purpose=purpose.value, new=done["new"])
    words = PURPOSE_WORDS[purpose.value]
    said = "recorded" if done["new"] else "already recorded"
    return emit(done, as_json, f"{customer_id}: opt-out of {words} {said} ({done['at']:%Y-%m-%d %H:%M:%S} UTC)")

