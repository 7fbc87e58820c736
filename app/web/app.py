"""The web application: `create_app` wires routes, plugins, exception handling and the lifespan of its connections."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.file_system import BaseLocalFileSystem
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.plugins.htmx import HTMXPlugin
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.plugins.prometheus import PrometheusConfig
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import PathType
from litestar.types.file_types import FileInfo

from app import accounts, db, files, passwords, recovery
from app.background import Every
from app.feeder import Feeder
from app.jobs.protocol import connect
from app.jobs.results import ResultWaiter
from app.sandbox import DecodePool
from app.services import Services
from app.settings import Settings, get_settings
from app.throttles import Throttle
from app.web import metrics
from app.web.api import accounts as accounts_api
from app.web.api import collections as collections_api
from app.web.api import feedback as feedback_api
from app.web.api import health
from app.web.api import predictions as predictions_api
from app.web.apidocs import LocalSwaggerUI
from app.web.contract import ApiContract
from app.web.costs import measure_uploads
from app.web.deps import AnyRequest
from app.web.errors import handle
from app.web.headers import security_headers
from app.web.limits import (
    ADDRESS_BODIES_HELD,
    LARGEST_BODIES_HELD,
    UPLOADS_RESERVED,
    BodiesHeld,
    BodyBudget,
    LimitedRequest,
    RequestLimits,
    RequestsOpen,
    parse_forms,
)
from app.web.pages import accounts as account_pages
from app.web.pages import admin, classify, history
from app.web.pages import collections as collection_pages
from app.web.queries import OneValueQueries, refuse_repeats
from app.web.rendering import configure_templates
from app.web.server import HeadAsGet, bound_access_log
from app.web.sessions import SignedIn, build_jwt_auth, csrf_config, is_revoked

ROOT = Path(__file__).resolve().parents[2]
# Multipart framing adds a little to the file itself.
MULTIPART_OVERHEAD = 64 * 1024
# An email, a password and a name, with room to refuse a hostile body for what it is (400), not its size.
ACCOUNT_BODY_BYTES = 1024 * 1024


class StaticFiles(BaseLocalFileSystem):
    """The static directory, where a path no file can have (one under a file, a name longer than the file
    system takes) is not found: its OSError was Litestar's 500."""

    async def info(self, path: PathType, **kwargs: Any) -> FileInfo:
        try:
            return await super().info(path, **kwargs)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ENAMETOOLONG):
                raise FileNotFoundError(exc.errno, exc.strerror, exc.filename) from None
            raise


async def before_handler(request: AnyRequest) -> None:
    """What every handler's request goes through first: one value for a one-value query parameter, then a
    form's body read within its bounds."""
    refuse_repeats(request)
    await parse_forms(request)


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    jwt_auth = build_jwt_auth(settings)
    jwt_auth.revoked_token_handler = is_revoked

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if not settings.redis_url:
            raise RuntimeError("REDIS_URL is not set: start the system with `make run` or set REDIS_URL")
        await db.init_db(settings.database_url, in_turns=True)  # one person's queries cannot crowd out the rest
        redis = connect(settings.redis_url)
        waiter = ResultWaiter(connect(settings.redis_url, command_timeout=None))
        decoder = DecodePool(settings)
        requeuing: Every | None = None
        measuring: Every | None = None
        feeder: Feeder | None = None
        try:
            await accounts.ensure_admin(settings)
            await passwords.warm_up()
            await waiter.start()
            await decoder.start()
            app.state.services = services = Services(settings, redis, waiter, Throttle(redis, settings), decoder)
            requeuing = recovery.requeue_forever(services)
            measuring = files.measure_forever(services.disk, settings.upload_dir)
            services.feeder = feeder = Feeder(services)
            waiter.on_other = feeder.result_came
            # What the start made (modules, the app and its routes: some 110,000 objects) lives as long as the
            # app: out of the collector's sight, a full collection no longer walks it (58 ms each). Measured:
            # 0.2 to 0.5 ms less web CPU per upload. Collected first, so no garbage is kept for good.
            gc.collect()
            gc.freeze()
            yield
        finally:
            gc.unfreeze()  # an app stopped (in a test) is garbage like any other
            if feeder:
                await feeder.stop()
            if requeuing:
                await requeuing.stop()
            if measuring:
                await measuring.stop()
            await waiter.stop()
            await asyncio.to_thread(decoder.close)
            await redis.aclose()
            await db.close_db()

    largest, upload = settings.max_collection_bytes + MULTIPART_OVERHEAD, settings.max_upload_bytes + MULTIPART_OVERHEAD
    bodies = BodiesHeld(
        budget=LARGEST_BODIES_HELD * largest + UPLOADS_RESERVED * upload,
        share=largest,
        address_share=ADDRESS_BODIES_HELD * ACCOUNT_BODY_BYTES,
        upload=upload,
        reserved=UPLOADS_RESERVED * upload,
    )
    requests = RequestsOpen()
    return Litestar(
        route_handlers=[
            # Signing in and up take bodies from anyone: small ones, so that an address's share of BodyBudget is too.
            Router(
                path="/",
                route_handlers=[*accounts_api.routes, *account_pages.routes],
                request_max_body_size=ACCOUNT_BODY_BYTES,
            ),
            *predictions_api.routes,
            *feedback_api.routes,
            # Collections carry many images, through the API or the classify form: their own, larger, body limit.
            Router(
                path="/",
                route_handlers=[*collections_api.routes, *classify.upload_routes],
                request_max_body_size=settings.max_collection_bytes + MULTIPART_OVERHEAD,
            ),
            *health.routes,
            *classify.routes,
            *history.routes,
            *collection_pages.routes,
            *admin.routes,
            metrics.metrics,
            create_static_files_router(
                path="/static", directories=[ROOT / "static"], file_system=StaticFiles(), include_in_schema=False
            ),
        ],
        lifespan=[lifespan],
        on_app_init=[jwt_auth.on_app_init, measure_uploads],
        state=State(
            {
                "jwt_auth": jwt_auth,
                "settings": settings,
                "signed_in": SignedIn(),
                "bodies": bodies,
                "requests_open": requests,
            }
        ),
        plugins=[HTMXPlugin(), ApiContract(jwt_auth), OneValueQueries()],
        middleware=[
            RequestLimits,
            DefineMiddleware(BodyBudget, bodies=bodies, requests=requests),
            PrometheusConfig(
                app_name="app", prefix="app", group_path=True, exclude=["^/metrics", "^/static"]
            ).middleware,
        ],
        template_config=TemplateConfig(
            directory=ROOT / "templates", engine=JinjaTemplateEngine, engine_callback=configure_templates
        ),
        csrf_config=csrf_config(settings),
        exception_handlers={Exception: handle},
        request_class=LimitedRequest,
        before_request=before_handler,
        before_send=[security_headers(settings)],
        request_max_body_size=settings.max_upload_bytes + MULTIPART_OVERHEAD,
        multipart_form_part_limit=settings.max_collection_files + 8,
        openapi_config=OpenAPIConfig(
            title="Image classification service",
            version="0.1.0",
            path="/schema",
            render_plugins=[LocalSwaggerUI()],
        ),
        logging_config=None,
        debug=False,
    )


def app() -> HeadAsGet:
    """Factory for `uvicorn --factory app.web.app:app`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    bound_access_log()
    return HeadAsGet(create_app())
