"""Bearer-token authentication before any work: the first thing a protected route does.

With a tokens file (``--tokens-file``), every route under ``/v1/runs``, ``/v1/traces`` and
``/v1/maintenance`` needs ``Authorization: Bearer <token>``. :func:`auth_middleware`
checks it before the handler reads the body or touches the store, so an unauthenticated
caller always gets a 401, never a 400/404/413/422 that would tell it something about the
service or its data. The handlers then scope every read and write to the token's tenant
(:func:`sidecar.api.tenant_of`): another tenant's run is a 404, a checkpoint span naming
another tenant is refused. ``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json``
stay open (they hold no tenant data).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from sidecar.api import ApiError, tenant_of
from sidecar.keys import TOKENS_KEY

__all__ = ["PROTECTED_PREFIXES", "TENANT_KEY", "auth_middleware", "is_protected"]

#: Route patterns under these prefixes need a token when tokens are configured.
PROTECTED_PREFIXES: Final = ("/v1/runs", "/v1/traces", "/v1/maintenance")
#: Where the middleware leaves the authenticated tenant on the request.
TENANT_KEY: Final = web.RequestKey("flowpoint.tenant", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_protected(pattern: str) -> bool:
    """True when the route pattern (e.g. ``/v1/runs/{run_id}``) needs a token."""
    return any(pattern == p or pattern.startswith(p + "/") for p in PROTECTED_PREFIXES)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 for a protected route without a valid token; otherwise the handler runs."""
    if request.app.get(TOKENS_KEY):
        # The matched route's pattern, not the raw path: no spelling of a URL reaches a
        # protected handler without passing here.
        resource = request.match_info.route.resource
        if resource is not None and is_protected(resource.canonical):
            try:
                request[TENANT_KEY] = tenant_of(request)
            except ApiError as exc:
                return exc.response()
    return await handler(request)
