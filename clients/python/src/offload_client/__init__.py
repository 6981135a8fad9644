"""Submit and watch Offload jobs: `Offload` (sync), `AsyncOffload` (asyncio), typed answers and
exceptions by kind. The FastAPI helpers are in `offload_client.fastapi`, the `offload` command
in `offload_client.cli` (``pip install 'offload-client[cli]'``)."""

from offload_client._calls import OPERATIONS
from offload_client.aio import AsyncOffload
from offload_client.client import Offload
from offload_client.errors import (
    ApiError,
    BadRequest,
    ConfigurationError,
    Conflict,
    FieldError,
    NotFound,
    OffloadError,
    RateLimited,
    RetryableError,
    ServerError,
    TransportError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    WaitTimeout,
)
from offload_client.models import (
    FINISHED,
    AuditEntry,
    DeadLetter,
    Image,
    ImageHit,
    Job,
    JobAccepted,
    JobEvent,
    JobStatus,
    JobType,
    Notification,
    NotificationTarget,
    PipelineAccepted,
    Progress,
    QueueInfo,
    Report,
    ReportAccepted,
)

__version__ = "0.1.0"

__all__ = [
    "FINISHED",
    "OPERATIONS",
    "ApiError",
    "AsyncOffload",
    "AuditEntry",
    "BadRequest",
    "ConfigurationError",
    "Conflict",
    "DeadLetter",
    "FieldError",
    "Image",
    "ImageHit",
    "Job",
    "JobAccepted",
    "JobEvent",
    "JobStatus",
    "JobType",
    "NotFound",
    "Notification",
    "NotificationTarget",
    "Offload",
    "OffloadError",
    "PipelineAccepted",
    "Progress",
    "QueueInfo",
    "RateLimited",
    "Report",
    "ReportAccepted",
    "RetryableError",
    "ServerError",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "WaitTimeout",
]
