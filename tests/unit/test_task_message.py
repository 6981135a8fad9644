"""How the orphan sweep reads a job's id from a broker message."""

from __future__ import annotations

from offload_core.runtime.task_message import message_job_id


def test_a_message_names_its_job_only_through_celery_headers() -> None:
    assert message_job_id({"headers": {"id": "abc", "task": "offload.echo"}, "body": "e30="}) == "abc"
    assert message_job_id({"headers": {}}) is None
    assert message_job_id({"headers": "x"}) is None
    assert message_job_id(["not", "a", "message"]) is None
