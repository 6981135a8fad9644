"""Image pipelines on `low`: process an uploaded image with Pillow, then index the result.

The API sends both as one Celery chain (process → index → the notifier's `offload.notify` when
asked), each step a job of its own. Celery sends a step only once the one before it succeeded,
so a step that ends any other way (failed, cancelled, skipped) closes the records of the steps
after it: they say "not run: step X failed" instead of staying queued for ever.

Every image is opened with the pixel limit in force and only in the format its bytes claim, so
a decompression bomb or a corrupt file is a failed job with a clear error, never a worker that
runs out of memory or crashes.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from functools import cache
from typing import Any

from PIL import Image, UnidentifiedImageError

from offload_core.sdk import JobContext, JobEnd, PermanentJobError
from offload_core.settings import get_settings
from offload_core.store.blob_ledger import QuotaExceeded
from offload_core.store.images import (
    Convert,
    Crop,
    Grayscale,
    ImageFormat,
    ImageIndexPayload,
    ImageInfo,
    ImageProcessPayload,
    ImageStore,
    Operation,
    OperationError,
    Resize,
    Rotate,
    Thumbnail,
    derived_tags,
    not_run_error,
    output_format,
    size_after,
    sniff_format,
)
from offload_core.store.jobs import JobStore

logger = logging.getLogger(__name__)

# Modes every operation handles as is; others (palette, CMYK, 16-bit...) are converted first.
_WORKING_MODES = frozenset({"RGB", "RGBA", "L", "LA"})
_JPEG_QUALITY = 90
_WEBP_QUALITY = 90


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode ``data`` (PNG, JPEG or WebP by its own bytes), refusing more than ``max_pixels``
    pixels before any pixel is decoded, and corrupt or truncated files."""
    image_format = sniff_format(data)
    if image_format is None:
        raise PermanentJobError("the stored image is not PNG, JPEG or WebP")
    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow refuses twice this at open; we refuse beyond it below
    try:
        image: Image.Image = Image.open(io.BytesIO(data), formats=[image_format.pillow_name])
        width, height = image.size
        if width * height > max_pixels:
            raise PermanentJobError(
                f"decompression bomb refused: the image declares {width}x{height} = {width * height:,} pixels, "
                f"at most {max_pixels:,} (OFFLOAD_IMAGE_MAX_PIXELS)"
            )
        image.load()
    except Image.DecompressionBombError as exc:
        raise PermanentJobError(
            f"decompression bomb refused: the image declares more than {2 * max_pixels:,} pixels, "
            f"at most {max_pixels:,} (OFFLOAD_IMAGE_MAX_PIXELS)"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise PermanentJobError(f"the {image_format.value} image is corrupt or truncated: {exc}") from exc
    if image.mode not in _WORKING_MODES:
        image = image.convert("RGBA" if _has_alpha(image) else "RGB")
    return image


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info


def apply(image: Image.Image, operation: Operation, index: int, max_pixels: int) -> Image.Image:
    """One operation; the size it produces is the one the API planned (size_after)."""
    try:
        width, height = size_after(image.width, image.height, operation, index)
    except OperationError as exc:
        raise PermanentJobError(str(exc)) from exc
    if width * height > max_pixels:
        raise PermanentJobError(
            f"operation {index}: the result would be {width}x{height} = {width * height:,} pixels, "
            f"at most {max_pixels:,} (OFFLOAD_IMAGE_MAX_PIXELS)"
        )
    if isinstance(operation, Resize | Thumbnail):
        if (width, height) == image.size:
            return image
        return image.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if isinstance(operation, Grayscale):
        return image.convert("LA" if _has_alpha(image) else "L")
    if isinstance(operation, Rotate):
        return image.rotate(operation.degrees, resample=Image.Resampling.BICUBIC, expand=True)
    if isinstance(operation, Crop):
        return image.crop((operation.left, operation.top, operation.right, operation.bottom))
    assert isinstance(operation, Convert)  # the format is chosen when the result is written
    return image


def encode(image: Image.Image, image_format: ImageFormat) -> bytes:
    buffer = io.BytesIO()
    if image_format is ImageFormat.JPEG:
        # JPEG holds no alpha: keep the colour (or grey) channels.
        if image.mode not in ("RGB", "L"):
            image = image.convert("L" if image.mode == "LA" else "RGB")
        image.save(buffer, "JPEG", quality=_JPEG_QUALITY, optimize=True)
    elif image_format is ImageFormat.WEBP:
        image.save(buffer, "WEBP", quality=_WEBP_QUALITY)
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()


def process(data: bytes, operations: Sequence[Operation], max_pixels: int) -> tuple[bytes, ImageInfo]:
    """The whole step, without Redis: decode, apply each operation, encode."""
    source = sniff_format(data)
    image = open_image(data, max_pixels)
    assert source is not None  # open_image checked it
    for index, operation in enumerate(operations):
        image = apply(image, operation, index, max_pixels)
    target = output_format(source, operations)
    if max(image.size) > target.max_side:
        raise PermanentJobError(f"{target.value} holds at most {target.max_side} pixels a side, not {image.size}")
    encoded = encode(image, target)
    # What a reader of the result gets (JPEG and WebP store no grey-with-alpha, WebP no plain grey).
    with Image.open(io.BytesIO(encoded)) as written:
        mode = written.mode
    return encoded, ImageInfo(format=target, width=image.width, height=image.height, bytes=len(encoded), mode=mode)


@cache
def _store() -> JobStore:
    """One Redis client per process, made on first use (after the pool process was forked)."""
    return JobStore.from_settings(get_settings())


@cache
def _images() -> ImageStore:
    """One Redis client (and blob store client) per process, made on first use (after the pool
    process was forked)."""
    return ImageStore.from_settings(get_settings())


def close_later_steps(end: JobEnd, request: ImageProcessPayload | ImageIndexPayload) -> None:
    """on_end of every step: one that ended without success closes the records of the steps
    after it, which Celery will never send (or which will skip when it does)."""
    if end.status == "succeeded":
        return
    record = _images().get(request.image_id)
    found = record.pipeline.step(end.job_id) if record and record.pipeline else None
    if record is None or record.pipeline is None or found is None:
        return  # not (or no longer) the image's pipeline, e.g. a replayed dead letter
    index, step = found
    later = [s.job_id for s in record.pipeline.steps[index + 1 :]]
    _store().mark_not_run(later, not_run_error(step.name, end.status))


def process_image(ctx: JobContext, request: ImageProcessPayload) -> dict[str, Any]:
    """Returns the result's format, width, height, bytes and mode."""
    settings = get_settings()
    image_id = request.image_id
    original = _images().original(image_id)
    if original is None:
        raise PermanentJobError(f"image {image_id} is gone: it expired (OFFLOAD_IMAGE_TTL_SECONDS) or never existed")
    # Whole, as Pillow needs it; bounded by OFFLOAD_IMAGE_MAX_BYTES at upload.
    data = original.read()
    started = time.perf_counter()
    encoded, info = process(data, request.operations, settings.IMAGE_MAX_PIXELS)
    if len(encoded) > settings.IMAGE_MAX_RESULT_BYTES:
        raise PermanentJobError(
            f"the result is {len(encoded):,} bytes, at most {settings.IMAGE_MAX_RESULT_BYTES:,} "
            "(OFFLOAD_IMAGE_MAX_RESULT_BYTES)"
        )
    try:
        saved = _images().save_result(image_id, ctx.job_id, encoded, info)
    except QuotaExceeded as exc:
        raise PermanentJobError(f"the result cannot be kept: {exc}") from exc
    if not saved:
        raise PermanentJobError(f"image {image_id} expired, or was sent to another pipeline, while it was processed")
    logger.info(
        "image %s: %d operations, %s %dx%d, %d bytes in %.2fs",
        image_id,
        len(request.operations),
        info.format.value,
        info.width,
        info.height,
        info.bytes,
        time.perf_counter() - started,
    )
    return info.model_dump(mode="json")


def index_image(ctx: JobContext, request: ImageIndexPayload) -> dict[str, Any]:
    """Puts the processed image under its tags; returns them."""
    image_id = request.image_id
    images = _images()
    record = images.get(image_id)
    if record is None:
        raise PermanentJobError(f"image {image_id} expired before it was indexed")
    if record.pipeline is None or record.pipeline.step(ctx.job_id) is None:
        raise PermanentJobError(f"image {image_id} was sent to another pipeline; this one is no longer current")
    if record.result is None:
        raise PermanentJobError(f"image {image_id} has no result to index")
    result = record.result
    tags = [*derived_tags(result.format, result.width, result.height, result.mode), *record.tags]
    if images.index(image_id, tags) is None:
        raise PermanentJobError(f"image {image_id} expired while it was indexed")
    return {"tags": tags, "format": result.format.value, "width": result.width, "height": result.height}
