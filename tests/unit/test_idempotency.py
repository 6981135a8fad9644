"""What makes two submissions "the same request" for an Idempotency-Key."""

from __future__ import annotations

from offload_api.idempotency import request_fingerprint


def test_equal_requests_match_however_their_payload_is_ordered() -> None:
    first = request_fingerprint("/v1/jobs/echo", "offload.echo", {"message": "x", "sleep_ms": 0}, "default", 3)
    again = request_fingerprint("/v1/jobs/echo", "offload.echo", {"sleep_ms": 0, "message": "x"}, "default", 3)
    assert first == again


def test_any_difference_in_route_payload_queue_or_priority_is_another_request() -> None:
    base = ("/v1/jobs/echo", "offload.echo", {"message": "x"}, "default", 3)
    variants = [
        ("/v1/dead-letters/abc/replay", "offload.echo", {"message": "x"}, "default", 3),
        ("/v1/jobs/echo", "offload.echo", {"message": "y"}, "default", 3),
        ("/v1/jobs/echo", "offload.echo", {"message": "x"}, "low", 3),
        ("/v1/jobs/echo", "offload.echo", {"message": "x"}, "default", 0),
    ]
    assert len({request_fingerprint(*v) for v in [base, *variants]}) == 1 + len(variants)
