"""The request body limit: a 413 before a body over `C360_MAX_BODY_BYTES` is read whole.

Without it a 100 MB customer id was read, parsed and echoed back, growing a worker by 800 MB, and a million ids
took 2.3 s to reach their 422. The largest valid request (100 raw feature rows) is about 100 KB.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from c360.core.settings import Settings


def too_large(limit: int) -> str:
    return f"request body over {limit:,} bytes (the service's C360_MAX_BODY_BYTES)"


class BodyLimit:
    """ASGI middleware of the whole service (REST routes and BentoML's APIs): 413 at once when Content-Length says
    the body is over the limit; when it does not say (a chunked body), 413 as soon as the bytes received pass it,
    whatever the route's framework then makes of the failed read."""

    def __init__(self, app: ASGIApp, limit: int | None = None) -> None:
        self.app = app
        self.limit = limit
        self.refused: JSONResponse | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.limit is None or self.refused is None:  # the setting read, and the answer built, once
            self.limit = self.limit or Settings().max_body_bytes
            self.refused = JSONResponse({"detail": too_large(self.limit)}, status_code=413)
        limit, refused = self.limit, self.refused
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > limit:
            await refused(scope, receive, send)
            return
        received, over, answered = 0, False, False

        async def bounded() -> Message:
            nonlocal received, over
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                over = True
                # FastAPI passes an HTTPException raised while it reads the body on to its handler.
                raise HTTPException(413, too_large(limit))
            return message

        async def answer(message: Message) -> None:
            nonlocal answered
            if over and not answered:  # whatever the route answers to the failed read, the client gets the 413
                answered = True
                await refused(scope, receive, send)
            elif not over:
                await send(message)

        try:
            await self.app(scope, bounded, answer)
        except HTTPException:
            if not over:
                raise
        if over and not answered:
            await refused(scope, receive, send)
