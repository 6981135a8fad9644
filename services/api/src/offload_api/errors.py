"""Every error leaves the API as JSON: {"detail": what happened and what to do, "code": ...}."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from offload_core.settings import get_settings
from offload_core.store.blobs import BlobStoreUnavailable

logger = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    431: "request_header_fields_too_large",
}


class FieldError(BaseModel):
    field: str = Field(description="Where the problem is, e.g. body.sleep_ms or header.Idempotency-Key.")
    message: str = Field(description="What is wrong with it.")


class ErrorBody(BaseModel):
    """The body of every error answer (4xx, 5xx), whichever part of the API gives it."""

    detail: str = Field(description="What happened and what to do about it.")
    code: str = Field(
        description="A stable name for the kind of error: invalid_request, unauthorized, not_found, conflict, "
        "payload_too_large, request_header_fields_too_large, rate_limited, redis_unavailable, redis_full, "
        "bad_request, ..."
    )
    errors: list[FieldError] | None = Field(
        default=None, description="On 422 only: every invalid field, with what is wrong with it."
    )


class InvalidField(Exception):
    """A value that passed the schema but not a rule of the topology (e.g. a queue the task may not use)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def error_body(detail: str, code: str, **extra: object) -> dict[str, object]:
    return {"detail": detail, "code": code, **extra}


def _field_name(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": _field_name(e["loc"]), "message": e["msg"]} for e in exc.errors()]
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse(
        status_code=422, content=error_body(f"Invalid request: {summary}", "invalid_request", errors=errors)
    )


async def _invalid_field(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidField)
    errors = [{"field": exc.field, "message": exc.message}]
    return JSONResponse(
        status_code=422,
        content=error_body(f"Invalid request: {exc.field}: {exc.message}", "invalid_request", errors=errors),
    )


# FastAPI's words for a body it could not decode (JSON that is not UTF-8, a broken multipart
# body), which say nothing about what to send instead.
_FASTAPI_UNPARSABLE_BODY = "There was an error parsing the body"
_UNPARSABLE_BODY = (
    "The request body could not be parsed: send it well-formed for its Content-Type (JSON encoded as UTF-8)."
)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _CODES.get(exc.status_code, "error")
    detail = _UNPARSABLE_BODY if exc.detail == _FASTAPI_UNPARSABLE_BODY else str(exc.detail)
    return JSONResponse(status_code=exc.status_code, content=error_body(detail, code), headers=exc.headers)


# Redis's answer to a write while its memory is at maxmemory (policy noeviction). A Lua script
# wraps it in its own error text, kombu in an OperationalError, so the text is what tells.
REDIS_FULL_MARKER = "OOM command not allowed"
# Memory frees only as workers finish jobs or records expire: seconds to minutes, not at once.
REDIS_FULL_RETRY_AFTER_SECONDS = 30


class RedisNearlyFull(Exception):
    """Redis uses more of its maxmemory than new jobs may (OFFLOAD_REDIS_SUBMIT_MEMORY_RATIO)."""

    def __init__(self, used_bytes: int, maxmemory_bytes: int, ratio: float) -> None:
        super().__init__(
            f"used memory {used_bytes} is {used_bytes / maxmemory_bytes:.0%} of maxmemory {maxmemory_bytes}, past the "
            f"{ratio:.0%} new jobs may take (OFFLOAD_REDIS_SUBMIT_MEMORY_RATIO)"
        )


def redis_is_full(exc: BaseException) -> bool:
    """Whether Redis refused a write because its memory is full, anywhere in the error's chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, redis.exceptions.OutOfMemoryError | RedisNearlyFull) or REDIS_FULL_MARKER in str(
            current
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


async def _redis_unavailable(_: Request, exc: Exception) -> JSONResponse:
    location = get_settings().redis_location
    if redis_is_full(exc):
        # 503 rather than 507: the condition is temporary and every client retries 503.
        logger.warning("Redis at %s is full (maxmemory), a write was refused: %s", location, exc)
        reason = (
            f"its {exc}, the rest being kept for the workers"
            if isinstance(exc, RedisNearlyFull)
            else "its memory reached maxmemory and it refuses new writes"
        )
        detail = (
            f"Redis at {location} is full: {reason}, so nothing was accepted; jobs accepted before are kept. "
            "Retry after Retry-After seconds. Operators: let the workers drain the queues or raise Redis's "
            "maxmemory (runbook OffloadRedisMemoryNearLimit)."
        )
        return JSONResponse(
            status_code=503,
            content=error_body(detail, "redis_full"),
            headers={"Retry-After": str(REDIS_FULL_RETRY_AFTER_SECONDS)},
        )
    logger.warning("Redis at %s unavailable: %s", location, exc)
    detail = (
        f"Redis at {location} is unavailable ({type(exc).__name__}); nothing was accepted, retry later. "
        "Is Redis running? (OFFLOAD_REDIS_URL)"
    )
    return JSONResponse(status_code=503, content=error_body(detail, "redis_unavailable"), headers={"Retry-After": "5"})


async def _blob_store_unavailable(_: Request, exc: Exception) -> JSONResponse:
    logger.warning("blob store unavailable: %s", exc)
    detail = f"The blob store is unavailable ({exc}); nothing was stored, retry later. (OFFLOAD_BLOB_*)"
    return JSONResponse(
        status_code=503, content=error_body(detail, "blob_store_unavailable"), headers={"Retry-After": "5"}
    )


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", exc_info=exc)
    return JSONResponse(status_code=500, content=error_body("Internal error; it has been logged.", "internal_error"))


# Every /v1 route can answer these, whatever it does: they come from the API key check, the
# body and header limits, the body parser and the Redis error handler, not from the route.
V1_PREFIX = "/v1/"
_V1_ERRORS: dict[str, tuple[str, dict[str, str]]] = {
    "400": ("The request body could not be parsed (e.g. JSON that is not UTF-8).", {}),
    "401": ("No API key, or not a valid one.", {"WWW-Authenticate": "Bearer"}),
    "413": ("The request body is over its size limit (OFFLOAD_API_MAX_BODY_BYTES unless the route says).", {}),
    "431": ("The request headers are too many or too large.", {}),
    "429": (
        "The API key is over its rate limit (code rate_limited); retry after Retry-After seconds.",
        {
            "Retry-After": "Seconds until the key may make its next request.",
            "RateLimit-Policy": 'The key\'s quota, e.g. "default";q=60000;w=60 (requests per window of seconds).',
            "RateLimit": 'What is left of it, e.g. "default";r=0;t=12 (requests left, seconds until all are back).',
        },
    ),
    "503": (
        "Redis is unavailable (code redis_unavailable) or full (code redis_full); nothing was done, retry later.",
        {"Retry-After": "Seconds to wait, e.g. 5 (30 when Redis is full)."},
    ),
}
_INVALID = "Invalid input: `errors` lists each invalid field."
_SCHEMA_REF = "#/components/schemas/"
_FASTAPI_422 = "HTTPValidationError"


def _json_schema_ref(response: dict[str, Any]) -> str:
    """The name of the schema a documented response's JSON body refers to, or ""."""
    ref = response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
    return str(ref).removeprefix(_SCHEMA_REF)


def _error_content() -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"{_SCHEMA_REF}{ErrorBody.__name__}"}}}


