"""Image operations on real Pillow images: the sizes the API plans are the sizes the worker
makes, bombs and corrupt files are clear failures, and a pipeline's state says which step
stopped it."""

from __future__ import annotations

import io
import os
from datetime import UTC, datetime

import pytest
from PIL import Image

from offload_core.contract.job_errors import PermanentJobError
from offload_core.store.images import (
    OPERATIONS,
    Crop,
    ImageFormat,
    Operation,
    OperationError,
    Pipeline,
    PipelineStep,
    StepName,
    derived_tags,
    fit_within,
    parse_user_tags,
    pipeline_finished,
    pipeline_state,
    plan,
    rotated_size,
    sniff_format,
)
from offload_core.store.jobs import Job, JobStatus, Progress
from offload_worker.images import open_image, process
from tests.support import png_declaring

MAX_PIXELS = 40_000_000


def encoded(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def noise(width: int, height: int, mode: str = "RGB") -> Image.Image:
    return Image.frombytes(mode, (width, height), os.urandom(width * height * len(mode)))


@pytest.mark.parametrize("degrees", [0, 1, 15, 30, 45, 89.5, 90, 123.4, 180, 270, 300, -45, 359.9, 360])
@pytest.mark.parametrize("size", [(1, 1), (7, 3), (64, 48), (101, 257)])
def test_planned_rotation_is_pillows(degrees: float, size: tuple[int, int]) -> None:
    rotated = Image.new("RGB", size).rotate(degrees, expand=True)
    assert rotated_size(*size, degrees) == rotated.size


def test_fit_within_keeps_the_aspect_ratio() -> None:
    assert fit_within(400, 300, 200, None) == (200, 150)
    assert fit_within(400, 300, None, 30) == (40, 30)
    assert fit_within(400, 300, 100, 100) == (100, 75)  # the width constrains most
    assert fit_within(300, 400, 100, 100) == (75, 100)
    assert fit_within(1000, 1, 10, None) == (10, 1)  # never below one pixel


def operations(*raw: dict[str, object]) -> list[Operation]:
    return OPERATIONS.validate_python(list(raw))


def test_plan_follows_each_operation_and_refuses_a_crop_outside_what_it_receives() -> None:
    ops = operations(
        {"op": "resize", "width": 200},
        {"op": "rotate", "degrees": 90},
        {"op": "crop", "left": 10, "top": 10, "right": 110, "bottom": 60},
        {"op": "thumbnail", "size": 50},
    )
    assert plan(400, 300, ImageFormat.PNG, ops, MAX_PIXELS) == [(200, 150), (150, 200), (100, 50), (50, 25)]

    outside = operations(
        {"op": "resize", "width": 100}, {"op": "crop", "left": 0, "top": 0, "right": 150, "bottom": 50}
    )
    with pytest.raises(OperationError) as refused:
        plan(400, 300, ImageFormat.PNG, outside, MAX_PIXELS)
    assert refused.value.index == 1
    assert "outside the 100x75 image this step receives" in refused.value.message


def test_plan_bounds_every_step_and_the_output_format() -> None:
    with pytest.raises(OperationError, match="at most 40,000,000"):
        plan(100, 100, ImageFormat.PNG, operations({"op": "resize", "width": 10_000}), MAX_PIXELS)
    webp = operations({"op": "resize", "width": 20_000, "height": 100}, {"op": "convert", "format": "webp"})
    with pytest.raises(OperationError, match="webp holds at most 16383 pixels a side"):
        plan(1000, 5, ImageFormat.PNG, webp, MAX_PIXELS)


def test_invalid_operations_are_refused_by_the_model() -> None:
    from pydantic import ValidationError

    for bad in (
        {"op": "resize"},
        {"op": "crop", "left": 5, "top": 0, "right": 5, "bottom": 1},
        {"op": "convert", "format": "gif"},
        {"op": "blur"},
        {"op": "thumbnail", "size": 0},
    ):
        with pytest.raises(ValidationError):
            OPERATIONS.validate_python([bad])


def test_process_makes_the_planned_size_format_and_mode() -> None:
    source = encoded(noise(400, 300, "RGBA"), "PNG")
    ops = operations(
        {"op": "resize", "width": 200},
        {"op": "grayscale"},
        {"op": "rotate", "degrees": 30},
        {"op": "crop", "left": 5, "top": 5, "right": 105, "bottom": 85},
        {"op": "convert", "format": "jpeg"},
    )
    data, info = process(source, ops, MAX_PIXELS)
    with Image.open(io.BytesIO(data)) as result:
        assert (result.format, result.size, result.mode) == ("JPEG", (100, 80), "L")
    assert (info.format, info.width, info.height, info.bytes, info.mode) == (ImageFormat.JPEG, 100, 80, len(data), "L")
    assert plan(400, 300, ImageFormat.PNG, ops, MAX_PIXELS)[-1] == (100, 80)


@pytest.mark.parametrize(("source_format", "target"), [("JPEG", "webp"), ("WEBP", "png"), ("PNG", "png")])
def test_each_format_in_and_out(source_format: str, target: str) -> None:
    source = encoded(noise(120, 90), source_format)
    data, info = process(
        source, operations({"op": "thumbnail", "size": 60}, {"op": "convert", "format": target}), MAX_PIXELS
    )
    with Image.open(io.BytesIO(data)) as result:
        assert (result.format, result.size) == (target.upper(), (60, 45))
    assert sniff_format(data) == info.format == ImageFormat(target)


def test_a_thumbnail_never_enlarges() -> None:
    _, info = process(encoded(noise(40, 30), "PNG"), operations({"op": "thumbnail", "size": 500}), MAX_PIXELS)
    assert (info.width, info.height) == (40, 30)


def test_a_decompression_bomb_is_a_permanent_failure_before_any_decoding() -> None:
    bomb = png_declaring(20_000, 20_000)
    assert len(bomb) < 1024 * 1024
    with pytest.raises(PermanentJobError, match="decompression bomb refused"):
        open_image(bomb, MAX_PIXELS)
    # Between the limit and twice it Pillow only warns; the explicit check still refuses it.
    with (
        pytest.warns(Image.DecompressionBombWarning),
        pytest.raises(PermanentJobError, match=r"declares 8000x6000 = 48,000,000 pixels"),
    ):
        open_image(png_declaring(8000, 6000), MAX_PIXELS)


def test_corrupt_and_unsupported_files_are_permanent_failures() -> None:
    jpeg = encoded(noise(200, 150), "JPEG", quality=90)
    with pytest.raises(PermanentJobError, match="jpeg image is corrupt or truncated"):
        open_image(jpeg[: len(jpeg) // 2], MAX_PIXELS)
    with pytest.raises(PermanentJobError, match="not PNG, JPEG or WebP"):
        open_image(encoded(noise(10, 10), "GIF"), MAX_PIXELS)


def test_a_crop_outside_the_real_image_fails_in_the_worker_too() -> None:
    # Messages can reach the worker without the API's check (replays, other clients).
    with pytest.raises(PermanentJobError, match="outside the 40x30 image"):
        process(encoded(noise(40, 30), "PNG"), [Crop(op="crop", left=0, top=0, right=41, bottom=30)], MAX_PIXELS)


def test_content_decides_the_format() -> None:
    assert sniff_format(encoded(noise(4, 4), "PNG")) == ImageFormat.PNG
    assert sniff_format(encoded(noise(4, 4), "JPEG")) == ImageFormat.JPEG
    assert sniff_format(encoded(noise(4, 4), "WEBP")) == ImageFormat.WEBP
    assert sniff_format(encoded(noise(4, 4), "GIF")) is None
    assert sniff_format(b"hello, world") is None


def test_tags() -> None:
    assert derived_tags(ImageFormat.PNG, 400, 300, "RGB") == [
        "format:png",
        "orientation:landscape",
        "size:medium",
        "mode:color",
    ]
    assert derived_tags(ImageFormat.JPEG, 50, 50, "L")[1:] == ["orientation:square", "size:small", "mode:grayscale"]
    assert parse_user_tags(["Cats, dogs", "cats"]) == ["cats", "dogs"]
    with pytest.raises(ValueError, match="must be 1 to 32"):
        parse_user_tags(["format:png"])  # the derived tags' form is reserved
    with pytest.raises(ValueError, match="at most 10 tags"):
        parse_user_tags([",".join(f"t{i}" for i in range(11))])


def _job(job_id: str, status: JobStatus, error: str | None = None) -> Job:
    now = datetime.now(UTC)
    return Job(
        id=job_id,
        task="t",
        queue="low",
        status=status,
        progress=Progress(percent=0),
        error=error,
        created_at=now,
        updated_at=now,
    )


def test_a_failed_step_stops_the_ones_after_it() -> None:
    steps = [
        PipelineStep(name=StepName.PROCESS, job_id="p", task="offload.image.process", queue="low"),
        PipelineStep(name=StepName.INDEX, job_id="i", task="offload.image.index", queue="low"),
        PipelineStep(name=StepName.NOTIFY, job_id="n", task="offload.notify", queue="high"),
    ]
    pipeline = Pipeline(id="p", operations=[], steps=steps, created_at=datetime.now(UTC))
    urls = ["/v1/jobs/p", "/v1/jobs/i", "/v1/notifications/n"]
    jobs = [_job("p", JobStatus.FAILED, "decompression bomb refused"), _job("i", JobStatus.QUEUED), None]
    state = pipeline_state(pipeline, jobs, urls)
    assert (state.status, state.failed_step) == ("failed", StepName.PROCESS)
    assert state.error == "step process failed: decompression bomb refused"
    assert [(s.status, s.error) for s in state.steps[1:]] == [
        (JobStatus.CANCELLED, "not run: step process failed"),
        ("expired", None),
    ]
    assert pipeline_finished(jobs)

    running = [_job("p", JobStatus.SUCCEEDED), _job("i", JobStatus.STARTED), _job("n", JobStatus.QUEUED)]
    assert pipeline_state(pipeline, running, urls).status == "running"
    assert not pipeline_finished(running)
    done = [_job(j, JobStatus.SUCCEEDED) for j in "pin"]
    assert pipeline_state(pipeline, done, urls).status == "succeeded"
    assert pipeline_finished(done)
