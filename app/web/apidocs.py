"""The API docs at /schema: Swagger UI from the swagger-ui-bundle-v2 package, served by the app itself, so
the docs work with no internet; on a page with no inline script, so the site's Content Security Policy holds
there too (static/js/apidocs.js starts Swagger UI on the app's own /schema/openapi.json)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from litestar import Request, Router
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/assets"  # under the schema's path: /schema/assets/swagger-ui-bundle.js


class LocalSwaggerUI(SwaggerRenderPlugin):
    """Swagger UI's page with its script and styles from the app. No OAuth2 redirect page: the API's only
    scheme is a bearer token, which Swagger UI's Authorize button takes as it is."""

    def __init__(self, schema_path: str = "/schema") -> None:
        assets = schema_path + ASSETS
        super().__init__(
            js_url=f"{assets}/swagger-ui-bundle.js",
            css_url=f"{assets}/swagger-ui.css",
            favicon='<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">',
        )
        self.page_css_url = f"{assets}/index.css"

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        title = html.escape(str(openapi_schema["info"]["title"]))
        spec_url = html.escape(self.get_openapi_json_route(request))
        return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title} · API</title>
  {self.favicon}
  <link rel="stylesheet" href="{self.css_url}">
  <link rel="stylesheet" href="{self.page_css_url}">
  <script src="{self.js_url}" defer></script>
  <script src="/static/js/apidocs.js" defer></script>
</head>
<body>
  <div id="swagger-ui" data-spec-url="{spec_url}"></div>
</body>
</html>
""".encode()

    def receive_router(self, router: Router) -> None:
        router.register(
            create_static_files_router(
                path=ASSETS,
                directories=[Path(str(swagger_ui_path))],
                name="swagger-ui-assets",
                include_in_schema=False,
            )
        )
