"""The handler of ``acme.fetch``; workers alone import it (see ``acme_jobs.jobs``)."""

from __future__ import annotations

import hashlib

from acme_jobs.jobs import FetchRequest, FetchResult
from offload_core.sdk import JobContext, PermanentJobError, TransientJobError


def fetch_url(ctx: JobContext, req: FetchRequest) -> FetchResult:
    url = str(req.url)
    digest, length = hashlib.sha256(), 0
    # ctx.http refuses private addresses unless OFFLOAD_OUTBOUND_ALLOWED_HOSTS allows them (the job
    # then fails at once), follows no redirects and has bounded timeouts; network errors are retried.
    with ctx.http.stream("GET", url) as response:
        if response.status_code >= 500:
            raise TransientJobError(f"{url} answered {response.status_code}; trying again later")
        for chunk in response.iter_bytes():
            length += len(chunk)
            if length > req.max_bytes:
                raise PermanentJobError(f"{url} is longer than max_bytes ({req.max_bytes})")
            digest.update(chunk)
    return FetchResult(
        url=url,
        status=response.status_code,
        bytes=length,
        sha256=digest.hexdigest(),
        content_type=response.headers.get("content-type"),
    )
