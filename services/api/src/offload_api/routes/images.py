"""Image pipelines: upload an image, process it on `low` (process → index → notify), read the
steps' states and the result, search the index by tag."""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
from datetime import UTC, datetime
from typing import IO, Annotated, Any, Literal

import redis
from fastapi import APIRouter, Depends, File, Form, HTTPException, Path, Query, Request, Response, UploadFile
from fastapi.responses import StreamingResponse
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field, ValidationError

from offload_api.auth import PrincipalDep
from offload_api.deps import CeleryDep, SettingsDep, StoreDep
from offload_api.enqueue import SUBMIT_RESPONSES, ChainStep, JobAccepted, enqueue_chain
from offload_api.errors import InvalidField
from offload_api.idempotency import IdempotencyDep, request_fingerprint
from offload_api.routes.notifications import check_webhook_targets
from offload_core.contract import builtin_jobs
from offload_core.contract.api_keys import may_see
from offload_core.contract.payloads import NotificationMessage, NotificationRequest
from offload_core.engines.outbound import OutboundPolicy
from offload_core.settings import Settings
from offload_core.store.blob_ledger import QuotaExceeded
from offload_core.store.blobs import CHUNK_BYTES, BlobStoreUnavailable
from offload_core.store.images import (
    MAX_SEARCH_TAGS,
    SEARCH_TAG,
    ImageFormat,
    ImageInfo,
    ImageRecord,
    ImageStore,
    OperationError,
    Pipeline,
    PipelineBusy,
    PipelineState,
    PipelineStep,
    PlannedOutput,
    ProcessRequest,
    SearchPage,
    StepName,
    describe_content,
    new_image_id,
    operations_json,
    output_format,
    parse_user_tags,
    pipeline_finished,
    pipeline_state,
    plan,
    sniff_format,
)
from offload_core.store.jobs import JobStatus, JobStore
from offload_core.store.notifications import NotificationTargets

router = APIRouter(prefix="/images", tags=["images"])

ImageId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The id returned by the upload.")]
# Room for the multipart framing and the form fields around the image itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
UPLOAD_PATH = "/v1/images"


def body_limits(settings: Settings) -> dict[str, int]:
    """Per-path body limits for BodySizeLimit: uploads may exceed OFFLOAD_API_MAX_BODY_BYTES."""
    return {UPLOAD_PATH: settings.IMAGE_MAX_BYTES + MULTIPART_OVERHEAD_BYTES}


_images_lock = threading.Lock()


def get_images(request: Request, settings: SettingsDep) -> ImageStore:
    """The image store, made on first use: it needs a Redis client that returns bytes."""
    images: ImageStore | None = getattr(request.app.state, "images", None)
    if images is None:
        with _images_lock:
            images = getattr(request.app.state, "images", None)
            if images is None:
                images = request.app.state.images = ImageStore.from_settings(settings)
    return images


ImagesDep = Annotated[ImageStore, Depends(get_images)]


class ImageView(BaseModel):
    id: str
    format: ImageFormat
    width: int
    height: int
    bytes: int
    mode: str
    tags: list[str] = Field(description="The tags given at upload.")
    created_at: datetime
    url: str
    process_url: str
    pipeline: PipelineState | None = Field(None, description="The latest pipeline: each step's state.")
    result: ImageInfo | None = Field(None, description="The processed image, once the process step succeeded.")
    result_url: str
    indexed_tags: list[str] = Field(description="What the search index holds for the image.")
    indexed_at: datetime | None


class AcceptedStep(JobAccepted):
    name: StepName


class PipelineAccepted(BaseModel):
    image_id: str
    pipeline_id: str = Field(description="The pipeline's id: its process step's job id.")
    status: Literal["queued"] = "queued"
    planned: PlannedOutput
    steps: list[AcceptedStep]
    status_url: str
    result_url: str


