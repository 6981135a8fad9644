"""Image pipelines, the parts the API and the worker share: formats, operations and the sizes
they produce, the pipeline's steps, the records and search index in Redis, and the originals
and results in the blob store.

No Pillow here (the notifier shares this package and never touches an image): the API
inspects uploads and the worker processes them, each with its own Pillow; this module is the
contract between them. The output size of every operation is computed here without decoding
anything, so the API can refuse a pipeline that would crop outside the image or exceed the
pixel limit before it is queued, and the worker checks the same plan against the real image.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import IO, Annotated, Any, Literal, TypeVar, cast

import redis
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from offload_core.contract.payloads import MAX_NOTIFICATION_TARGETS, NotificationTarget, Severity, SingleLine
from offload_core.store.blob_ledger import Blobs
from offload_core.store.blobs import Blob, image_blob_key
from offload_core.store.jobs import FINISHED, Job, JobStatus
from offload_core.store.lua_scripts import lua
from offload_core.store.redis_connection import sync_client

KEY_PREFIX = "offload:image:"
INDEX_PREFIX = "offload:images:tag:"
INDEX_ALL_KEY = "offload:images:all"
INDEX_CLOCK_KEY = "offload:images:clock"

MAX_OPERATIONS = 20
MAX_USER_TAGS = 10
MAX_SEARCH_TAGS = 5
# Any one side an operation may ask for; the pixel limit bounds the area.
MAX_SIDE = 65_535


class ImageFormat(StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"

    @property
    def pillow_name(self) -> str:
        return self.value.upper()

    @property
    def media_type(self) -> str:
        return f"image/{self.value}"

    @property
    def max_side(self) -> int:
        """The largest width or height the format can store."""
        return {ImageFormat.PNG: 65_535, ImageFormat.JPEG: 65_500, ImageFormat.WEBP: 16_383}[self]


# Leading bytes of the formats we take, and of common ones we do not (for a clear refusal).
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_OTHER_MAGIC = {
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"%PDF": "PDF",
    b"\x00\x00\x01\x00": "ICO",
}


def sniff_format(data: bytes) -> ImageFormat | None:
    """The format the content is in, by its leading bytes; the file name and the declared
    content type say nothing reliable."""
    if data.startswith(_PNG_MAGIC):
        return ImageFormat.PNG
    if data.startswith(_JPEG_MAGIC):
        return ImageFormat.JPEG
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ImageFormat.WEBP
    return None


def describe_content(data: bytes) -> str:
    """What an unsupported upload looks like, for the error message."""
    for magic, name in _OTHER_MAGIC.items():
        if data.startswith(magic):
            return f"a {name} image"
    return "not a recognised image"


# --- operations -----------------------------------------------------------------------


class _Operation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resize(_Operation):
    """Scale to `width` or `height` (the other follows the aspect ratio), or to fit within both."""

    op: Literal["resize"]
    width: int | None = Field(None, ge=1, le=MAX_SIDE)
    height: int | None = Field(None, ge=1, le=MAX_SIDE)

    @model_validator(mode="after")
    def _some_side(self) -> Resize:
        if self.width is None and self.height is None:
            raise ValueError("resize needs width, height or both")
        return self


class Thumbnail(_Operation):
    """Shrink to fit within `size` x `size`, keeping the aspect ratio; never enlarges."""

    op: Literal["thumbnail"]
    size: int = Field(ge=1, le=MAX_SIDE)


class Grayscale(_Operation):
    op: Literal["grayscale"]


class Rotate(_Operation):
    """Counter-clockwise by `degrees`; the canvas grows to hold the whole rotated image."""

    op: Literal["rotate"]
    degrees: float = Field(ge=-360, le=360)


class Crop(_Operation):
    """Keep the box from (`left`, `top`) to (`right`, `bottom`), in pixels of the image this step receives."""

    op: Literal["crop"]
    left: int = Field(ge=0, le=MAX_SIDE)
    top: int = Field(ge=0, le=MAX_SIDE)
    right: int = Field(ge=1, le=MAX_SIDE)
    bottom: int = Field(ge=1, le=MAX_SIDE)

    @model_validator(mode="after")
    def _box(self) -> Crop:
        if self.right <= self.left or self.bottom <= self.top:
            raise ValueError("crop needs left < right and top < bottom")
        return self


class Convert(_Operation):
    """Write the result in this format (by default the result keeps the original's)."""

    op: Literal["convert"]
    format: ImageFormat


Operation = Annotated[Resize | Thumbnail | Grayscale | Rotate | Crop | Convert, Field(discriminator="op")]
OPERATIONS = TypeAdapter(list[Operation])


class OperationError(ValueError):
    """An operation that cannot apply to the image it would receive."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"operation {index}: {message}")
        self.index = index
        self.message = message


def fit_within(width: int, height: int, box_width: int | None, box_height: int | None) -> tuple[int, int]:
    """The size that keeps the aspect ratio and fills the box's given sides (either may be None):
    the side that constrains most is exactly the box's, the other is rounded, never below 1."""
    if box_width is not None and (box_height is None or box_width / width <= box_height / height):
        return box_width, max(1, round(height * box_width / width))
    assert box_height is not None
    return max(1, round(width * box_height / height)), box_height


def rotated_size(width: int, height: int, degrees: float) -> tuple[int, int]:
    """The canvas Pillow's ``rotate(degrees, expand=True)`` produces, computed as it does."""
    angle = degrees % 360.0
    if angle == 0 or angle == 180:
        return width, height
    if angle in (90, 270):
        return height, width
    radians = -math.radians(angle)
    a, b = round(math.cos(radians), 15), round(math.sin(radians), 15)
    d, e = round(-math.sin(radians), 15), round(math.cos(radians), 15)
    cx, cy = width / 2, height / 2
    c = a * -cx + b * -cy + cx
    f = d * -cx + e * -cy + cy
    xs = [a * x + b * y + c for x, y in ((0, 0), (width, 0), (width, height), (0, height))]
    ys = [d * x + e * y + f for x, y in ((0, 0), (width, 0), (width, height), (0, height))]
    return math.ceil(max(xs)) - math.floor(min(xs)), math.ceil(max(ys)) - math.floor(min(ys))


def size_after(width: int, height: int, operation: Operation, index: int = 0) -> tuple[int, int]:
    """The size ``operation`` turns a ``width`` x ``height`` image into."""
    if isinstance(operation, Resize):
        return fit_within(width, height, operation.width, operation.height)
    if isinstance(operation, Thumbnail):
        if width <= operation.size and height <= operation.size:
            return width, height
        return fit_within(width, height, operation.size, operation.size)
    if isinstance(operation, Rotate):
        return rotated_size(width, height, operation.degrees)
    if isinstance(operation, Crop):
        if operation.right > width or operation.bottom > height:
            raise OperationError(
                index,
                f"crop box ({operation.left}, {operation.top}, {operation.right}, {operation.bottom}) reaches "
                f"outside the {width}x{height} image this step receives",
            )
        return operation.right - operation.left, operation.bottom - operation.top
    return width, height  # grayscale and convert keep the size


def output_format(source: ImageFormat, operations: Sequence[Operation]) -> ImageFormat:
    converts = [op.format for op in operations if isinstance(op, Convert)]
    return converts[-1] if converts else source


def plan(
    width: int, height: int, source: ImageFormat, operations: Sequence[Operation], max_pixels: int
) -> list[tuple[int, int]]:
    """The size after each operation, checking that each one applies and stays within
    ``max_pixels``, and that the final size fits the output format."""
    sizes = []
    for index, operation in enumerate(operations):
        width, height = size_after(width, height, operation, index)
        if width * height > max_pixels:
            raise OperationError(
                index, f"the result would be {width}x{height} = {width * height:,} pixels; at most {max_pixels:,}"
            )
        sizes.append((width, height))
    target = output_format(source, operations)
    if max(width, height) > target.max_side:
        raise OperationError(
            len(operations) - 1, f"{target.value} holds at most {target.max_side} pixels a side, not {width}x{height}"
        )
    return sizes


# --- tags -------------------------------------------------------------------------------

# User tags are plain words; derived tags are "kind:value", so the two never collide.
USER_TAG = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
SEARCH_TAG = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}(:[a-z0-9_-]{1,32})?")
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def size_class(width: int, height: int) -> str:
    longest = max(width, height)
    return "small" if longest <= 320 else "medium" if longest <= 1280 else "large"


