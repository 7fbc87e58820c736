"""Middleware: the CPU an upload request costs, by stage (app/stages.py). Outermost, so that parsing and
signing in fall inside the measurement."""

from __future__ import annotations

from litestar.config.app import AppConfig
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app import stages

# The requests that upload one image: the API's and the classify form's.
MEASURED = {("POST", "/api/predictions"), ("POST", "/")}


class UploadCosts(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if (scope.get("method"), scope["path"]) not in MEASURED:
            await next_app(scope, receive, send)
            return
        costs = stages.begin()

        async def sending(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                costs.close("rendering")  # what the handler's answer cost to encode and send

        try:
            await next_app(scope, receive, sending)
        finally:
            costs.finish()


def measure_uploads(app_config: AppConfig) -> AppConfig:
    """An `on_app_init` hook run after the authentication's, which put its middleware first: this goes
    before it."""
    app_config.middleware.insert(0, UploadCosts())
    return app_config
