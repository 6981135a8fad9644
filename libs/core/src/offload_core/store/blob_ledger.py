"""What the broker Redis knows of the blobs (offload_core.store.blobs): each blob's size and
owner, every owner's usage against its quota, and when each blob expires.

Charging and releasing are Lua scripts, so an owner's usage always equals the sum of its blobs
however many API and worker processes store at once. A blob is charged *before* its bytes are
written (a refused upload writes nothing) and released when it is deleted, or by the sweep
once its TTL has passed: the expiry set is what makes blobs die with their job or image, on
every backend alike, and frees their quota at the same moment.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, cast

import redis

from offload_core.store.blobs import Blob as Blob
from offload_core.store.blobs import BlobInfo, BlobStore, blob_store_from_settings
from offload_core.store.lua_scripts import lua

LEDGER_KEY = "offload:blobs:ledger"  # hash: blob key -> "<size> <owner>"
USAGE_KEY = "offload:blobs:usage"  # hash: owner (API key id) -> bytes stored
EXPIRY_KEY = "offload:blobs:expiry"  # sorted set: blob key -> expiry (ms since the epoch)
SWEEP_LOCK_KEY = "offload:blobs:sweep-lock"
# The sweep takes blobs this long past their expiry: the record that refers to a blob is written
# a moment after the blob's expiry was computed, so it outlives it by that moment.
SWEEP_GRACE_SECONDS = 5.0
BLOBS_PER_SWEEP = 500
NO_OWNER = "-"  # blobs of records created outside the API (no key id)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlobQuotas:
    """Bytes each API key may keep stored: ``default`` unless ``overrides`` names the key."""

    default: int
    overrides: Mapping[str, int] = field(default_factory=dict)

    def of(self, owner: str) -> int:
        return self.overrides.get(owner, self.default)

    @classmethod
    def from_settings(cls, settings: Any) -> BlobQuotas:
        return cls(settings.BLOB_QUOTA_BYTES, settings.blob_quota_overrides)


class QuotaExceeded(Exception):
    def __init__(self, owner: str, quota: int, used: int, size: int) -> None:
        self.owner, self.quota, self.used, self.size = owner, quota, used, size
        super().__init__(
            f"storing {size:,} bytes would take API key {owner!r} over its blob quota of {quota:,} bytes "
            f"({used:,} in use; OFFLOAD_BLOB_QUOTA_BYTES, or OFFLOAD_BLOB_QUOTA_OVERRIDES for this key). "
            "Delete images or wait until results expire."
        )


class BlobLedger:
    """The Redis side: charges, usage and expiries. Works with a decoding client or not."""

    def __init__(self, client: redis.Redis, quotas: BlobQuotas) -> None:
        self.client = client
        self.quotas = quotas
        self._reserve = client.register_script(lua("blob_reserve"))
        self._release = client.register_script(lua("blob_release"))

    def reserve(self, key: str, owner: str | None, size: int, ttl_seconds: float) -> int:
        """Charge ``size`` bytes to ``owner`` (QuotaExceeded if they do not fit); the usage after."""
        owner = owner or NO_OWNER
        quota = self.quotas.of(owner)
        expiry = int((time.time() + ttl_seconds) * 1000)
        taken, used = cast(list[int], self._reserve(keys=self._keys, args=[key, owner, size, quota, expiry]))
        if not taken:
            raise QuotaExceeded(owner, quota, int(used), size)
        return int(used)

    def renew(self, keys: Iterable[str], ttl_seconds: float, pipe: redis.client.Pipeline | None = None) -> None:
        """Move the expiry of those of ``keys`` that are charged (in ``pipe`` when given)."""
        expiry = int((time.time() + ttl_seconds) * 1000)
        mapping = dict.fromkeys(keys, expiry)
        if mapping:
            (pipe if pipe is not None else self.client).zadd(EXPIRY_KEY, mapping, xx=True)

    def release(self, key: str, *, unless_renewed_after: float | None = None) -> int:
        """Take the blob's charge off its owner; the bytes released (-1: renewed, kept)."""
        args: list[Any] = [key]
        if unless_renewed_after is not None:
            args.append(int(unless_renewed_after * 1000))
        return int(cast(int, self._release(keys=self._keys, args=args)))

    def usage(self, owner: str) -> int:
        return int(cast(Any, self.client.hget(USAGE_KEY, owner)) or 0)

    def due(self, before: float, limit: int = BLOBS_PER_SWEEP) -> list[str]:
        keys = cast(list[Any], self.client.zrangebyscore(EXPIRY_KEY, "-inf", int(before * 1000), start=0, num=limit))
        return [k.decode() if isinstance(k, bytes) else str(k) for k in keys]

    @property
    def _keys(self) -> list[str]:
        return [LEDGER_KEY, USAGE_KEY, EXPIRY_KEY]


class Blobs:
    """Blob bytes in the store, charged to their owner in the ledger, with an expiry."""

    def __init__(self, store: BlobStore, ledger: BlobLedger) -> None:
        self.store = store
        self.ledger = ledger

    @classmethod
    def from_settings(cls, settings: Any, client: redis.Redis) -> Blobs:
        return cls(blob_store_from_settings(settings), BlobLedger(client, BlobQuotas.from_settings(settings)))

    def put(
        self, key: str, source: bytes | IO[bytes], *, size: int, content_type: str, owner: str | None, ttl: float
    ) -> BlobInfo:
        """Charge, then write; a failed write takes its charge back. QuotaExceeded writes nothing."""
        self.ledger.reserve(key, owner, size, ttl)
        try:
            info = self.store.put(key, source, content_type)
        except BaseException:
            with contextlib.suppress(Exception):
                self.delete(key)
            raise
        if info.size != size:  # the caller's size was wrong: charge what was written
            self.ledger.reserve(key, owner, info.size, ttl)
        return info

    def open(self, key: str) -> Blob | None:
        return self.store.open(key)

    def delete(self, key: str) -> None:
        """Delete the bytes, then the charge (so a failed delete leaves it to the sweep)."""
        self.store.delete(key)
        self.ledger.release(key)


class BlobSweep:
    """Deletes blobs whose TTL has passed and frees their quota; one process at a time."""

    def __init__(self, blobs: Blobs, interval_seconds: float, *, owner: str) -> None:
        self.blobs = blobs
        self.interval = interval_seconds
        self.owner = owner

    def run_once(self) -> int:
        """Sweep unless another process swept less than an interval ago; the blobs deleted."""
        lock_ms = max(1, int(self.interval * 800))
        if not self.blobs.ledger.client.set(SWEEP_LOCK_KEY, self.owner, nx=True, px=lock_ms):
            return 0
        return self.sweep()

    def sweep(self, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - SWEEP_GRACE_SECONDS
        deleted = 0
        for key in self.blobs.ledger.due(cutoff):
            self.blobs.store.delete(key)
            if self.blobs.ledger.release(key, unless_renewed_after=cutoff) >= 0:
                deleted += 1
            else:
                logger.warning("blob %s was renewed while the sweep deleted it", key)
        if deleted:
            logger.info("blob sweep: deleted %d expired blobs from %s", deleted, self.blobs.store.description)
        return deleted
