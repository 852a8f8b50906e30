"""Erasure requests: recorded durably at once, carried out later under the warehouse's writer lock.

The service cannot erase while it answers (it holds read connections only), so `POST /admin/privacy/erase` writes
a request, one JSON file per request under `C360_HOME/privacy/requests/` (written to a temporary file, fsynced,
renamed), and answers 202. From then on the person is hidden (`Hidden`: the customers and e-mail addresses of
pending requests, an in-memory set reloaded when the folder changes). `run` carries the pending requests out (`c360
privacy run`, or the service when it can take the lock without waiting) and keeps, of each, its state and per-store
report, and the customer ids: the plain e-mail address is dropped from the file once it is done.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from c360.core import warehouse
from c360.core.at_rest import write_private
from c360.core.personal import Person
from c360.core.settings import Settings
from c360.features import privacy
from c360.features.linkage import normalise_email

STATES = ("pending", "done", "failed")


def folder(s: Settings) -> Path:
    return s.home / "privacy" / "requests"


def _write(s: Settings, request: dict[str, Any]) -> None:
    target = folder(s)
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(target / f"{request['id']}.json", json.dumps(request, default=str).encode())


def create(s: Settings, *, email: str | None = None, customer_id: str | None = None,
           customers: list[str] | None = None) -> dict[str, Any]:
    """Record an erasure request (pending); `customers`: the ids it touches, hidden from now on."""
    address = (normalise_email(email) or email.strip().lower()) if email else None
    request = {"id": secrets.token_hex(8), "state": "pending", "asked": "email" if email else "customer_id",
               "email": address, "customer_id": customer_id,
               "customers": sorted(set(customers or []) | ({customer_id} if customer_id else set())),
               "created": datetime.now(UTC).isoformat(timespec="seconds"), "finished": None, "report": None,
               "error": None}
    _write(s, request)
    return request


def get(s: Settings, request_id: str) -> dict[str, Any] | None:
    path = folder(s) / f"{request_id}.json"
    return json.loads(path.read_text()) if request_id.isalnum() and path.is_file() else None


def all_requests(s: Settings) -> list[dict[str, Any]]:
    if not folder(s).is_dir():
        return []
    return sorted((json.loads(p.read_text()) for p in folder(s).glob("*.json")), key=lambda r: r["created"])


def run(s: Settings, on_request: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Carry out every pending request, oldest first; returns them in their final state."""
    done = []
    for request in (r for r in all_requests(s) if r["state"] == "pending"):
        done.append(carry_out(s, request))
        if on_request is not None:
            on_request(done[-1])
    return done


def carry_out(s: Settings, request: dict[str, Any]) -> dict[str, Any]:
    """Erase the person of one request; the request file records the outcome (the lock's wait raises)."""
    try:
        person = _person(s, request)
        report = {name: asdict(e) for name, e in privacy.erase(s, person).items()} if person is not None else {}
    except privacy.UnknownPerson:
        report = {}
    except (OSError, ValueError, RuntimeError) as err:  # the request stays on record, with why it failed
        request.update(state="failed", error=str(err), finished=_now())
        _write(s, request)
        return request
    # still hidden afterwards: the customers that went entirely (an account whose contact went stays visible)
    request.update(state="done", email=None, finished=_now(), report=report,
                   customers=sorted(person.whole) if person else request["customers"])
    _write(s, request)
    return request


def _person(s: Settings, request: dict[str, Any]) -> Person | None:
    with warehouse.connect(s, read_only=True) as con:
        return privacy.resolve(s, con, email=request["email"], customer_id=request["customer_id"])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Hidden:
    """Customers and e-mail addresses of erasure requests: checked on every answer, so kept in memory and reloaded
    only when the requests folder changed (a stat per check)."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.stamp: tuple[int, int] | None = None
        self.customers: frozenset[str] = frozenset()
        self.emails: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def _fresh(self) -> None:
        try:
            st = os.stat(folder(self.s))
            stamp = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if stamp == self.stamp:
            return
        with self._lock:
            requests = all_requests(self.s)
            self.customers = frozenset(c for r in requests for c in r["customers"])
            self.emails = frozenset(r["email"] for r in requests if r.get("email"))
            self.stamp = stamp

    def customer(self, customer_id: str) -> bool:
        self._fresh()
        return customer_id in self.customers

    def email(self, address: str) -> bool:
        self._fresh()
        return (normalise_email(address) or address.strip().lower()) in self.emails
