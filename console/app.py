"""The console's ASGI application: routes, static files, error pages."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from console import analytics, catalog, executions, overview, users, workflows
from console.calls import Services, call_problem, forwarded_authorization
from console.config import ConsoleConfig
from console.security import Guard
from console.web import HERE, render


async def _call_failed(request: Request, error: Exception) -> Response:
    assert isinstance(error, grpc.aio.AioRpcError)
    problem = call_problem(error)
    return render(request, "problem.html", problem.http_status, problem=problem)


async def _refused(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return render(
        request, "refused.html", error.status_code, message=error.detail, status=error.status_code
    )


async def _health(request: Request) -> Response:
    return PlainTextResponse("ok")


class _ForwardToken:
    """Makes the Authorization header of the page request (an authenticating
    proxy's, oauth2-proxy style) the credentials of the calls made for it."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        header = None
        for name, value in scope.get("headers", ()) if scope["type"] == "http" else ():
            if name == b"authorization":
                header = value.decode("latin-1")
        reset = forwarded_authorization.set(header)
        try:
            await self._app(scope, receive, send)
        finally:
            forwarded_authorization.reset(reset)


def create_app(config: ConsoleConfig, given: Services | None = None) -> ASGIApp:
    """The console; it opens (and closes) its channels itself unless `given` them."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if given is not None:
            yield
            return
        app.state.services = Services(config)
        try:
            yield
        finally:
            await app.state.services.close()

    app = Starlette(
        routes=[
            Route("/healthz", _health),
            *overview.ROUTES,
            *workflows.ROUTES,
            *executions.ROUTES,
            *users.ROUTES,
            *catalog.ROUTES,
            *analytics.ROUTES,
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        exception_handlers={grpc.aio.AioRpcError: _call_failed, HTTPException: _refused},
        lifespan=lifespan,
    )
    if given is not None:
        app.state.services = given
    return Guard(_ForwardToken(app))
