"""The privacy endpoints' plain functions: export a person at once, record an erasure request and try it.

The service holds read connections only: an erasure request is recorded (`features.privacy_requests`), the person
hidden at once, and the erasure carried out by `c360 privacy run`, or here, in a background thread, when the
warehouse's writer lock is free right away (no wait: a busy warehouse leaves the request pending).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import duckdb

from c360.core import locks
from c360.core.locks import WarehouseBusy
from c360.core.personal import Person
from c360.core.settings import Settings
from c360.features import privacy, privacy_requests
from c360.serving.auth import touched
from c360.serving.errors import Invalid, NotFound
from c360.serving.online import warehouse
from c360.serving.profile import json_value
from c360.serving.schemas import PrivacyAsk

log = logging.getLogger(__name__)


def person(s: Settings, ask: PrivacyAsk) -> Person:
    if (ask.email is None) == (ask.customer_id is None):
        raise Invalid("send either email or customer_id")
    with warehouse(s) as con:
        try:
            found = privacy.resolve(con, email=ask.email, customer_id=ask.customer_id, threshold=s.match_threshold)
        except privacy.UnknownPerson as e:
            raise NotFound(str(e)) from None
    touched(found.customers)  # the audit record names the customers, never the e-mail asked
    return found


def export(s: Settings, ask: PrivacyAsk) -> dict[str, Any]:
    """Everything held on the person (404 when nothing)."""
    found = person(s, ask)
    if not found.found:
        raise NotFound("c360 holds no record of this person")
    return json_value(privacy.export(s, found))


def request_erasure(s: Settings, ask: PrivacyAsk) -> dict[str, Any]:
    """Record the request (hiding the person from now on), then try to carry it out in the background."""
    found = person(s, ask)
    request = privacy_requests.create(s, email=ask.email, customer_id=ask.customer_id,
                                      customers=list(found.customers))
    if not locks.busy(s):  # a writer holds it now: `c360 privacy run` carries the request out
        threading.Thread(target=_try, args=(s, request), daemon=True, name="c360-erasure").start()
    return answer(request)


def _try(s: Settings, request: dict[str, Any]) -> None:
    try:
        privacy_requests.carry_out(s.model_copy(update={"lock_timeout": 0}), request)
    except (WarehouseBusy, duckdb.Error) as e:  # a writer or a reader holds the warehouse: `c360 privacy run`
        log.info("erasure request %s left pending: %s", request["id"], e)


def state(s: Settings, request_id: str) -> dict[str, Any]:
    request = privacy_requests.get(s, request_id)
    if request is None:
        raise NotFound(f"no erasure request {request_id}")
    return answer(request)


def answer(request: dict[str, Any]) -> dict[str, Any]:
    return {"request_id": request["id"], **{k: request[k] for k in ("state", "customers", "created", "finished",
                                                                   "report", "error")}}
