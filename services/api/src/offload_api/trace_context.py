"""A span for every request when no exporter is configured.

Unexported spans are not recorded (offload_core.telemetry), yet OpenTelemetry's ASGI
instrumentation still builds each request's attributes and wraps every `send`: about a fifth
of a submit's CPU for spans nobody sees. This middleware does what is left to do then: continue
the caller's W3C trace context (or start a trace) and make the request's span current, so logs,
the audit trail and the job's message headers carry the trace id. With an exporter, the API
uses the full instrumentation instead.
"""

from __future__ import annotations

from opentelemetry import propagate, trace
from starlette.types import ASGIApp, Receive, Scope, Send

tracer = trace.get_tracer(__name__)

_CONTEXT_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})


class TraceContext:
    def __init__(self, app: ASGIApp, *, excluded_paths: frozenset[str]) -> None:
        self.app = app
        self.excluded_paths = excluded_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.excluded_paths:
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _CONTEXT_HEADERS
        }
        context = propagate.extract(carrier) if carrier else None
        with tracer.start_as_current_span(scope["method"], context=context, kind=trace.SpanKind.SERVER):
            await self.app(scope, receive, send)
