"""What every response carries, and the CSRF check of every action.

Actions are POSTs whose form repeats the token of the `console_csrf` cookie
(double submit): a page of another site can make the browser send the cookie
but cannot read it to put in the form, and the cookie is SameSite=Strict too.
"""

from __future__ import annotations

import hmac
import secrets
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

from starlette.datastructures import FormData, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSRF_COOKIE = "console_csrf"
CSRF_FIELD = "csrf_token"
# No inline script or style anywhere: what runs is the console's own static files.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none';"
    " base-uri 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def _cookie_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            cookie: SimpleCookie = SimpleCookie()
            cookie.load(value.decode("latin-1"))
            if CSRF_COOKIE in cookie:
                return cookie[CSRF_COOKIE].value
    return None


class Guard:
    """ASGI wrapper: the security headers on every response (errors included),
    and a CSRF token for each browser, which the pages read from
    `request.state.csrf`."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        token = _cookie_token(scope)
        fresh = token is None
        scope.setdefault("state", {})["csrf"] = token or secrets.token_urlsafe(32)

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _HEADERS.items():
                    headers[name] = value
                if fresh:
                    headers.append(
                        "Set-Cookie",
                        f"{CSRF_COOKIE}={scope['state']['csrf']}; Path=/; HttpOnly;"
                        " SameSite=Strict",
                    )
            await send(message)

        await self._app(scope, receive, secured)


async def checked_form(request: Request) -> FormData:
    """The form of an action, refused (403) unless it carries the browser's CSRF
    token and, when the browser names it, comes from the console's own origin."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, "This action came from another site and was refused.")
    form = await request.form()
    given = form.get(CSRF_FIELD)
    expected = _cookie_token(request.scope)
    if not (isinstance(given, str) and expected and hmac.compare_digest(given, expected)):
        raise HTTPException(
            403, "This form has expired or did not come from the console: reload the page."
        )
    return form
