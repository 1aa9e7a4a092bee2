"""What every request passes before a route sees it: credentials checked before the body is read, a
cap on the body's size, a brake on failed authentication, and the security headers of every answer.

A pure ASGI middleware: nothing of a request's body is read, let alone parsed, for a caller who has not
shown a valid API key.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict, deque

from fastapi import status
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apps.api.deps import authenticate
from apps.api.errors import ApiError, error_response
from store.errors import StoreUnavailable

# Requests anyone may make: the health probe and the API's own documentation.
PUBLIC_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
DOCS_ASSETS = "/docs-assets"  # Swagger UI's and ReDoc's scripts and styles, served from the wheel
MAX_BODY_BYTES = 64 * 1024  # the largest body any route takes is a strategy: well under 2 KiB
FAILED_AUTH_LIMIT = 20  # failed authentications per client address ...
FAILED_AUTH_WINDOW_SECONDS = 60.0  # ... in this window, then 429 until the oldest failure leaves it
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


# Kite's login redirect comes from the trader's browser, which holds no API key: the login's one-time
# nonce is what identifies it (apps/api/routers/kite.py).
KITE_REDIRECT = re.compile(r"/kite/login/[0-9]{1,18}/redirect")


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(DOCS_ASSETS + "/") or KITE_REDIRECT.fullmatch(path) is not None


class FailedAuthentications:
    """A sliding window of failed authentications per client address."""

    def __init__(self, limit: int = FAILED_AUTH_LIMIT, window_seconds: float = FAILED_AUTH_WINDOW_SECONDS):
        self.limit = limit
        self.window = window_seconds
        self._failures: defaultdict[str, deque[float]] = defaultdict(deque)

    def retry_after(self, client: str) -> int | None:
        """Seconds until this client may try again; None when it may now."""
        failures = self._failures.get(client)
        if not failures:
            return None
        now = time.monotonic()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return None
        if len(failures) < self.limit:
            return None
        return max(1, int(failures[0] + self.window - now) + 1)

    def record(self, client: str) -> None:
        self._failures[client].append(time.monotonic())


class RequestGuard:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int = MAX_BODY_BYTES,
                 failed_authentications: FailedAuthentications | None = None):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.failures = failed_authentications or FailedAuthentications()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_security_headers(send)
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await self._refuse(scope, receive, send, status.HTTP_413_CONTENT_TOO_LARGE,
                               f"the request body must be at most {self.max_body_bytes} bytes")
            return
        if not is_public(scope["path"]):
            client = scope["client"][0] if scope.get("client") else "unknown"
            wait = self.failures.retry_after(client)
            if wait is not None:
                await self._refuse(scope, receive, send, status.HTTP_429_TOO_MANY_REQUESTS,
                                   f"too many failed authentications; try again in {wait}s",
                                   headers={"Retry-After": str(wait)})
                return
            services = getattr(scope["app"].state, "services", None)
            if services is None:
                await self._refuse(scope, receive, send, status.HTTP_503_SERVICE_UNAVAILABLE,
                                   "the API is starting; retry in a moment", headers={"Retry-After": "1"})
                return
            try:
                user = await authenticate(services, headers.get("authorization"))
            except StoreUnavailable as down:
                await self._refuse(scope, receive, send, status.HTTP_503_SERVICE_UNAVAILABLE,
                                   f"{down}; the database is unreachable, retry shortly", headers={"Retry-After": "5"})
                return
            except ApiError as refused:
                if refused.status_code == status.HTTP_401_UNAUTHORIZED:
                    self.failures.record(client)
                await self._refuse(scope, receive, send, refused.status_code, refused.detail, headers=refused.headers)
                return
            scope.setdefault("state", {})["user"] = user
        body = await self._read_body(receive)
        if body is None:
            await self._refuse(scope, receive, send, status.HTTP_413_CONTENT_TOO_LARGE,
                               f"the request body must be at most {self.max_body_bytes} bytes")
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None once it outgrows the cap (a chunked body has no Content-Length)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)  # the client went away: the app will hear of it
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, code: int, detail: str,
                      headers: dict[str, str] | None = None) -> None:
        await error_response(code, detail, headers)(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # http.disconnect, when it comes

    return replayed


def _with_security_headers(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            for name, value in SECURITY_HEADERS.items():
                headers.setdefault(name, value)
        await send(message)

    return sending

