"""The payments service: a FastAPI app that answers at once and lets Offload charge the card.

Run it next to `make run` (OFFLOAD_URL and OFFLOAD_API_KEY set)::

    uvicorn acme_payments.app:app --port 8100
"""

from __future__ import annotations

from fastapi import FastAPI

from acme_payments.models import Payment
from offload_client import Job
from offload_client.fastapi import OffloadDep, offload_lifespan

app = FastAPI(title="Acme payments", lifespan=offload_lifespan())


@app.post("/payments", status_code=202)
async def pay(payment: Payment, offload: OffloadDep) -> dict[str, str]:
    job = await offload.submit("acme.charge", payment)
    return {"job_id": job.id, "status_url": job.status_url}


@app.get("/payments/{job_id}")
async def payment_status(job_id: str, offload: OffloadDep) -> Job:
    return await offload.get(job_id)
