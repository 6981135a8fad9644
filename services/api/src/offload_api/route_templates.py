"""A request's route as the OpenAPI schema names it (`/v1/jobs/{job_id}`), for the metrics'
labels and the audit trail's entries."""

from __future__ import annotations

import re

from starlette.routing import compile_path
from starlette.types import Scope


class RouteTemplates:
    """Looked up once per route: the route object in the scope knows only its own router's
    prefix, so its template is the schema path that ends with the route's path and matches the
    request's; later requests of the route are a dictionary lookup."""

    def __init__(self) -> None:
        self._schema_paths: list[tuple[re.Pattern[str], str]] | None = None
        # By the route object's id: routes are not hashable, and live as long as the app.
        self._by_route: dict[int, str] = {}

    def of(self, scope: Scope) -> str | None:
        """The template of the route that answered, or None if no route matched."""
        route = scope.get("route")
        if route is None:
            return None
        template = self._by_route.get(id(route))
        if template is None:
            template = self._by_route[id(route)] = self._lookup(scope, str(getattr(route, "path", "")))
        return template

    def _lookup(self, scope: Scope, own: str) -> str:
        if self._schema_paths is None:
            # Paths without parameters first, so /v1/jobs/echo is not taken for /v1/jobs/{job_id}.
            paths = sorted(scope["app"].openapi()["paths"], key=lambda path: ("{" in path, path))
            self._schema_paths = [(compile_path(path)[0], path) for path in paths]
        path = scope["path"]
        # A route left out of the schema keeps its own path: still one label per route.
        return next((t for regex, t in self._schema_paths if t.endswith(own) and regex.match(path)), own)
