"""Rendering pages: one template pair per page, `pages/x.html` (a full document) including `partials/x.html`,
whose root element carries the id that `hx-target` names. `render` answers the partial to an HTMX swap
and the page otherwise. Also the filters the templates share, pagination, and navigation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from litestar import Response
from litestar.plugins.htmx import ClientRedirect
from litestar.response import Redirect, Stream, Template
from litestar.status_codes import HTTP_200_OK, HTTP_303_SEE_OTHER

from app.models import User
from app.web.deps import AnyRequest


def current_user(request: AnyRequest) -> User | None:
    """The signed-in user, or None where auth did not run (public pages, unknown paths)."""
    user = request.scope.get("user")
    return user if isinstance(user, User) else None


def wants_partial(request: AnyRequest) -> bool:
    """An HTMX swap wants only the partial; a boosted link or a history restore needs the whole page."""
    htmx = getattr(request, "htmx", None)
    return bool(htmx) and not htmx.boosted and not htmx.history_restore_request  # type: ignore[union-attr]


def render(
    request: AnyRequest,
    page: str,
    partial: str,
    context: dict[str, Any],
    *,
    status_code: int = HTTP_200_OK,
    headers: dict[str, str] | None = None,
) -> Template:
    settings = request.app.state.settings
    user = current_user(request)
    return Template(
        template_name=partial if wants_partial(request) else page,
        context={
            "user": user,
            "has_session": user is None and request.app.state.jwt_auth.key in request.cookies,
            "htmx_url": settings.htmx_url,
            "htmx_integrity": settings.htmx_integrity,
            "path": request.url.path,
            "max_upload_bytes": settings.max_upload_bytes,
            "max_collection_bytes": settings.max_collection_bytes,
            "max_collection_files": settings.max_collection_files,
            **context,
        },
        status_code=status_code,
        # The same URL answers a page or a partial: caches (and htmx's history) must tell them apart.
        headers={"Vary": "HX-Request", **(headers or {})},
    )


def format_when(value: datetime | str | None) -> str:
    if value is None:
        return ""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.strftime("%d %b %Y, %H:%M UTC")


def format_percent(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value * 100:.{digits}f}%"


def configure_templates(engine: Any) -> None:
    """Filters the templates share (called by the template config in app/web/app.py)."""
    engine.engine.filters.update(when=format_when, percent=format_percent)


def go(request: AnyRequest, target: str) -> Response[Any]:
    """Navigate: HTMX follows HX-Redirect (a 3xx would be swapped in), a browser a 303."""
    if wants_partial(request):
        return ClientRedirect(target)
    return Redirect(target, status_code=HTTP_303_SEE_OTHER)


def csv_attachment(file_name: str, text: AsyncIterator[str]) -> Stream:
    """A CSV file for the browser to save, sent as it is made."""
    return Stream(
        text,
        media_type="text/csv",  # Litestar adds the charset
        headers={"Content-Disposition": f'attachment; filename="{file_name}"'},
    )