def document_error_responses(openapi: dict[str, Any]) -> dict[str, Any]:
    """Makes the OpenAPI schema say what the API really answers on errors (so clients and schema
    checks can rely on it): ErrorBody on every 4xx/5xx, instead of FastAPI's HTTPValidationError
    on 422 or no body at all; and on every /v1 operation the errors every /v1 route can give.
    Works on the generated schema, so routes added later are covered without doing anything."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    error_schema = ErrorBody.model_json_schema(ref_template=_SCHEMA_REF + "{model}")
    schemas.update(error_schema.pop("$defs", {}))
    schemas[ErrorBody.__name__] = error_schema
    for path, operations in openapi.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if path.startswith(V1_PREFIX):
                for status, (description, headers) in _V1_ERRORS.items():
                    documented = responses.setdefault(status, {"description": description})
                    for name, header_description in headers.items():
                        documented.setdefault("headers", {})[name] = {
                            "description": header_description,
                            "schema": {"type": "string"},
                        }
            for status, documented in responses.items():
                if not status.startswith(("4", "5")):
                    continue
                if _json_schema_ref(documented) == _FASTAPI_422:
                    # Added by FastAPI where there are parameters or a body, but never answered:
                    # _validation_error answers ErrorBody instead.
                    documented.pop("content")
                    documented["description"] = _INVALID
                documented.setdefault("content", _error_content())
    if f'"{_SCHEMA_REF}{_FASTAPI_422}"' not in json.dumps(openapi["paths"]):
        schemas.pop(_FASTAPI_422, None)
        schemas.pop("ValidationError", None)  # only HTTPValidationError refers to it
    return openapi


def extend_openapi(app: FastAPI, *steps: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """app.openapi() passes the generated schema through each step once (document_error_responses,
    offload_api.auth.document_api_key): FastAPI's documented way to extend the schema."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for step in steps:
                schema = step(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InvalidField, _invalid_field)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(redis.RedisError, _redis_unavailable)
    app.add_exception_handler(OperationalError, _redis_unavailable)
    app.add_exception_handler(BlobStoreUnavailable, _blob_store_unavailable)
    app.add_exception_handler(RedisNearlyFull, _redis_unavailable)
    app.add_exception_handler(Exception, _unexpected)