def _view(record: ImageRecord, store: JobStore) -> ImageView:
    state = None
    if record.pipeline is not None:
        state = _state(record.pipeline, store)
    return ImageView(
        id=record.id,
        **record.original.model_dump(),
        tags=record.tags,
        created_at=record.created_at,
        url=f"{UPLOAD_PATH}/{record.id}",
        process_url=f"{UPLOAD_PATH}/{record.id}/process",
        pipeline=state,
        result=record.result,
        result_url=f"{UPLOAD_PATH}/{record.id}/result",
        indexed_tags=record.indexed_tags,
        indexed_at=record.indexed_at,
    )


def _state(pipeline: Pipeline, store: JobStore) -> PipelineState:
    jobs = [store.get(step.job_id) for step in pipeline.steps]
    urls = [f"{'/v1/notifications' if s.name is StepName.NOTIFY else '/v1/jobs'}/{s.job_id}" for s in pipeline.steps]
    return pipeline_state(pipeline, jobs, urls)


def _inspect(upload: IO[bytes], size: int, settings: Settings) -> ImageInfo:
    """The upload's real format, size and mode; refuses what no worker could safely process.
    Reads the spooled upload in place (Pillow decodes from the file and leaves it open), never
    a copy of it."""
    head = upload.read(16)
    upload.seek(0)
    image_format = sniff_format(head)
    if image_format is None:
        raise HTTPException(
            415,
            f"Unsupported image: the content is {describe_content(head)}. Send PNG, JPEG or WebP "
            "(the type is read from the content; the file name and Content-Type are ignored).",
        )
    max_pixels = settings.IMAGE_MAX_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow refuses twice this at open; we refuse beyond it below
    name = image_format.value.upper()
    try:
        with Image.open(upload, formats=[image_format.pillow_name]) as image:
            width, height = image.size
            mode = image.mode
            if width * height > max_pixels:
                raise _too_many_pixels(width, height, max_pixels)
            # Cheap completeness checks, no full decode: PNG chunk checksums up to the end; a JPEG
            # decoded at 1/8 scale (the whole stream is read, few pixels are made). WebP fails at
            # open when incomplete. The worker decodes in full and fails the job on what remains.
            if image_format is ImageFormat.PNG:
                image.verify()
            elif image_format is ImageFormat.JPEG:
                image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
                image.load()
    except Image.DecompressionBombError as exc:
        raise InvalidField(
            "body.file",
            f"decompression bomb refused: the image declares more than {2 * max_pixels:,} pixels, "
            f"at most {max_pixels:,} (OFFLOAD_IMAGE_MAX_PIXELS)",
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidField("body.file", f"the {name} image is corrupt or truncated ({exc})") from exc
    finally:
        upload.seek(0)
    return ImageInfo(format=image_format, width=width, height=height, bytes=size, mode=mode)


def _sha256(upload: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := upload.read(CHUNK_BYTES):
        digest.update(chunk)
    upload.seek(0)
    return digest.hexdigest()


def _quota_exceeded(exc: QuotaExceeded) -> HTTPException:
    """413, as for an image over the size limit: this request cannot be stored as it is."""
    return HTTPException(413, f"Blob quota exceeded: {exc}")


def _too_many_pixels(width: int, height: int, max_pixels: int) -> InvalidField:
    return InvalidField(
        "body.file",
        f"the image is {width}x{height} = {width * height:,} pixels; at most {max_pixels:,} "
        "(OFFLOAD_IMAGE_MAX_PIXELS). Send a smaller image.",
    )


@router.post(
    "",
    status_code=201,
    responses={
        413: {
            "description": "The image is larger than OFFLOAD_IMAGE_MAX_BYTES, or storing it would take the "
            "API key over its blob quota (OFFLOAD_BLOB_QUOTA_BYTES); the detail says which."
        },
        415: {"description": "Not a PNG, JPEG or WebP image (judged by the content)."},
    },
)
def upload_image(
    file: Annotated[UploadFile, File(description="A PNG, JPEG or WebP image.")],
    images: ImagesDep,
    store: StoreDep,
    settings: SettingsDep,
    idempotency: IdempotencyDep,
    response: Response,
    principal: PrincipalDep,
    tags: Annotated[
        list[str] | None,
        Form(description="Up to 10 tags for search (repeat the field, or separate with commas): a-z, 0-9, _ and -."),
    ] = None,
) -> ImageView:
    """Store an image for processing. Its type comes from its content; it lives
    OFFLOAD_IMAGE_TTL_SECONDS after its last upload or processing. A repeat with the same
    Idempotency-Key and file answers 200 with the first upload's image."""
    # The upload is spooled (to disk beyond 1 MiB): it is inspected and stored from there, in chunks.
    upload = file.file
    size = upload.seek(0, io.SEEK_END)
    upload.seek(0)
    if size > settings.IMAGE_MAX_BYTES:
        raise HTTPException(
            413,
            f"The image is larger than {settings.IMAGE_MAX_BYTES} bytes (OFFLOAD_IMAGE_MAX_BYTES); send a smaller one.",
        )
    if not size:
        raise InvalidField("body.file", "the file is empty")
    try:
        user_tags = parse_user_tags(tags or [])
    except ValueError as exc:
        raise InvalidField("body.tags", str(exc)) from exc
    info = _inspect(upload, size, settings)
    image_id = new_image_id()
    if idempotency is not None:
        # A repeat (same key, same bytes and tags) answers 200 with the first upload's image.
        digest = _sha256(upload)
        fingerprint = request_fingerprint(
            idempotency.route, "image upload", {"sha256": digest, "tags": user_tags}, "", 0
        )
        earlier = idempotency.claim(store.client, fingerprint, image_id)
        if earlier is not None:
            first = images.get(earlier)
            if first is None or not may_see(principal, first.owner):
                raise HTTPException(404, _NOT_FOUND.format(earlier))
            response.headers["Location"] = f"{UPLOAD_PATH}/{first.id}"
            return _view(first, store)
    try:
        record = images.create(image_id, upload, info, user_tags, owner=principal.id)
        if idempotency is not None:
            idempotency.finish(store.client)
    except (redis.RedisError, QuotaExceeded, BlobStoreUnavailable) as exc:
        if idempotency is not None:
            with contextlib.suppress(redis.RedisError):
                idempotency.release(store.client)
        if isinstance(exc, QuotaExceeded):
            raise _quota_exceeded(exc) from exc
        raise
    response.headers["Location"] = f"{UPLOAD_PATH}/{record.id}"
    return _view(record, store)


@router.get("")
def search_images(
    images: ImagesDep,
    principal: PrincipalDep,
    tag: Annotated[
        list[str] | None,
        Query(
            description="Images under every one of these tags (up to 5): format:png|jpeg|webp, "
            "orientation:landscape|portrait|square, size:small|medium|large, mode:grayscale|color, or a tag "
            "given at upload. All indexed images if none."
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="At most this many, most recently indexed first.")] = 20,
    cursor: Annotated[int | None, Query(ge=0, le=2**53, description="`next_cursor` of the previous page.")] = None,
) -> SearchPage:
    """Processed images, from the search index the pipeline's index step writes."""
    tags = [t.strip().lower() for t in tag or []]
    if len(tags) > MAX_SEARCH_TAGS:
        raise InvalidField("query.tag", f"at most {MAX_SEARCH_TAGS} tags, not {len(tags)}")
    for value in tags:
        if not SEARCH_TAG.fullmatch(value):
            raise InvalidField(
                "query.tag", f"{value!r} is not a tag: e.g. format:png, size:small or a word of a-z0-9_-"
            )
    return images.search(sorted(set(tags)), limit, cursor, visible=lambda owner: may_see(principal, owner))


_NOT_FOUND = "No image {}: it never existed or it expired (OFFLOAD_IMAGE_TTL_SECONDS)."


@router.get("/{image_id}", responses={404: {"description": "No such image (or it expired)."}})
def get_image(image_id: ImageId, images: ImagesDep, store: StoreDep, principal: PrincipalDep) -> ImageView:
    """The image, its latest pipeline with each step's state (a failed step stops the ones after
    it, which say so), the result's format and size, and its tags in the index."""
    record = images.get(image_id)
    if record is None or not may_see(principal, record.owner):
        raise HTTPException(404, _NOT_FOUND.format(image_id))
    return _view(record, store)


@router.get(
    "/{image_id}/result",
    response_class=Response,
    responses={
        200: {"description": "The processed image.", "content": {f.media_type: {} for f in ImageFormat}},
        404: {"description": "No such image (or it expired)."},
        409: {"description": "Not processed (yet, or the pipeline failed)."},
    },
)
def get_result(image_id: ImageId, images: ImagesDep, store: StoreDep, principal: PrincipalDep) -> Response:
    record = images.get(image_id)
    if record is None or not may_see(principal, record.owner):
        raise HTTPException(404, _NOT_FOUND.format(image_id))
    if record.pipeline is None:
        raise HTTPException(409, f"Image {image_id} has not been processed: POST {UPLOAD_PATH}/{image_id}/process.")
    state = _state(record.pipeline, store)
    process_step = state.steps[0]
    if process_step.status != JobStatus.SUCCEEDED or record.result is None:
        if state.status in ("failed", "cancelled"):
            detail = f"Image {image_id} has no result: {state.error}."
        else:
            detail = f"Image {image_id} is not processed yet (step process is {process_step.status}); retry later."
        raise HTTPException(409, detail)
    blob = images.result(record)
    if blob is None:
        raise HTTPException(404, f"The result of image {image_id} expired (OFFLOAD_IMAGE_TTL_SECONDS).")
    image_format = record.result.format
    # Streamed from the blob store in chunks, never held whole.
    return StreamingResponse(
        iter(blob),
        media_type=image_format.media_type,
        headers={
            "Content-Disposition": f'inline; filename="{image_id}.{image_format.value}"',
            "Content-Length": str(blob.info.size),
        },
    )


@router.delete(
    "/{image_id}",
    status_code=204,
    response_class=Response,
    responses={404: {"description": "No such image (or it expired)."}},
)
def delete_image(image_id: ImageId, images: ImagesDep, principal: PrincipalDep) -> Response:
    """Delete the image, its result and its index entries at once, freeing the API key's blob
    quota; a pipeline still running on it fails with "image is gone"."""
    record = images.get(image_id)
    if record is None or not may_see(principal, record.owner):
        raise HTTPException(404, _NOT_FOUND.format(image_id))
    images.delete(image_id)
    return Response(status_code=204)


@router.post(
    "/{image_id}/process",
    status_code=202,
    responses={
        **SUBMIT_RESPONSES,
        404: {"description": "No such image (or it expired)."},
        409: {
            "description": "The image's previous pipeline has not ended, or the first request with this "
            "Idempotency-Key is still in progress."
        },
    },
)
def process_image(
    image_id: ImageId,
    body: ProcessRequest,
    celery: CeleryDep,
    store: StoreDep,
    images: ImagesDep,
    settings: SettingsDep,
    idempotency: IdempotencyDep,
    response: Response,
    principal: PrincipalDep,
) -> PipelineAccepted:
    """Run the operations, in order, on `low`: a chain of jobs (process → index → notify when
    asked), each step sent once the one before it succeeded. Each operation is checked against
    the size of the image it will receive, so a crop outside it is refused here."""
    record = images.get(image_id)
    if record is None or not may_see(principal, record.owner):
        raise HTTPException(404, _NOT_FOUND.format(image_id))
    original = record.original
    try:
        sizes = plan(original.width, original.height, original.format, body.operations, settings.IMAGE_MAX_PIXELS)
    except OperationError as exc:
        raise InvalidField(f"body.operations.{exc.index}", exc.message) from exc
    width, height = sizes[-1]
    planned = PlannedOutput(format=output_format(original.format, body.operations), width=width, height=height)
    operations = operations_json(body.operations)
    steps = [
        ChainStep(builtin_jobs.image_process, {"image_id": image_id, "operations": operations}),
        ChainStep(builtin_jobs.image_index, {"image_id": image_id}),
    ]
    names = [StepName.PROCESS, StepName.INDEX]
    notification = _notification(image_id, body, planned, settings) if body.notify else None
    if notification is not None:
        steps.append(ChainStep(builtin_jobs.notify, notification.task_kwargs(), priority=notification.priority))
        names.append(StepName.NOTIFY)

    def start_pipeline(accepted: list[JobAccepted]) -> None:
        pipeline = Pipeline(
            id=accepted[0].id,
            operations=body.operations,
            planned=planned,
            steps=[
                PipelineStep(name=n, job_id=a.id, task=a.task, queue=a.queue)
                for n, a in zip(names, accepted, strict=True)
            ],
            created_at=datetime.now(UTC),
        )

        def still_running(previous: Pipeline) -> bool:
            return not pipeline_finished([store.get(step.job_id) for step in previous.steps])

        try:
            started = images.start_pipeline(image_id, pipeline, busy=still_running)
        except PipelineBusy as exc:
            raise HTTPException(
                409,
                f"Image {image_id} is still being processed (pipeline {exc}); wait until GET "
                f"{UPLOAD_PATH}/{image_id} shows it ended, then send the next one.",
            ) from exc
        if started is None:
            raise HTTPException(404, _NOT_FOUND.format(image_id))
        if notification is not None:
            # As POST /v1/notifications does: the status lists every target from the start.
            targets = notification.model_dump(mode="json")["targets"]
            NotificationTargets(store.client, settings.JOB_TTL_SECONDS).ensure(accepted[-1].id, targets)

    accepted = enqueue_chain(celery, store, steps, owner=principal, idempotency=idempotency, prepare=start_pipeline)
    response.headers["Location"] = f"{UPLOAD_PATH}/{image_id}"
    return PipelineAccepted(
        image_id=image_id,
        pipeline_id=accepted[0].id,
        planned=planned,
        steps=[AcceptedStep(name=n, **a.model_dump()) for n, a in zip(names, accepted, strict=True)],
        status_url=f"{UPLOAD_PATH}/{image_id}",
        result_url=f"{UPLOAD_PATH}/{image_id}/result",
    )


def _notification(
    image_id: str, body: ProcessRequest, planned: PlannedOutput, settings: Settings
) -> NotificationRequest:
    """The notify step's request, validated as POST /v1/notifications validates one."""
    assert body.notify is not None
    result = f"a {planned.width}x{planned.height} {planned.format.value.upper()} image"
    applied = ", ".join(op.op for op in body.operations)
    data: dict[str, Any] = {
        "image_id": image_id,
        "url": f"{UPLOAD_PATH}/{image_id}",
        "result_url": f"{UPLOAD_PATH}/{image_id}/result",
        "format": planned.format.value,
        "width": planned.width,
        "height": planned.height,
        "operations": operations_json(body.operations),
    }
    try:
        request = NotificationRequest(
            message=NotificationMessage(
                title=body.notify.title or f"Image {image_id} processed",
                body=f"Image {image_id} was processed ({applied}): the result is {result}, "
                f"at {UPLOAD_PATH}/{image_id}/result.",
                severity=body.notify.severity,
                data=data,
            ),
            targets=body.notify.targets,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidField(f"body.notify.{where}", first["msg"]) from exc
    check_webhook_targets(OutboundPolicy.from_settings(settings), request.targets, "body.notify.targets")
    return request
