"""The `acme.charge` job, declared with Offload's SDK. Workers (and the Offload API, for the
declaration) load it through OFFLOAD_JOB_MODULES=acme_payments.jobs or an `offload.jobs` entry
point; the payments service itself never imports it."""

from __future__ import annotations

import hashlib
import time

from acme_payments.models import Payment, Receipt
from offload_core.sdk import JobContext, job


@job("acme.charge", request=Payment, result=Receipt, queue="default", max_retries=5)
def charge(ctx: JobContext, payment: Payment) -> Receipt:
    """Charge a card: the slow call to the payment provider, off the request path."""
    ctx.progress(10, "contacting the provider")
    time.sleep(0.2)  # stands in for the provider's API
    ctx.check_cancelled()
    ctx.progress(90, "recording the charge")
    reference = hashlib.sha256(f"{payment.order_id}:{payment.amount}".encode()).hexdigest()[:16]
    return Receipt(order_id=payment.order_id, charged=payment.amount, currency=payment.currency, reference=reference)
