"""What the audit trail reads from a request and its answer."""

from __future__ import annotations

from offload_api.audit import CapturedResponse, api_key_id


def test_a_job_id_is_read_from_a_job_answer_only() -> None:
    def captured(body: bytes, *, json_body: bool = True, complete: bool = True) -> CapturedResponse:
        return CapturedResponse(status=202, json_body=json_body, body=bytearray(body), body_complete=complete)

    assert captured(b'{"id": "abc", "task": "offload.echo"}').job_id() == "abc"
    assert captured(b'{"id": "abc"}').job_id() is None  # e.g. an uploaded file's id, not a job
    assert captured(b'{"id": "abc", "task": "x"}', complete=False).job_id() is None
    assert captured(b'{"id": "abc", "task": "x"}', json_body=False).job_id() is None
    assert captured(b"not json").job_id() is None


def test_an_api_key_id_is_short_stable_and_not_the_key() -> None:
    key = "test-key-0123456789abcdef"
    assert api_key_id(key) == api_key_id(key) != api_key_id(key + "x")
    assert len(api_key_id(key)) == 16
    assert key not in api_key_id(key)
    assert api_key_id(None) == "anonymous"
