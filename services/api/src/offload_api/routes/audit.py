"""The audit trail of accepted submissions and deletions (offload_api.audit writes it)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from offload_api.audit import AuditPage, parse_stream_id, read_page
from offload_api.auth import PrincipalDep
from offload_api.deps import StoreDep
from offload_api.errors import InvalidField
from offload_core.contract.api_keys import KEY_ID_PATTERN

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("")
def list_audit_entries(
    store: StoreDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=500, description="At most this many entries, newest first.")] = 50,
    cursor: Annotated[
        str | None,
        Query(pattern=r"^\d{1,20}-\d{1,20}$", description="`next_cursor` of the previous page (a stream id)."),
    ] = None,
    key_id: Annotated[
        str | None,
        Query(pattern=rf"^{KEY_ID_PATTERN}$", description="Only requests made with this API key's id (admin)."),
    ] = None,
    method: Annotated[Literal["POST", "DELETE"] | None, Query(description="Only this method.")] = None,
) -> AuditPage:
    """Every accepted (2xx) POST and DELETE under /v1: who (`key_id`, a hash of the API key),
    what (method, route, path, status, the job id when the answer named one) and when. Entries
    are written just after each response is sent, so the newest may take a moment to appear.
    A key sees its own requests; a key with the `admin` scope sees everyone's."""
    if cursor is not None and parse_stream_id(cursor) is None:
        raise InvalidField("query.cursor", "not a cursor this API gave: pass a page's `next_cursor` as it is")
    if not principal.is_admin:
        key_id = principal.id if key_id in (None, principal.id) else "\x00"  # another key's: none of them
    return read_page(store.client, limit=limit, cursor=cursor, key_id=key_id, method=method)
