"""Authentication of /v1, from the request's headers alone, before any route reads its body.

An ASGI middleware rather than a FastAPI dependency: dependencies run after FastAPI has read and
parsed the body (a keyless multipart upload was spooled to disk, malformed JSON answered 422,
before the 401). The principal it finds is put in the request's state, where ``PrincipalDep``
reads it for the routes, and ``may_see`` (offload_core.contract.api_keys) decides what it may touch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from offload_api.limits import answer_error
from offload_api.rate_limit import RequestLimiter
from offload_core.contract.api_keys import ANONYMOUS_PRINCIPAL, ApiKey, Principal, authenticate, may_see
from offload_core.store.jobs import Job, JobStore

PROTECTED_PREFIX = "/v1"
_STATE_KEY = "principal"
_CHALLENGE = [(b"www-authenticate", b"Bearer")]


def _bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() or None if scheme.lower() == "bearer" else None
    return None


class ApiKeyAuth:
    """Answers 401 to a /v1 request without a valid key, 429 to one whose key is over its rate
    limit (offload_api.rate_limit); otherwise records who made it."""

    def __init__(
        self,
        app: ASGIApp,
        keys: Sequence[ApiKey],
        *,
        open_without_keys: bool,
        limiter: RequestLimiter | None = None,
    ) -> None:
        self.app = app
        self.keys = list(keys)
        self.limiter = limiter
        # Development without keys: everyone is the anonymous admin (the API warns at start-up).
        self.open = open_without_keys and not self.keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        principal = ANONYMOUS_PRINCIPAL if self.open else await self._authenticate(scope, send)
        if principal is None:
            return  # answered 401
        scope.setdefault("state", {})[_STATE_KEY] = principal
        verdict = None if self.limiter is None else await self.limiter.check(principal.id)
        if verdict is None:
            await self.app(scope, receive, send)
            return
        if not verdict.allowed:
            detail = (
                f"Too many requests for API key {principal.id!r}: retry in {verdict.retry_after} s "
                "(see the RateLimit-Policy and RateLimit headers)."
            )
            await answer_error(send, 429, detail, "rate_limited", headers=verdict.headers)
            return
        limit_headers = verdict.headers

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *limit_headers]}
            await send(message)

        await self.app(scope, receive, send_with_limits)

    async def _authenticate(self, scope: Scope, send: Send) -> Principal | None:
        """The principal of the request's key; None once it has been answered 401."""
        token = _bearer_token(scope)
        if token is None:
            detail = "Missing API key: send 'Authorization: Bearer <key>'."
            await answer_error(send, 401, detail, "unauthorized", headers=_CHALLENGE)
            return None
        principal = authenticate(self.keys, token)
        if principal is None:
            await answer_error(send, 401, "Invalid API key.", "unauthorized", headers=_CHALLENGE)
        return principal


def request_principal(request: Request) -> Principal:
    """Who sent the request, as ApiKeyAuth found it."""
    principal = getattr(request.state, _STATE_KEY, None)
    if not isinstance(principal, Principal):  # a route mounted outside /v1 by mistake
        raise HTTPException(401, "Missing API key.", headers={"WWW-Authenticate": "Bearer"})
    return principal


async def current_principal(request: Request) -> Principal:
    # async: FastAPI runs a plain def dependency in a worker thread.
    return request_principal(request)


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def find_job(store: JobStore, principal: Principal, job_id: str, *, task: str | None = None) -> Job | None:
    """The job if it exists, is of ``task`` (when given) and the principal may see it; else None,
    and the route answers 404 in its own words: never 403 for someone else's record, whose
    existence is theirs to know."""
    job = store.get(job_id)
    if job is None or (task is not None and job.task != task) or not may_see(principal, job.owner):
        return None
    return job


# The name the OpenAPI schema has always given the scheme (FastAPI's HTTPBearer's default).
SECURITY_SCHEME = "HTTPBearer"


def document_api_key(openapi: dict[str, Any]) -> dict[str, Any]:
    """Declares the API key on every /v1 operation of the OpenAPI schema. ApiKeyAuth checks it,
    so no route solves a security dependency per request just for the schema to say so."""
    schemes = openapi.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes[SECURITY_SCHEME] = {"type": "http", "scheme": "bearer", "description": "An API key from OFFLOAD_API_KEYS."}
    for path, operations in openapi.get("paths", {}).items():
        if path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/"):
            for operation in operations.values():
                operation["security"] = [{SECURITY_SCHEME: []}]
    return openapi
