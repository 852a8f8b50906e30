"""The privacy endpoints' plain functions: export a person at once, record an erasure request and try it.

The service holds read connections only: an erasure request is recorded (`features.privacy_requests`), the person
hidden at once, and the erasure carried out by `c360 privacy run`: started here, in a process of its own, when the
warehouse's writer lock is free right away (no wait: a busy warehouse leaves the request pending for the next run).
Not in a thread of the service: DuckDB refuses a writer beside the same process's readers of the file.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from typing import Any

from c360.core import locks
from c360.core.personal import Person
from c360.core.settings import Settings
from c360.features import privacy, privacy_requests
from c360.serving.auth import touched
from c360.serving.errors import NotFound
from c360.serving.online import warehouse
from c360.serving.profile import json_value
from c360.serving.schemas import ByEmail, PrivacyAsk

log = logging.getLogger(__name__)


def asked(ask: PrivacyAsk) -> tuple[str | None, str | None]:
    """(email, customer_id) of the request: one of the two."""
    return (ask.email, None) if isinstance(ask, ByEmail) else (None, ask.customer_id)


def person(s: Settings, ask: PrivacyAsk) -> Person:
    email, customer_id = asked(ask)
    with warehouse(s) as con:
        try:
            found = privacy.resolve(s, con, email=email, customer_id=customer_id)
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
    email, customer_id = asked(ask)
    request = privacy_requests.create(s, email=email, customer_id=customer_id,
                                      customers=list(found.customers))
    if not locks.busy(s):  # a writer holds it now: `c360 privacy run` carries the request out
        threading.Thread(target=_run_pending, args=(s,), daemon=True, name="c360-erasure").start()
    return answer(request)


def _run_pending(s: Settings) -> None:
    """`c360 privacy run` in a process of its own, not waiting for the lock: DuckDB refuses a writer beside this
    process's readers of the same file, and the service stays a reader."""
    env = {**os.environ, "C360_HOME": str(s.home), "C360_LOCK_TIMEOUT": "0"}
    done = subprocess.run([sys.executable, "-m", "c360.cli", "privacy", "run", "--json"], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:  # busy: the requests stay pending for `c360 privacy run`
        log.info("erasure requests left pending: %s", done.stderr.strip()[-300:])


def state(s: Settings, request_id: str) -> dict[str, Any]:
    request = privacy_requests.get(s, request_id)
    if request is None:
        raise NotFound(f"no erasure request {request_id}")
    return answer(request)


def answer(request: dict[str, Any]) -> dict[str, Any]:
    return {"request_id": request["id"], **{k: request[k] for k in ("state", "customers", "created", "finished",
                                                                   "report", "error")}}
