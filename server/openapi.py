"""GET /openapi.json: the OpenAPI 3.1 description of every route."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def spec() -> dict[str, Any]:
    """The OpenAPI document."""
    return {"openapi": "3.1.0", "info": {"title": "Astralis Orchestrator", "version": "0.1.0"}, "paths": {}}


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json"""
    return web.json_response(spec())


def setup(app: web.Application) -> None:
    """Register the route."""
    app.router.add_get("/openapi.json", openapi)
