"""The service's errors and how each becomes a JSON answer: `{"detail": ...}`, never a 500 or a traceback.

* `NotFound` → 404; `Conflict` → 409; `Invalid` and malformed requests → 422, shaped as FastAPI's own validation errors;
* `Unavailable` → 503 naming the failing component (online store, warehouse, model registry, ...) and what to do.
  The cause — file paths, process ids, the exception's text — goes to the server log, not to the client;
* a body over the limit → 413 (`serving.limits`), and so is `TooLarge`: too many rows for one request.

Each is also BentoML's exception of its status, so the `@bentoml.api` methods answer the same codes (BentoML's own
body: `[{"error": ...}]`; a 503's message goes to the log only, BentoML hides any 5xx's).

A 422 echoes at most `ECHO` characters of an input value, and none of a nested object or array: a body may be a
megabyte, and JSON's NaN and Infinity (which Python's parser accepts) cannot be written back as JSON.
"""

from __future__ import annotations

import logging
import math
from http import HTTPStatus
from typing import Any

from bentoml import exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)
ECHO = 64  # characters of an input value a 422 repeats


class NotFound(exceptions.NotFound, LookupError):
    """Unknown customer: a 404."""


class Invalid(exceptions.UnprocessableEntity, ValueError):
    """A request the models cannot score (missing or mistyped features), or an audience's bad filter: a 422 whose
    `loc` names the body's field."""

    def __init__(self, message: str, field: str = "rows") -> None:
        super().__init__(message)
        self.field = field


class Conflict(ValueError):
    """A name already taken (an audience's): a 409."""


class TooLarge(exceptions.BentoMLException, ValueError):
    """More rows than one request may carry: a 413."""

    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class Moved(LookupError):
    """A customer id `c360 resolve` merged into another: a 308 to the same path with the id it lives on as."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__(f"customer {old} was merged into {new}")
        self.old, self.new = old, new


class Unavailable(exceptions.ServiceUnavailable, RuntimeError):
    """A component cannot answer: a 503 naming it and what to do, never a partial profile."""

    def __init__(self, component: str, advice: str, cause: BaseException | None = None) -> None:
        super().__init__(f"{component} unavailable: {advice}")
        self.component, self.advice = component, advice
        if cause is not None:
            log.warning("%s unavailable: %s (%s: %s)", component, advice, type(cause).__name__, cause)


def echo(value: Any) -> Any:
    """What a 422 may repeat of an input value: a short prefix of a scalar, nothing of a container."""
    if isinstance(value, dict | list | tuple):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | float) or (isinstance(value, int) and abs(value) < 10**15):
        return value
    text = str(value)
    return text if len(text) <= ECHO else f"{text[:ECHO]}… ({len(text):,} characters)"


def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:500], "type": str(e.get("type", "")),
               "input": echo(e.get("input"))} for e in exc.errors()[:100]]
    return JSONResponse({"detail": detail}, status_code=422)


def _invalid(_: Request, exc: Exception) -> JSONResponse:
    """The shape of FastAPI's own validation errors, so every 422 reads the same."""
    assert isinstance(exc, Invalid)
    return JSONResponse({"detail": [{"loc": ["body", exc.field], "msg": str(exc), "type": "value_error"}]},
                        status_code=422)


def _conflict(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


def _too_large(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=413)


def _moved(request: Request, exc: Exception) -> JSONResponse:
    """308 keeps the method and (same origin) the Authorization header: curl -L, fetch and httpx follow it."""
    assert isinstance(exc, Moved)
    path = request.url.path.replace(f"/customers/{exc.old}/", f"/customers/{exc.new}/", 1)
    location = f"{path}?{request.url.query}" if request.url.query else path
    return JSONResponse({"detail": str(exc), "merged_into": exc.new}, status_code=308, headers={"Location": location})


def _unavailable(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Unavailable)
    return JSONResponse({"detail": str(exc), "component": exc.component}, status_code=503)


def install(app: FastAPI) -> None:
    """Every error handler of the service on `app`."""
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(Invalid, _invalid)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Conflict, _conflict)
    app.add_exception_handler(TooLarge, _too_large)
    app.add_exception_handler(Moved, _moved)
    app.add_exception_handler(Unavailable, _unavailable)
