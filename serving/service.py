"""The c360 HTTP service: one BentoML service class with a FastAPI app mounted on it (one app, one OpenAPI).

Thin by design — every answer comes from plain functions: `serving.profile` (profile assembly),
`serving.predictions` (batch-or-live predictions), `serving.online` (the reads), with the champions of
`serving.champions`:

* `GET /customers/{customer_id}/profile` — past, present, future and freshness (`?details=true`: identity and
  the warehouse's lists too);
* `POST /predict/churn`, `/predict/clv`, `/predict/nba` — up to 100 customer ids, or raw feature rows;
* `POST /models/{name}/predict` — a promoted table model's answers for rows in its table's own columns
  (`serving.table_models`: every table model's `@champion`, reloaded by the same polling as the champions);
* `GET /customers?email=` — the customers with that e-mail address (`serving.lookup`);
* `GET /ui` — the profile page for customer-success managers (`serving.ui`: one static page over this API);
* `POST /admin/reload` — reload the champions whose `@champion` alias moved (the service also polls every
  `C360_RELOAD_SECONDS`, default 30); `GET /status` — what is loaded, and why the service is not ready;
* `POST /admin/privacy/export` — everything held on a person (`{"email"}` or `{"customer_id"}`);
  `POST /admin/privacy/erase` — records an erasure request (202), hides the person from every answer at once,
  and carries it out when the warehouse is free (else `c360 privacy run` does); `GET /admin/privacy/requests/{id}`
  — its state (`serving.privacy`);
* `POST /events` — a batch of live events (`features.event_log.accept`): each checked by the data contract, the new
  ones appended to the event log and fsynced before the answer (accepted, duplicates, suppressed, and the rejected
  with their reasons: a 200 even when some are rejected), then their customers' features and predictions updated
  (`serving.live`, `live` in the answer) by `LiveUpdater`, one process for all workers; `c360 ingest` folds the
  log into the warehouse;
* `GET /audiences`, `GET /audiences/{name}`, `POST /audiences`, `GET /audiences/{name}/export` — audiences, named
  filters over the profile (`serving.audiences`, `features.audiences`): list, show, create, export (CSV, masked
  by role);
* `GET /metrics` — Prometheus request counts and durations by route template (`serving.metrics`);
* the same profile and predictions as BentoML APIs for BentoML's clients (`bentoml.SyncHTTPClient`): `POST
  /profile`, `/predict_churn`, `/predict_clv`, `/predict_nba` (JSON arguments `customer_ids` or `rows`);
* BentoML's own `GET /healthz` / `/livez` (process up) and `GET /readyz` (`__is_ready__`: online store readable
  and all three champions loaded); the OpenAPI document at `/docs.json`, Swagger UI at `/`.

Every route is a row of `serving.access.ROUTES` (the roles it admits); `serving.auth` checks the API key, hands
the caller to the handlers (`principal()`, whose role says how much of a profile `serving.masking` shows) and
audits the requests about customers (handlers note the ids they touch with `touched`).

Errors are JSON `{"detail": ...}` (`serving.errors`): 401 no valid key, 403 a role without the right, 404 unknown
customer, 413 body over `C360_MAX_BODY_BYTES` (`serving.limits`), 422 malformed request, 503 naming the component
that cannot answer and what to do, never a partial profile.

Run: `c360 serve` (or `bentoml serve serving.service:C360`); `C360_HOME` says which home it serves,
`C360_SERVE_WORKERS` how many worker processes (default 1), beside which BentoML starts the one `LiveUpdater`.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import pathlib
import threading
import time
from functools import partial
from typing import Annotated, Any

import anyio
import bentoml
from _bentoml_sdk.service import get_current_service
from fastapi import Depends, FastAPI, Path, Query
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from c360.core.at_rest import owner_only
from c360.core.settings import Settings
from c360.core.warehouse import CUSTOMER_ID
from c360.features import audiences, event_log, live_identity
from c360.features.privacy_requests import Hidden
from c360.serving import audiences as audience_routes
from c360.serving import brief, errors, masking, online, predictions, ui
from c360.serving import privacy as privacy_routes
from c360.serving import profile as profiles
from c360.serving.auth import Auth, principal, touched
from c360.serving.champions import RegistryUnavailable
from c360.serving.errors import Invalid, Moved, NotFound, Unavailable
from c360.serving.limits import BodyLimit
from c360.serving.live import keep_warm, live_update
from c360.serving.lookup import EMAIL, customers_by_email
from c360.serving.metrics import RouteMetrics, exposition
from c360.serving.online import Context, keep_open
from c360.serving.schemas import (
    Batch,
    ByIds,
    ChurnPredictions,
    ChurnRow,
    ChurnRows,
    ClvPredictions,
    ClvRow,
    ClvRows,
    CustomerIds,
    CustomerMatches,
    ErasureRequest,
    Error,
    EventBatch,
    EventsAccepted,
    NbaPredictions,
    NbaRow,
    NbaRows,
    PrivacyAsk,
    Profile,
    Reloaded,
    Status,
    TablePredictions,
    TableRows,
)
from c360.serving.table_models import TableModels
from c360.training.table_models import NAME as TABLE_MODEL

log = logging.getLogger(__name__)
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": Error, "description": "unknown customer"},
    413: {"model": Error, "description": "request body over the limit (C360_MAX_BODY_BYTES, default 1 MB)"},
    503: {"model": Error, "description": "online store, warehouse or model registry unavailable"},
}

app = FastAPI(
    title="c360",
    version="2",  # 2: the profile's keys are identifiers (README, Serving)
    description="Customer 360: one profile per customer (past, present, future), churn risk, 12-month value and "
                "next best action with their reasons.",
)


app.add_middleware(RouteMetrics)
errors.install(app)


def _json(value: Any) -> Response:
    return Response(profiles.dumps(value), media_type="application/json")


def _plain(rows: list[BaseModel] | None) -> list[dict[str, Any]] | None:
    return None if rows is None else [row.model_dump() for row in rows]


CustomerId = Annotated[str, Path(pattern=CUSTOMER_ID, description="customer id, e.g. C00000002")]


# BentoML keeps no trace unless `tracing.sample_rate` is configured, yet its OpenTelemetry middleware costs about a
# fifth of a profile's CPU: it skips every path unless C360_TRACING=1 (for whoever configures an exporter).
TRACING = {} if os.environ.get("C360_TRACING") == "1" else {"excluded_urls": ["/"]}


def reload_seconds() -> float:
    """How often the champions are read again (`C360_RELOAD_SECONDS`, default 30; 0: never)."""
    return float(os.environ.get("C360_RELOAD_SECONDS", "30"))


def live_wait_seconds() -> float:
    """How long a worker waits for the live updater's answer, each of two attempts (`C360_LIVE_WAIT_SECONDS`,
    default 25): both within the request's 60 s, where BentoML's own client would wait 60.6 s and the sender get
    a 504."""
    return float(os.environ.get("C360_LIVE_WAIT_SECONDS", "25"))


# BentoML's client of a dependency renews its connections every `max_requests` calls (default 100) or `max_age`
# seconds, failing the calls under way on them (ServerDisconnectedError; `_live` sends them again): 102 in 10 minutes
# of 8 clients at 64 events per request. One updater on a local socket has nothing to rebalance: the workers keep
# their connections to it.
LIVE_CONNECTION = {"max_requests": 2**31 - 1, "max_age": float(2**31 - 1)}


@bentoml.service(name="c360-live", workers=1, logging={"access": {"enabled": False}}, traffic={"timeout": 60},
                 metrics={"enabled": False}, tracing=TRACING, runner_connection=LIVE_CONNECTION)
class LiveUpdater:
    """The live update (`serving.live`) of the events every worker of `C360` accepts, in one process: a round takes
    the waiting events of all of them, so its fixed costs are paid once however many workers there are, and no two
    workers update the same customers at once. Internal: `C360` calls it (over a local socket when served: BentoML
    runs it as its own process); it has no route of its own."""

    def __init__(self) -> None:
        owner_only()  # it writes the live history, the online store and identity.db: the owner's alone
        self._loaded: tuple[pathlib.Path, Context, float] | None = None  # home, context, when champions were read
        self._lock = threading.Lock()
        try:
            self.context(Settings())
        except Exception as e:  # not ready yet (or a fault: logged): the first update that needs it tries again
            log.warning("live updater not ready: %s", e)
        gc.freeze()  # as `C360`: the collector's full passes over the start-up objects stopped a round for 0.4 s
        self._stop = threading.Event()
        if bentoml.server_context.worker_index is not None:  # served: its own process. Made in-process (a test's
            # client, a notebook), its reads would stand in the way of that process's writes to the warehouse.
            threading.Thread(target=keep_warm, args=(Settings(), self._stop), name="c360-live-warm",
                             daemon=True).start()

    @bentoml.on_shutdown
    def stop_warming(self) -> None:
        self._stop.set()

    def context(self, s: Settings) -> Context:
        """The context of `s`'s home, its champions and the registry's views read again every
        `C360_RELOAD_SECONDS` (as `C360` polls them)."""
        seconds = reload_seconds()
        with self._lock:
            now = time.monotonic()
            if self._loaded is None or self._loaded[0] != s.home:
                ctx = online.load_context(s)
            else:
                _, ctx, read = self._loaded
                if seconds <= 0 or now - read < seconds:
                    return ctx
                ctx.reload()
            self._loaded = (s.home, ctx, now)
            return ctx

    @bentoml.api
    async def update(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """`serving.live.live_update` of these events (already in the event log)."""
        s = Settings()
        return await anyio.to_thread.run_sync(live_update, s, partial(self.context, s), events)


@bentoml.service(name="c360", workers=int(os.environ.get("C360_SERVE_WORKERS", "1")),
                 logging={"access": {"enabled": False}}, traffic={"timeout": 60},
                 metrics={"enabled": False}, tracing=TRACING)  # metrics: ours by route (serving.metrics)
@bentoml.asgi_app(app, path="/")
class C360:
    """c360 profile and prediction service."""

    updater = bentoml.depends(LiveUpdater)

    def __init__(self) -> None:
        owner_only()  # what the service writes under C360_HOME (its log of reads, later ones) is the owner's alone
        self.settings = Settings()
        self.problem: str | None = None
        self.ctx: Context | None = None
        self.hidden = Hidden(self.settings)  # people with an erasure request: unknown to every answer
        self.tables = TableModels(self.settings.home)
        self._stop = threading.Event()
        self._load()
        self._refresh_tables()
        seconds = reload_seconds()
        if seconds > 0:
            threading.Thread(target=self._poll, args=(seconds,), daemon=True, name="c360-champion-poll").start()
        if bentoml.server_context.worker_index is not None:  # served (see LiveUpdater): profiles open the warehouse
            threading.Thread(target=keep_open, args=(self.settings, self._stop), daemon=True,
                             name="c360-warehouse").start()
        gc.freeze()  # start-up objects out of the collector's way: it caused the p99 spikes of online reads

    @bentoml.on_shutdown
    def stop_threads(self) -> None:
        self._stop.set()

    def _load(self) -> None:
        try:
            self.ctx = online.load_context(self.settings)
            self.problem = None
        except Unavailable as e:  # start anyway: /readyz says not ready, /status says why
            self.problem = str(e)
            log.warning("c360 service not ready: %s", self.problem)
        except Exception:  # a fault of c360 itself: its traceback goes to the log, not to clients
            self.problem = "the service failed to start: see the server log"
            log.exception("c360 service not ready")

    def _refresh_tables(self) -> None:
        """The table models, apart from the champions: they need no feature store."""
        try:
            self.tables.refresh()
        except Exception as e:  # keep serving the loaded versions
            log.warning("table models not refreshed: %s", e)

    def _poll(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                self.reload_champions()
            except Exception as e:  # keep serving the loaded versions; status says why
                log.warning("champion poll failed: %s", e)
            self._refresh_tables()

    def reload_champions(self) -> dict[str, tuple[int | None, int]]:
        if self.ctx is None:
            self._load()
            if self.ctx is None:
                raise Unavailable("service", self.problem or "not initialised: see the server log")
            return {k: (None, v) for k, v in self.ctx.champions.versions().items()}
        return self.ctx.reload()

    def context(self) -> Context:
        if self.ctx is None:
            self._load()
        if self.ctx is None:
            raise Unavailable("service", f"not ready ({self.problem})")
        return self.ctx

    def store_problem(self) -> str | None:
        """Why the online store cannot serve, or None."""
        ctx = self.ctx
        if ctx is None:
            return self.problem or "not initialised"
        try:
            online.read_online(ctx, ["__readiness_probe__"])
        except Unavailable as e:
            return str(e)
        return None

    def __is_ready__(self) -> bool:
        return self.ctx is not None and self.ctx.champions.ready and self.store_problem() is None

    # ------------------------------------------------------------------ routes

    @app.get("/customers/{customer_id}/profile", response_model=Profile,
             responses={**ERRORS, 308: {"model": Error, "description": "merged into another customer (Location)"}},
             summary="A customer's profile: past, present, future")
    async def customer_profile(
        self, customer_id: CustomerId,
        details: Annotated[bool, Query(description="add identity and the warehouse's lists (slower)")] = False,
    ) -> Response:
        survivor = self._merged_into(customer_id)
        if survivor is not None:
            touched([customer_id])
            raise Moved(customer_id, survivor)
        return _json(await self._profile(customer_id, details))

    def _merged_into(self, customer_id: str) -> str | None:
        return live_identity.merged_into(self.settings, customer_id, lambda: online.warehouse(self.settings))

    def _unhidden(self, customer_ids: list[str]) -> None:
        hidden = [c for c in customer_ids if self.hidden.customer(c)]
        if hidden:
            raise NotFound(f"unknown customers: {', '.join(hidden[:20])}")

    async def _profile(self, customer_id: str, details: bool) -> dict[str, Any]:
        touched([customer_id])
        self._unhidden([customer_id])
        view = principal().view
        ctx = self.context()
        if details and view != "anonymous":
            out = await anyio.to_thread.run_sync(profiles.profile, ctx, customer_id, True)
        else:
            out = profiles.profile(ctx, customer_id)
        said = partial(brief.of, out, view, self.settings)  # a rewrite calls its endpoint: off the event loop
        return masking.profile(out, view) | {"brief": await anyio.to_thread.run_sync(said)
                                             if self.settings.brief_endpoint else said()}

    async def _predict(self, kind: str, request: Any) -> Response:
        ids, rows = (request.customer_ids, None) if isinstance(request, ByIds) else (None, _plain(request.rows))
        return _json({"predictions": await self._predictions(kind, ids, rows)})

    async def _predictions(self, kind: str, customer_ids: list[str] | None,
                           rows: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        if customer_ids is not None:  # a merged id is scored as the customer it was merged into
            customer_ids = [self._merged_into(c) or c for c in customer_ids]
        touched(customer_ids or [])
        self._unhidden(customer_ids or [])
        ctx = self.context()
        if customer_ids is not None and rows is None:
            return await anyio.to_thread.run_sync(predictions.predict_customers, ctx, kind, customer_ids)
        if rows is not None and customer_ids is None:
            return await anyio.to_thread.run_sync(predictions.predict_rows, ctx, kind, rows)
        raise Invalid("send either customer_ids or rows")

    # `name=`: the operationIds of the REST routes stay what generated clients know, the method names being the
    # BentoML APIs' below.
    @app.post("/predict/churn", name="predict_churn", response_model=ChurnPredictions, responses=ERRORS,
              summary="Churn probability, band and reasons")
    async def rest_predict_churn(self, request: ByIds | ChurnRows) -> Response:
        return await self._predict("churn", request)

    @app.post("/predict/clv", name="predict_clv", response_model=ClvPredictions, responses=ERRORS,
              summary="12-month value, its range and drivers")
    async def rest_predict_clv(self, request: ByIds | ClvRows) -> Response:
        return await self._predict("clv", request)

    @app.post("/predict/nba", name="predict_nba", response_model=NbaPredictions, responses=ERRORS,
              summary="Next best action, its uplift, alternatives and reasons")
    async def rest_predict_nba(self, request: ByIds | NbaRows) -> Response:
        return await self._predict("nba", request)

    @app.post("/models/{name}/predict", response_model=TablePredictions,
              responses={**ERRORS, 404: {"model": Error, "description": "no promoted table model of this name"},
                         413: {"model": Error, "description": "over 1,000 rows, or a body over the limit"}},
              summary="A table model's answers for rows in its table's own columns")
    async def table_predict(
        self, name: Annotated[str, Path(pattern=TABLE_MODEL, description="the model's NAME")],
        request: TableRows,
    ) -> Response:
        loaded = self.tables.get(name)
        predictions = await anyio.to_thread.run_sync(loaded.predict, request.rows)
        return _json({"model": loaded.name, "version": loaded.version, "predictions": predictions})

    # ------------------------------------------------------------------ BentoML APIs (POST /<name>), for
    # BentoML's clients: the REST routes' answers; errors as BentoML answers them (`serving.errors`).

    @bentoml.api
    async def profile(self, customer_id: Annotated[str, Field(pattern=CUSTOMER_ID)],
                      details: bool = False) -> Profile:
        """A customer's profile: past, present, future (`details`: identity and the warehouse's lists too); a merged
        id's is the profile of the customer it was merged into."""
        survivor = self._merged_into(customer_id) or customer_id
        return Profile.model_validate(await self._profile(survivor, details))

    @bentoml.api
    async def predict_churn(self, customer_ids: CustomerIds | None = None,
                            rows: Batch[ChurnRow] | None = None) -> ChurnPredictions:  # type: ignore[valid-type]
        """Churn probability, band and reasons of known customers (ids) or of raw feature rows."""
        return ChurnPredictions(predictions=await self._predictions("churn", customer_ids, _plain(rows)))

    @bentoml.api
    async def predict_clv(self, customer_ids: CustomerIds | None = None,
                          rows: Batch[ClvRow] | None = None) -> ClvPredictions:  # type: ignore[valid-type]
        """12-month value, its range and drivers of known customers (ids) or of raw feature rows."""
        return ClvPredictions(predictions=await self._predictions("clv", customer_ids, _plain(rows)))

    @bentoml.api
    async def predict_nba(self, customer_ids: CustomerIds | None = None,
                          rows: Batch[NbaRow] | None = None) -> NbaPredictions:  # type: ignore[valid-type]
        """Next best action, its uplift, alternatives and reasons of known customers (ids) or of raw feature rows."""
        return NbaPredictions(predictions=await self._predictions("nba", customer_ids, _plain(rows)))

    @app.post("/admin/reload", response_model=Reloaded, responses={503: ERRORS[503]},
              summary="Reload the champions whose @champion alias moved")
    async def reload(self) -> Response:
        changed = await anyio.to_thread.run_sync(self.reload_champions)
        assert self.ctx is not None
        return _json({"reloaded": {k: list(v) for k, v in changed.items()},
                      "models": self.ctx.champions.versions()})

    @app.get("/status", response_model=Status, responses={503: {"model": Status}},
             summary="Loaded champions and online store; 503 with the problem when not ready")
    async def status(self) -> Response:
        problem = self.store_problem()
        ctx = self.ctx
        if problem is None and ctx is not None and not ctx.champions.ready:
            problem = str(RegistryUnavailable(ctx.champions.error or "champion models not loaded"))
        body = {"ready": problem is None, "models": ctx.champions.versions() if ctx else {},
                "table_models": self.tables.versions(), "online_store": self.settings.online_store,
                "problem": problem}
        return Response(profiles.dumps(body), status_code=200 if problem is None else 503,
                        media_type="application/json")

    @app.get("/customers", response_model=CustomerMatches,
             responses={404: {"model": Error, "description": "no customer with this e-mail"}, 503: ERRORS[503]},
             summary="The customers with an e-mail address")
    async def customers(
        self, email: Annotated[str, Query(pattern=EMAIL, max_length=254,
                                          description="e-mail address, e.g. jane.doe@example.com")],
    ) -> Response:
        if self.hidden.email(email):
            raise NotFound("no customer with this e-mail")
        found = await anyio.to_thread.run_sync(customers_by_email, self.settings, email)
        touched(found["customer_ids"])
        self._unhidden(found["customer_ids"])
        return _json(found)

    @app.post("/admin/privacy/export", responses={404: ERRORS[404], 503: ERRORS[503]},
              summary="Everything c360 holds on a person (by e-mail, or a whole account by customer id)")
    async def privacy_export(self, ask: PrivacyAsk) -> Response:
        return _json(await anyio.to_thread.run_sync(privacy_routes.export, self.settings, ask))

    @app.post("/admin/privacy/erase", status_code=202, response_model=ErasureRequest,
              responses={503: ERRORS[503]}, summary="Request the erasure of a person: hidden at once, erased soon")
    async def privacy_erase(self, ask: PrivacyAsk) -> Response:
        request = await anyio.to_thread.run_sync(privacy_routes.request_erasure, self.settings, ask)
        return Response(profiles.dumps(request), status_code=202, media_type="application/json")

    @app.get("/admin/privacy/requests/{request_id}", response_model=ErasureRequest,
             responses={404: {"model": Error, "description": "unknown request"}},
             summary="State of an erasure request: pending, done (with the per-store report) or failed")
    async def privacy_request(self, request_id: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]) -> Response:
        return _json(privacy_routes.state(self.settings, request_id))

    @app.post("/events", response_model=EventsAccepted, responses={413: ERRORS[413]},
              summary="Live events in: checked, made durable, acknowledged (rejected ones with their reason)")
    async def events(self, batch: EventBatch) -> Response:
        touched(event_log.customers_named(batch.events))
        try:
            answer, new = await anyio.to_thread.run_sync(event_log.receive, self.settings, batch.events)
        except OSError as e:  # a full or read-only disk: nothing was acknowledged, the sender may retry
            raise Unavailable("event log", "cannot write the event log: see the server log", e) from None
        done = await self._live(new)
        touched(done.pop("customers", []))
        return _json(answer | {"live": done})

    async def _live(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """The live update of `events` by the one `LiveUpdater`; its failure is the answer's `live.error`, not the
        request's: the events are durable already."""
        if not events:
            return {"updated": 0, "customers": []}
        for attempt in (1, 2):  # a second time: BentoML's client may reuse a connection the updater closed when
            try:                # idle (BentoML #4971), or wait on one; an update done twice writes the same rows
                with anyio.fail_after(live_wait_seconds()):
                    return await self.updater.update(events=events)
            except Exception:  # down, restarting or stalled: `c360 ingest` folds the events anyway
                log.warning("live updater unreachable (attempt %d of 2)", attempt, exc_info=True)
        return {"updated": 0, "error": "live updater unavailable: see the server log"}

    @app.get("/audiences", summary="The audiences: name, filter, size, who created them and when")
    async def audience_list(self) -> Response:
        return _json(await anyio.to_thread.run_sync(audience_routes.listed, self.settings))

    @app.get("/audiences/{name}", responses={404: {"model": Error, "description": "unknown audience"}},
             summary="An audience: size, overlap with the others, distribution of key fields, history")
    async def audience_show(self, name: Annotated[str, Path(pattern=audiences.NAME)]) -> Response:
        return _json(await anyio.to_thread.run_sync(audience_routes.show, self.settings, name))

    @app.post("/audiences", status_code=201, summary="Create an audience (a named filter over the profile)",
              responses={409: {"model": Error, "description": "an audience has this name"}, 503: ERRORS[503]})
    async def audience_create(self, ask: audience_routes.AudienceAsk) -> Response:
        created = await anyio.to_thread.run_sync(audience_routes.create, self.settings, ask, principal())
        return Response(profiles.dumps(created), status_code=201, media_type="application/json")

    @app.get("/audiences/{name}/export", response_class=Response,
             responses={200: {"content": {"text/csv": {}}}, 404: {"model": Error, "description": "unknown audience"}},
             summary="An audience's members for a CRM (CSV; names and e-mails masked for analysts)")
    async def audience_export(self, name: Annotated[str, Path(pattern=audiences.NAME)]) -> Response:
        text, left_out = await anyio.to_thread.run_sync(audience_routes.export_csv, self.settings, name, principal())
        return Response(text, media_type="text/csv", headers={"X-C360-Left-Out": json.dumps(left_out)})

    @app.get("/metrics", include_in_schema=False)
    async def metrics(self) -> Response:
        """Prometheus metrics by route (`serving.metrics`)."""
        text, media_type = await anyio.to_thread.run_sync(exposition, self.settings)
        return Response(text, media_type=media_type)

    @app.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    async def profile_page(self) -> Response:
        """The profile page (it calls the routes above from the browser)."""
        return HTMLResponse(ui.page())


async def _current_service() -> C360:
    return get_current_service()


def _service_on_event_loop(service: type) -> None:
    """BentoML hands each route its service instance through a plain-function dependency, which FastAPI runs in its
    thread pool: a thread hop per request, about a tenth of a profile's server CPU. The same lookup as a coroutine
    runs on the event loop. (Not `app.dependency_overrides`: FastAPI would rebuild the dependency on every request.)
    FastAPI reads each route's dependencies from its signature, where BentoML put its own."""
    for method in vars(service).values():
        signature = getattr(method, "__signature__", None)
        if signature is None or not signature.parameters:
            continue
        first, *rest = signature.parameters.values()
        if getattr(first.default, "dependency", None) is get_current_service:
            method.__signature__ = signature.replace(parameters=[first.replace(default=Depends(_current_service)),
                                                                 *rest])


_service_on_event_loop(C360.inner)  # type: ignore[attr-defined]  # the decorator made C360 a bentoml Service

# On the whole service, so BentoML's APIs are bounded as the REST routes are.
C360.add_asgi_middleware(BodyLimit)  # type: ignore[attr-defined]  # the decorator made C360 a bentoml Service
C360.add_asgi_middleware(Auth)  # type: ignore[attr-defined]  # keys and roles by route (serving.access), audit
