"""Request size limits: the body, enforced while it streams in (not only on Content-Length), and
the headers."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from offload_api.errors import error_body


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, overrides: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # Exact paths with a limit of their own, e.g. an upload route that takes larger bodies.
        self.overrides = dict(overrides or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.overrides.get(scope["path"], self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self._reject(send, max_bytes)
            return
        received = 0
        started = False
        exceeded = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                # The app caught BodyTooLarge and answers on its own (FastAPI turns any error
                # while reading the body into 400 "error parsing the body"): answer 413 instead.
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._reject(send, max_bytes)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send, max_bytes)

    async def _reject(self, send: Send, max_bytes: int) -> None:
        await answer_error(send, 413, f"Request body exceeds {max_bytes} bytes.", "payload_too_large")


# Generous for any real client (browsers send ~1-2 KiB; uvicorn's own h11 limit is 16 KiB),
# small enough that a request cannot pin much memory in the app.
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADER_COUNT = 100
# The parser's own cap on a request head (request line and headers), enforced while it reads.
MAX_REQUEST_HEAD_BYTES = 64 * 1024


class HeaderSizeLimit:
    """Refuses requests with too many or too large headers (431), below the parser's own cap
    (MAX_REQUEST_HEAD_BYTES, which h11 enforces while it reads; see offload_api.__main__)."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_HEADER_BYTES, max_count: int = MAX_HEADER_COUNT) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_count = max_count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        size = sum(len(name) + len(value) + 4 for name, value in headers)  # as on the wire: "name: value\r\n"
        if len(headers) > self.max_count or size > self.max_bytes:
            detail = (
                f"Request headers too large: {len(headers)} headers, {size} bytes; at most "
                f"{self.max_count} headers and {self.max_bytes} bytes in all. Send fewer or smaller headers."
            )
            await answer_error(send, 431, detail, "request_header_fields_too_large", close=True)
            return
        await self.app(scope, receive, send)


async def answer_error(
    send: Send,
    status: int,
    detail: str,
    code: str,
    *,
    close: bool = False,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """An error answer from a middleware, in the API's JSON error shape."""
    body = json.dumps(error_body(detail, code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
