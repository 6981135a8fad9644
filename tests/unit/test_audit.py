"""What the audit trail reads from a request and its answer."""

from __future__ import annotations

from offload_api.audit import CapturedResponse


def test_a_job_id_is_read_from_a_job_answer_only() -> None:
    def captured(body: bytes, *, json_body: bool = True, complete: bool = True) -> CapturedResponse:
        return CapturedResponse(status=202, json_body=json_body, body=bytearray(body), body_complete=complete)

    assert captured(b'{"id": "abc", "task": "offload.echo"}').job_id() == "abc"
    assert captured(b'{"id": "abc"}').job_id() is None  # e.g. an uploaded file's id, not a job
    assert captured(b'{"id": "abc", "task": "x"}', complete=False).job_id() is None
    assert captured(b'{"id": "abc", "task": "x"}', json_body=False).job_id() is None
    assert captured(b"not json").job_id() is None
