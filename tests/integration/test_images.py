"""Image pipelines end to end: uploads through the real API, the chain process → index →
notify on real workers (the worker on `low`, the notifier on `high`), results opened with
Pillow, the index searched by tag, the notification verified with `standardwebhooks` as a
receiver would, and a failing step that stops the chain and says why."""

from __future__ import annotations

import base64
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from PIL import Image
from standardwebhooks.webhooks import Webhook

from offload_core.contract.topology import priority_lists
from offload_core.store.blobs import FilesystemBlobStore
from offload_core.store.images import original_blob
from offload_core.store.jobs import JobStore
from offload_dev.polling import wait_for
from tests.integration.standalone_api import standalone_api
from tests.support import WEBHOOK_SECRETS, Stack, png_declaring

ONE_MIB = 1024 * 1024
IMAGE_MAX_BYTES = 20 * ONE_MIB  # the default; the test stack does not change it


def encoded(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def noise(width: int, height: int, mode: str = "RGB") -> Image.Image:
    return Image.frombytes(mode, (width, height), os.urandom(width * height * len(mode)))


def upload(
    client: httpx.Client,
    data: bytes,
    *,
    filename: str = "image.png",
    content_type: str = "image/png",
    tags: list[str] | None = None,
) -> httpx.Response:
    return client.post(
        "/v1/images", files={"file": (filename, data, content_type)}, data={"tags": tags} if tags else None
    )


def uploaded(client: httpx.Client, data: bytes, **options: Any) -> dict[str, Any]:
    response = upload(client, data, **options)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/v1/images/{body['id']}"
    return body


def submit(client: httpx.Client, image_id: str, *operations: dict[str, Any], **extra: Any) -> dict[str, Any]:
    response = client.post(f"/v1/images/{image_id}/process", json={"operations": list(operations), **extra})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def image(client: httpx.Client, image_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/images/{image_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ended(client: httpx.Client, image_id: str, timeout: float = 30) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = image(client, image_id)
        pipeline = body["pipeline"]
        return body if pipeline and pipeline["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(check, timeout, f"the pipeline of image {image_id} to end")


def result(client: httpx.Client, image_id: str) -> tuple[httpx.Response, Image.Image]:
    response = client.get(f"/v1/images/{image_id}/result")
    assert response.status_code == 200, response.text
    return response, Image.open(io.BytesIO(response.content))


@pytest.mark.parametrize(
    ("image_format", "mode", "expected"),
    [("PNG", "RGBA", "png"), ("JPEG", "RGB", "jpeg"), ("WEBP", "RGB", "webp")],
)
def test_each_format_is_taken_and_described(stack: Stack, image_format: str, mode: str, expected: str) -> None:
    data = encoded(noise(64, 48, mode), image_format)
    body = uploaded(stack.client, data, filename=f"upload.{expected}", content_type=f"image/{expected}")
    assert (body["format"], body["width"], body["height"], body["bytes"]) == (expected, 64, 48, len(data))
    assert body["pipeline"] is None
    assert body["result"] is None
    assert image(stack.client, body["id"])["format"] == expected


def test_the_content_decides_the_type_not_the_name(stack: Stack) -> None:
    body = uploaded(stack.client, encoded(noise(30, 20), "PNG"), filename="photo.jpg", content_type="image/jpeg")
    assert body["format"] == "png"


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (encoded(noise(20, 20), "GIF"), "a GIF image"),
        (b"just some text, not an image at all", "not a recognised image"),
    ],
)
def test_other_content_is_415(stack: Stack, data: bytes, said: str) -> None:
    response = upload(stack.client, data, filename="image.png", content_type="image/png")
    assert response.status_code == 415, response.text
    assert said in response.json()["detail"]
    assert "PNG, JPEG or WebP" in response.json()["detail"]


def test_uploads_may_exceed_the_api_body_limit_up_to_the_image_limit(stack: Stack) -> None:
    large = encoded(noise(800, 800), "PNG")  # random pixels barely compress: about 1.9 MB
    assert len(large) > ONE_MIB  # more than OFFLOAD_API_MAX_BODY_BYTES allows other routes
    assert uploaded(stack.client, large)["bytes"] == len(large)
    elsewhere = stack.client.post("/v1/jobs/echo", content=b"x" * (len(large)), headers={"content-type": "text/plain"})
    assert elsewhere.status_code == 413

    oversized = b"\x89PNG\r\n\x1a\n" + b"\x00" * IMAGE_MAX_BYTES
    response = upload(stack.client, oversized)
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "payload_too_large"


def test_bombs_and_corrupt_files_are_refused_at_upload(stack: Stack) -> None:
    bomb = png_declaring(20_000, 20_000)  # a few hundred KB that decode to 400 million pixels
    response = upload(stack.client, bomb)
    assert response.status_code == 422, response.text
    assert "decompression bomb refused" in response.json()["detail"]

    over_limit = upload(stack.client, png_declaring(8000, 6000))
    assert over_limit.status_code == 422, over_limit.text
    assert "8000x6000 = 48,000,000 pixels; at most 40,000,000" in over_limit.json()["detail"]

    jpeg = encoded(noise(300, 200), "JPEG", quality=90)
    truncated = upload(stack.client, jpeg[: len(jpeg) // 2], filename="cut.jpg", content_type="image/jpeg")
    assert truncated.status_code == 422, truncated.text
    assert "the JPEG image is corrupt or truncated" in truncated.json()["detail"]
    assert truncated.json()["errors"][0]["field"] == "body.file"


def test_invalid_pipelines_are_refused_before_anything_runs(stack: Stack) -> None:
    body = uploaded(stack.client, encoded(noise(400, 300), "PNG"))
    url = f"/v1/images/{body['id']}/process"
    crop_outside = [{"op": "resize", "width": 100}, {"op": "crop", "left": 0, "top": 0, "right": 150, "bottom": 50}]
    response = stack.client.post(url, json={"operations": crop_outside})
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["field"] == "body.operations.1"
    assert "outside the 100x75 image this step receives" in error["message"]

    too_many_pixels = stack.client.post(url, json={"operations": [{"op": "resize", "width": 60_000}]})
    assert too_many_pixels.status_code == 422
    assert stack.client.post(url, json={"operations": [{"op": "blur"}]}).status_code == 422
    assert stack.client.post(url, json={"operations": [{"op": "grayscale"}] * 21}).status_code == 422
    private = {"targets": [{"channel": "webhook", "url": "http://10.1.2.3/hook"}]}
    refused = stack.client.post(url, json={"operations": [{"op": "grayscale"}], "notify": private})
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "body.notify.targets.0.url"
    assert image(stack.client, body["id"])["pipeline"] is None  # nothing was started
    unknown = stack.client.post(f"/v1/images/{uuid.uuid4().hex}/process", json={"operations": [{"op": "grayscale"}]})
    assert unknown.status_code == 404
    assert stack.client.get(f"/v1/images/{body['id']}/result").status_code == 409  # not processed yet


def test_the_chain_processes_indexes_and_notifies(stack: Stack) -> None:
    tag = f"trip-{uuid.uuid4().hex[:8]}"
    body = uploaded(stack.client, encoded(noise(400, 300, "RGBA"), "PNG"), tags=[tag, "holiday"])
    assert body["tags"] == [tag, "holiday"]
    path = f"/hooks/{uuid.uuid4().hex[:12]}"
    accepted = submit(
        stack.client,
        body["id"],
        {"op": "resize", "width": 200},
        {"op": "grayscale"},
        {"op": "convert", "format": "jpeg"},
        notify={"targets": [{"channel": "webhook", "url": stack.webhooks.url(path)}], "title": "Thumbnail ready"},
    )
    assert [(s["name"], s["task"], s["queue"]) for s in accepted["steps"]] == [
        ("process", "offload.image.process", "low"),
        ("index", "offload.image.index", "low"),
        ("notify", "offload.notify", "high"),
    ]
    assert accepted["planned"] == {"format": "jpeg", "width": 200, "height": 150}
    assert accepted["pipeline_id"] == accepted["steps"][0]["id"]

    done = ended(stack.client, body["id"])
    pipeline = done["pipeline"]
    assert pipeline["status"] == "succeeded", pipeline
    assert [(s["name"], s["status"], s["error"]) for s in pipeline["steps"]] == [
        ("process", "succeeded", None),
        ("index", "succeeded", None),
        ("notify", "succeeded", None),
    ]
    # Each step is a job of its own, with its own record.
    process_job = stack.client.get(f"/v1/jobs/{accepted['steps'][0]['id']}").json()
    assert process_job["result"]["width"] == 200
    assert stack.client.get(f"/v1/notifications/{accepted['steps'][2]['id']}").json()["targets"][0]["status"] == (
        "delivered"
    )

    response, picture = result(stack.client, body["id"])
    assert response.headers["content-type"] == "image/jpeg"
    assert f'filename="{body["id"]}.jpeg"' in response.headers["content-disposition"]
    assert (picture.format, picture.size, picture.mode) == ("JPEG", (200, 150), "L")
    assert done["result"] == {
        "format": "jpeg",
        "width": 200,
        "height": 150,
        "bytes": len(response.content),
        "mode": "L",
    }
    assert set(done["indexed_tags"]) == {
        "format:jpeg",
        "orientation:landscape",
        "size:small",
        "mode:grayscale",
        tag,
        "holiday",
    }

    found = stack.client.get("/v1/images", params=[("tag", tag), ("tag", "mode:grayscale")]).json()
    assert [hit["id"] for hit in found["images"]] == [body["id"]]
    assert found["images"][0]["result"]["format"] == "jpeg"
    assert stack.client.get("/v1/images", params=[("tag", tag), ("tag", "format:png")]).json()["images"] == []

    [request] = stack.webhooks.received(path)
    event = Webhook(WEBHOOK_SECRETS[0]).verify(request.body, request.headers)
    message = event["data"]
    assert message["title"] == "Thumbnail ready"
    assert body["id"] in message["body"]
    assert message["data"]["image_id"] == body["id"]
    assert (message["data"]["format"], message["data"]["width"], message["data"]["height"]) == ("jpeg", 200, 150)
    assert message["data"]["result_url"] == f"/v1/images/{body['id']}/result"

    # Once the pipeline ended the image may be processed again; the index follows the new result.
    submit(stack.client, body["id"], {"op": "rotate", "degrees": 90})
    again = ended(stack.client, body["id"])
    assert again["pipeline"]["status"] == "succeeded"
    _, rotated = result(stack.client, body["id"])
    assert (rotated.format, rotated.size) == ("PNG", (300, 400))
    assert "orientation:portrait" in again["indexed_tags"]
    assert stack.client.get("/v1/images", params={"tag": tag}).json()["images"][0]["result"]["width"] == 300
    assert stack.client.get("/v1/images", params=[("tag", tag), ("tag", "mode:grayscale")]).json()["images"] == []


@pytest.mark.parametrize(
    ("stored", "why"),
    [
        (lambda: encoded(noise(300, 200), "JPEG")[:3000], "the jpeg image is corrupt or truncated"),
        (lambda: png_declaring(20_000, 20_000), "decompression bomb refused"),
    ],
    ids=["truncated", "bomb"],
)
def test_a_failing_step_stops_the_chain_and_says_why(stack: Stack, stored: Any, why: str) -> None:
    body = uploaded(stack.client, encoded(noise(300, 200), "JPEG"), filename="ok.jpg", content_type="image/jpeg")
    # The stored original goes bad after the upload's checks (as if written by another client).
    blob_store = FilesystemBlobStore(Path(stack.env["OFFLOAD_BLOB_DIR"]))
    assert blob_store.info(original_blob(body["id"])) is not None
    blob_store.put(original_blob(body["id"]), stored(), "image/jpeg")
    path = f"/hooks/{uuid.uuid4().hex[:12]}"
    accepted = submit(
        stack.client,
        body["id"],
        {"op": "grayscale"},
        notify={"targets": [{"channel": "webhook", "url": stack.webhooks.url(path)}]},
    )

    done = ended(stack.client, body["id"])
    pipeline = done["pipeline"]
    assert (pipeline["status"], pipeline["failed_step"]) == ("failed", "process")
    assert pipeline["error"].startswith("step process failed: ")
    assert why in pipeline["error"]
    steps = {s["name"]: s for s in pipeline["steps"]}
    assert steps["process"]["status"] == "failed"
    for later in ("index", "notify"):
        assert (steps[later]["status"], steps[later]["error"]) == ("cancelled", "not run: step process failed")
    # The failing step closed the later steps' own records: nothing stays queued for ever.
    index_job = stack.client.get(f"/v1/jobs/{accepted['steps'][1]['id']}").json()
    assert (index_job["status"], index_job["error"], index_job["attempts"]) == (
        "cancelled",
        "not run: step process failed",
        0,
    )
    notify_job = stack.client.get(f"/v1/notifications/{accepted['steps'][2]['id']}").json()
    assert notify_job["status"] == "cancelled"
    assert stack.webhooks.received(path) == []
    no_result = stack.client.get(f"/v1/images/{body['id']}/result")
    assert no_result.status_code == 409
    assert why in no_result.json()["detail"]
    # A clear failure, not a crash: the worker is still there and takes the next job.
    assert stack.worker.alive()
    letter = stack.client.get(f"/v1/dead-letters/{accepted['steps'][0]['id']}").json()
    assert letter["task"] == "offload.image.process"
    assert why in letter["error"]


def test_search_pages_through_the_index(stack: Stack) -> None:
    tag = f"batch-{uuid.uuid4().hex[:8]}"
    ids = []
    for size in ((40, 30), (30, 40), (50, 50)):
        body = uploaded(stack.client, encoded(noise(*size), "PNG"), tags=[tag])
        submit(stack.client, body["id"], {"op": "thumbnail", "size": 20})
        ended(stack.client, body["id"])  # one after the other: the index order is known
        ids.append(body["id"])

    first = stack.client.get("/v1/images", params={"tag": tag, "limit": 2}).json()
    assert [hit["id"] for hit in first["images"]] == [ids[2], ids[1]]  # most recently indexed first
    assert first["next_cursor"] is not None
    second = stack.client.get("/v1/images", params={"tag": tag, "limit": 2, "cursor": first["next_cursor"]}).json()
    assert ([hit["id"] for hit in second["images"]], second["next_cursor"]) == ([ids[0]], None)
    square = stack.client.get("/v1/images", params=[("tag", tag), ("tag", "orientation:square")]).json()
    assert [hit["id"] for hit in square["images"]] == [ids[2]]

    bad = stack.client.get("/v1/images", params={"tag": "Not A Tag!"})
    assert bad.status_code == 422
    assert stack.client.get("/v1/images", params=[("tag", f"t{i}") for i in range(6)]).status_code == 422


def _queued_messages(direct: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The Celery messages waiting on a queue's lists, with their body decoded."""
    found = []
    for name in priority_lists(queue):
        for raw in direct.lrange(name, 0, -1):
            message = json.loads(raw)
            message["decoded_body"] = json.loads(base64.b64decode(message["body"]))
            found.append(message)
    return found


def test_a_pipeline_is_refused_with_409_while_the_previous_one_runs(tmp_path: Path) -> None:
    # No worker here: the first pipeline stays queued, so it has not ended when the second comes.
    with standalone_api(tmp_path) as alone:
        body = uploaded(alone.client, encoded(noise(60, 40), "PNG"))
        first = submit(alone.client, body["id"], {"op": "grayscale"})
        second = alone.client.post(
            f"/v1/images/{body['id']}/process", json={"operations": [{"op": "rotate", "degrees": 90}]}
        )
        assert second.status_code == 409, second.text
        assert f"is still being processed (pipeline {first['pipeline_id']})" in second.json()["detail"]
        assert image(alone.client, body["id"])["pipeline"]["id"] == first["pipeline_id"]
        # Nothing of the refused one was queued: the first pipeline's first step is all that waits.
        assert [m["headers"]["id"] for m in _queued_messages(alone.redis, "low")] == [first["steps"][0]["id"]]


def test_a_dead_letter_of_an_image_step_replays_that_step_alone(tmp_path: Path) -> None:
    with standalone_api(tmp_path) as alone:
        body = uploaded(alone.client, encoded(noise(60, 40), "PNG"))
        accepted = submit(alone.client, body["id"], {"op": "grayscale"})
        step_id = accepted["steps"][0]["id"]
        [message] = _queued_messages(alone.redis, "low")
        _, kwargs, embed = message["decoded_body"]
        assert embed["chain"]  # the process step carries the index step after it
        # A worker takes the step and it fails for good (what a corrupt original does).
        for name in priority_lists("low"):
            alone.redis.delete(name)
        store = JobStore(alone.redis, ttl_seconds=600)
        store.fail(step_id, "PermanentJobError: planned", payload=kwargs)

        replay = alone.client.post(f"/v1/dead-letters/{step_id}/replay")
        assert replay.status_code == 202, replay.text
        assert (replay.json()["task"], replay.json()["queue"]) == ("offload.image.process", "low")
        [again] = _queued_messages(alone.redis, "low")
        assert (again["headers"]["id"], again["headers"]["task"]) == (replay.json()["id"], "offload.image.process")
        replayed_args, replayed_kwargs, replayed_embed = again["decoded_body"]
        assert (replayed_args, replayed_kwargs) == ([], kwargs)
        assert not replayed_embed.get("chain")  # that step alone: nothing runs after it


def test_a_repeated_process_request_with_its_key_makes_one_pipeline(stack: Stack) -> None:
    body = uploaded(stack.client, encoded(noise(60, 40), "PNG"))
    key = str(uuid.uuid4())
    request = {"operations": [{"op": "grayscale"}]}
    first = stack.client.post(f"/v1/images/{body['id']}/process", json=request, headers={"Idempotency-Key": key})
    repeat = stack.client.post(f"/v1/images/{body['id']}/process", json=request, headers={"Idempotency-Key": key})
    assert (first.status_code, repeat.status_code) == (202, 200)
    assert repeat.headers["idempotent-replayed"] == "true"
    assert repeat.json()["pipeline_id"] == first.json()["pipeline_id"]
    assert ended(stack.client, body["id"])["pipeline"]["id"] == first.json()["pipeline_id"]
    other = {"operations": [{"op": "rotate", "degrees": 90}]}
    reused = stack.client.post(f"/v1/images/{body['id']}/process", json=other, headers={"Idempotency-Key": key})
    assert reused.status_code == 422


def test_a_repeated_upload_with_its_key_stores_one_image(stack: Stack) -> None:
    data = encoded(noise(30, 30), "PNG")
    key = {"Idempotency-Key": str(uuid.uuid4())}
    files = {"file": ("a.png", data, "image/png")}
    first = stack.client.post("/v1/images", files=files, headers=key)
    repeat = stack.client.post("/v1/images", files=files, headers=key)
    assert (first.status_code, repeat.status_code) == (201, 200)
    assert repeat.json()["id"] == first.json()["id"]
    other = {"file": ("a.png", encoded(noise(30, 30), "PNG"), "image/png")}
    assert stack.client.post("/v1/images", files=other, headers=key).status_code == 422
