"""Every error leaves the API as JSON: {"detail": what happened and what to do, "code": ...}."""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from offload_core.settings import get_settings

logger = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
}


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


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _CODES.get(exc.status_code, "error")
    return JSONResponse(status_code=exc.status_code, content=error_body(str(exc.detail), code), headers=exc.headers)


async def _redis_unavailable(_: Request, exc: Exception) -> JSONResponse:
    location = get_settings().redis_location
    logger.warning("Redis at %s unavailable: %s", location, exc)
    detail = (
        f"Redis at {location} is unavailable ({type(exc).__name__}); nothing was accepted, retry later. "
        "Is Redis running? (OFFLOAD_REDIS_URL)"
    )
    return JSONResponse(status_code=503, content=error_body(detail, "redis_unavailable"), headers={"Retry-After": "5"})


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", exc_info=exc)
    return JSONResponse(status_code=500, content=error_body("Internal error; it has been logged.", "internal_error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InvalidField, _invalid_field)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(redis.RedisError, _redis_unavailable)
    app.add_exception_handler(OperationalError, _redis_unavailable)
    app.add_exception_handler(Exception, _unexpected)