def derived_tags(image_format: ImageFormat, width: int, height: int, mode: str) -> list[str]:
    orientation = "square" if width == height else "landscape" if width > height else "portrait"
    colour = "grayscale" if mode in GRAYSCALE_MODES else "color"
    return [
        f"format:{image_format.value}",
        f"orientation:{orientation}",
        f"size:{size_class(width, height)}",
        f"mode:{colour}",
    ]


def parse_user_tags(raw: Iterable[str]) -> list[str]:
    """Tags sent at upload (each value may be comma-separated), lower-cased, deduplicated."""
    tags: list[str] = []
    for value in raw:
        for part in value.split(","):
            tag = part.strip().lower()
            if not tag:
                continue
            if not USER_TAG.fullmatch(tag):
                raise ValueError(
                    f"tag {part.strip()!r} must be 1 to 32 of a-z, 0-9, '_' and '-', starting with a letter or digit"
                )
            if tag not in tags:
                tags.append(tag)
    if len(tags) > MAX_USER_TAGS:
        raise ValueError(f"at most {MAX_USER_TAGS} tags, not {len(tags)}")
    return tags


# --- records ----------------------------------------------------------------------------


class ImageInfo(BaseModel):
    format: ImageFormat
    width: int
    height: int
    bytes: int
    mode: str


