"""Prometheus request metrics labelled by route template, served at `GET /metrics`.

BentoML's own traffic metrics label every request with its raw path, so each customer id opens new time series
(`/customers/C00000002/profile`, `/customers/C00000003/profile`, …): unbounded cardinality. The service turns them
off and records these instead: `c360_requests_total{method, route, status}` and
`c360_request_duration_seconds{method, route}` for the requests the app's routes answer, where `route` is the
template (`/customers/{customer_id}/profile`) or `unmatched`; BentoML's own probes (`/healthz`, `/livez`,
`/readyz`) and paths no route matches are answered before the app and not counted. Under `bentoml serve` the
worker processes share one multiprocess directory (`PROMETHEUS_MULTIPROC_DIR`, set by BentoML), so `/metrics`
answers for all of them.

Beside them, the latest `c360 monitor` report's statuses and key figures, read from its JSON file at each scrape
(a small file; no state in the workers): `c360_monitor_status{check}` (0 ok, 1 watch, 2 act; `check="all"` the
worst), `c360_monitor_figure{check, figure}` and `c360_monitor_report_timestamp_seconds`.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import pandas as pd
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from c360.core.settings import Settings


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


def exposition(s: Settings | None = None) -> tuple[bytes, str]:
    """The metrics text and its content type: every worker's when they share a multiprocess directory, and the
    latest monitoring report's gauges of home `s`."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

    _instruments()
    registry = REGISTRY
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry) + (monitor_gauges(s) if s is not None else b""), CONTENT_TYPE_LATEST


def monitor_gauges(s: Settings) -> bytes:
    """The latest monitoring report as gauges (empty before the first report)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily

    from c360.training.monitor_report import STATUS_VALUE, latest

    document = latest(s)
    if document is None:
        return b""
    status = GaugeMetricFamily("c360_monitor_status", "Latest monitoring report: 0 ok, 1 watch, 2 act",
                               labels=["check"])
    figure = GaugeMetricFamily("c360_monitor_figure", "Latest monitoring report: a check's key figure",
                               labels=["check", "figure"])
    created = GaugeMetricFamily("c360_monitor_report_timestamp_seconds", "When the latest report was made")
    status.add_metric(["all"], STATUS_VALUE[document["status"]])
    for check in document["checks"]:
        status.add_metric([check["name"]], STATUS_VALUE[check["status"]])
        for name, value in check["figures"].items():
            if isinstance(value, int | float):
                figure.add_metric([check["name"], name], float(value))
    created.add_metric([], pd.Timestamp(document["created"]).timestamp())

    class Latest:
        def collect(self) -> list[GaugeMetricFamily]:
            return [status, figure, created]

    registry = CollectorRegistry()
    registry.register(Latest())
    return bytes(generate_latest(registry))
