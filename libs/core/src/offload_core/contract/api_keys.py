"""API keys, the principals they authenticate, and who may see which record.

An OFFLOAD_API_KEYS entry is one of:

- ``<key>``: a plain key (16+ characters), as ``make run`` generates; its id is the first 16 hex
  digits of the key's SHA-256, with no scope.
- ``sha256:<64 hex digits>``: the SHA-256 of a key, so the Secret holds nothing a client could
  send; the same id as the plain form of that key, with no scope.
- ``<id>:<scopes>:<key or sha256:hex>``: a named key; scopes joined by ``+`` (``admin``), or empty.

Every key is compared as a SHA-256 digest, against every entry, in constant time. Two entries
with the same id are one principal: that is how a key is rotated (both valid until clients moved).

Records (jobs, dead letters, audit entries) carry the id of the key that created them; a
principal sees and acts on its own, and one with the ``admin`` scope on all.

Each key id may make a number of /v1 requests per window (``RequestRate``): OFFLOAD_API_RATE_LIMIT
for every key, OFFLOAD_API_KEY_RATE_LIMITS (``<id>=<requests>/<seconds>``, or ``<id>=off``) for
some. The limits are kept apart from the keys: they are not secret, and change without a rotation.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

ADMIN = "admin"
SCOPES = frozenset({ADMIN})
HASH_PREFIX = "sha256:"
MIN_PLAIN_KEY_CHARS = 16
KEY_ID_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
_KEY_ID = re.compile(KEY_ID_PATTERN)
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
# Who acts when no key is configured (development only): sees everything, as before keys existed.
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Principal:
    """Who made a request: the id of the key it presented, and that key's scopes."""

    id: str
    scopes: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.scopes


ANONYMOUS_PRINCIPAL = Principal(ANONYMOUS, frozenset({ADMIN}))


@dataclass(frozen=True)
class RequestRate:
    """At most ``requests`` requests per ``window_seconds``, as a steady flow or in bursts."""

    requests: int
    window_seconds: int

    def __str__(self) -> str:
        return f"{self.requests}/{self.window_seconds}"


# Bounds against typos; a day is the longest window a client can be expected to plan for.
MAX_RATE_REQUESTS = 1_000_000
MAX_RATE_WINDOW_SECONDS = 86_400
RATE_OFF = "off"


def parse_request_rate(text: str) -> RequestRate | None:
    """``<requests>/<seconds>`` (``100/60``), or ``off`` (None: no limit); ValueError says why not."""
    text = text.strip()
    if text.lower() == RATE_OFF:
        return None
    requests, slash, seconds = text.partition("/")
    if not (slash and requests.strip().isdigit() and seconds.strip().isdigit()):
        raise ValueError(f"a rate limit is <requests>/<seconds> such as 100/60, or {RATE_OFF!r}; got {text!r}")
    rate = RequestRate(int(requests), int(seconds))
    if not 1 <= rate.requests <= MAX_RATE_REQUESTS:
        raise ValueError(f"rate limit {text!r}: requests must be between 1 and {MAX_RATE_REQUESTS}")
    if not 1 <= rate.window_seconds <= MAX_RATE_WINDOW_SECONDS:
        raise ValueError(f"rate limit {text!r}: the window must be between 1 and {MAX_RATE_WINDOW_SECONDS} seconds")
    return rate


def parse_key_rate_limits(entries: Iterable[str]) -> dict[str, RequestRate | None]:
    """OFFLOAD_API_KEY_RATE_LIMITS entries, ``<key id>=<requests>/<seconds>`` or ``<key id>=off``."""
    limits: dict[str, RequestRate | None] = {}
    for entry in entries:
        key_id, equals, rate_text = entry.partition("=")
        key_id = key_id.strip()
        if not equals or not _KEY_ID.fullmatch(key_id):
            raise ValueError(f"entry {entry!r} must be <key id>=<requests>/<seconds> (or <key id>=off)")
        if key_id in limits:
            raise ValueError(f"key id {key_id!r} has two rate limits")
        try:
            limits[key_id] = parse_request_rate(rate_text)
        except ValueError as exc:
            raise ValueError(f"key {key_id}: {exc}") from None
    return limits


@dataclass(frozen=True)
class ApiKey:
    principal: Principal
    digest: bytes  # SHA-256 of the key


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_api_key(entry: str) -> ApiKey:
    """One OFFLOAD_API_KEYS entry; ValueError says what is wrong without repeating the key."""
    key_id: str | None = None
    scopes: frozenset[str] = frozenset()
    credential = entry
    if ":" in entry and not entry.startswith(HASH_PREFIX):
        parts = entry.split(":", 2)
        if len(parts) != 3:
            raise ValueError("a named key is <id>:<scopes>:<key or sha256:hex>; this entry has one colon")
        key_id, scope_text, credential = parts
        if not _KEY_ID.fullmatch(key_id):
            raise ValueError(f"key id {key_id!r} must be 1 to 64 letters, digits, '_', '.' or '-'")
        scopes = frozenset(scope for scope in scope_text.split("+") if scope)
        if unknown := scopes - SCOPES:
            raise ValueError(f"key {key_id}: unknown scope {sorted(unknown)[0]!r}; known: {', '.join(sorted(SCOPES))}")
    if credential.startswith(HASH_PREFIX):
        hex_digest = credential.removeprefix(HASH_PREFIX).lower()
        if not _HEX_DIGEST.fullmatch(hex_digest):
            raise ValueError("a hashed key is sha256: and 64 hex digits (sha256sum of the key)")
        digest = bytes.fromhex(hex_digest)
    else:
        if len(credential) < MIN_PLAIN_KEY_CHARS:
            raise ValueError(f"every key must be at least {MIN_PLAIN_KEY_CHARS} characters long")
        digest = key_digest(credential)
    return ApiKey(Principal(key_id or digest.hex()[:16], scopes), digest)


def authenticate(keys: Iterable[ApiKey], presented: str) -> Principal | None:
    """The principal of the presented key, or None. Every entry is compared, in constant time,
    so timing reveals neither a key nor its position."""
    digest = key_digest(presented)
    found: Principal | None = None
    for key in keys:
        if hmac.compare_digest(digest, key.digest):
            found = key.principal
    return found


def may_see(principal: Principal, owner: str | None) -> bool:
    """Whether the principal may see and act on a record its owner (a key id) created. Records
    without an owner (created before keys had ids, or outside the API) are the admins' alone."""
    return principal.is_admin or (owner is not None and hmac.compare_digest(owner, principal.id))