class PlannedOutput(BaseModel):
    """The format and size the operations produce, known before anything is decoded."""

    format: ImageFormat
    width: int
    height: int


class StepName(StrEnum):
    PROCESS = "process"
    INDEX = "index"
    NOTIFY = "notify"


class PipelineStep(BaseModel):
    name: StepName
    job_id: str
    task: str
    queue: str


class Pipeline(BaseModel):
    id: str  # the process step's job id
    operations: list[Operation]
    planned: PlannedOutput | None = None
    steps: list[PipelineStep]
    created_at: datetime

    def step(self, job_id: str) -> tuple[int, PipelineStep] | None:
        for index, step in enumerate(self.steps):
            if step.job_id == job_id:
                return index, step
        return None


class ImageRecord(BaseModel):
    id: str
    original: ImageInfo
    tags: list[str]  # the user's own
    created_at: datetime
    pipeline: Pipeline | None = None
    result: ImageInfo | None = None
    indexed_tags: list[str] = []  # what the search index holds for it (derived and user tags)
    indexed_at: datetime | None = None
    owner: str | None = None  # the id of the API key that uploaded it (offload_core.contract.api_keys)


class NotifyRequest(BaseModel):
    """A notification sent once the image is processed and indexed (through the notifier)."""

    model_config = ConfigDict(extra="forbid")

    targets: list[NotificationTarget] = Field(
        min_length=1, max_length=MAX_NOTIFICATION_TARGETS, description="1 to 20 distinct targets."
    )
    title: SingleLine | None = Field(
        None, min_length=1, max_length=200, description="'Image <id> processed' if omitted."
    )
    severity: Severity = Severity.INFO


class ProcessRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operations: list[Operation] = Field(min_length=1, max_length=MAX_OPERATIONS)
    notify: NotifyRequest | None = None


class ImageProcessPayload(BaseModel):
    """The process step of a pipeline: the stored image and the operations to apply, in order."""

    model_config = ConfigDict(extra="forbid")

    image_id: str = Field(min_length=1, max_length=64)
    operations: list[Operation] = Field(min_length=1, max_length=MAX_OPERATIONS)


class ImageIndexPayload(BaseModel):
    """The index step of a pipeline: puts the processed image under its tags."""

    model_config = ConfigDict(extra="forbid")

    image_id: str = Field(min_length=1, max_length=64)


# --- pipeline state, as GET /v1/images/{id} shows it -------------------------------------


class StepState(BaseModel):
    name: StepName
    job_id: str
    task: str
    queue: str
    status: JobStatus | Literal["expired"]
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    status_url: str


