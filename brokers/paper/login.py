"""Kite's login page, as the paper broker plays it: `KiteConnect.login_url()` → a page → the app's
registered redirect URL with a one-time `request_token`, `action=login&status=success`, and whatever
`redirect_params` the login URL carried (Kite echoes no state parameter otherwise)."""

from __future__ import annotations

import html
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from brokers.paper.exchange import PaperExchange

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Paper broker: log in</title></head>
<body>
<h1>Log in to the paper broker</h1>
<p>App <code>{api_key}</code> asks for a session. After the login you are sent back to
<code>{redirect}</code>.</p>
<form method="post" action="/connect/login">
<input type="hidden" name="api_key" value="{api_key}">
<input type="hidden" name="redirect_params" value="{redirect_params}">
<button type="submit">Log in</button>
</form>
</body></html>
"""


class LoginPage:
    def __init__(self, exchange: PaperExchange):
        self.exchange = exchange

    def routes(self) -> list[Route]:
        return [
            Route("/connect/login", self.page, methods=["GET"], name="login_page"),
            Route("/connect/login", self.log_in, methods=["POST"], name="login"),
        ]

    async def page(self, request: Request) -> Response:
        api_key = request.query_params.get("api_key", "")
        refused = self._refusal(api_key)
        if refused is not None:
            return refused
        return HTMLResponse(PAGE.format(
            api_key=html.escape(api_key), redirect=html.escape(self.exchange.redirect_urls[api_key]),
            redirect_params=html.escape(request.query_params.get("redirect_params", "")),
        ))

    async def log_in(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        api_key = form.get("api_key", "")
        refused = self._refusal(api_key)
        if refused is not None:
            return refused
        query = [("action", "login"), ("type", "login"), ("status", "success"),
                 ("request_token", self.exchange.issue_request_token(api_key))]
        query += parse_qsl(form.get("redirect_params", ""))
        target = urlsplit(self.exchange.redirect_urls[api_key])
        existing = parse_qsl(target.query)
        location = urlunsplit(target._replace(query=urlencode(existing + query)))
        return RedirectResponse(location, status_code=302)

    def _refusal(self, api_key: str) -> Response | None:
        if not api_key:
            return HTMLResponse("<p>The login URL has no <code>api_key</code>.</p>", status_code=400)
        if api_key not in self.exchange.redirect_urls:
            return HTMLResponse(
                f"<p>App <code>{html.escape(api_key)}</code> has no redirect URL registered: "
                f"<code>PUT /_sim/accounts/{html.escape(api_key)}</code> with "
                '<code>{"redirect_url": "…"}</code>, as the Kite developer console would.</p>',
                status_code=400,
            )
        return None
