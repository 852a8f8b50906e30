"""The service's gate: API keys checked against the route table, the caller handed to the handlers, the audit
record of every request about customers.

`Auth` is a pure ASGI middleware of the whole service (REST routes and BentoML's APIs alike). For a route of
`serving.access.ROUTES` that is not open, it reads `Authorization: Bearer KEY` and answers

* 401 (`WWW-Authenticate: Bearer`) with no key, or an unknown, revoked or expired one (`core.keys.Keys`, which
  sees `c360 keys create` / `revoke` at the next request);
* 403 when the key's role is not among the route's;

both as JSON `{"detail": ...}` like every error of the service. A path the table does not know goes on to the app
(its 404). Otherwise the handlers find the caller with `principal()`, and note the customers a request touches with
`touched(ids)`; when the route is about customers, the middleware appends one audit record once the answer is
sent — key name, role, `METHOD /template`, the ids noted (a path's `customer_id` too), the status — refused
requests included. Never a personal value: handlers note ids, not e-mails.

With `C360_AUTH=off` (local notebooks) every caller is the local admin, and a request that did not arrive on a
loopback address is refused: `serving.server` refuses to start such a server, and this catches `bentoml serve`
started by hand with a wider `--host` (BentoML does not tell its workers the address it binds).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from c360.core import audit
from c360.core.keys import KeyProblem, Keys
from c360.core.settings import Settings
from c360.serving.access import VIEWS, View, match


@dataclass(frozen=True)
class Principal:
    key: str  # the key's name
    role: str

    @property
    def view(self) -> View:
        return VIEWS[self.role]


LOCAL = Principal("local", "admin")  # C360_AUTH=off
ANONYMOUS = Principal("-", "-")  # who a refused request without a known key is, in the audit trail
_principal: ContextVar[Principal] = ContextVar("c360_principal", default=LOCAL)
_touched: ContextVar[dict[str, None] | None] = ContextVar("c360_touched", default=None)


def principal() -> Principal:
    """Who is asking (outside a request, as in a notebook: the local admin)."""
    return _principal.get()


def touched(ids: Iterable[str]) -> None:
    """Note the customers the current request reads or changes, for its audit record."""
    noted = _touched.get()
    if noted is not None:
        noted.update(dict.fromkeys(ids))


def loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def _refusal(status: int, detail: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class Auth:
    """ASGI middleware: authenticate, authorize by the route table, audit the requests about customers."""

    def __init__(self, app: ASGIApp, settings: Settings | None = None) -> None:
        self.app = app
        self.given = settings
        self.settings = settings
        self.keys: Keys | None = None

    def _who(self, scope: Scope, roles: frozenset[str], action: str) -> tuple[Principal, JSONResponse | None]:
        """The caller, and the refusal to answer instead of the route (None: go on)."""
        assert self.settings is not None and self.keys is not None
        if self.settings.auth == "off":
            server = scope.get("server") or ("127.0.0.1", 0)
            if not loopback(str(server[0])):
                return LOCAL, _refusal(403, "C360_AUTH=off: the service answers on loopback only")
            return LOCAL, None
        token = _bearer(scope)
        if token is None:
            return ANONYMOUS, _refusal(401, "an API key is needed: Authorization: Bearer KEY (`c360 keys create`)")
        try:
            key = self.keys.check(token)
        except KeyProblem as e:
            return Principal(e.name or "-", "-"), _refusal(401, str(e))
        who = Principal(key.name, key.role)
        if key.role not in roles:
            return who, _refusal(403, f"the role {key.role} may not {action}")
        return who, None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # the app (re)starts: its settings are read again, as the service's are
            self.settings, self.keys = self.given, None
        found = match(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        if self.settings is None or self.keys is None:  # read once, in the worker
            self.settings = self.settings or Settings()
            self.keys = Keys(self.settings)
        route, params = found
        roles = route.admits(self.settings)
        if roles is None:
            await self.app(scope, receive, send)
            return
        who, refused = self._who(scope, roles, route.action)
        noted = dict.fromkeys([params["customer_id"]] if "customer_id" in params else [])
        status = 500

        async def answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        tokens = _principal.set(who), _touched.set(noted)
        try:
            await (refused or self.app)(scope, receive, answer if route.customers else send)
        finally:
            _principal.reset(tokens[0])
            _touched.reset(tokens[1])
            if route.customers:
                audit.append(self.settings, key=who.key, role=who.role, action=route.action,
                             customers=list(noted), status=status)