class PipelineState(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    failed_step: StepName | None = None
    error: str | None = None
    operations: list[Operation]
    planned: PlannedOutput | None = None
    steps: list[StepState]
    created_at: datetime


def not_run_error(step: StepName, status: JobStatus | str) -> str:
    verb = "failed" if status == JobStatus.FAILED else "was cancelled" if status == JobStatus.CANCELLED else status
    return f"not run: step {step.value} {verb}"


def pipeline_state(pipeline: Pipeline, jobs: Sequence[Job | None], status_urls: Sequence[str]) -> PipelineState:
    """Each step's state from its job record. A step still queued behind one that ended without
    success will never run (Celery sends the next step only after a success): it says so even
    if the failing step could not mark it."""
    steps: list[StepState] = []
    stopped_by: StepState | None = None  # the first step that ended without success
    for step, job, url in zip(pipeline.steps, jobs, status_urls, strict=True):
        state = StepState(
            name=step.name, job_id=step.job_id, task=step.task, queue=step.queue, status="expired", status_url=url
        )
        if job is not None:
            state.status, state.error = job.status, job.error
            state.started_at, state.finished_at = job.started_at, job.finished_at
        if stopped_by is not None and state.status == JobStatus.QUEUED:
            state.status, state.error = JobStatus.CANCELLED, not_run_error(stopped_by.name, stopped_by.status)
        if stopped_by is None and state.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            stopped_by = state
        steps.append(state)
    view = PipelineState(
        id=pipeline.id,
        status="queued",
        operations=pipeline.operations,
        planned=pipeline.planned,
        steps=steps,
        created_at=pipeline.created_at,
    )
    if stopped_by is not None:
        view.failed_step = stopped_by.name
        view.status = "failed" if stopped_by.status == JobStatus.FAILED else "cancelled"
        view.error = f"step {stopped_by.name.value} {stopped_by.status}: {stopped_by.error or 'no error recorded'}"
    elif all(s.status == JobStatus.SUCCEEDED for s in steps):
        view.status = "succeeded"
    elif any(s.status != JobStatus.QUEUED for s in steps):
        view.status = "running"
    return view


def pipeline_finished(jobs: Sequence[Job | None]) -> bool:
    """Whether no step of a pipeline can still run: each ended, or one before it did not succeed."""
    for job in jobs:
        if job is None or job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            return True
        if job.status not in FINISHED:
            return False
    return True


# --- storage ------------------------------------------------------------------------------


def image_key(image_id: str) -> str:
    return f"{KEY_PREFIX}{image_id}"


def original_blob(image_id: str) -> str:
    return image_blob_key(image_id, "original")


def result_blob(image_id: str, pipeline_id: str) -> str:
    """Each pipeline's result has its own key: a late write of an older pipeline can never
    overwrite the current one's."""
    return image_blob_key(image_id, f"result-{pipeline_id}")


def tag_key(tag: str) -> str:
    return f"{INDEX_PREFIX}{tag}"


def new_image_id() -> str:
    return uuid.uuid4().hex


class PipelineBusy(Exception):
    """The image's previous pipeline has not finished."""


class SearchHit(BaseModel):
    id: str
    original: ImageInfo
    result: ImageInfo | None
    tags: list[str]
    indexed_at: datetime | None
    url: str
    result_url: str


class SearchPage(BaseModel):
    images: list[SearchHit]
    next_cursor: int | None = Field(description="Pass as `cursor` for the next (older) page; null on the last.")


_INDEX = lua("image_index")


T = TypeVar("T")
Change = Callable[[ImageRecord], ImageRecord]


class ImageStore:
    """Records of images in Redis, with the tag index; originals and results in the blob store
    (offload_core.store.blobs), charged to the uploader's quota and expiring with the record.

    ``client`` must not decode responses (the index script's answers are read as bytes)."""

    def __init__(self, client: redis.Redis, ttl_seconds: int, blobs: Blobs) -> None:
        self.client = client
        self.ttl = ttl_seconds
        self.blobs = blobs
        self._index = client.register_script(_INDEX)

    @classmethod
    def from_settings(cls, settings: Any) -> ImageStore:
        client = sync_client(
            settings,
            decode_responses=False,
            socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT_SECONDS,
            socket_timeout=settings.REDIS_SOCKET_TIMEOUT_SECONDS,
            health_check_interval=30,
        )
        return cls(client, settings.IMAGE_TTL_SECONDS, Blobs.from_settings(settings, client))

    @staticmethod
    def _blob_keys(record: ImageRecord) -> list[str]:
        keys = [original_blob(record.id)]
        if record.pipeline is not None:
            keys.append(result_blob(record.id, record.pipeline.id))
        return keys

    def create(
        self, image_id: str, source: bytes | IO[bytes], info: ImageInfo, tags: list[str], *, owner: str | None = None
    ) -> ImageRecord:
        """Store the original (QuotaExceeded when the owner has no room for it), then the record."""
        record = ImageRecord(id=image_id, original=info, tags=tags, created_at=datetime.now(UTC), owner=owner)
        key = original_blob(image_id)
        self.blobs.put(key, source, size=info.bytes, content_type=info.format.media_type, owner=owner, ttl=self.ttl)
        try:
            self.client.set(image_key(image_id), record.model_dump_json(), ex=self.ttl)
        except BaseException:
            with contextlib.suppress(Exception):
                self.blobs.delete(key)
            raise
        return record

    def get(self, image_id: str) -> ImageRecord | None:
        raw = cast(bytes | None, self.client.get(image_key(image_id)))
        return ImageRecord.model_validate_json(raw) if raw else None

    def original(self, image_id: str) -> Blob | None:
        """The original, while its record lives."""
        if self.get(image_id) is None:
            return None
        return self.blobs.open(original_blob(image_id))

    def result(self, record: ImageRecord) -> Blob | None:
        """The current pipeline's result, if it has one."""
        if record.pipeline is None or record.result is None:
            return None
        return self.blobs.open(result_blob(record.id, record.pipeline.id))

    def _watched(self, image_id: str, what: str, write: Callable[[Any, ImageRecord], T]) -> T | None:
        """Read the record and queue ``write(pipe, record)``'s commands in one optimistic
        transaction, retried while the record moves; ``write``'s outcome, None if it is gone."""
        key = image_key(image_id)
        with self.client.pipeline(transaction=True) as pipe:
            for _ in range(20):
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    raw = cast(bytes | None, pipe.get(key))
                    if not raw:
                        pipe.unwatch()
                        return None
                    record = ImageRecord.model_validate_json(raw)
                    pipe.multi()
                    outcome = write(pipe, record)
                    pipe.execute()
                    return outcome
                except redis.WatchError:
                    continue
        raise RuntimeError(f"image {image_id}: its record kept changing under 20 attempts to {what} it")

    def _update(self, image_id: str, change: Change) -> tuple[ImageRecord, ImageRecord] | None:
        """Change and write the record atomically, renewing its TTL and its blobs' expiry; the
        record before and after, None if it is gone."""

        def write(pipe: Any, before: ImageRecord) -> tuple[ImageRecord, ImageRecord]:
            record = change(before)
            pipe.set(image_key(image_id), record.model_dump_json(), ex=self.ttl)
            self.blobs.ledger.renew(self._blob_keys(record), self.ttl, pipe)
            return before, record

        return self._watched(image_id, "update", write)

    def start_pipeline(self, image_id: str, pipeline: Pipeline, busy: Callable[[Pipeline], bool]) -> ImageRecord | None:
        """Make ``pipeline`` the image's current one and drop the previous result, unless
        ``busy(previous_pipeline)`` says that one may still run (PipelineBusy)."""

        def change(record: ImageRecord) -> ImageRecord:
            if record.pipeline is not None and busy(record.pipeline):
                raise PipelineBusy(record.pipeline.id)
            return record.model_copy(update={"pipeline": pipeline, "result": None})

        updated = self._update(image_id, change)
        if updated is None:
            return None
        before, record = updated
        if before.pipeline is not None:
            self.blobs.delete(result_blob(image_id, before.pipeline.id))
        return record

    def save_result(self, image_id: str, pipeline_id: str, data: bytes, info: ImageInfo) -> bool:
        """Store the result of ``pipeline_id``; False if the image is gone or has moved on to
        another pipeline (whose result this is not). QuotaExceeded if the owner has no room."""
        record = self.get(image_id)
        if record is None or record.pipeline is None or record.pipeline.id != pipeline_id:
            return False
        key = result_blob(image_id, pipeline_id)
        self.blobs.put(key, data, size=len(data), content_type=info.format.media_type, owner=record.owner, ttl=self.ttl)

        def change(current: ImageRecord) -> ImageRecord:
            if current.pipeline is None or current.pipeline.id != pipeline_id:
                raise PipelineBusy(pipeline_id)
            return current.model_copy(update={"result": info})

        try:
            if self._update(image_id, change) is not None:
                return True
        except PipelineBusy:
            pass
        self.blobs.delete(key)
        return False

    def delete(self, image_id: str) -> ImageRecord | None:
        """Delete the record, its index entries and its blobs (freeing their quota)."""

        def write(pipe: Any, record: ImageRecord) -> ImageRecord:
            pipe.delete(image_key(image_id))
            for tag in record.indexed_tags:
                pipe.zrem(tag_key(tag), image_id)
            pipe.zrem(INDEX_ALL_KEY, image_id)
            return record

        record = self._watched(image_id, "delete", write)
        if record is None:
            return None
        for blob in self._blob_keys(record):
            self.blobs.delete(blob)
        return record

    def index(self, image_id: str, tags: list[str]) -> ImageRecord | None:
        """Put the image under each of ``tags`` (and nothing else) in the search index."""
        record = self.get(image_id)
        if record is None:
            return None
        leaving = [t for t in record.indexed_tags if t not in tags]
        now_us = int(time.time() * 1_000_000)
        oldest_kept = now_us - self.ttl * 1_000_000
        keys = [INDEX_CLOCK_KEY, INDEX_ALL_KEY, *[tag_key(t) for t in tags], *[tag_key(t) for t in leaving]]
        score = int(self._index(keys=keys, args=[now_us, self.ttl, image_id, oldest_kept, len(tags)]))
        indexed_at = datetime.fromtimestamp(score / 1_000_000, UTC)

        def change(current: ImageRecord) -> ImageRecord:
            return current.model_copy(update={"indexed_tags": tags, "indexed_at": indexed_at})

        updated = self._update(image_id, change)
        return updated[1] if updated is not None else None

    def search(
        self, tags: Sequence[str], limit: int, cursor: int | None, *, visible: Callable[[str | None], bool]
    ) -> SearchPage:
        """Images under every one of ``tags`` (all images if none), newest index entry first, of
        those whose owner is ``visible`` (a page may then hold fewer than ``limit``)."""
        newest = "+inf" if cursor is None else f"({cursor}"
        oldest = int(time.time() * 1_000_000) - self.ttl * 1_000_000
        if len(tags) <= 1:
            source = tag_key(tags[0]) if tags else INDEX_ALL_KEY
            entries = self.client.zrevrangebyscore(source, newest, oldest, start=0, num=limit, withscores=True)
        else:
            scratch = f"offload:images:search:{uuid.uuid4().hex}"
            pipe = self.client.pipeline(transaction=True)
            pipe.zinterstore(scratch, [tag_key(t) for t in tags], aggregate="MAX")
            pipe.expire(scratch, 30)  # in case the DEL below never runs
            pipe.zrevrangebyscore(scratch, newest, oldest, start=0, num=limit, withscores=True)
            pipe.delete(scratch)
            entries = pipe.execute()[2]
        pairs = cast(list[tuple[bytes, float]], entries)
        pipe = self.client.pipeline(transaction=False)
        for member, _ in pairs:
            pipe.get(image_key(member.decode()))
        records = pipe.execute() if pairs else []
        hits = []
        for raw in records:
            if not raw:
                continue  # expired since it was indexed
            record = ImageRecord.model_validate_json(raw)
            if not visible(record.owner):
                continue
            hits.append(
                SearchHit(
                    id=record.id,
                    original=record.original,
                    result=record.result,
                    tags=record.indexed_tags,
                    indexed_at=record.indexed_at,
                    url=f"/v1/images/{record.id}",
                    result_url=f"/v1/images/{record.id}/result",
                )
            )
        next_cursor = int(pairs[-1][1]) if len(pairs) == limit else None
        return SearchPage(images=hits, next_cursor=next_cursor)


def operations_json(operations: Sequence[Operation]) -> list[dict[str, Any]]:
    return [cast(dict[str, Any], json.loads(op.model_dump_json())) for op in operations]
