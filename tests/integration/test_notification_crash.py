"""A notifier SIGKILLed right after delivering one target of a notification: when the job comes
back (visibility timeout), the delivered target is not sent again and the rest is delivered."""

from __future__ import annotations

from pathlib import Path

import pytest

from offload_dev.polling import wait_for
from tests.receivers import ScriptedReply, WebhookReceiver
from tests.support import MESSAGE, cluster, finished_notification, notification, webhook

pytestmark = pytest.mark.slow


def test_a_delivered_target_is_not_sent_again_after_the_notifier_is_killed(tmp_path: Path, record_property) -> None:
    receiver = WebhookReceiver().start()
    try:
        with cluster(tmp_path) as own:
            own.env["OFFLOAD_WORKER_CONCURRENCY"] = "1"
            own.start_api()
            first = own.start_worker("first", module="offload_notifier")
            # The second target answers slowly, so the notifier is still at work when it is killed.
            receiver.script("/slow", ScriptedReply(200, delay_seconds=30))
            client = own.client
            response = client.post(
                "/v1/notifications",
                json={"message": MESSAGE, "targets": [webhook(receiver, "/fast"), webhook(receiver, "/slow")]},
            )
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]

            def fast_recorded() -> bool:
                return bool(notification(client, job_id)["targets"][0]["status"] == "delivered")

            wait_for(fast_recorded, 20, "the first target to be recorded as delivered")
            wait_for(lambda: receiver.received("/slow"), 10, "the second target's request to arrive")
            first.kill()  # SIGKILL: no acknowledgement, no shutdown, no chance to record anything else

            own.start_worker("second", module="offload_notifier")
            done = finished_notification(client, job_id, timeout=60)  # back after the 12 s visibility timeout

        assert done["status"] == "succeeded", done
        assert (done["attempts"], done["worker"]) == (2, "second@test")
        fast, slow = done["targets"]
        assert (fast["status"], fast["attempts"]) == ("delivered", 1)
        assert slow["status"] == "delivered"
        assert len(receiver.received("/fast")) == 1, "a delivered target was sent again"
        # The slow target's first request reached the receiver but its answer never came back:
        # at-least-once, with the same webhook-id so the receiver can drop the repeat.
        slow_ids = [r.headers["webhook-id"] for r in receiver.received("/slow")]
        assert slow_ids == [f"msg_{job_id}_1"] * 2
        record_property("crash_redelivered_slow_target", len(slow_ids))
    finally:
        receiver.stop()
