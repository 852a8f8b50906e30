"""Who may call what: the service's route table, the one place that maps each route to the roles it admits.

Every route of the service has a row — `ROUTES`: method, path template, the roles it admits (None: open, no key
needed), whether it reads or changes customers' data (then every request to it, a refused one too, leaves an audit
record), and the setting that opens it to anyone (the OpenAPI document, `/metrics`). The service's middleware
(`serving.auth`), the tests (every route × every role) and the README's table all read it; a route the app has and
the table lacks fails the tests, and a path the table does not know is left to the app (its 404).

`VIEWS` says what each role sees of a customer: everything, the profile with personal data masked, or the
profile's features and future with no personal data at all (`serving.masking`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from c360.core.keys import ROLES
from c360.core.settings import Settings

View = Literal["full", "masked", "anonymous"]
VIEWS: dict[str, View] = {"admin": "full", "csm": "full", "analyst": "masked", "service": "anonymous"}
EVERYONE = frozenset(ROLES)
ADMIN = frozenset({"admin"})
READERS = frozenset({"admin", "csm", "analyst"})  # of audiences: the analyst's exports are masked


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # Starlette's template: {name}, or {name:path} for the rest of the path
    roles: frozenset[str] | None  # None: open to anyone, no key needed
    what: str
    customers: bool = False  # reads or changes customers' data: every request is audited
    open_when: str | None = None  # a boolean setting that, when true, opens the route to anyone
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\{(\w+):path\}", r"(?P<\1>.*)", self.path)
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex)
        object.__setattr__(self, "pattern", re.compile(f"^{regex}$"))

    @property
    def action(self) -> str:
        """What the audit trail calls a request to this route."""
        return f"{self.method} {self.path}"

    def admits(self, s: Settings) -> frozenset[str] | None:
        """The roles this route admits under settings `s`; None when it is open."""
        if self.open_when is not None and getattr(s, self.open_when):
            return None
        return self.roles


def _docs(path: str, what: str) -> Route:
    return Route("GET", path, EVERYONE, what, open_when="public_docs")


ROUTES: tuple[Route, ...] = (
    Route("GET", "/customers/{customer_id}/profile", EVERYONE, "a customer's profile (masked by role)",
          customers=True),
    Route("POST", "/predict/churn", EVERYONE, "churn predictions", customers=True),
    Route("POST", "/predict/clv", EVERYONE, "12-month value predictions", customers=True),
    Route("POST", "/predict/nba", EVERYONE, "next best action predictions", customers=True),
    Route("POST", "/profile", EVERYONE, "BentoML API: a customer's profile (masked by role)", customers=True),
    Route("POST", "/predict_churn", EVERYONE, "BentoML API: churn predictions", customers=True),
    Route("POST", "/predict_clv", EVERYONE, "BentoML API: 12-month value predictions", customers=True),
    Route("POST", "/predict_nba", EVERYONE, "BentoML API: next best action predictions", customers=True),
    Route("POST", "/models/{name}/predict", frozenset({"admin", "service"}),
          "a table model's predictions (rows in its table's own columns)"),
    Route("GET", "/customers", frozenset({"admin", "csm"}), "the customers with an e-mail address", customers=True),
    Route("POST", "/admin/reload", ADMIN, "reload the champions"),
    Route("POST", "/admin/privacy/export", ADMIN, "export everything held on a person", customers=True),
    Route("POST", "/admin/privacy/erase", ADMIN, "erase a person (202 with a request id)", customers=True),
    Route("GET", "/admin/privacy/requests/{request_id}", ADMIN, "state of an erasure request", customers=True),
    Route("POST", "/events", frozenset({"admin", "service"}), "live events in (a batch of up to 1,000)",
          customers=True),
    Route("GET", "/audiences", READERS, "the audiences, with their sizes"),
    Route("GET", "/audiences/{name}", READERS, "an audience: size, overlap, distribution, history", customers=True),
    Route("POST", "/audiences", frozenset({"admin", "csm"}), "create an audience (409: name taken; 422: bad filter)",
          customers=True),
    Route("GET", "/audiences/{name}/export", READERS, "an audience's export, CSV (names and e-mails masked by role)",
          customers=True),
    Route("GET", "/status", EVERYONE, "loaded champions, online store, why not ready"),
    Route("GET", "/metrics", frozenset({"admin", "service"}), "Prometheus metrics by route",
          open_when="public_metrics"),
    Route("GET", "/ui", None, "the profile page (static; it asks for a key)"),
    _docs("/", "Swagger UI"),
    _docs("/docs.json", "OpenAPI document"),
    _docs("/schema.json", "BentoML's schema of its APIs"),
    _docs("/static_content/{file:path}", "Swagger UI's files"),
    _docs("/openapi.json", "FastAPI's OpenAPI document (same routes)"),
    _docs("/docs", "FastAPI's Swagger UI"),
    _docs("/docs/oauth2-redirect", "FastAPI's Swagger UI (OAuth2 redirect)"),
    _docs("/redoc", "FastAPI's ReDoc"),
    Route("GET", "/healthz", None, "process up"),
    Route("GET", "/livez", None, "process up"),
    Route("GET", "/readyz", None, "ready to serve"),
)


def match(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The row of a request and its path parameters; None for a path or method the table does not know."""
    method = "GET" if method == "HEAD" else method
    for route in ROUTES:
        if route.method == method:
            found = route.pattern.match(path)
            if found:
                return route, found.groupdict()
    return None


def markdown(s: Settings | None = None) -> str:
    """The route table as the README shows it (with the default settings)."""
    s = s or Settings()
    lines = ["| route | admin | csm | analyst | service | audited | what |", "|---|---|---|---|---|---|---|"]
    for r in ROUTES:
        roles = r.admits(s)
        cells = ["open" if roles is None else ("yes" if role in roles else "403") for role in ROLES]
        opened = f" (`C360_{r.open_when.upper()}`)" if r.open_when else ""
        lines.append(f"| `{r.action}` | {' | '.join(cells)} | {'yes' if r.customers else ''} | {r.what}{opened} |")
    return "\n".join(lines)
