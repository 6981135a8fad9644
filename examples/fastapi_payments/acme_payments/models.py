"""What the service and its job share: plain pydantic models, no Offload code."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, Field


class Payment(BaseModel):
    order_id: str = Field(min_length=1, max_length=64)
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2)
    currency: str = Field(pattern=r"^[A-Z]{3}$")


class Receipt(BaseModel):
    order_id: str
    charged: Decimal
    currency: str
    reference: str
