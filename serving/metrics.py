"""Prometheus request metrics labelled by route template, served at `GET /metrics`.

BentoML's own traffic metrics label every request with its raw path, so each customer id opens new time series
(`/customers/C00000002/profile`, `/customers/C00000003/profile`, …): unbounded cardinality. The service turns them
off and records these instead: `c360_requests_total{method, route, status}` and
`c360_request_duration_seconds{method, route}` for the requests the app's routes answer, where `route` is the
template (`/customers/{customer_id}/profile`) or `unmatched`; BentoML's own probes (`/healthz`, `/livez`,
`/readyz`) and paths no route matches are answered before the app and not counted. Under `bentoml serve` the
worker processes share one multiprocess directory (`PROMETHEUS_MULTIPROC_DIR`, set by BentoML), so `/metrics`
answers for all of them.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


@functools.cache
def _instruments() -> tuple[Any, Any]:
    # Imported at first use: prometheus_client picks single- or multiprocess mode from the environment it sees then.
    from prometheus_client import Counter, Histogram

    requests = Counter("c360_requests", "HTTP requests answered", ["method", "route", "status"])
    duration = Histogram("c360_request_duration_seconds", "Time to answer an HTTP request", ["method", "route"],
                         buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    return requests, duration


class RouteMetrics:
    """ASGI middleware: counts and times each HTTP request under the route that answered it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server sends when the app fails before starting a response

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")  # set by the router on the shared scope
            requests, duration = _instruments()
            requests.labels(scope["method"], route, str(status)).inc()
            duration.labels(scope["method"], route).observe(time.perf_counter() - started)


def exposition() -> tuple[bytes, str]:
    """The metrics text and its content type: every worker's when they share a multiprocess directory."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

    _instruments()
    registry = REGISTRY
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
